"""Autotuning for attncc kernels: config spaces, the Optuna tuner, the shared tuning cache.

Run time::

    from attncc.autotune import lookup_config, default_config
    config = lookup_config(spec_hash, "fwd", shape, "fp16", default_config("fwd", shape.D, "fp16"))

Tuning: :func:`tune` (or ``attncc tune SPEC --shape B,H,M,N,D``).  See ``docs/autotune.md``.
"""

from attncc.autotune.cache import CacheEntry, TuneKey, TuningCache, bucket_name
from attncc.autotune.device import GpuIdentity, current_identity
from attncc.autotune.lookup import invalidate_lookup_cache, lookup_config, lookup_stats, reset_lookup_stats
from attncc.autotune.space import SPACES, ConfigSpace, default_config, validate_config
from attncc.autotune.tunable import Shape, Tunable, parse_shape
from attncc.autotune.tuner import TrialRecord, TuneResult, tune

__all__ = [
    "SPACES",
    "CacheEntry",
    "ConfigSpace",
    "GpuIdentity",
    "Shape",
    "TrialRecord",
    "TuneKey",
    "TuneResult",
    "Tunable",
    "TuningCache",
    "bucket_name",
    "current_identity",
    "default_config",
    "invalidate_lookup_cache",
    "lookup_config",
    "lookup_stats",
    "parse_shape",
    "reset_lookup_stats",
    "tune",
    "validate_config",
]
