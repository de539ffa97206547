"""Bisection of the tiles that interval reasoning leaves undecided.

Interval arithmetic loses the correlation between ``m`` and ``n`` over a whole tile (a 7 x 7
neighborhood window never proves a 128 x 64 tile partial: it needs a point where the mask holds
and one where it does not).  Over smaller boxes the bounds tighten.  :func:`refine` splits each
undecided box in two along its longer side and decides the halves on intervals again, until every
tile has a witness of both values (partial), or all its boxes are proved true (full) or false
(empty).  Boxes still undecided at :data:`POINT_BOX` elements or fewer are evaluated
elementwise.  A partial tile usually settles after a few splits, so the elementwise work falls
from every element of every undecided tile to a few small boxes along the mask's boundary.

Tile summaries of captured tensors still bound every box inside the tile, so boxes reuse their
tile's summary, but as bounds only: a box need not contain the tile's minimum or maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy as sp
import torch

from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.ir.intervals import decide

POINT_BOX = 128  # boxes of at most this many elements are evaluated elementwise
BOX_BATCH = 1 << 15  # boxes decided per interval evaluation
POINT_BATCH = 1 << 13  # boxes evaluated per elementwise evaluation
Summaries = Mapping[sp.Basic, tuple[torch.Tensor, torch.Tensor]]


def refine(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
           summaries: Summaries, dims: Mapping[str, int], bm: int, bn: int,
           tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Witnesses for the tiles ``tiles [T, 4]`` (``b, h, i, j`` of tile ``(i, j)``).

    Returns ``(some_true [T], some_false [T], elements)``: whether the mask holds / fails at some
    point of each tile inside the lengths (so a tile is full iff not ``some_false``, empty iff
    not ``some_true``), and the number of elements evaluated one by one.
    """
    T = tiles.shape[0]
    some_true = torch.zeros(T, dtype=torch.bool)
    some_false = torch.zeros(T, dtype=torch.bool)
    m0, n0 = tiles[:, 2] * bm, tiles[:, 3] * bn
    boxes = torch.stack([torch.arange(T), m0, (m0 + bm).clamp(max=dims["M"]), n0,
                         (n0 + bn).clamp(max=dims["N"])], 1)  # [K, 5]: tile, m_lo, m_end, n_lo, n_end
    elements = 0
    while boxes.shape[0]:
        settled = some_true & some_false
        boxes = boxes[~settled[boxes[:, 0]]]
        size = (boxes[:, 2] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 3])
        small = size <= POINT_BOX
        points = boxes[small]
        for start in range(0, points.shape[0], POINT_BATCH):
            elements += _pointwise(pred, env, captures, tiles, points[start:start + POINT_BATCH], some_true, some_false)
        boxes = _split(boxes[~small])
        undecided = []
        for start in range(0, boxes.shape[0], BOX_BATCH):
            part = boxes[start:start + BOX_BATCH]
            t = decide(pred, {**env, **_box_env(tiles, part)}, captures, _box_summaries(summaries, tiles, part))
            k = part.shape[0]
            _mark(some_true, part[:, 0], (t.must | t.some_true).expand(k))
            _mark(some_false, part[:, 0], (~t.may | t.some_false).expand(k))
            undecided.append(part[~(t.must | ~t.may).expand(k)])
        boxes = torch.cat(undecided) if undecided else boxes[:0]
    return some_true, some_false, elements


def _split(boxes: torch.Tensor) -> torch.Tensor:
    """Each box ``[tile, m_lo, m_end, n_lo, n_end]`` cut in two halves along its longer side."""
    along_m = (boxes[:, 2] - boxes[:, 1]) >= (boxes[:, 4] - boxes[:, 3])
    lo = torch.where(along_m, boxes[:, 1], boxes[:, 3])
    end = torch.where(along_m, boxes[:, 2], boxes[:, 4])
    mid = lo + (end - lo) // 2
    first, second = boxes.clone(), boxes.clone()
    first[:, 2] = torch.where(along_m, mid, boxes[:, 2])
    first[:, 4] = torch.where(along_m, boxes[:, 4], mid)
    second[:, 1] = torch.where(along_m, mid, boxes[:, 1])
    second[:, 3] = torch.where(along_m, boxes[:, 3], mid)
    return torch.cat([first, second])


def _box_env(tiles: torch.Tensor, boxes: torch.Tensor) -> dict[sp.Symbol, Any]:
    f = boxes.to(torch.float64)
    owner = tiles[boxes[:, 0]].to(torch.float64)
    return {E.b: owner[:, 0], E.h: owner[:, 1], E.m: (f[:, 1], f[:, 2] - 1), E.n: (f[:, 3], f[:, 4] - 1)}


def _box_summaries(summaries: Summaries, tiles: torch.Tensor, boxes: torch.Tensor) -> dict[sp.Basic, Any]:
    """Each box's copy of its tile's ``(min, max)`` summaries (``[B|1, H|1, Tm|1, Tn|1]`` each)."""
    owner = tiles[boxes[:, 0]]
    out = {}
    for ld, (lo, hi) in summaries.items():
        idx = tuple(owner[:, k].clamp(max=lo.shape[k] - 1) for k in range(4))
        out[ld] = (lo[idx], hi[idx], 0)  # bounds, not attained values
    return out


def _pointwise(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
               tiles: torch.Tensor, boxes: torch.Tensor, some_true: torch.Tensor, some_false: torch.Tensor) -> int:
    """Evaluate the boxes (each at most :data:`POINT_BOX` elements) element by element, as
    ``[K, rows, cols]`` grids (``m`` varies along rows, ``n`` along columns, so a term of one
    index alone is computed once per row or column)."""
    if boxes.shape[0] == 0:
        return 0
    rows, cols = boxes[:, 2] - boxes[:, 1], boxes[:, 4] - boxes[:, 3]
    r = torch.arange(int(rows.max())).view(1, -1, 1)
    c = torch.arange(int(cols.max())).view(1, 1, -1)
    valid = (r < rows.view(-1, 1, 1)) & (c < cols.view(-1, 1, 1))
    m = boxes[:, 1].view(-1, 1, 1) + torch.minimum(r, rows.view(-1, 1, 1) - 1)
    n = boxes[:, 3].view(-1, 1, 1) + torch.minimum(c, cols.view(-1, 1, 1) - 1)
    owner = tiles[boxes[:, 0]].view(-1, 1, 1, 4)
    point_env = {**env, E.b: owner[..., 0], E.h: owner[..., 1], E.m: m, E.n: n}
    value = torch.as_tensor(evaluate(pred, point_env, captures), dtype=torch.bool).expand_as(valid)
    _mark(some_true, boxes[:, 0], (value & valid).flatten(1).any(1))
    _mark(some_false, boxes[:, 0], (~value & valid).flatten(1).any(1))
    return int(valid.sum())


def _mark(flags: torch.Tensor, owner: torch.Tensor, found: torch.Tensor) -> None:
    """``flags[t] |= found`` for the boxes of each tile ``t = owner``, in place."""
    flags |= torch.bincount(owner[found], minlength=flags.shape[0]) > 0
