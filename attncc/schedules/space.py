"""Discrete configuration spaces: ordered parameter values plus a validity constraint.

Declared by each schedule for its kernel kinds (:meth:`attncc.schedules.base.Schedule.space`) and
used by the autotuner (:mod:`attncc.autotune.space`), which validates every cached config against
the space of its kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Config = dict[str, int]


@dataclass(frozen=True)
class ConfigSpace:
    """An ordered mapping ``name -> allowed values`` plus an optional validity constraint.

    ``params`` keeps the declaration order, which is also the order of :meth:`enumerate`.
    ``valid`` rejects combinations that cannot make a sensible kernel (e.g. fewer than four
    accumulator elements per thread); it receives a complete config.  ``defaults`` names the
    parameters a config may omit (a launch switch added after configs were cached, such as
    ``USE_TMA``) and the value an omitted one means; enumeration always includes them.
    """

    params: Mapping[str, tuple[int, ...]]
    valid: Callable[[Mapping[str, int]], bool] | None = field(default=None, compare=False)
    defaults: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ordered = {name: tuple(values) for name, values in self.params.items()}
        for name, values in ordered.items():
            if not values or any(type(v) is not int for v in values):
                raise ValueError(f"config space parameter {name!r} needs a non-empty tuple of ints")
            if len(set(values)) != len(values):
                raise ValueError(f"config space parameter {name!r} has repeated values")
        object.__setattr__(self, "params", ordered)
        for name, value in self.defaults.items():
            if value not in ordered.get(name, ()):
                raise ValueError(f"config space default {name}={value} is not one of the parameter's values")

    def canonical(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` without the defaulted parameters that hold their default (the stored form:
        configs cached before such a parameter existed read the same)."""
        return {n: v for n, v in config.items() if not (n in self.defaults and v == self.defaults[n])}

    def complete(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with every omitted defaulted parameter set to its default."""
        return {**{n: v for n, v in self.defaults.items() if n not in config}, **config}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.params)

    def __contains__(self, config: object) -> bool:
        return isinstance(config, Mapping) and self.check(config) is None

    def __len__(self) -> int:
        return sum(1 for _ in self.iter_valid())

    def iter_valid(self) -> Iterator[Config]:
        """Yield every valid config in declaration order (last parameter varies fastest), in
        :meth:`canonical` form."""
        names = self.names
        for values in itertools.product(*self.params.values()):
            config = dict(zip(names, values, strict=True))
            if self.valid is None or self.valid(config):
                yield self.canonical(config)

    def enumerate(self) -> list[Config]:
        """All valid configs."""
        return list(self.iter_valid())

    def check(self, config: Mapping[str, Any]) -> str | None:
        """Return why ``config`` is not in this space, or ``None`` when it is."""
        config = self.complete(config)
        missing = [n for n in self.names if n not in config]
        extra = sorted(str(n) for n in config if n not in self.params)
        if missing or extra:
            return f"expected keys {list(self.names)}, missing {missing}, unexpected {extra}"
        for name, allowed in self.params.items():
            value = config[name]
            if type(value) is not int:
                return f"{name} must be an int, got {type(value).__name__}"
            if value not in allowed:
                return f"{name}={value} not in {list(allowed)}"
        if self.valid is not None and not self.valid(config):
            return "combination rejected by the space's constraint"
        return None

    def key(self, config: Mapping[str, int]) -> tuple[int, ...]:
        """A hashable identity of ``config`` in declaration order."""
        config = self.complete(config)
        return tuple(int(config[n]) for n in self.names)
