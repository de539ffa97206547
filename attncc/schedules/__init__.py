"""The registered schedules, in the order ``choose_schedule`` tries them.

Adding a schedule: a new module (package) under ``attncc/schedules/`` with its templates, a
:class:`~attncc.schedules.base.Schedule` subclass, and one entry in :data:`SCHEDULES`.
"""

from __future__ import annotations

from attncc.schedules.base import KernelDecl, Schedule
from attncc.schedules.chunkwise import CHUNKWISE
from attncc.schedules.decode import DECODE
from attncc.schedules.prefill import PREFILL
from attncc.schedules.recurrent import RECURRENT

SCHEDULES: tuple[Schedule, ...] = (DECODE, PREFILL, RECURRENT, CHUNKWISE)

__all__ = ["SCHEDULES", "KernelDecl", "Schedule", "by_kind", "by_name"]


def by_name(name: str) -> Schedule:
    for s in SCHEDULES:
        if s.name == name:
            return s
    raise KeyError(f"no schedule named {name!r} (registered: {', '.join(s.name for s in SCHEDULES)})")


def by_kind(kind: str) -> Schedule:
    """The first registered schedule with kernels of config kind ``kind``."""
    for s in SCHEDULES:
        if kind in s.kinds:
            return s
    raise KeyError(f"no registered schedule has kernels of kind {kind!r}")
