"""Iteration plans: which tiles of the swept index a kernel visits, and which need the mask.

A kernel of a tiled schedule owns one *row tile* (a query tile for the forward and dQ, a key
tile for dK/dV) and sweeps tiles of the other index.  A plan says which of those tiles it visits
and whether each evaluates the mask elementwise (``masked``) or is known to be mask-free
(``full``).  One plan object per kernel is made by the ``plan_iteration`` pass; the code
generator prints it (one emitter per plan kind, :mod:`attncc.codegen.plans`), and ``explain``,
the tile statistics and the tests evaluate the same object on the host (:meth:`Plan.visits`).

Plan kinds:

* :class:`SegmentPlan` (``"segments"``): the symbolic key (or query) segments of the mask
  analysis: per segment, masked edge tiles, mask-free full tiles in between, masked edge tiles;
  each segment starts at the end of the previous one, so no tile is visited twice.

Block-sparse (static and runtime block tables) and paged plans are further kinds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import sympy as sp
import torch

from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.passes.mask_analysis import KEYS, QUERIES, Direction, MaskAnalysis, Segment


@dataclass(frozen=True)
class TileVisit:
    """One visited tile: its first index along the swept dimension, and whether it is masked."""

    start: int
    masked: bool


class Plan(Protocol):
    """What every plan kind offers (see the module docstring)."""

    kind: ClassVar[str]
    direction: Direction

    @property
    def swept(self) -> str:
        """``"keys"`` or ``"queries"``: what the kernel's tile loop iterates."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """Plain-data description for ``explain`` (one entry per part of the plan)."""
        ...

    def visits(self, env: Mapping[sp.Symbol, Any], block: int,
               captures: Mapping[str, torch.Tensor] | None = None) -> list[TileVisit]:
        """The tiles visited by the row tile described by ``env``, in visiting order.

        ``env`` binds the sizes, params, ``b``, ``h`` and the row tile's bounds (``m_first`` and
        ``m_last`` for a key sweep, ``n_first``/``n_last`` for a query sweep); ``block`` is the
        tile size along the swept index.
        """
        ...


def _num(e: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor]) -> int:
    v = evaluate(e, env, captures)
    v = v.item() if isinstance(v, torch.Tensor) else v
    if isinstance(v, float) and not math.isfinite(v):
        return 2**62 if v > 0 else -(2**62)  # beyond any range; NaN cannot arise from bounds
    return int(v)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class SegmentPlan:
    """The segments of a :class:`MaskAnalysis` along ``direction`` (kind ``"segments"``)."""

    kind: ClassVar[str] = "segments"
    analysis: MaskAnalysis
    direction: Direction

    @property
    def swept(self) -> str:
        return "keys" if self.direction == KEYS else "queries"

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.analysis.segments

    def describe(self) -> list[dict[str, Any]]:
        return [{self.swept: f"[{s.lo}, {s.hi})",
                 "full": None if s.full_lo is None else f"[{s.full_lo}, {s.full_hi})",
                 "where": str(s.conjunct)} for s in self.segments]

    def visits(self, env: Mapping[sp.Symbol, Any], block: int,
               captures: Mapping[str, torch.Tensor] | None = None) -> list[TileVisit]:
        caps = captures or {}
        out: list[TileVisit] = []
        end = 0
        for seg in self.segments:
            lo = max(_num(seg.lo, env, caps) // block * block, end)
            seg_end = max(_cdiv(_num(seg.hi, env, caps), block) * block, lo)
            f0 = f1 = seg_end
            if seg.full_lo is not None and seg.full_hi is not None:
                f0 = min(max(_cdiv(_num(seg.full_lo, env, caps), block) * block, lo), seg_end)
                f1 = max(min(_num(seg.full_hi, env, caps) // block * block, seg_end), f0)
            out += [TileVisit(t, not (f0 <= t < f1)) for t in range(lo, seg_end, block)]
            end = seg_end
        return out


def segment_plan(analysis: MaskAnalysis, swept: str) -> SegmentPlan:
    """The :class:`SegmentPlan` of ``analysis``, sweeping ``"keys"`` or ``"queries"``."""
    return SegmentPlan(analysis, {"keys": KEYS, "queries": QUERIES}[swept])


def tile_env(plan: Plan, sizes: Mapping[str, int], params: Mapping[sp.Symbol, Any], first: int, last: int,
             b: int = 0, h: int = 0) -> dict[sp.Symbol, Any]:
    """``env`` for :meth:`Plan.visits`: sizes by name (``"B"``, ``"M"``, ...), param values by
    symbol, the row tile ``[first, last]`` and the batch/head indices."""
    env: dict[sp.Symbol, Any] = {E.SIZE_SYMBOLS[k]: v for k, v in sizes.items()}
    env.update(params)
    env.update({E.scale: 1.0, E.b: b, E.h: h, plan.direction.first: first, plan.direction.last: last})
    return env
