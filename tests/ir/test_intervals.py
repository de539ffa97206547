"""Interval evaluation over boxes: every point's exact value lies in [lo, hi]; must/may and
some_true/some_false are sound.

The oracle is plain Python: each random expression is generated together with a Python
function computing its exact value (ints and Fractions, Python's // and %), independent of
sympy's and torch's evaluation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attncc.ir import expr as E
from attncc.ir.intervals import decide, evaluate_interval, evaluate_truth

m, n = E.m, E.n
W = E.param_symbol("w", "int")
W_VALUE = 4
DOC = [0, 0, 0, 1, 1, 2, 2, 2, 2, 5, 5, 3, 7, 7, 7, 7, 1, 1, 4, 4, 4, 0, 9, 9, 9, 9, 9, 2, 2, 2]
DOC_T = torch.tensor(DOC)
FLOAT_TAB = [0.5, -1.25, 3.0, 2.5, -0.75] * 6
FLOAT_T = torch.tensor(FLOAT_TAB, dtype=torch.float64)

Node = tuple[sp.Basic, Callable[[dict[str, int]], Any]]


def _leaf() -> st.SearchStrategy[Node]:
    return st.one_of(
        st.just((m, lambda p: p["m"])),
        st.just((n, lambda p: p["n"])),
        st.just((W, lambda p: W_VALUE)),
        st.integers(-6, 6).map(lambda c: (sp.Integer(c), lambda p, c=c: c)),
        st.sampled_from(["m", "n"]).map(lambda s: (E.load("doc", E.INDEX_SYMBOLS[s], integer=True),
                                                   lambda p, s=s: DOC[p[s]])),
    )


def _relation(a: Node, b: Node, kind: str) -> Node:
    ops = {"lt": (sp.Lt, lambda x, y: x < y), "le": (sp.Le, lambda x, y: x <= y),
           "gt": (sp.Gt, lambda x, y: x > y), "ge": (sp.Ge, lambda x, y: x >= y),
           "eq": (sp.Eq, lambda x, y: x == y), "ne": (sp.Ne, lambda x, y: x != y)}
    make, py = ops[kind]
    return make(a[0], b[0]), lambda p: py(a[1](p), b[1](p))


KINDS = ["lt", "le", "gt", "ge", "eq", "ne"]


def _combine(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    two = st.tuples(children, children)
    return st.one_of(
        two.map(lambda t: (t[0][0] + t[1][0], lambda p: t[0][1](p) + t[1][1](p))),
        two.map(lambda t: (t[0][0] - t[1][0], lambda p: t[0][1](p) - t[1][1](p))),
        two.map(lambda t: (t[0][0] * t[1][0], lambda p: t[0][1](p) * t[1][1](p))),
        st.tuples(children, st.integers(-3, 3)).map(lambda t: (t[1] * t[0][0], lambda p: t[1] * t[0][1](p))),
        st.tuples(children, st.sampled_from([1, 2, 3, 5, -2])).map(
            lambda t: (sp.floor(t[0][0] / t[1]), lambda p: t[0][1](p) // t[1])),
        st.tuples(children, st.sampled_from([(2, 3), (3, 2), (1, 4)])).map(
            lambda t: (sp.floor(t[0][0] * sp.Rational(*t[1])), lambda p: (t[0][1](p) * t[1][0]) // t[1][1])),
        st.tuples(children, st.sampled_from([2, 3, 4, 7, -3])).map(
            lambda t: (sp.Mod(t[0][0], t[1]), lambda p: t[0][1](p) % t[1])),
        two.map(lambda t: (sp.Mod(t[0][0], sp.Abs(t[1][0]) + 1), lambda p: t[0][1](p) % (abs(t[1][1](p)) + 1))),
        two.map(lambda t: (sp.floor(t[0][0] / (sp.Abs(t[1][0]) + 1)),
                           lambda p: t[0][1](p) // (abs(t[1][1](p)) + 1))),
        two.map(lambda t: (sp.Min(t[0][0], t[1][0]), lambda p: min(t[0][1](p), t[1][1](p)))),
        two.map(lambda t: (sp.Max(t[0][0], t[1][0]), lambda p: max(t[0][1](p), t[1][1](p)))),
        children.map(lambda a: (sp.Abs(a[0]), lambda p: abs(a[1](p)))),
        children.map(lambda a: (sp.sign(a[0]), lambda p: (a[1](p) > 0) - (a[1](p) < 0))),
        st.tuples(children, children, children, children, st.sampled_from(KINDS)).map(_piecewise),
    )


def _piecewise(t: tuple) -> Node:
    a, b, c, d, kind = t
    cond = _relation(c, d, kind)
    return sp.Piecewise((a[0], cond[0]), (b[0], True)), lambda p: a[1](p) if cond[1](p) else b[1](p)


INTS = st.recursive(_leaf(), _combine, max_leaves=7)


def _logic(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    two = st.tuples(children, children)
    return st.one_of(
        two.map(lambda t: (sp.And(t[0][0], t[1][0]), lambda p: t[0][1](p) and t[1][1](p))),
        two.map(lambda t: (sp.Or(t[0][0], t[1][0]), lambda p: t[0][1](p) or t[1][1](p))),
        children.map(lambda a: (sp.Not(a[0]), lambda p: not a[1](p))),
    )


ATOMS = st.tuples(INTS, INTS, st.sampled_from(KINDS)).map(lambda t: _relation(*t))
PREDS = st.recursive(ATOMS, _logic, max_leaves=4)

# boxes: 3 query ranges x 2 key ranges, widths 0..4, inside DOC
RANGES = st.lists(st.tuples(st.integers(0, 24), st.integers(0, 4)), min_size=5, max_size=5)


def _env(ranges: list[tuple[int, int]]) -> tuple[dict, list, list]:
    mr, nr = ranges[:3], ranges[3:]
    mlo = torch.tensor([float(a) for a, _ in mr]).view(-1, 1)
    mhi = torch.tensor([float(a + w) for a, w in mr]).view(-1, 1)
    nlo = torch.tensor([float(a) for a, _ in nr]).view(1, -1)
    nhi = torch.tensor([float(a + w) for a, w in nr]).view(1, -1)
    return {m: (mlo, mhi), n: (nlo, nhi), W: W_VALUE}, mr, nr


def _summaries(mr: list, nr: list) -> dict:
    """Per-box min/max of doc over each box's rows (m) and columns (n), written out by hand."""
    def mm(rs: list, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.tensor([float(min(DOC[a:a + w + 1])) for a, w in rs]).view(shape)
        hi = torch.tensor([float(max(DOC[a:a + w + 1])) for a, w in rs]).view(shape)
        return lo, hi
    return {E.load("doc", m, integer=True): mm(mr, (-1, 1)), E.load("doc", n, integer=True): mm(nr, (1, -1))}


def _points(mr: list, nr: list):
    for i, (a, wa) in enumerate(mr):
        for j, (c, wc) in enumerate(nr):
            pts = [{"m": x, "n": y} for x in range(a, a + wa + 1) for y in range(c, c + wc + 1)]
            yield i, j, pts


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(INTS, RANGES, st.booleans())
def test_integer_intervals_contain_every_value(node: Node, ranges: list, use_summaries: bool) -> None:
    expr, fn = node
    env, mr, nr = _env(ranges)
    summaries = _summaries(mr, nr) if use_summaries else {}
    lo, hi = evaluate_interval(expr, env, {"doc": DOC_T}, summaries)
    lo, hi = lo.expand(3, 2), hi.expand(3, 2)
    for i, j, pts in _points(mr, nr):
        for p in pts:
            v = fn(p)
            a, b = float(lo[i, j]), float(hi[i, j])
            assert a <= v <= b, f"{expr} at {p}: {v} outside [{a}, {b}]"


@SETTINGS
@given(PREDS, RANGES, st.booleans())
def test_truth_is_sound(node: Node, ranges: list, use_summaries: bool) -> None:
    pred, fn = node
    env, mr, nr = _env(ranges)
    summaries = _summaries(mr, nr) if use_summaries else {}
    t = decide(pred, env, {"doc": DOC_T}, summaries)
    must, may, some_true, some_false = (x.expand(3, 2) for x in (t.must, t.may, t.some_true, t.some_false))
    for i, j, pts in _points(mr, nr):
        values = [bool(fn(p)) for p in pts]
        box = f"{pred} on m{mr[i]} n{nr[j]}: {values}"
        assert not must[i, j] or all(values), f"must but false somewhere: {box}"
        assert may[i, j] or not any(values), f"not may but true somewhere: {box}"
        assert not some_true[i, j] or any(values), f"some_true but never true: {box}"
        assert not some_false[i, j] or not all(values), f"some_false but never false: {box}"


REALS = st.one_of(
    INTS.map(lambda a: (a[0] * sp.Rational(1, 3), lambda p: Fraction(a[1](p), 3))),
    INTS.map(lambda a: (a[0] / 7 + sp.Rational(1, 10), lambda p: Fraction(a[1](p), 7) + Fraction(1, 10))),
    INTS.map(lambda a: (E.load("tab", sp.Mod(a[0], 30)) * 2, lambda p: Fraction(FLOAT_TAB[a[1](p) % 30]) * 2)),
)


@SETTINGS
@given(REALS, RANGES)
def test_real_intervals_contain_every_value(node: Node, ranges: list) -> None:
    expr, fn = node
    env, mr, nr = _env(ranges)
    lo, hi = evaluate_interval(expr, env, {"doc": DOC_T, "tab": FLOAT_T}, _summaries(mr, nr))
    lo, hi = lo.expand(3, 2), hi.expand(3, 2)
    for i, j, pts in _points(mr, nr):
        for p in pts:
            v = fn(p)
            a, b = float(lo[i, j]), float(hi[i, j])
            assert a <= v <= b, f"{expr} at {p}: {v} outside [{a}, {b}]"


@pytest.mark.parametrize("expr,box,want", [
    pytest.param(sp.Mod(m, 8), (9, 14), (1, 6), id="mod-one-period"),
    pytest.param(sp.Mod(m, 8), (6, 9), (0, 7), id="mod-two-periods"),
    pytest.param(sp.Mod(m, -8), (9, 14), (-7, -2), id="mod-negative-divisor"),
    pytest.param(sp.Mod(m - 20, 8), (0, 3), (4, 7), id="mod-negative-dividend"),
    pytest.param(sp.floor(m / 16), (32, 47), (2, 2), id="floor-div-exact"),
    pytest.param(sp.Abs(m - 10), (5, 12), (0, 5), id="abs-spanning-zero"),
    pytest.param(sp.Min(m, 7) + sp.Max(m, 3), (0, 9), (3, 16), id="min-max"),
    pytest.param(m * 2**60, (0, 3), (0, float("inf")), id="beyond-2**53-is-unbounded"),
])
def test_interval_cases(expr: sp.Expr, box: tuple[int, int], want: tuple[float, float]) -> None:
    lo, hi = evaluate_interval(expr, {m: box}, {})
    assert (float(lo), float(hi)) == want, f"{expr} on m in {box}: got [{float(lo)}, {float(hi)}]"


class _BitAnd(sp.Function):
    """A function the interval evaluator does not know (stands for a bit operation)."""

    is_integer = True


@pytest.mark.parametrize("pred", [
    pytest.param(sp.Eq(_BitAnd(m, m - 1), 0), id="unknown-function"),
    pytest.param(E.score > 0, id="score"),
    pytest.param(sp.Eq(E.load("missing", m, integer=True), 1), id="missing-capture"),
])
def test_unknown_is_may_not_must(pred: sp.Basic) -> None:
    must, may = evaluate_truth(pred, {m: (0, 7)}, {})
    assert bool(may) and not bool(must), f"{pred}: must={bool(must)} may={bool(may)}"


def test_global_minmax_for_loads_not_summarised() -> None:
    lo, hi = evaluate_interval(E.load("doc", m + 1, integer=True), {m: (0, 3)}, {"doc": DOC_T})
    assert (float(lo), float(hi)) == (min(DOC), max(DOC)), f"doc[m + 1]: [{float(lo)}, {float(hi)}]"


def test_nan_in_captured_tensor_decides_nothing() -> None:
    tab = torch.tensor([1.0, float("nan"), 2.0])
    pred = E.load("tab", m) < 5
    for p in (pred, sp.Not(pred)):
        must, may = evaluate_truth(p, {m: (0, 2)}, {"tab": tab})
        assert bool(may) and not bool(must), f"{p} with NaN in tab: must={bool(must)} may={bool(may)}"


MIXED = [
    pytest.param(sp.And(n <= m, m - n < 100), lambda x, y: y <= x and x - y < 100, (0, 15), (8, 23), id="window"),
    pytest.param(sp.Abs(sp.Mod(m, 16) - sp.Mod(n, 16)) <= 3, lambda x, y: abs(x % 16 - y % 16) <= 3,
                 (0, 15), (8, 23), id="grid-column"),
    pytest.param(sp.Eq(E.load("doc", m, integer=True), E.load("doc", n, integer=True)),
                 lambda x, y: DOC[x] == DOC[y], (3, 8), (5, 8), id="document-straddling"),
]


@pytest.mark.parametrize("pred,fn,mbox,nbox", MIXED)
def test_mixed_boxes_are_known_mixed(pred: sp.Basic, fn: Callable[[int, int], bool], mbox: tuple[int, int],
                                     nbox: tuple[int, int]) -> None:
    """Boxes where these masks are true somewhere and false somewhere are known to be mixed."""
    values = {fn(x, y) for x, y in itertools.product(range(mbox[0], mbox[1] + 1), range(nbox[0], nbox[1] + 1))}
    assert values == {True, False}, f"{pred}: the box is not mixed ({values})"
    summaries = _summaries([(mbox[0], mbox[1] - mbox[0])], [(nbox[0], nbox[1] - nbox[0])])
    t = decide(pred, {m: mbox, n: nbox}, {"doc": DOC_T}, summaries)
    assert bool(t.some_true) and bool(t.some_false), f"{pred}: mixed box not recognised"


def _fdiv(a: torch.Tensor, d: int | torch.Tensor) -> torch.Tensor:
    return torch.div(a, d, rounding_mode="floor")


# (expression, the same in plain torch on integer grids, whether the hull must be exact)
STRUCTURED = [
    pytest.param(sp.Abs(m - n), lambda x, y: (x - y).abs(), True, id="abs-diff"),
    pytest.param(sp.Abs(m - n) - 2, lambda x, y: (x - y).abs() - 2, True, id="abs-diff-shifted"),
    pytest.param(sp.Mod(m - n, 4), lambda x, y: torch.remainder(x - y, 4), False, id="mod-diff"),
    pytest.param(sp.Mod(m, 5) - sp.Mod(n, 3), lambda x, y: torch.remainder(x, 5) - torch.remainder(y, 3), True,
                 id="mod-minus-mod"),
    pytest.param(sp.Mod(m, -3), lambda x, y: torch.remainder(x, -3), True, id="mod-negative"),
    pytest.param(sp.floor((m - n) / 3), lambda x, y: _fdiv(x - y, 3), True, id="floor-diff"),
    pytest.param(sp.floor(m / 3) - sp.floor(n / 2), lambda x, y: _fdiv(x, 3) - _fdiv(y, 2), True, id="grid-rows"),
    pytest.param(sp.ceiling((m + 1) / 4), lambda x, y: -_fdiv(-(x + 1), 4), True, id="ceiling"),
    pytest.param(sp.Min(m, n) - sp.Max(m - 3, 2), lambda x, y: torch.minimum(x, y) - torch.maximum(x - 3, y * 0 + 2),
                 False, id="min-max"),
    pytest.param(sp.sign(m - n - 1), lambda x, y: torch.sign(x - y - 1), True, id="sign"),
    pytest.param((m - n) ** 2 - 3, lambda x, y: (x - y) ** 2 - 3, False, id="square"),
    pytest.param(m * n - 2 * m, lambda x, y: x * y - 2 * x, False, id="product"),
    pytest.param(sp.floor(m / (n + 1)), lambda x, y: _fdiv(x, y + 1), False, id="floor-by-expression"),
    pytest.param(sp.Piecewise((m - n, m > 4), (n, True)), lambda x, y: torch.where(x > 4, x - y, y), False,
                 id="piecewise"),
]


def _windows(x: torch.Tensor, wm: int, wn: int, reduce: str) -> torch.Tensor:
    """``reduce`` of ``x`` over every [a, a + wm] x [c, c + wn] window, a, c < 7."""
    win = x.unfold(0, wm + 1, 1).unfold(1, wn + 1, 1)[:7, :7].flatten(2)
    return getattr(win, reduce)(-1) if reduce in ("amin", "amax") else getattr(win.bool(), reduce)(-1)


@pytest.mark.parametrize("expr,fn,tight", STRUCTURED)
def test_every_small_box(expr: sp.Expr, fn: Callable, tight: bool) -> None:
    """All boxes m, n in [a, a + w] (a < 7, w < 5): hulls contain (and, where marked, equal) the
    exact range, and comparisons against constants are decided soundly."""
    starts = torch.arange(7, dtype=torch.float64)
    grid = torch.arange(11)
    values = fn(grid.view(-1, 1), grid.view(1, -1)).expand(11, 11).contiguous()
    ops = {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq, "ne": torch.ne}
    for wm, wn in itertools.product(range(5), range(5)):
        env = {m: (starts.view(-1, 1), starts.view(-1, 1) + wm), n: (starts.view(1, -1), starts.view(1, -1) + wn)}
        where = f"{expr} on boxes of widths {wm + 1} x {wn + 1}"
        lo, hi = (x.expand(7, 7) for x in evaluate_interval(expr, env, {}))
        vmin, vmax = _windows(values, wm, wn, "amin"), _windows(values, wm, wn, "amax")
        assert bool((lo <= vmin).all() and (vmax <= hi).all()), f"{where}: a hull misses a value"
        if tight:
            assert torch.equal(lo, vmin.double()) and torch.equal(hi, vmax.double()), f"{where}: a hull is not exact"
        for kind, c in itertools.product(KINDS, range(-1, 3)):
            t = decide(_relation((expr, None), (sp.Integer(c), None), kind)[0], env, {})
            p = ops[kind](values, c)
            p_all, p_any = _windows(p, wm, wn, "all"), _windows(p, wm, wn, "any")
            must, may, some_true, some_false = (x.expand(7, 7) for x in (t.must, t.may, t.some_true, t.some_false))
            assert bool((~must | p_all).all() and (may | ~p_any).all()), f"{where} {kind} {c}: must/may unsound"
            assert bool((~some_true | p_any).all() and (~some_false | ~p_all).all()), f"{where} {kind} {c}: some_*"
