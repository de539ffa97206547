"""The context-parallel plan: which (query chunk, key chunk) pairs hold work, who sends what, and
which strategy (ring or all-gather) the cost model prefers.

The sequence of length L is cut into ``P = chunks_per_rank * world`` chunks of ``c`` positions
(:mod:`attncc.distributed.layout`).  The spec's mask, at global positions, is classified on tiles of
``gcd(c, BLOCK_M) x gcd(c, BLOCK_N)`` (:func:`attncc.passes.blocks.classify_tiles`: interval
reasoning, exact for undecided tiles); :attr:`ContextPlan.pair_tiles` ``[P, P]`` counts the non-empty
tiles of each chunk pair, summed over batch and heads.  A pair with no tile is **skipped**: never
launched, and its key chunk is not sent for it.

**Ring schedule.**  At step ``t`` rank ``r`` holds the key chunks of rank ``(r - t) % world``.  A key
chunk travels from its owner along the ring only while a later rank on the ring still needs it:
:meth:`ContextPlan.last_step` is the last step at which a rank needs it, and the chunk is sent at the
steps before that (:meth:`ContextPlan.sends`).  In the backward its dK/dV accumulator travels with
it and goes straight back to the owner from the last rank that used it.

**Cost model** (:class:`Machine`, forward pass).  Ring: each step lasts as long as the slowest rank's
compute or send (they overlap), plus a latency; all-gather: ``world - 1`` shard transfers, then each
rank's whole compute.  ``strategy="auto"`` takes the cheaper one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
import torch

from attncc.distributed.layout import check_layout, chunk_length, chunks, chunks_per_rank
from attncc.errors import InputError
from attncc.passes.blocks import EMPTY, classify_tiles

STRATEGIES = ("auto", "ring", "allgather")


@dataclass(frozen=True)
class Machine:
    """Rough device constants of the cost model (defaults: one modern GPU and its NVLink)."""

    flops_per_s: float = 400e12
    link_bytes_per_s: float = 100e9
    step_latency_s: float = 20e-6


@dataclass(frozen=True)
class ContextPlan:
    """The pairs, sends and costs of one context-parallel call (see the module docstring)."""

    layout: str
    world: int
    length: int
    chunk: int
    tile: tuple[int, int]
    pair_tiles: torch.Tensor  # [P, P] int64: non-empty tiles of (query chunk, key chunk), over batch and heads
    chunk_bytes: int  # K and V of one chunk (all batches and heads)
    head_dim: int
    machine: Machine = field(default_factory=Machine)

    @property
    def parts(self) -> int:
        return self.pair_tiles.shape[0]

    def chunks_of(self, rank: int) -> tuple[int, ...]:
        """Global chunks of ``rank`` in shard order."""
        return chunks(self.layout, self.world, rank)

    def owner(self, chunk: int) -> int:
        return next(r for r in range(self.world) if chunk in self.chunks_of(r))

    def needed(self, q_chunk: int, k_chunk: int) -> bool:
        """Whether the pair holds an unmasked element (else it is skipped)."""
        return bool(self.pair_tiles[q_chunk, k_chunk] > 0)

    def needs(self, rank: int, k_chunk: int) -> bool:
        """Whether any query chunk of ``rank`` attends to ``k_chunk``."""
        return any(self.needed(i, k_chunk) for i in self.chunks_of(rank))

    def holder(self, k_chunk: int, step: int) -> int:
        return (self.owner(k_chunk) + step) % self.world

    def last_step(self, k_chunk: int) -> int:
        """The last ring step at which a rank needs ``k_chunk`` (0: only its owner, or nobody)."""
        return max((t for t in range(self.world) if self.needs(self.holder(k_chunk, t), k_chunk)), default=0)

    def sends(self, step: int, rank: int) -> tuple[int, ...]:
        """Key chunks ``rank`` sends to ``rank + 1`` after holding them at ``step`` (shard order)."""
        source = (rank - step) % self.world
        return tuple(j for j in self.chunks_of(source) if self.last_step(j) > step)

    def held(self, step: int, rank: int) -> tuple[int, ...]:
        """Key chunks ``rank`` holds at ``step``."""
        if step == 0:
            return self.chunks_of(rank)
        return self.sends(step - 1, (rank - 1) % self.world)

    def step_tiles(self, rank: int, step: int) -> int:
        """Tiles ``rank`` computes at ring step ``step``."""
        return sum(int(self.pair_tiles[i, j]) for i in self.chunks_of(rank) for j in self.held(step, rank))

    def tiles(self, rank: int) -> int:
        return sum(self.step_tiles(rank, t) for t in range(self.world))

    def skipped_pairs(self, rank: int) -> int:
        """(query chunk, key chunk) pairs of ``rank`` that are never launched."""
        return sum(not self.needed(i, j) for i in self.chunks_of(rank) for j in range(self.parts))

    def ring_bytes(self, rank: int) -> int:
        """Forward bytes ``rank`` sends on the ring."""
        return sum(len(self.sends(t, rank)) for t in range(self.world - 1)) * self.chunk_bytes

    def allgather_bytes(self, rank: int) -> int:
        """Forward bytes ``rank`` sends in a ring all-gather of K and V."""
        return (self.world - 1) * len(self.chunks_of(rank)) * self.chunk_bytes

    def _tile_seconds(self) -> float:
        return 4.0 * self.tile[0] * self.tile[1] * self.head_dim / self.machine.flops_per_s

    def ring_seconds(self) -> float:
        """Modelled forward time of the ring."""
        mc, ts = self.machine, self._tile_seconds()
        total = 0.0
        for t in range(self.world):
            step = max(max(self.step_tiles(r, t) * ts,
                           (len(self.sends(t, r)) * self.chunk_bytes / mc.link_bytes_per_s if t < self.world - 1
                            else 0.0)) for r in range(self.world))
            total += step + (mc.step_latency_s if t < self.world - 1 else 0.0)
        return total

    def allgather_seconds(self) -> float:
        """Modelled forward time of all-gather, then local attention."""
        mc, ts = self.machine, self._tile_seconds()
        shard = len(self.chunks_of(0)) * self.chunk_bytes
        comm = (self.world - 1) * (shard / mc.link_bytes_per_s + mc.step_latency_s)
        return comm + max(self.tiles(r) for r in range(self.world)) * ts

    def choose(self, strategy: str = "auto") -> str:
        """``"ring"`` or ``"allgather"``: ``strategy`` itself, or the cheaper one for ``"auto"``."""
        if strategy not in STRATEGIES:
            raise InputError(f"strategy: expected one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if strategy != "auto":
            return strategy
        return "allgather" if self.allgather_seconds() < self.ring_seconds() else "ring"

    def describe(self) -> str:
        """The per-rank work and communication table, and the strategy the cost model chooses."""
        lines = [f"context parallelism: {self.layout} layout, {self.world} ranks, L={self.length}, "
                 f"{self.parts} chunks of {self.chunk}, tiles of {self.tile[0]}x{self.tile[1]}",
                 f"{'rank':>4} {'chunks':>10} {'tiles':>10} {'skipped pairs':>13} {'ring bytes':>12} "
                 f"{'all-gather bytes':>16}"]
        for r in range(self.world):
            lines.append(f"{r:>4} {','.join(map(str, self.chunks_of(r))):>10} {self.tiles(r):>10} "
                         f"{self.skipped_pairs(r):>13} {self.ring_bytes(r):>12} {self.allgather_bytes(r):>16}")
        work = [self.tiles(r) for r in range(self.world)]
        balance = min(work) / max(work) if max(work) else 1.0
        lines.append(f"balance (min/max tiles): {balance:.2f}; modelled forward: ring {self.ring_seconds() * 1e6:.1f} us, "
                     f"all-gather {self.allgather_seconds() * 1e6:.1f} us -> {self.choose()}")
        return "\n".join(lines)


def build_plan(mask: sp.Basic, params: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor], *,
               length: int, world: int, layout: str, batch: int, heads: int, block: tuple[int, int],
               chunk_bytes: int, head_dim: int, machine: Machine | None = None) -> ContextPlan:
    """Classify ``mask`` (a predicate at global positions: ``m``, ``n`` in ``[0, length)``) into the
    plan of ``world`` ranks.  ``params`` maps the mask's param symbols to values; ``block`` is the
    kernels' (BLOCK_M, BLOCK_N)."""
    check_layout(layout)
    if world < 1:
        raise InputError(f"world: expected a positive number of ranks; got {world}")
    c = chunk_length(length, layout, world)
    tm, tn = math.gcd(c, block[0]), math.gcd(c, block[1])
    nonempty = _nonempty_tiles(mask, params, captures, length, batch, heads, tm, tn)
    scale = (batch // nonempty.shape[0]) * (heads // nonempty.shape[1])
    P = chunks_per_rank(layout) * world
    per_pair = nonempty.sum(dim=(0, 1)).reshape(P, c // tm, P, c // tn).sum(dim=(1, 3)) * scale
    return ContextPlan(layout, world, length, c, (tm, tn), per_pair, chunk_bytes, head_dim, machine or Machine())


_CLASSES: dict[tuple, torch.Tensor] = {}  # recent classifications (plans of several world sizes share one)


def _nonempty_tiles(mask: sp.Basic, params: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
                    length: int, batch: int, heads: int, tm: int, tn: int) -> torch.Tensor:
    """``[B', H', Tm, Tn]`` int64: 1 where a tile of the mask at global positions is not empty."""
    key = (str(mask), tuple(sorted((str(k), v) for k, v in params.items())),
           tuple((n, t.data_ptr(), t._version, tuple(t.shape)) for n, t in sorted(captures.items())),
           length, batch, heads, tm, tn)
    if key not in _CLASSES:
        sizes = {"B": batch, "H": heads, "M": length, "N": length}
        classes = classify_tiles(mask, sizes, params, {n: t.cpu() for n, t in captures.items()}, tm, tn)
        if len(_CLASSES) >= 8:
            _CLASSES.pop(next(iter(_CLASSES)))
        _CLASSES[key] = (classes != EMPTY).to(torch.int64)
    return _CLASSES[key]
