"""Integrations of attncc with other libraries.

* :mod:`attncc.integrations.transformers`: an ``"attncc"`` attention implementation for Hugging
  Face transformers (importing the module registers it; needs the ``hf`` extra).
"""
