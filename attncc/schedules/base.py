"""The Schedule interface: everything one kernel family owns.

A schedule is one module under :mod:`attncc.schedules` with its own templates.  It says when it
applies (:meth:`Schedule.applies`), which kernels it generates (:attr:`Schedule.kernels`, each
with its config kind, the index it sweeps and its grid), the iteration plan of each kernel
(:meth:`Schedule.plan`), how to render the module (:meth:`Schedule.render`), its default configs
and tuning space per kernel kind, its cost (FLOPs, bytes, grid size, inner iterations, padding:
read by the cost model and the benchmarks) and its section of ``attncc explain``.  It is registered
once, in :data:`attncc.schedules.SCHEDULES`; no other module asks which schedule it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attncc.autotune.space import ConfigSpace
    from attncc.autotune.tunable import Shape
    from attncc.passes.lowered import Lowered, Lowering
    from attncc.passes.plans import Plan

Config = dict[str, int]


@dataclass(frozen=True)
class KernelDecl:
    """One ``@triton.jit`` kernel of a schedule.

    ``name``: the function in the generated module; ``kind``: the config kind it launches with
    (``"fwd"``, ``"bwd"``, ...); ``sweeps``: what its tile loop iterates (``"keys"``/``"queries"``);
    ``grid``: its launch grid, in words; ``elem_tensors``: pointer arguments in the input dtype;
    ``fp32_tensors``: fp32 pointer arguments; ``int_tensors``: int32 pointer arguments.
    """

    name: str
    kind: str
    sweeps: str
    grid: str
    elem_tensors: tuple[str, ...]
    fp32_tensors: tuple[str, ...] = ()
    int_tensors: tuple[str, ...] = ()


def lookup_default(table: Mapping[int, Mapping[str, int]], head_dim: int) -> Config:
    """The entry of ``{head_dim_bound: config}`` for the smallest bound >= ``head_dim`` (else the largest)."""
    bound = min((b for b in table if head_dim <= b), default=max(table))
    return dict(table[bound])


class Schedule(ABC):
    """A kernel family (see the module docstring)."""

    name: str
    description: str
    kernels: tuple[KernelDecl, ...]
    default_configs: Mapping[str, Mapping[int, Mapping[str, int]]]  # kind -> head-dim bound -> config

    @property
    def kinds(self) -> tuple[str, ...]:
        """Config kinds of this schedule's kernels, in kernel order, each once."""
        return tuple(dict.fromkeys(k.kind for k in self.kernels))

    def kernels_of(self, kind: str) -> tuple[KernelDecl, ...]:
        return tuple(k for k in self.kernels if k.kind == kind)

    def check_kind(self, kind: str) -> str:
        """``kind``, if this schedule has kernels of it; else a ``KeyError``."""
        if kind not in self.kinds:
            raise KeyError(f"the {self.name} schedule has no kernels of kind {kind!r} ({', '.join(self.kinds)})")
        return kind

    def default_config(self, kind: str, head_dim: int) -> Config:
        return lookup_default(self.default_configs[kind], head_dim)

    def aot_signature(self, module: Any, kernel: KernelDecl, dtype: str, head_dim: int, head_dim_v: int,
                      config: Mapping[str, int]) -> tuple[dict[str, str], dict[str, Any]] | None:
        """Triton signature and constexprs of ``kernel`` of ``module`` for an ahead-of-time compile,
        when the schedule has its own (None: attncc derives them from the :class:`KernelDecl`)."""
        return None

    def aot_constexprs(self, kernel: KernelDecl) -> dict[str, Any]:
        """Values of ``kernel``'s own constexprs for an ahead-of-time compile (beyond the shared
        head dims, tiles and dot precision)."""
        return {}

    def loop_tiles(self, kernel: KernelDecl) -> tuple[str, str] | None:
        """Config keys of ``kernel``'s tile loop: (its row tile, the tile it sweeps per iteration),
        for the AOT report's loop metric; None when it has no tile loop.  By default from
        ``kernel.sweeps``: keys swept -> ``(BLOCK_M, BLOCK_N)``, queries -> ``(BLOCK_N, BLOCK_M)``."""
        return {"keys": ("BLOCK_M", "BLOCK_N"), "queries": ("BLOCK_N", "BLOCK_M")}.get(kernel.sweeps)

    def prefers_block_table(self, low: Lowered) -> bool:
        """Whether calls should build block tables at launch (``CallFacts(block_table=True)``)
        because the plan derived at compile time would visit empty tiles."""
        return False

    @abstractmethod
    def applies(self, low: Lowering) -> bool:
        """Whether this schedule realises the lowered cascade for ``low.call``."""

    @abstractmethod
    def plan(self, kernel: KernelDecl, low: Lowering) -> Plan:
        """The iteration plan of ``kernel``."""

    @abstractmethod
    def template_text(self) -> str:
        """All template text the schedule renders from (part of the source cache key)."""

    @abstractmethod
    def render(self, low: Lowered, source_key: str) -> str:
        """Source of the standalone module of ``low``."""

    @abstractmethod
    def space(self, kind: str) -> ConfigSpace:
        """Tuning space of the kernels of ``kind``."""

    @abstractmethod
    def flops(self, kind: str, shape: Shape) -> float:
        """Useful floating-point operations of the kernels of ``kind`` (dense count)."""

    @abstractmethod
    def bytes_moved(self, kind: str, shape: Shape, dtype: str, config: Mapping[str, int]) -> float:
        """Global-memory traffic of the kernels of ``kind`` with ``config``."""

    @abstractmethod
    def programs(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """Grid size (programs) of the main kernel of ``kind``."""

    @abstractmethod
    def inner_iterations(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """Iterations of the main loop of one program."""

    @abstractmethod
    def padding(self, kind: str, shape: Shape, config: Mapping[str, int]) -> float:
        """Work on padded tiles divided by useful work (>= 1)."""

    @abstractmethod
    def benchmark_call(self, module: Any, kind: str, inputs: Mapping[str, Any], config: Mapping[str, int],
                       captures: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """A zero-argument callable that launches the kernels of ``kind`` once on ``inputs``
        (``q``, ``k``, ``v`` tensors) through the generated ``module`` (for timing)."""

    def tile_map(self, low: Lowered, shape: tuple[int, ...], params: Mapping[str, Any],
                 tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> Any:
        """``[row tiles, swept tiles]`` int8 block map of the main kernel at batch 0, head 0
        (0 not visited, 1 visited with the mask, 2 without); for ``attncc explain --plot``.
        ``captures``: ``{name: tensor}`` values of captured tensors the mask reads, if known."""
        from attncc.errors import InputError

        raise InputError(f"--plot: the {self.name} schedule draws no block map")

    @abstractmethod
    def explain(self, low: Lowered, shape: tuple[int, ...] | None, params: Mapping[str, Any],
                tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """This schedule's section of ``attncc explain`` (plain data); ``captures`` as for
        :meth:`tile_map`."""
