"""Autotuning for attncc kernels: config spaces, the Optuna tuner, the shared tuning cache.

Run time::

    from attncc.autotune import lookup_config, default_config
    config = lookup_config(spec_hash, "fwd", shape, "fp16", default_config("fwd", shape.D, "fp16"))

Tuning: :func:`tune` (or ``attncc tune SPEC --shape B,H,M,N,D``).  See ``docs/autotune.md``.

Importing the package is cheap: each name below is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module it is imported from on first access.
_EXPORTS: dict[str, str] = {
    "CacheEntry": "attncc.autotune.cache",
    "TuneKey": "attncc.autotune.cache",
    "TuningCache": "attncc.autotune.cache",
    "bucket_name": "attncc.autotune.cache",
    "GpuIdentity": "attncc.autotune.device",
    "current_identity": "attncc.autotune.device",
    "invalidate_lookup_cache": "attncc.autotune.lookup",
    "lookup_config": "attncc.autotune.lookup",
    "lookup_stats": "attncc.autotune.lookup",
    "reset_lookup_stats": "attncc.autotune.lookup",
    "SPACES": "attncc.autotune.space",
    "ConfigSpace": "attncc.autotune.space",
    "default_config": "attncc.autotune.space",
    "validate_config": "attncc.autotune.space",
    "Shape": "attncc.autotune.tunable",
    "Tunable": "attncc.autotune.tunable",
    "parse_shape": "attncc.autotune.tunable",
    "TrialRecord": "attncc.autotune.tuner",
    "TuneResult": "attncc.autotune.tuner",
    "tune": "attncc.autotune.tuner",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is used (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attncc.autotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

