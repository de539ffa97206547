"""The prefill schedule's section of ``attncc explain``: kernels, plans and tile statistics.

Tile statistics evaluate the forward kernel's iteration plan (:meth:`Plan.visits`) for every query
tile of a shape: the same plan object the kernel's loops are printed from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.passes.lowered import Lowered
from attncc.passes.plans import Plan, tile_env

if TYPE_CHECKING:
    import torch

    from attncc.schedules.base import Schedule


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


# Work bounds of the statistics (they evaluate the plan on the CPU).
MAX_QUERY_TILES = 2**14      # beyond this many query tiles, no statistics at all
MAX_MASK_ELEMENTS = 2**28    # beyond this many (m, n) pairs, non_empty is not counted


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _index_sets(mask: object, B: int, H: int) -> tuple[list[tuple[int, int]], int]:
    """The ``(b, h)`` pairs to evaluate ``mask`` at, and how many pairs each one stands for.

    Only the indices the mask reads are enumerated: a mask of ``h`` alone is evaluated once per
    head (at ``b = 0``), standing for ``B`` pairs each; a mask of neither once, standing for ``B * H``.
    """
    free = mask.free_symbols  # type: ignore[attr-defined]
    bs = range(B) if E.b in free else range(1)
    hs = range(H) if E.h in free else range(1)
    return [(b, h) for b in bs for h in hs], (B * H) // (len(bs) * len(hs))


def tile_stats(low: Lowered, plan: Plan, shape: tuple[int, ...], bm: int, bn: int,
               params: Mapping[str, Any] | None = None) -> TileStats | None:
    """Statistics of ``plan`` (a key sweep) for ``shape = (B, H, M, N, D[, E])``, summed over batch
    and heads; None when the mask reads captured tensors or more than :data:`MAX_QUERY_TILES` query
    tiles would be evaluated (query tiles times the ``(b, h)`` pairs a b/h-dependent mask needs)."""
    mask = low.mask
    B, H, M, N, D = shape[:5]
    pairs, weight = _index_sets(mask, B, H)
    if E.loads(mask) or _cdiv(M, bm) * len(pairs) > MAX_QUERY_TILES:
        return None
    count_elements = M * N * len(pairs) <= MAX_MASK_ELEMENTS
    params = params or {}
    sizes = {"B": B, "H": H, "HK": H, "M": M, "N": N, "D": D, "E": shape[5] if len(shape) > 5 else D}
    values = {p.symbol: params.get(p.name, p.default) for p in low.variant.params}
    visited = full = non_empty = 0
    for b, h in pairs:
        v, f, ne = _row_tiles(low, plan, sizes, values, bm, bn, b, h, count_elements)
        visited, full, non_empty = visited + v, full + f, non_empty + ne
    total = _cdiv(M, bm) * _cdiv(N, bn) * B * H
    return TileStats(bm, bn, total, visited * weight, full * weight, (visited - full) * weight,
                     non_empty * weight if count_elements else None)


def _row_tiles(low: Lowered, plan: Plan, sizes: Mapping[str, int], values: Mapping[Any, Any], bm: int, bn: int,
               b: int, h: int, count_elements: bool) -> tuple[int, int, int]:
    """(visited, full, non-empty) key tiles over every query tile of batch ``b``, head ``h``."""
    import torch  # the statistics need torch; explain without a shape does not

    from attncc.ir.evaluate import evaluate

    M, N = sizes["M"], sizes["N"]
    visited = full = non_empty = 0
    n_idx = torch.arange(N).view(1, -1)
    for pid in range(_cdiv(M, bm)):
        first, last = pid * bm, min(pid * bm + bm, M) - 1
        env = tile_env(plan, sizes, values, first, last, b, h)
        tiles = plan.visits(env, bn)
        visited += len(tiles)
        full += sum(1 for t in tiles if not t.masked)
        if not count_elements:
            continue
        env = {**env, E.m: torch.arange(first, last + 1).view(-1, 1), E.n: n_idx}
        keep = torch.as_tensor(evaluate(low.mask, env, {})).expand(last - first + 1, N)
        pad = torch.zeros(keep.shape[0], _cdiv(N, bn) * bn, dtype=torch.bool)
        pad[:, :N] = keep
        non_empty += int(pad.view(keep.shape[0], -1, bn).any(2).any(0).sum())
    return visited, full, non_empty


def explain_section(schedule: Schedule, low: Lowered, shape: tuple[int, ...] | None, params: Mapping[str, Any],
                    tiles: tuple[int, int] | None, captures: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``schedule``, ``plans`` and (for a shape) ``shape``/``tiles`` entries of ``attncc explain``;
    tile counts of a mask reading captured tensors need their values in ``captures``."""
    analysis = low.mask_keys
    out: dict[str, Any] = {
        "schedule": {"name": schedule.name, "description": schedule.description,
                     "kernels": [{"name": k.name, "kind": k.kind, "grid": k.grid, "plan": low.plan(k.name).kind,
                                  "sweeps": k.sweeps} for k in schedule.kernels]},
        "mask": {"predicate": str(analysis.predicate), "analysis": analysis.note,
                 "segments": [{"keys": d["keys"], "full": d["full"]} for d in low.plan("attn_fwd").describe()]},
    }
    if shape is None:
        return out
    if tiles is None:
        cfg = schedule.default_config("fwd", shape[4])
        tiles = (cfg["BLOCK_M"], cfg["BLOCK_N"])
    bm, bn = tiles
    try:
        st = tile_stats(low, low.plan("attn_fwd"), shape, bm, bn, params)
    except (RuntimeError, OverflowError) as exc:  # torch integer overflow on huge sizes or params
        raise InputError(f"--shape/--param: tile statistics overflow ({str(exc).splitlines()[0]})") from None
    out["shape"] = dict(zip("BHMNDE", shape, strict=False))
    missing = _missing_captures(low, captures)
    if schedule.prefers_block_table(low) and not missing:
        out["tiles"] = table_stats(low, shape, bm, bn, params, captures)
        return out
    if st is None:
        why = (f"depends on captured tensor values (give {', '.join(missing)} with --capture NAME=runs:LEN,...)"
               if missing
               else f"not computed: more than {MAX_QUERY_TILES} query tiles (over the batches/heads the mask reads)")
    out["tiles"] = {**asdict(st), "plan": "segments", "tiles_visited": st.visited,
                    "tiles_nonempty": st.non_empty} if st else why
    return out


def _sizes(shape: tuple[int, ...]) -> dict[str, int]:
    B, H, M, N, D = shape[:5]
    return {"B": B, "H": H, "HK": H, "M": M, "N": N, "D": D, "E": shape[5] if len(shape) > 5 else D}


def _missing_captures(low: Lowered, captures: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the captured tensors the mask reads that ``captures`` does not give."""
    return sorted({ld.tensor_name for ld in E.loads(low.mask)} - set(captures))


def table_stats(low: Lowered, shape: tuple[int, ...], bm: int, bn: int, params: Mapping[str, Any],
                captures: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Tile counts when calls build block tables at launch: the kernel visits exactly the
    non-empty tiles of the exact classification (:func:`attncc.passes.blocks.classify_tiles`)."""
    from attncc.passes.blocks import classify_tiles

    B, H = shape[:2]
    values = {p.symbol: params.get(p.name, p.default) for p in low.variant.params}
    classes = classify_tiles(low.mask, _sizes(shape), values, captures, bm, bn).expand(B, H, -1, -1)
    full, partial = int((classes == 2).sum()), int((classes == 1).sum())
    return {"block_m": bm, "block_n": bn, "total": classes.numel(), "visited": full + partial, "full": full,
            "partial": partial, "non_empty": full + partial, "plan": "block_table (built at launch)",
            "tiles_visited": full + partial, "tiles_nonempty": full + partial}


def tile_map(low: Lowered, shape: tuple[int, ...], bm: int, bn: int, params: Mapping[str, Any],
             table: bool, captures: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Classes of the forward kernel's tiles at batch 0, head 0: ``[Tm, Tn]`` int8, 0 not visited,
    1 visited with the mask, 2 visited without it (the block table's classes when ``table``)."""
    import torch

    from attncc.passes.blocks import classify_tiles

    values = {p.symbol: params.get(p.name, p.default) for p in low.variant.params}
    sizes = _sizes(shape)
    if table:
        missing = _missing_captures(low, captures)
        if missing:
            raise InputError(f"--plot: the mask reads captured tensors; give {', '.join(missing)} with "
                             "--capture NAME=runs:LEN,...")
        return classify_tiles(low.mask, {**sizes, "B": 1, "H": 1}, values, captures, bm, bn)[0, 0]
    plan = low.plan("attn_fwd")
    M, N = sizes["M"], sizes["N"]
    out = torch.zeros(_cdiv(M, bm), _cdiv(N, bn), dtype=torch.int8)
    for r in range(out.shape[0]):
        env = tile_env(plan, sizes, values, r * bm, min(r * bm + bm, M) - 1)
        for t in plan.visits(env, bn):
            out[r, t.start // bn] = 1 if t.masked else 2
    return out
