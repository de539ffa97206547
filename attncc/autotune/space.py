"""Discrete configuration spaces of the four kernel kinds, their schema and heuristic defaults.

A config is a flat ``dict[str, int]``: the kernel's ``tl.constexpr`` tile sizes plus the launch
options ``num_warps`` and ``num_stages``.  Every config that enters or leaves the tuning cache is
checked by :func:`validate_config` against the space of its kind: exactly the kind's parameter
names, integer values, each one of the allowed values, and the space's constraint.
"""

from __future__ import annotations

from collections.abc import Mapping

from attncc.errors import AttnccError
from attncc.schedules import SCHEDULES, by_kind
from attncc.schedules.space import Config, ConfigSpace

# Kernel kinds: every registered schedule's.
KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for sched in SCHEDULES for kind in sched.kinds))
DTYPES: tuple[str, ...] = ("fp16", "bf16", "fp32")



class ConfigSchemaError(AttnccError):
    """A config read from storage or a file does not match its kind's space."""


def config_to_str(config: Mapping[str, int]) -> str:
    """``BLOCK_M=128,BLOCK_N=64,num_warps=4,num_stages=3`` (stable, human readable)."""
    return ",".join(f"{k}={v}" for k, v in config.items())


_TILES = (16, 32, 64, 128)
_WARPS = (2, 4, 8)
_STAGES = (1, 2, 3, 4)

# Every kind takes its space from its registered schedule.
SPACES: dict[str, ConfigSpace] = {kind: sched.space(kind) for sched in SCHEDULES for kind in sched.kinds}


def space_for(kind: str) -> ConfigSpace:
    """The space of ``kind``; one-line error for an unknown kind."""
    try:
        return SPACES[kind]
    except KeyError:
        raise ConfigSchemaError(f"unknown kernel kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def validate_config(kind: str, config: object, space: ConfigSpace | None = None) -> Config:
    """Check ``config`` (data from storage or a file) against the space and return a clean copy."""
    space = space or space_for(kind)
    if not isinstance(config, Mapping):
        raise ConfigSchemaError(f"{kind} config must be a JSON object, got {type(config).__name__}")
    problem = space.check(config)
    if problem is not None:
        raise ConfigSchemaError(f"invalid {kind} config: {problem}")
    return space.canonical({name: int(config[name]) for name in space.names if name in config})


def default_config(kind: str, head_dim: int, dtype: str) -> Config:
    """A heuristic config that compiles without spills for typical head dims (64, 128, 256).

    Used when the tuning cache has nothing for a kernel.  Always a member of ``SPACES[kind]``.
    """
    space = space_for(kind)
    if dtype not in DTYPES:
        raise ConfigSchemaError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    config = by_kind(kind).default_config(kind, int(head_dim))  # what the generated modules use
    return validate_config(kind, config, space)
