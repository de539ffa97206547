"""Discrete configuration spaces of the four kernel kinds, their schema and heuristic defaults.

A config is a flat ``dict[str, int]``: the kernel's ``tl.constexpr`` tile sizes plus the launch
options ``num_warps`` and ``num_stages``.  Every config that enters or leaves the tuning cache is
checked by :func:`validate_config` against the space of its kind: exactly the kind's parameter
names, integer values, each one of the allowed values, and the space's constraint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attncc.errors import AttnccError
from attncc.schedules import SCHEDULES, by_kind
from attncc.schedules.space import Config, ConfigSpace

# Kernel kinds: every registered schedule's, and the recurrence kind still to come (issue 11).
KINDS: tuple[str, ...] = (*dict.fromkeys(kind for sched in SCHEDULES for kind in sched.kinds), "recurrence")
DTYPES: tuple[str, ...] = ("fp16", "bf16", "fp32")



class ConfigSchemaError(AttnccError):
    """A config read from storage or a file does not match its kind's space."""


def config_to_str(config: Mapping[str, int]) -> str:
    """``BLOCK_M=128,BLOCK_N=64,num_warps=4,num_stages=3`` (stable, human readable)."""
    return ",".join(f"{k}={v}" for k, v in config.items())


def _recurrence_ok(config: Mapping[str, int]) -> bool:
    """The fp32 state tile BLOCK_K x BLOCK_V must fit in at most 128 registers per thread."""
    threads = 32 * config["num_warps"]
    return config["BLOCK_K"] * config["BLOCK_V"] <= 128 * threads and config["CHUNK"] * config[
        "BLOCK_K"
    ] >= 2 * threads


_TILES = (16, 32, 64, 128)
_WARPS = (2, 4, 8)
_STAGES = (1, 2, 3, 4)

# Kinds of registered schedules take their space from the schedule; recurrence is the kind of the
# schedule still to come (issue 11): its space is declared here until then.
SPACES: dict[str, ConfigSpace] = {
    **{kind: sched.space(kind) for sched in SCHEDULES for kind in sched.kinds},
    "recurrence": ConfigSpace(
        {
            "CHUNK": _TILES,
            "BLOCK_K": _TILES,
            "BLOCK_V": _TILES,
            "num_warps": _WARPS,
            "num_stages": _STAGES,
        },
        valid=_recurrence_ok,
    ),
}


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
    return {name: int(config[name]) for name in space.names}


def _recurrence_default(head_dim: int, dtype: str) -> Config:
    block = 64 if head_dim >= 64 else 32
    return {"CHUNK": 64, "BLOCK_K": block, "BLOCK_V": block, "num_warps": 4, "num_stages": 2}


_DEFAULTS: dict[str, Callable[[int, str], Config]] = {
    "recurrence": _recurrence_default,
}


def default_config(kind: str, head_dim: int, dtype: str) -> Config:
    """A heuristic config that compiles without spills for typical head dims (64, 128, 256).

    Used when the tuning cache has nothing for a kernel.  Always a member of ``SPACES[kind]``.
    """
    space = space_for(kind)
    if dtype not in DTYPES:
        raise ConfigSchemaError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if kind in _DEFAULTS:
        config = _DEFAULTS[kind](int(head_dim), dtype)
    else:  # a registered schedule's own default (what its generated modules use)
        config = by_kind(kind).default_config(kind, int(head_dim))
    return validate_config(kind, config, space)
