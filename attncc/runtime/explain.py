"""``attncc explain``: the cascade, the passes, the schedule and tile statistics for a shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import sympy as sp
import torch

from attncc.schedules.prefill.render import DEFAULT_CONFIGS
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.ir.build import build_cascade
from attncc.ir.evaluate import evaluate
from attncc.ir.graph import describe, sweeps_over
from attncc.passes.mask_analysis import MaskAnalysis, m_first, m_last
from attncc.spec.model import Spec


@dataclass
class TileStats:
    """Key tiles per query tile, summed over the grid, for one shape and tile config."""

    block_m: int
    block_n: int
    total: int      # every (query tile, key tile) pair
    visited: int    # pairs the kernel loads
    full: int       # visited without evaluating the mask
    partial: int    # visited with the mask evaluated elementwise
    non_empty: int | None  # pairs that hold at least one unmasked element (None: too many to count)


# Work bounds of the statistics (they mirror the kernel's loops on the CPU).
MAX_QUERY_TILES = 2**14      # beyond this many query tiles, no statistics at all
MAX_MASK_ELEMENTS = 2**28    # beyond this many (m, n) pairs, non_empty is not counted


def default_tiles(head_dim: int) -> tuple[int, int]:
    table = DEFAULT_CONFIGS["fwd"]
    for bound in sorted(table):
        if head_dim <= bound:
            return table[bound]["BLOCK_M"], table[bound]["BLOCK_N"]
    return table[max(table)]["BLOCK_M"], table[max(table)]["BLOCK_N"]


def _num(e: sp.Basic, env: dict) -> int:
    v = evaluate(e, env, {})
    v = v.item() if isinstance(v, torch.Tensor) else v
    if isinstance(v, float) and not math.isfinite(v):
        return 2**62 if v > 0 else -(2**62)  # beyond any key range; NaN cannot arise from bounds
    return int(v)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _visit(analysis: MaskAnalysis, env: dict, bn: int) -> tuple[int, int]:
    """Mirror of the kernel's segment loops: (visited, full) key tiles for one query tile."""
    visited = full = 0
    end = 0
    for seg in analysis.segments:
        lo = max(_num(seg.lo, env) // bn * bn, end)
        seg_end = max(_cdiv(_num(seg.hi, env), bn) * bn, lo)
        if seg.full_lo is not None and seg.full_hi is not None:
            f0 = min(max(_cdiv(_num(seg.full_lo, env), bn) * bn, lo), seg_end)
            f1 = max(min(_num(seg.full_hi, env) // bn * bn, seg_end), f0)
            full += (f1 - f0) // bn
        visited += (seg_end - lo) // bn
        end = seg_end
    return visited, full


def tile_stats(spec: Spec, analysis: MaskAnalysis, shape: tuple[int, ...], bm: int, bn: int,
               params: dict[str, Any] | None = None) -> TileStats | None:
    """Statistics for ``shape = (B, H, M, N, D[, E])``; None when the mask reads captured tensors
    or the shape has more than :data:`MAX_QUERY_TILES` query tiles."""
    if E.loads(spec.mask) or _cdiv(shape[2], bm) > MAX_QUERY_TILES:
        return None
    B, H, M, N, D = shape[:5]
    count_elements = M * N <= MAX_MASK_ELEMENTS
    params = params or {}
    sizes = {"B": B, "H": H, "HK": H, "M": M, "N": N, "D": D, "E": shape[5] if len(shape) > 5 else D}
    env: dict = {E.SIZE_SYMBOLS[k]: v for k, v in sizes.items()}
    env.update({p.symbol: params.get(p.name, p.default) for p in spec.params.values()})
    env[E.scale] = 1.0
    heads = B * H if {E.b, E.h} & spec.mask.free_symbols else 1
    visited = full = non_empty = 0
    n_idx = torch.arange(N).view(1, -1)
    for pid in range(_cdiv(M, bm)):
        first, last = pid * bm, min(pid * bm + bm, M) - 1
        tile_env = {**env, m_first: first, m_last: last, E.b: 0, E.h: 0}
        v, f = _visit(analysis, tile_env, bn)
        visited, full = visited + v, full + f
        if not count_elements:
            continue
        rows = {**env, E.m: torch.arange(first, last + 1).view(-1, 1), E.n: n_idx, E.b: 0, E.h: 0}
        keep = torch.as_tensor(evaluate(spec.mask, rows, {})).expand(last - first + 1, N)
        pad = torch.zeros(keep.shape[0], _cdiv(N, bn) * bn, dtype=torch.bool)
        pad[:, :N] = keep
        non_empty += int(pad.view(keep.shape[0], -1, bn).any(2).any(0).sum())
    scale = B * H if heads == 1 else 1  # b/h-dependent masks were evaluated at b = h = 0 only
    total = _cdiv(M, bm) * _cdiv(N, bn) * B * H
    return TileStats(bm, bn, total, visited * scale, full * scale, (visited - full) * scale,
                     non_empty * scale if count_elements else None)


def explain(g: nx.DiGraph, shape: tuple[int, ...] | None, params: dict[str, Any] | None = None,
            tiles: tuple[int, int] | None = None) -> dict[str, Any]:
    """Everything ``attncc explain`` prints, as data."""
    spec: Spec = g.graph["spec"]
    naive = build_cascade(spec)
    analysis: MaskAnalysis = g.graph["mask"]
    out: dict[str, Any] = {
        "spec": spec.name, "description": spec.description,
        "cascade": describe(naive),
        "passes": [{"name": r.name, "changed": r.changed, "note": r.note} for r in g.graph["applied"]],
        "passes_over_n": {"before": sweeps_over(naive, "n"), "after": sweeps_over(g, "n")},
        "lowered": describe(g),
        "schedule": {"name": g.graph["schedule"].name, "description": g.graph["schedule"].description},
        "mask": {"predicate": str(analysis.predicate), "analysis": analysis.note,
                 "segments": [{"keys": f"[{s.lo}, {s.hi})",
                               "full": None if s.full_lo is None else f"[{s.full_lo}, {s.full_hi})"}
                              for s in analysis.segments]},
    }
    if shape is not None:
        bm, bn = tiles or default_tiles(shape[4])
        try:
            st = tile_stats(spec, analysis, shape, bm, bn, params)
        except (RuntimeError, OverflowError) as exc:  # torch integer overflow on huge sizes or params
            raise InputError(f"--shape/--param: tile statistics overflow ({str(exc).splitlines()[0]})") from None
        out["shape"] = dict(zip("BHMNDE", shape, strict=False))
        if st is None:
            why = ("depends on captured tensor values" if E.loads(spec.mask)
                   else f"not computed: more than {MAX_QUERY_TILES} query tiles")
        out["tiles"] = asdict(st) if st else why
    return out


def format_explain(info: dict[str, Any]) -> str:
    lines = [f"spec: {info['spec']} — {info['description']}", "", "Einsum cascade (as written):"]
    lines += [f"  {x}" for x in info["cascade"]]
    lines += ["", "Passes:"] + [f"  {p['name']}: {p['note']}" for p in info["passes"]]
    po = info["passes_over_n"]
    lines += [f"  passes over n: {po['before']} -> {po['after']} (online softmax)", "", "Lowered cascade:"]
    lines += [f"  {x}" for x in info["lowered"]]
    lines += ["", f"Schedule: {info['schedule']['name']} — {info['schedule']['description']}", "",
              f"Mask: {info['mask']['predicate']}  ({info['mask']['analysis']})"]
    for i, s in enumerate(info["mask"]["segments"], 1):
        lines.append(f"  segment {i}: keys {s['keys']}, full tiles {s['full'] or 'none (mask evaluated)'}")
    if "tiles" in info:
        t = info["tiles"]
        lines += ["", f"Shape {info['shape']}:"]
        if isinstance(t, str):
            lines.append(f"  tiles: {t}")
        else:
            lines += [f"  tiles BLOCK_M={t['block_m']} BLOCK_N={t['block_n']}: total {t['total']}, "
                      f"visited {t['visited']} (full {t['full']}, partial {t['partial']}), "
                      f"non-empty {'not counted (M*N too large)' if t['non_empty'] is None else t['non_empty']}"]
    return "\n".join(lines)
