"""Mask analysis: derived key ranges must cover every unmasked element and skip empty tiles.

The oracle is brute force: the predicate evaluated at every (m, n) by plain Python
on small grids, independent of sympy's interval reasoning.
"""

from __future__ import annotations

import pytest
import sympy as sp

from attncc.ir import expr as E
from attncc.passes.mask_analysis import KEYS, QUERIES, analyse, monotonicity
from attncc.passes.plans import SegmentPlan
from attncc.spec.loader import resolve, softmax_library

PARAMS = {"window": 5, "prefix": 7, "sinks": 3}
HEAD = {E.h: 0, E.SIZE_SYMBOLS["H"]: 2}


def _pred_fn(spec_name: str):
    spec = resolve(spec_name)
    subs = {p.symbol: PARAMS.get(p.name, p.default) for p in spec.params.values()}
    pred = spec.mask.subs({**subs, **HEAD})  # per-head masks (longlora): head 0 of 2
    return spec, pred, sp.lambdify((E.m, E.n, E.SIZE_SYMBOLS["M"], E.SIZE_SYMBOLS["N"]), pred, "math")


MASKED_SPECS = [n for n in softmax_library() if not E.loads(resolve(n).mask)]


@pytest.mark.parametrize("name", MASKED_SPECS)
@pytest.mark.parametrize("M,N,bm,bn", [(37, 37, 8, 8), (21, 50, 16, 4), (64, 64, 16, 16)],
                         ids=["sq37-b8", "cross21x50", "sq64-b16"])
def test_visited_tiles_cover_unmasked_and_full_tiles_are_full(name: str, M: int, N: int, bm: int, bn: int) -> None:
    spec, pred, fn = _pred_fn(name)
    analysis = analyse(spec.mask, KEYS)
    env = {E.SIZE_SYMBOLS["M"]: M, E.SIZE_SYMBOLS["N"]: N, E.b: 0, **HEAD}
    env.update({p.symbol: PARAMS.get(p.name, p.default) for p in spec.params.values()})
    for m0 in range(0, M, bm):
        rows = range(m0, min(m0 + bm, M))
        tile_env = {**env, sp.Symbol("m_first", integer=True, nonnegative=True): m0,
                    sp.Symbol("m_last", integer=True, nonnegative=True): rows[-1]}
        visited = _tiles(analysis, tile_env, bn)
        for n0 in range(0, N, bn):
            cols = range(n0, min(n0 + bn, N))
            live = [bool(fn(m, n, M, N)) for m in rows for n in cols]
            if any(live):
                assert n0 in visited["all"], f"{name}: tile m0={m0} n0={n0} has unmasked keys but is skipped"
            if n0 in visited["full"]:
                assert all(live), f"{name}: tile m0={m0} n0={n0} marked full but holds masked elements"
        assert len(visited["all"]) == len(set(visited["all"])), f"{name}: a tile is visited twice"


def _tiles(analysis, env: dict, bn: int) -> dict[str, list[int]]:
    """Replay the kernel's loops and list visited / full tile starts."""
    from attncc.ir.evaluate import evaluate

    def num(e):
        return int(evaluate(e, env, {}))

    out: dict[str, list[int]] = {"all": [], "full": []}
    end = 0
    for seg in analysis.segments:
        lo = max(num(seg.lo) // bn * bn, end)
        seg_end = max(-(-num(seg.hi) // bn) * bn, lo)
        f0 = f1 = lo
        if seg.full_lo is not None:
            f0 = min(max(-(-num(seg.full_lo) // bn) * bn, lo), seg_end)
            f1 = max(min(num(seg.full_hi) // bn * bn, seg_end), f0)
        out["all"] += list(range(lo, seg_end, bn))
        out["full"] += list(range(f0, f1, bn))
        end = seg_end
    plan = SegmentPlan(analysis, KEYS).visits(env, bn)  # what explain and the tile-log tests evaluate
    visited, full = len(plan), sum(1 for t in plan if not t.masked)
    assert visited == len(out["all"]) and full == len(out["full"]), "the plan's visits disagree with the loops"
    return out


@pytest.mark.parametrize("name", ["causal", "sliding_window", "sinks_window", "prefix_lm"])
def test_transposed_ranges_cover_unmasked_queries(name: str) -> None:
    spec, pred, fn = _pred_fn(name)
    analysis = analyse(spec.mask, QUERIES)
    M = N = 40
    env = {E.SIZE_SYMBOLS["M"]: M, E.SIZE_SYMBOLS["N"]: N, E.b: 0, E.h: 0}
    env.update({p.symbol: PARAMS.get(p.name, p.default) for p in spec.params.values()})
    from attncc.ir.evaluate import evaluate

    for n0 in range(0, N, 8):
        cols = range(n0, min(n0 + 8, N))
        tenv = {**env, sp.Symbol("n_first", integer=True, nonnegative=True): n0,
                sp.Symbol("n_last", integer=True, nonnegative=True): cols[-1]}
        lo = min(int(evaluate(s.lo, tenv, {})) for s in analysis.segments)
        hi = max(int(evaluate(s.hi, tenv, {})) for s in analysis.segments)
        live_rows = [m for m in range(M) for n in cols if fn(m, n, M, N)]
        if live_rows:
            assert lo <= min(live_rows) and max(live_rows) < hi, f"{name}: key tile {n0} misses query rows"


M_FIRST = sp.Symbol("m_first", integer=True, nonnegative=True)
M_LAST = sp.Symbol("m_last", integer=True, nonnegative=True)


@pytest.mark.parametrize("M,bm,bn", [(64, 16, 16), (77, 16, 16), (33, 16, 8), (1, 16, 16)],
                         ids=["M64-b16", "M77-b16", "M33-b16x8", "M1"])
def test_causal_tiles_are_tight(M: int, bm: int, bn: int) -> None:
    """Causal visits exactly the tiles holding a key n <= m, and exactly those with n <= m everywhere are full."""
    analysis = analyse(resolve("causal").mask, KEYS)
    (seg,) = analysis.segments
    N = E.SIZE_SYMBOLS["N"]
    assert seg.lo == 0 and seg.full_lo == 0
    assert sp.simplify(seg.hi - sp.Min(N, M_LAST + 1)) == 0, f"causal visited keys end at {seg.hi}"
    assert sp.simplify(seg.full_hi - sp.Min(N, M_FIRST + 1)) == 0, f"causal full keys end at {seg.full_hi}"
    env = {N: M, E.SIZE_SYMBOLS["M"]: M, E.b: 0, E.h: 0}
    for m0 in range(0, M, bm):
        m1 = min(m0 + bm, M) - 1
        tiles = _tiles(analysis, {**env, M_FIRST: m0, M_LAST: m1}, bn)
        want_all = list(range(0, m1 + 1, bn))  # every key tile starting at or below the tile's last row
        want_full = [n0 for n0 in want_all if n0 + bn - 1 <= m0 and n0 + bn <= M]
        assert tiles["all"] == want_all, f"query tile {m0}: visits {tiles['all']}, expected {want_all}"
        assert tiles["full"] == want_full, f"query tile {m0}: full {tiles['full']}, expected {want_full}"


def test_unorderable_or_opaque_masks_fall_back_to_all_partial() -> None:
    doc = E.load("doc", E.m, integer=True)
    pred = sp.Eq(doc, E.load("doc", E.n, integer=True))
    analysis = analyse(pred, KEYS)
    (seg,) = analysis.segments
    assert seg.lo == 0 and seg.hi == E.SIZE_SYMBOLS["N"] and seg.full_lo is None


def test_monotonicity() -> None:
    W = sp.Symbol("W", integer=True)
    assert monotonicity(E.m + 1) == 1
    assert monotonicity(sp.Max(0, E.m - W)) == 1
    assert monotonicity(-E.m) == -1
    assert monotonicity(sp.floor(E.m / 64) * 64) == 1
    assert monotonicity(sp.Mod(E.m, 7)) is None
    assert monotonicity(W) == 0


# Analyses of the built-in specs as recorded before the polynomial ordering replaced the search over
# permutations: spec/direction -> (note, [(lo, hi, full_lo, full_hi), ...]).  The new ordering must keep
# them exactly (it may only be tighter where the permutation search fell back).
RECORDED: dict[str, tuple[str, list[tuple[str, str, str, str]]]] = {
    "alibi/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "alibi/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
    "causal/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "causal/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
    "cross_attention/keys": ("one interval", [
        ("0", "Min(N, IntLoad(kv_lens, b))", "0", "Min(N, IntLoad(kv_lens, b))"),
    ]),
    "cross_attention/queries": ("one interval", [("0", "M", "None", "None")]),
    "distinct_value_dim/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "distinct_value_dim/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
    "full/keys": ("no mask", [("0", "N", "0", "N")]),
    "full/queries": ("no mask", [("0", "M", "0", "M")]),
    "gqa/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "gqa/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
    "prefix_lm/keys": ("2 ordered intervals", [
        ("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)"),
        ("0", "Min(N, prefix)", "0", "Min(N, prefix)"),
    ]),
    "prefix_lm/queries": ("2 ordered intervals", [
        ("0", "M", "None", "None"),
        ("n_first", "M", "n_last", "M"),
    ]),
    "relative_bias/keys": ("no mask", [("0", "N", "0", "N")]),
    "relative_bias/queries": ("no mask", [("0", "M", "0", "M")]),
    "sinks_window/keys": ("2 ordered intervals", [
        ("0", "Min(N, sinks, m_last + 1)", "0", "Min(N, sinks, m_first + 1)"),
        ("Max(0, m_first - window + 1)", "Min(N, m_last + 1)", "Max(0, m_last - window + 1)", "Min(N, m_first + 1)"),
    ]),
    "sinks_window/queries": ("2 ordered intervals", [
        ("n_first", "M", "None", "None"),
        ("n_first", "Min(M, n_last + window)", "n_last", "Min(M, n_first + window)"),
    ]),
    "sliding_window/keys": ("one interval", [
        ("Max(0, m_first - window + 1)", "Min(N, m_last + 1)", "Max(0, m_last - window + 1)", "Min(N, m_first + 1)"),
    ]),
    "sliding_window/queries": ("one interval", [
        ("n_first", "Min(M, n_last + window)", "n_last", "Min(M, n_first + window)"),
    ]),
    "sliding_window_symmetric/keys": ("one interval", [
        ("Max(0, m_first - window)", "Min(N, m_last + window + 1)", "Max(0, m_last - window)", "Min(N, m_first + window + 1)"),
    ]),
    "sliding_window_symmetric/queries": ("one interval", [
        ("Max(0, n_first - window)", "Min(M, n_last + window + 1)", "Max(0, n_last - window)", "Min(M, n_first + window + 1)"),
    ]),
    "softcap/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "softcap/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
    "temperature/keys": ("one interval", [("0", "Min(N, m_last + 1)", "0", "Min(N, m_first + 1)")]),
    "temperature/queries": ("one interval", [("n_first", "M", "n_last", "M")]),
}


@pytest.mark.parametrize("key", [pytest.param(k, id=k.replace("/", "-")) for k in RECORDED])
def test_builtin_analyses_match_the_record(key: str) -> None:
    name, swept = key.split("/")
    analysis = analyse(resolve(name).mask, {"keys": KEYS, "queries": QUERIES}[swept])
    got = (analysis.note, [(str(s.lo), str(s.hi), str(s.full_lo), str(s.full_hi)) for s in analysis.segments])
    assert got == (RECORDED[key][0], list(RECORDED[key][1])), f"{key}: analysis changed to {got}"
