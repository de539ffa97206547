"""The mask analysis of the issue's sparse patterns: structure, correctness and tightness.

Each pattern is a mask written as spec text and, independently, as a plain Python predicate.
The plan of the analysis (both sweep directions) is replayed on small grids of awkward sizes
and compared with a brute-force evaluation of the Python predicate: every tile holding an
unmasked element is visited, no tile twice, every tile run without the mask is entirely
unmasked, and for the patterns the analysis bounds exactly, only non-empty key tiles are visited.
The cost of the analysis is measured by ``bench/analysis_time.py``; these tests assert the
structure (number of segments, notes), never a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import sympy as sp

from attncc.ir import expr as E
from attncc.passes.mask_analysis import KEYS, MAX_CONJUNCTS, QUERIES, MaskAnalysis, analyse, dnf_size
from attncc.passes.plans import SegmentPlan, tile_env
from attncc.spec.loader import load_text

Pred = Callable[[int, int, int, int, dict], bool]  # (b, h, m, n, params) -> kept


@dataclass(frozen=True)
class Pattern:
    mask: str
    pred: Pred
    params: dict[str, int] = field(default_factory=dict)
    keys_segments: int | None = None   # expected number of key segments (None: not checked)
    tight: bool = False                # visited key tiles == non-empty key tiles


def _or_of_distances(ds: list[int]) -> str:
    return " | ".join(f"(m - n == {d})" for d in ds)


POWER8 = [0, 1, 2, 4, 8, 16, 32, 64]
POWER18 = [0] + [2**i for i in range(17)]

PATTERNS = {
    "power-or8": Pattern(_or_of_distances(POWER8), lambda b, h, m, n, p: m - n in POWER8,
                         keys_segments=6, tight=True),
    "power-or18": Pattern(_or_of_distances(POWER18), lambda b, h, m, n, p: m - n in POWER18,
                          keys_segments=16, tight=True),
    "sinks-window": Pattern("(n <= m) & ((n < sinks) | (m - n < window))",
                            lambda b, h, m, n, p: n <= m and (n < p["sinks"] or m - n < p["window"]),
                            {"sinks": 3, "window": 9}, keys_segments=2, tight=True),
    "prefix-lm": Pattern("(n <= m) | (n < prefix)", lambda b, h, m, n, p: n <= m or n < p["prefix"],
                         {"prefix": 11}, keys_segments=2, tight=True),
    "dilated-window": Pattern("(n <= m) & (m - n < window) & ((m - n) % dilation == 0)",
                              lambda b, h, m, n, p: n <= m and m - n < p["window"] and (m - n) % p["dilation"] == 0,
                              {"window": 21, "dilation": 3}, keys_segments=1),
    "strided-window": Pattern("(n <= m) & ((m - n < window) | ((m - n) % stride == 0))",
                              lambda b, h, m, n, p: n <= m and (m - n < p["window"] or (m - n) % p["stride"] == 0),
                              {"window": 6, "stride": 16}, keys_segments=2),
    "global-window": Pattern("((n <= m) & (m - n < window)) | (n < globals) | (m < globals)",
                             lambda b, h, m, n, p: (n <= m and m - n < p["window"]) or n < p["globals"]
                             or m < p["globals"], {"window": 9, "globals": 4}, keys_segments=3),
    "band-or": Pattern("((m - n >= 0) & (m - n < 3)) | ((m - n >= 3) & (m - n < 5)) | (m - n == 5)",
                       lambda b, h, m, n, p: 0 <= m - n < 6, keys_segments=1, tight=True),
    "unordered-ranges": Pattern("(n < sinks) | ((n >= lo1) & (n < hi1)) | ((n >= lo2) & (n < hi2))",
                                lambda b, h, m, n, p: n < p["sinks"] or p["lo1"] <= n < p["hi1"]
                                or p["lo2"] <= n < p["hi2"],
                                {"sinks": 2, "lo1": 40, "hi1": 50, "lo2": 17, "hi2": 23}, keys_segments=2),
    "duplicate-bounds": Pattern("(n <= m) & (((m - n) % 3 == 0) | ((m - n) % 5 == 0))",
                                lambda b, h, m, n, p: n <= m and ((m - n) % 3 == 0 or (m - n) % 5 == 0),
                                keys_segments=1),
    "per-head-window": Pattern("(n <= m) & (m - n < window * (h + 1))",
                               lambda b, h, m, n, p: n <= m and m - n < p["window"] * (h + 1),
                               {"window": 7}, keys_segments=1, tight=True),
    "shifted-groups": Pattern("((m + shift * h) // group) == ((n + shift * h) // group)",
                              lambda b, h, m, n, p: (m + p["shift"] * h) // p["group"] == (n + p["shift"] * h) // p["group"],
                              {"shift": 4, "group": 8}, keys_segments=1),
}


def spec_text(mask: str, params: dict[str, int], name: str = "pattern") -> str:
    """A spec with ``mask`` and integer ``params`` (their values as defaults)."""
    decl = "".join(f'{k} = {{ type = "int", default = {v} }}\n' for k, v in params.items())
    return (f'name = "{name}"\n[inputs]\nq = "b h m d"\nk = "b h n d"\nv = "b h n e"\n'
            f"[params]\n{decl}[cascade]\nscore = \"q[b,h,m,d] * k[b,h,n,d] * scale\"\nmodify = \"score\"\n"
            f'mask = "{mask}"\nnormalize = "softmax(n)"\noutput = "p[b,h,m,n] * v[b,h,n,e]"\n')


def _mask(pat: Pattern) -> tuple[sp.Basic, dict[sp.Symbol, int]]:
    spec = load_text(spec_text(pat.mask, pat.params))
    return spec.mask, {p.symbol: pat.params[p.name] for p in spec.params.values()}


def check_plan(analysis: MaskAnalysis, pat: Pattern, values: dict[sp.Symbol, int], swept: str,
               M: int, N: int, br: int, bc: int, H: int = 1) -> tuple[int, int]:
    """Replay the plan per row tile against brute force; (visited, non-empty) tile counts."""
    direction = KEYS if swept == "keys" else QUERIES
    plan = SegmentPlan(analysis, direction)
    rows_n, cols_n = (M, N) if swept == "keys" else (N, M)
    sizes = {"B": 1, "H": H, "HK": H, "M": M, "N": N, "D": 16, "E": 16}

    def kept(h: int, r: int, c: int) -> bool:
        m, n = (r, c) if swept == "keys" else (c, r)
        return bool(pat.pred(0, h, m, n, pat.params))

    visited_total = non_empty_total = 0
    for h in range(H):
        for r0 in range(0, rows_n, br):
            rows = range(r0, min(r0 + br, rows_n))
            visits = plan.visits(tile_env(plan, sizes, values, r0, rows[-1], 0, h), bc)
            starts = [t.start for t in visits]
            where = f"{pat.mask!r} {swept} h={h} row tile {r0}"
            assert len(starts) == len(set(starts)), f"{where}: a tile is visited twice: {starts}"
            assert all(0 <= s < cols_n and s % bc == 0 for s in starts), f"{where}: tile outside the grid: {starts}"
            live = {c0 for c0 in range(0, cols_n, bc)
                    if any(kept(h, r, c) for r in rows for c in range(c0, min(c0 + bc, cols_n)))}
            missed = live - set(starts)
            assert not missed, f"{where}: non-empty tiles {sorted(missed)} are not visited"
            for t in visits:
                if not t.masked:
                    cols = range(t.start, min(t.start + bc, cols_n))
                    assert all(kept(h, r, c) for r in rows for c in cols), f"{where}: tile {t.start} run " \
                        "without the mask holds masked elements"
            if pat.tight and swept == "keys":
                assert set(starts) == live, f"{where}: visits empty tiles {sorted(set(starts) - live)}"
            visited_total += len(starts)
            non_empty_total += len(live)
    return visited_total, non_empty_total


GRIDS = [pytest.param(77, 77, 16, 16, id="sq77-b16"), pytest.param(63, 90, 8, 16, id="63x90-b8x16"),
         pytest.param(1, 501, 16, 32, id="M1-N501"), pytest.param(40, 40, 1, 1, id="sq40-b1")]


@pytest.mark.parametrize("name", [pytest.param(k, id=k) for k in PATTERNS])
@pytest.mark.parametrize("M,N,bm,bn", GRIDS)
def test_pattern_plans_cover_the_mask(name: str, M: int, N: int, bm: int, bn: int) -> None:
    pat = PATTERNS[name]
    mask, values = _mask(pat)
    heads = 2 if "h" in {s.name for s in mask.free_symbols} else 1
    keys, queries = analyse(mask, KEYS), analyse(mask, QUERIES)
    check_plan(keys, pat, values, "keys", M, N, bm, bn, heads)
    check_plan(queries, pat, values, "queries", M, N, bn, bm, heads)


@pytest.mark.parametrize("name", [pytest.param(k, id=k) for k, p in PATTERNS.items() if p.keys_segments])
def test_pattern_structure(name: str) -> None:
    pat = PATTERNS[name]
    analysis = analyse(_mask(pat)[0], KEYS)
    assert not analysis.note.startswith("elementwise"), f"{name}: {analysis.note}"
    assert len(analysis.segments) == pat.keys_segments, \
        f"{name}: {len(analysis.segments)} key segments ({analysis.note}), expected {pat.keys_segments}"


def test_or_of_equalities_gives_tile_wide_segments() -> None:
    """``n == m - c`` visits the row tile's extent shifted by c: at most two key tiles per segment."""
    analysis = analyse(_mask(PATTERNS["power-or8"])[0], KEYS)
    assert "2 merged with an adjacent interval" in analysis.note, analysis.note
    m_first, m_last = KEYS.first, KEYS.last
    N = E.SIZE_SYMBOLS["N"]
    by_lo = {str(s.lo): s for s in analysis.segments}
    for c in (4, 8, 16, 32, 64):
        seg = by_lo[str(sp.Max(0, m_first - c))]
        assert seg.hi == sp.Min(N, m_last - c + 1), f"distance {c}: visited keys end at {seg.hi}"
        assert seg.full_lo == sp.Max(0, m_last - c) and seg.full_hi == sp.Min(N, m_first - c + 1), \
            f"distance {c}: full range [{seg.full_lo}, {seg.full_hi})"
    merged = by_lo[str(sp.Max(0, m_first - 2))]  # distances 0, 1, 2 are one band
    assert merged.hi == sp.Min(N, m_last + 1) and merged.full_lo == sp.Max(0, m_last - 2), \
        f"band [{merged.lo}, {merged.hi}) full [{merged.full_lo}, {merged.full_hi})"
    los = [s.lo.subs({m_first: 1000, m_last: 1015}) for s in analysis.segments]
    assert los == sorted(los), f"segments are not ordered by their first key: {los}"


def test_dnf_size_bound_falls_back_cleanly() -> None:
    """An AND of 7 two-way ORs has 128 conjuncts: more than the bound, so one elementwise segment."""
    text = " & ".join(f"((n < window + {i}) | (m - n > sinks + {i}))" for i in range(7))
    pat = Pattern(text, lambda b, h, m, n, p: all(n < p["window"] + i or m - n > p["sinks"] + i for i in range(7)),
                  {"window": 30, "sinks": 5})
    mask, values = _mask(pat)
    analysis = analyse(mask, KEYS)
    assert analysis.note == f"elementwise: DNF of more than {MAX_CONJUNCTS} conjuncts", analysis.note
    (seg,) = analysis.segments
    assert seg.lo == 0 and seg.hi == E.SIZE_SYMBOLS["N"] and seg.full_lo is None
    check_plan(analysis, pat, values, "keys", 40, 40, 8, 8)


def test_unordered_ranges_become_one_union() -> None:
    """Ranges with unrelated parameter bounds cannot be ordered: one segment covers their union."""
    pat = PATTERNS["unordered-ranges"]
    analysis = analyse(_mask(pat)[0], KEYS)
    assert "union of 2 unordered intervals" in analysis.note, analysis.note
    first, union = analysis.segments
    assert first.lo == 0 and union.full_lo is not None, "the union keeps one member's full range"
    for lo1, lo2 in ((40, 17), (17, 40), (20, 20)):  # either order of the two ranges at run time
        params = {**pat.params, "lo1": lo1, "hi1": lo1 + 10, "lo2": lo2, "hi2": lo2 + 6}
        swapped = Pattern(pat.mask, pat.pred, params)
        mask, values = _mask(swapped)
        check_plan(analysis, swapped, values, "keys", 64, 64, 8, 8)


_ATOMS = {s: sp.Symbol(s) > 0 for s in "abcde"}
_A, _B, _C, _D, _E = (_ATOMS[s] for s in "abcde")


@pytest.mark.parametrize(("formula", "pred"), [
    pytest.param("And(Or(a, b), Or(c, d, e))", sp.And(sp.Or(_A, _B), sp.Or(_C, _D, _E)), id="and-of-ors"),
    pytest.param("Not(And(Or(a, b), Or(c, d)))", sp.Not(sp.And(sp.Or(_A, _B), sp.Or(_C, _D))), id="negated"),
    pytest.param("Or(And(a, Or(b, c)), Not(Or(d, And(e, a))))",
                 sp.Or(sp.And(_A, sp.Or(_B, _C)), sp.Not(sp.Or(_D, sp.And(_E, _A)))), id="nested"),
])
def test_dnf_size_counts_the_conjuncts_before_expanding(formula: str, pred: sp.Basic) -> None:
    expanded = sp.to_dnf(pred, simplify=False)
    want = len(expanded.args) if isinstance(expanded, sp.Or) else 1
    assert dnf_size(pred, 1000) == want, f"{formula}: counted {dnf_size(pred, 1000)}, DNF has {want}"
    assert dnf_size(pred, want - 1) == want, f"{formula}: the count stops just above the limit"
