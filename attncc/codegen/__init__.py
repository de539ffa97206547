"""Code generation shared by every schedule: printers, rule tables, plan emitters, the kernel cache.

Schedule-specific renderers and their templates live beside each other under
:mod:`attncc.schedules`; the driver from a spec to a loaded module is :mod:`attncc.compiler`.
"""
