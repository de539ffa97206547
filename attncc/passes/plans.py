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
* :class:`BlockTablePlan` (``"block_table"``): lists of non-empty blocks per row block, given to
  the kernel at launch (FlexAttention's BlockMask layout: partial blocks, which evaluate the mask,
  and full blocks, which do not); built from the mask by interval reasoning on tile summaries,
  or supplied by the caller (data-dependent sparsity).  A table block may span several kernel
  tiles (block sizes are multiples of the tile sizes).

* :class:`ChunkPlan` (``"chunks"``): linear recurrences.  The tokens of each sequence in order
  (reversed for the anti-causal half of a bidirectional spec), ``block`` at a time (a chunk of
  the chunkwise kernels, one token of the recurrent kernel), the state carried between them.
* :class:`PagePlan` (``"pages"``): decode.  The key segments of the mask analysis for the rows
  of one sequence's last ``Lq`` positions (``m_first = L - Lq``, ``m_last = L - 1``, ``M = N = L``),
  hulled over the query heads of a GQA group; each segment is one unit of stream-K work, its
  tiles read through a page table.  The segment bounds are computed per (sequence, key/value
  head) by a small kernel at launch; the decode kernel visits the tiles of the units its
  program owns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import sympy as sp

from attncc.ir import expr as E
from attncc.passes.mask_analysis import KEYS, QUERIES, Direction, MaskAnalysis, Segment

if TYPE_CHECKING:
    import torch


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
               captures: Mapping[str, torch.Tensor] | None = None,
               tables: Mapping[str, Any] | None = None) -> list[TileVisit]:
        """The tiles visited by the row tile described by ``env``, in visiting order.

        ``env`` binds the sizes, params, ``b``, ``h`` and the row tile's bounds (``m_first`` and
        ``m_last`` for a key sweep, ``n_first``/``n_last`` for a query sweep); ``block`` is the
        tile size along the swept index; ``tables`` the block tables of a ``block_table`` plan.
        """
        ...


def _num(e: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor]) -> int:
    import torch  # evaluated on the host only: explain without a shape does not need torch

    from attncc.ir.evaluate import evaluate

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
               captures: Mapping[str, torch.Tensor] | None = None,
               tables: Mapping[str, Any] | None = None) -> list[TileVisit]:
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


# Names of a plan's tables in FlexAttention's BlockMask layout, by swept index: partial blocks
# (count per row block, indices) and full blocks.
TABLE_NAMES: dict[str, tuple[str, str, str, str]] = {
    "keys": ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"),
    "queries": ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"),
}


@dataclass(frozen=True)
class BlockTablePlan:
    """Block lists per row block, read at launch (kind ``"block_table"``).

    For a key sweep the tables are ``kv_num_blocks [B, H, Tm]``, ``kv_indices [B, H, Tm, Tn]``
    and their ``full_`` counterparts, with query blocks of ``block_m`` rows and key blocks of
    ``block_n`` keys (``tables["block_m"]``, ``tables["block_n"]``); a query sweep reads the
    transposed ``q_*`` lists.  B and H may be 1 (broadcast).  Partial blocks are visited first,
    then full ones; the tiles of a full block past the last whole tile of the swept length run
    with the mask (bounds checks) on.
    """

    kind: ClassVar[str] = "block_table"
    direction: Direction

    @property
    def swept(self) -> str:
        return "keys" if self.direction == KEYS else "queries"

    @property
    def tables(self) -> tuple[str, str, str, str]:
        return TABLE_NAMES[self.swept]

    def describe(self) -> list[dict[str, Any]]:
        return [{self.swept: f"blocks listed in {self.tables[1]} (partial) and {self.tables[3]} (full)",
                 "full": f"blocks of {self.tables[3]}", "where": "block table given at launch"}]

    def visits(self, env: Mapping[sp.Symbol, Any], block: int,
               captures: Mapping[str, torch.Tensor] | None = None,
               tables: Mapping[str, Any] | None = None) -> list[TileVisit]:
        if tables is None:
            raise ValueError("a block_table plan needs the block tables to list its visits")
        d = self.direction
        row_block, col_block = ((tables["block_m"], tables["block_n"]) if self.swept == "keys"
                                else (tables["block_n"], tables["block_m"]))
        extent = int(env[d.size])
        row = int(env[d.first]) // row_block
        b, h = int(env.get(E.b, 0)), int(env.get(E.h, 0))
        whole = extent // block * block
        out: list[TileVisit] = []
        for names, full in ((self.tables[:2], False), (self.tables[2:], True)):
            num, idx = (tables[n] for n in names)
            if num is None:
                continue
            nb, hb = min(b, num.shape[0] - 1), min(h, num.shape[1] - 1)
            for j in range(int(num[nb, hb, row])):
                lo = int(idx[nb, hb, row, j]) * col_block
                for t in range(lo, min(lo + col_block, extent), block):
                    out.append(TileVisit(t, not (full and t + block <= whole)))
        return out


@dataclass(frozen=True)
class PagePlan:
    """Key segments of a decode call's rows, one stream-K unit each (kind ``"pages"``)."""

    kind: ClassVar[str] = "pages"
    keys: SegmentPlan
    direction: Direction = KEYS

    @property
    def swept(self) -> str:
        return "keys"

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.keys.segments

    def describe(self) -> list[dict[str, Any]]:
        return [{**d, "unit": f"stream-K unit {i} of each (sequence, key/value head)"}
                for i, d in enumerate(self.keys.describe())]

    def visits(self, env: Mapping[sp.Symbol, Any], block: int,
               captures: Mapping[str, torch.Tensor] | None = None,
               tables: Mapping[str, Any] | None = None) -> list[TileVisit]:
        """As the segments' (``env``: ``m_first = L - Lq``, ``m_last = L - 1``, ``M = N = L``)."""
        return self.keys.visits(env, block, captures)

    def units(self, envs: list[Mapping[sp.Symbol, Any]], block: int,
              captures: Mapping[str, torch.Tensor] | None = None) -> list[tuple[int, int, int, int]]:
        """``(lo, end, full_lo, full_hi)`` key positions of each segment's unit for one (sequence,
        key/value head): ``envs`` binds each query head of the group (``h``, sizes, ``m_first``,
        ``m_last``, ``N = L``); the host mirror of the ``attn_decode_units`` kernel (segments hulled
        over the heads, each starting where the previous ended, mask-free keys at or before
        ``m_first``)."""
        caps = captures or {}
        first = envs[0]
        n = int(first[E.SIZE_SYMBOLS["N"]])
        kv_end = _cdiv(n, block) * block
        causal_full = (int(first[self.direction.first]) + 1) // block * block
        out, end = [], 0
        for seg in self.segments:
            lo = min(_num(seg.lo, e, caps) for e in envs)
            hi = max(_num(seg.hi, e, caps) for e in envs)
            seg_lo = min(max(lo // block * block, end), kv_end)
            seg_end = max(min(_cdiv(hi, block) * block, kv_end), seg_lo)
            f0 = f1 = seg_lo
            if seg.full_lo is not None and seg.full_hi is not None:
                f_lo = max(_num(seg.full_lo, e, caps) for e in envs)
                f_hi = min(_num(seg.full_hi, e, caps) for e in envs)
                f0 = min(max(_cdiv(f_lo, block) * block, seg_lo), seg_end)
                f1 = max(min(f_hi // block * block, seg_end, causal_full), f0)
            out.append((seg_lo, seg_end, f0, f1))
            end = seg_end
        return out


@dataclass(frozen=True)
class ChunkPlan:
    """Tokens swept in order, a chunk at a time, carrying a recurrence's state (kind ``"chunks"``)."""

    kind: ClassVar[str] = "chunks"
    length: sp.Symbol  # the sequence length symbol (T)
    reverse: bool = False
    direction: Direction = KEYS

    @property
    def swept(self) -> str:
        return "tokens"

    def describe(self) -> list[dict[str, Any]]:
        order = "last to first" if self.reverse else "first to last"
        return [{"tokens": f"[0, {self.length}) {order}, a chunk at a time", "full": None,
                 "where": "the state is carried between chunks (fp32)"}]

    def visits(self, env: Mapping[sp.Symbol, Any], block: int,
               captures: Mapping[str, torch.Tensor] | None = None,
               tables: Mapping[str, Any] | None = None) -> list[TileVisit]:
        """The chunk starts, in visiting order (the last chunk masked when ``block`` does not divide T)."""
        T = int(env[self.length])
        starts = list(range(0, T, block))
        out = [TileVisit(s, s + block > T) for s in starts]
        return out[::-1] if self.reverse else out


def block_table_plan(swept: str) -> BlockTablePlan:
    return BlockTablePlan({"keys": KEYS, "queries": QUERIES}[swept])


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
