"""Interval evaluation of IR expressions over a batch of boxes (vectorised torch).

A *box* gives every symbol a range: ``env`` maps a symbol to a pair ``(lo, hi)`` of
broadcastable tensors (or numbers), the symbol taking every value in ``[lo, hi]``
(every integer, for an integer symbol), independently of the other symbols; a single
number or tensor is an exact value.  Symbols missing from ``env`` (``score``, ...) may
take any value.  One call evaluates all boxes at once: the results broadcast like the
``env`` tensors.

* :func:`evaluate_interval` returns ``(lo, hi)`` (float64): at every point of a box the
  exact value lies in ``[lo, hi]``.
* :func:`evaluate_truth` returns ``(must, may)`` (bool): ``must`` only where the predicate
  holds at every point of the box, ``may`` wherever it might hold at some point.
* :func:`decide` adds ``some_true`` / ``some_false``: set only where a point of the box is
  known to make the predicate true / false.  A box with ``some_true & some_false`` is
  known to be mixed without evaluating any point.

For the last, intervals of integer expressions carry a *level*: 1 when both ends are
values taken at some point of the box, 2 when moreover every integer in between is.
Levels follow from the structure (a sum of terms over disjoint symbols keeps the least
level of its terms, ``floor(x / 4)`` keeps the level of ``x``, ...) and are 0 for every
expression that is not integer-valued.

Captured tensors: a load whose key is in ``summaries`` (a mapping from the ``E.Load``
expression to its ``(lo, hi)`` per box, which must be the minimum and maximum of the
tensor over the box's elements) uses it; any other load gets the tensor's global
``[min, max]``.  Anything not understood (functions outside the list below, bit
operations) gives the widest interval, and ``may=True, must=False`` for predicates.
Understood: numbers, symbols, ``Add``, ``Mul``, ``Pow``, ``floor``, ``ceiling``, ``Mod``,
``Min``, ``Max``, ``Abs``, ``sign``, ``Heaviside``, ``exp``, ``log``, ``tanh``,
``Piecewise``, relationals, ``And``, ``Or``, ``Not`` and loads.  Non-integer arithmetic
is rounded outwards; integer bounds from 2**53 on (where float64 is no longer exact)
become infinite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch

from attncc.ir import expr as E

Pair = tuple[torch.Tensor, torch.Tensor]
INF = float("inf")
_BOOLEAN = (sp.logic.boolalg.BooleanAtom, sp.core.relational.Relational, sp.logic.boolalg.BooleanFunction)
EXACT_LIMIT = float(2**53)  # float64 holds every integer up to here


@dataclass(frozen=True)
class Interval:
    """``[lo, hi]`` per box; ``level`` (int8, per box) as in the module docstring; ``vars``:
    the box symbols (those given as pairs) the expression depends on."""

    lo: torch.Tensor
    hi: torch.Tensor
    level: torch.Tensor
    vars: frozenset[sp.Symbol]


@dataclass(frozen=True)
class Truth:
    """Per box: ``must`` (true everywhere), ``may`` (true somewhere, conservatively),
    ``some_true`` / ``some_false`` (a point is known where it is true / false)."""

    must: torch.Tensor
    may: torch.Tensor
    some_true: torch.Tensor
    some_false: torch.Tensor


def _b(x: bool) -> torch.Tensor:
    return torch.tensor(bool(x))


UNKNOWN = Truth(_b(False), _b(True), _b(False), _b(False))


def _f(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64)
    return torch.tensor(x, dtype=torch.float64)  # never through float32


def _lvl(x: int) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int8)


def widest(vars_: frozenset[sp.Symbol] = frozenset()) -> Interval:
    """The interval of a value known nothing about."""
    return Interval(_f(-INF), _f(INF), _lvl(0), vars_)


def _finish(e: sp.Basic, lo: torch.Tensor, hi: torch.Tensor, level: torch.Tensor | int,
            vars_: frozenset[sp.Symbol]) -> Interval:
    """Normalise one result: NaN ends widen, non-integer results round outwards and have
    level 0, integer ends from 2**53 on become infinite, infinite ends have level 0."""
    level = torch.as_tensor(level, dtype=torch.int8)
    integer = _integer(e)
    if integer and (lo.numel() == 0 or (float(lo.min()) > -EXACT_LIMIT and float(hi.max()) < EXACT_LIMIT)):
        return Interval(lo, hi, level, vars_)  # every end finite and exact (the common case)
    lo = torch.nan_to_num(lo, nan=-INF, posinf=INF, neginf=-INF)
    hi = torch.nan_to_num(hi, nan=INF, posinf=INF, neginf=-INF)
    if integer:
        lo = torch.where(lo <= -EXACT_LIMIT, -INF, lo)
        hi = torch.where(hi >= EXACT_LIMIT, INF, hi)
    else:
        lo, hi, level = torch.nextafter(lo, _f(-INF)), torch.nextafter(hi, _f(INF)), _lvl(0)
    level = torch.where(torch.isfinite(lo) & torch.isfinite(hi), level, _lvl(0))
    return Interval(lo, hi, level, vars_)


@functools.lru_cache(maxsize=4096)
def _integer(e: sp.Basic) -> bool:
    return E.integer_valued(e)


@functools.lru_cache(maxsize=4096)
def _difference(lhs: sp.Basic, rhs: sp.Basic) -> sp.Basic:
    return sp.Add(lhs, -rhs)


@functools.lru_cache(maxsize=4096)
def _fraction(arg: sp.Basic) -> tuple[sp.Basic, sp.Basic]:
    return sp.fraction(sp.together(arg))


def _disjoint(parts: list[Interval]) -> bool:
    seen: set[sp.Symbol] = set()
    for p in parts:
        if seen & p.vars:
            return False
        seen |= p.vars
    return True


def _union(parts: list[Interval]) -> frozenset[sp.Symbol]:
    return frozenset().union(*(p.vars for p in parts))


def _least(parts: list[Interval]) -> torch.Tensor:
    out = parts[0].level
    for p in parts[1:]:
        out = torch.minimum(out, p.level)
    return out


def _corners(a: Interval, b: Interval, op: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of ``op`` over the four corners (NaN corners, such as 0 * inf, become 0)."""
    vals = [op(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    vals = [torch.nan_to_num(v, nan=0.0, posinf=INF, neginf=-INF) for v in vals]
    lo, hi = vals[0], vals[0]
    for v in vals[1:]:
        lo, hi = torch.minimum(lo, v), torch.maximum(hi, v)
    return lo, hi


class _Intervals:
    """One evaluation: memoised per sub-expression."""

    def __init__(self, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
                 summaries: Mapping[sp.Basic, Pair]) -> None:
        self.env = env
        self.captures = captures
        self.summaries = summaries
        self.memo: dict[sp.Basic, Any] = {}
        self.varying = frozenset(s for s, v in env.items() if isinstance(v, tuple))

    # --- numbers ----------------------------------------------------------------------------
    def interval(self, e: sp.Basic) -> Interval:
        if e not in self.memo:
            self.memo[e] = self._interval(e)
        return self.memo[e]

    def _interval(self, e: sp.Basic) -> Interval:
        if isinstance(e, sp.Symbol):
            return self._symbol(e)
        if isinstance(e, (sp.Number, sp.NumberSymbol)):
            if e.is_comparable and not isinstance(e, sp.core.numbers.NaN):
                v = _f(float(e))
                return _finish(e, v, v, 2, frozenset())
            return widest()
        if isinstance(e, E.Load):
            return self._load(e)
        method = getattr(self, f"_{type(e).__name__}", None)
        if method is None or isinstance(e, _BOOLEAN):
            return widest(frozenset(e.free_symbols) & self.varying)
        return method(e)

    def _symbol(self, s: sp.Symbol) -> Interval:
        if s not in self.env:
            return widest()
        v = self.env[s]
        integer = bool(s.is_integer)
        if isinstance(v, tuple):
            lo, hi = _f(v[0]), _f(v[1])
            if integer:
                lo, hi = torch.ceil(lo), torch.floor(hi)
            return _finish(s, lo, hi, 2 if integer else 0, frozenset({s}))
        x = _f(v)
        return _finish(s, x, x, 2, frozenset())

    def _load(self, e: E.Load) -> Interval:
        vars_ = frozenset().union(*(i.free_symbols for i in e.indices)) & self.varying
        integer = bool(e.is_integer)
        if e in self.summaries:  # (min, max) attained in each box, or (lo, hi, 0): bounds only
            lo, hi, *attained = self.summaries[e]
            level = 1 if integer and (not attained or attained[0]) else 0
            return _finish(e, _f(lo), _f(hi), level, vars_)
        t = self.captures.get(e.tensor_name)
        if t is None or t.numel() == 0:
            return widest(vars_)
        key = ("global", e.tensor_name)
        if key not in self.memo:
            td = t.detach().to(torch.float64)
            self.memo[key] = (td.min(), td.max()) if not torch.isnan(td).any() else (_f(-INF), _f(INF))
        lo, hi = self.memo[key]
        return _finish(e, lo, hi, 0, vars_)

    def _Add(self, e: sp.Add) -> Interval:
        parts = [self.interval(a) for a in e.args]
        lo, hi = parts[0].lo, parts[0].hi
        for p in parts[1:]:
            lo, hi = lo + p.lo, hi + p.hi
        return _finish(e, lo, hi, _least(parts) if _disjoint(parts) else 0, _union(parts))

    def _Mul(self, e: sp.Mul) -> Interval:
        coeff, rest = e.as_coeff_Mul()
        if coeff != 1:
            x = self.interval(rest)
            num, den = (float(coeff.p), float(coeff.q)) if coeff.is_Rational else (float(coeff), 1.0)
            lo, hi = x.lo * num / den, x.hi * num / den  # integer products exact, one rounding
            if coeff < 0:
                lo, hi = hi, lo
            level = x.level if abs(coeff) == 1 else torch.minimum(x.level, _lvl(1))
            return _finish(e, lo, hi, level, x.vars)
        parts = [self.interval(a) for a in e.args]
        acc = parts[0]
        for p in parts[1:]:
            lo, hi = _corners(acc, p, torch.mul)
            level = torch.minimum(_least([acc, p]), _lvl(1)) if _disjoint([acc, p]) else _lvl(0)
            acc = Interval(lo, hi, level, acc.vars | p.vars)
        return _finish(e, acc.lo, acc.hi, acc.level, acc.vars)

    def _Pow(self, e: sp.Pow) -> Interval:
        base, ex = self.interval(e.base), e.exp
        vars_ = base.vars | (frozenset(ex.free_symbols) & self.varying)
        if ex.is_Integer and int(ex) >= 0:
            k = int(ex)
            if k % 2 == 0:
                a = self._abs_of(base)
                return _finish(e, a.lo ** k, a.hi ** k, torch.minimum(a.level, _lvl(1)), vars_)
            return _finish(e, base.lo ** k, base.hi ** k, torch.minimum(base.level, _lvl(1)), vars_)
        if ex.is_number and ex.is_real:  # monotone on each side of 0: the ends' images bound it
            p = float(ex)
            if ex.is_Integer:  # a negative integer power: defined away from 0
                ok = (base.lo > 0) | (base.hi < 0)
            else:
                ok = base.lo > 0 if p < 0 else base.lo >= 0
            lo, hi = _corners(base, base, lambda x, _y: x ** p)
            return _finish(e, torch.where(ok, lo, -INF), torch.where(ok, hi, INF), 0, vars_)
        if e.base.is_number and e.base.is_positive:
            x, bv = self.interval(ex), float(e.base)
            lo, hi = (bv ** x.lo, bv ** x.hi) if bv >= 1 else (bv ** x.hi, bv ** x.lo)
            return _finish(e, lo, hi, 0, vars_)
        return widest(vars_)

    def _floor(self, e: sp.floor) -> Interval:
        return self._rounded(e, rounding_up=False)

    def _ceiling(self, e: sp.ceiling) -> Interval:
        return self._rounded(e, rounding_up=True)

    def _rounded(self, e: sp.Basic, rounding_up: bool) -> Interval:
        arg = e.args[0]
        num, den = _fraction(arg)
        if num.is_integer and den.is_integer and den != 1:
            a, d = self.interval(num), self.interval(den)
            if rounding_up:  # ceil(a / d) = -floor(-a / d)
                a = Interval(-a.hi, -a.lo, a.level, a.vars)
            lo, hi = _corners(a, d, lambda x, y: torch.div(x, y, rounding_mode="floor"))
            ok = (d.lo > 0) | (d.hi < 0)
            level = torch.where((d.lo == d.hi) & (d.lo > 0), a.level, _lvl(0))
            lo, hi = torch.where(ok, lo, -INF), torch.where(ok, hi, INF)
            if rounding_up:
                lo, hi = -hi, -lo
            return _finish(e, lo, hi, level, a.vars | d.vars)
        x = self.interval(arg)
        if arg.is_integer:
            return _finish(e, x.lo, x.hi, x.level, x.vars)
        fn = torch.ceil if rounding_up else torch.floor
        return _finish(e, fn(x.lo), fn(x.hi), 0, x.vars)

    def _Mod(self, e: sp.Mod) -> Interval:
        x, d = self.interval(e.args[0]), self.interval(e.args[1])
        vars_ = x.vars | d.vars
        point = (d.lo == d.hi) & torch.isfinite(d.lo) & (d.lo != 0)
        dv = torch.where(point, d.lo, 1.0)
        k_lo, k_hi = torch.div(x.lo, dv, rounding_mode="floor"), torch.div(x.hi, dv, rounding_mode="floor")
        one_period = point & (k_lo == k_hi) & torch.isfinite(x.lo) & torch.isfinite(x.hi)
        integer = _integer(e)
        step = 1.0 if integer else 0.0
        pos, neg = d.lo > 0, d.hi < 0
        lo = torch.where(pos, 0.0, torch.where(neg, d.lo + step, -INF))
        hi = torch.where(pos, d.hi - step, torch.where(neg, 0.0, INF))
        # constant x in [0, d) (or (d, 0]) is its own remainder, whatever d's interval
        inside = torch.where(pos, (x.lo >= 0) & (x.hi < d.lo), (x.hi <= 0) & (x.lo > d.hi) & neg)
        lo, hi = torch.where(inside, x.lo, lo), torch.where(inside, x.hi, hi)
        lo = torch.where(one_period, x.lo - dv * k_lo, lo)
        hi = torch.where(one_period, x.hi - dv * k_lo, hi)
        crossing = point & ((k_hi - k_lo).abs() == 1)  # contiguous x: both ends of the period are taken
        full_period = point & (x.hi - x.lo + 1 >= dv.abs())
        level = torch.where(one_period | inside, x.level, _lvl(0))
        contiguous = x.level == 2
        level = torch.where(~one_period & ~inside & contiguous & full_period, _lvl(2), level)
        level = torch.where(~one_period & ~inside & contiguous & crossing & ~full_period, _lvl(1), level)
        return _finish(e, lo, hi, level, vars_)

    def _minmax(self, e: sp.Basic, fn: Callable[..., torch.Tensor]) -> Interval:
        parts = [self.interval(a) for a in e.args]
        lo, hi = parts[0].lo, parts[0].hi
        for p in parts[1:]:
            lo, hi = fn(lo, p.lo), fn(hi, p.hi)
        return _finish(e, lo, hi, _least(parts) if _disjoint(parts) else 0, _union(parts))

    def _Min(self, e: sp.Min) -> Interval:
        return self._minmax(e, torch.minimum)

    def _Max(self, e: sp.Max) -> Interval:
        return self._minmax(e, torch.maximum)

    def _abs_of(self, x: Interval) -> Interval:
        spans = (x.lo < 0) & (x.hi > 0)
        lo = torch.where(spans, 0.0, torch.minimum(x.lo.abs(), x.hi.abs()))
        hi = torch.maximum(x.lo.abs(), x.hi.abs())
        level = torch.where(spans & (x.level < 2), _lvl(0), x.level)
        return Interval(lo, hi, level, x.vars)

    def _Abs(self, e: sp.Abs) -> Interval:
        a = self._abs_of(self.interval(e.args[0]))
        return _finish(e, a.lo, a.hi, a.level, a.vars)

    def _monotone(self, e: sp.Basic, fn: Callable[..., torch.Tensor], domain_lo: float = -INF) -> Interval:
        x = self.interval(e.args[0])
        ok = x.lo >= domain_lo
        lo, hi = torch.where(ok, fn(x.lo), -INF), torch.where(ok, fn(x.hi), INF)
        return _finish(e, lo, hi, x.level if _integer(e) else 0, x.vars)

    def _sign(self, e: sp.sign) -> Interval:
        return self._monotone(e, torch.sign)

    def _exp(self, e: sp.exp) -> Interval:
        return self._monotone(e, torch.exp)

    def _log(self, e: sp.log) -> Interval:
        return self._monotone(e, torch.log, 0.0) if len(e.args) == 1 else widest(self.interval(e.args[0]).vars)

    def _tanh(self, e: sp.tanh) -> Interval:
        return self._monotone(e, torch.tanh)

    def _Heaviside(self, e: sp.Heaviside) -> Interval:
        h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
        if not (h0.is_number and h0.is_real):
            return widest(self.interval(e.args[0]).vars)
        h0f = float(h0)
        return self._monotone(e, lambda t: torch.where(t > 0, 1.0, torch.where(t < 0, 0.0, h0f)).to(torch.float64))

    def _Piecewise(self, e: sp.Piecewise) -> Interval:
        branches, fallthrough = self._branches(e)
        vals = [(inc, self.interval(expr)) for inc, expr in branches]
        lo, hi = _f(INF), _f(-INF)
        count = torch.tensor(0)
        for inc, v in vals:
            lo, hi = torch.where(inc, torch.minimum(lo, v.lo), lo), torch.where(inc, torch.maximum(hi, v.hi), hi)
            count = count + inc.to(torch.int64)
        lo, hi = torch.where(fallthrough, -INF, lo), torch.where(fallthrough, INF, hi)
        level = _lvl(0)
        for inc, v in vals:
            level = torch.where(inc & (count == 1) & ~fallthrough, v.level, level)
        return _finish(e, lo, hi, level, _union([v for _, v in vals]) | self._cond_vars(e))

    def _cond_vars(self, e: sp.Piecewise) -> frozenset[sp.Symbol]:
        return frozenset().union(*(c.free_symbols for _, c in e.args)) & self.varying

    def _branches(self, e: sp.Piecewise) -> tuple[list[tuple[torch.Tensor, sp.Basic]], torch.Tensor]:
        """Each branch with where it may be taken, and where no branch may be taken."""
        reachable = _b(True)
        out = []
        for expr, cond in e.args:
            t = self.truth(cond)
            out.append((reachable & t.may, expr))
            reachable = reachable & ~t.must
        return out, reachable

    # --- predicates ---------------------------------------------------------------------------
    def truth(self, e: sp.Basic) -> Truth:
        key = ("truth", e)
        if key not in self.memo:
            t = self._truth(e)
            self.memo[key] = Truth(t.must, t.may, t.some_true | t.must, t.some_false | ~t.may)
        return self.memo[key]

    def _truth(self, e: sp.Basic) -> Truth:
        if e is sp.true or e is True:
            return Truth(_b(True), _b(True), _b(True), _b(False))
        if e is sp.false or e is False:
            return Truth(_b(False), _b(False), _b(False), _b(True))
        if isinstance(e, sp.core.relational.Relational):
            return self._relational(e)
        if isinstance(e, sp.And):
            return self._and([self.truth(a) for a in e.args])
        if isinstance(e, sp.Or):
            return _not(self._and([_not(self.truth(a)) for a in e.args]))
        if isinstance(e, sp.Not):
            return _not(self.truth(e.args[0]))
        if isinstance(e, sp.Piecewise):
            return self._piecewise_truth(e)
        return UNKNOWN

    @staticmethod
    def _and(parts: list[Truth]) -> Truth:
        must, may, some_false = _b(True), _b(True), _b(False)
        for p in parts:
            must, may, some_false = must & p.must, may & p.may, some_false | p.some_false
        some_true = _b(False)  # one conjunct true somewhere, the others true everywhere
        for i, p in enumerate(parts):
            others = _b(True)
            for j, q in enumerate(parts):
                if j != i:
                    others = others & q.must
            some_true = some_true | (p.some_true & others)
        return Truth(must, may, some_true, some_false)

    def _relational(self, e: sp.Basic) -> Truth:
        lhs, rhs = e.lhs, e.rhs
        if isinstance(lhs, _BOOLEAN) or isinstance(rhs, _BOOLEAN):
            return UNKNOWN
        d_expr = _difference(lhs, rhs)
        if d_expr.has(sp.nan, sp.zoo):
            return UNKNOWN
        d = self.interval(d_expr)
        lo, hi, ends, contiguous = d.lo, d.hi, d.level >= 1, d.level >= 2
        if isinstance(e, sp.StrictLessThan):
            return Truth(hi < 0, lo < 0, ends & (lo < 0), ends & (hi >= 0))
        if isinstance(e, sp.LessThan):
            return Truth(hi <= 0, lo <= 0, ends & (lo <= 0), ends & (hi > 0))
        if isinstance(e, sp.StrictGreaterThan):
            return Truth(lo > 0, hi > 0, ends & (hi > 0), ends & (lo <= 0))
        if isinstance(e, sp.GreaterThan):
            return Truth(lo >= 0, hi >= 0, ends & (hi >= 0), ends & (lo < 0))
        if isinstance(e, (sp.Equality, sp.Unequality)):
            spans = (lo <= 0) & (hi >= 0)
            some_true = (contiguous & spans) | (ends & ((lo == 0) | (hi == 0))) | self._shared_value(lhs, rhs)
            eq = Truth((lo == 0) & (hi == 0), spans, some_true, ends & ((lo != 0) | (hi != 0)))
            return eq if isinstance(e, sp.Equality) else _not(eq)
        return UNKNOWN

    def _shared_value(self, lhs: sp.Basic, rhs: sp.Basic) -> torch.Tensor:
        """Where sides over disjoint symbols are known to take one common value: an end taken
        on both sides, or an end of one side inside the other, contiguous, side."""
        a, b = self.interval(lhs), self.interval(rhs)
        if a.vars & b.vars:
            return _b(False)
        ends = (a.level >= 1) & (b.level >= 1)
        same_end = (a.lo == b.lo) | (a.lo == b.hi) | (a.hi == b.lo) | (a.hi == b.hi)
        b_end_in_a = (a.level >= 2) & (((b.lo >= a.lo) & (b.lo <= a.hi)) | ((b.hi >= a.lo) & (b.hi <= a.hi)))
        a_end_in_b = (b.level >= 2) & (((a.lo >= b.lo) & (a.lo <= b.hi)) | ((a.hi >= b.lo) & (a.hi <= b.hi)))
        return ends & (same_end | b_end_in_a | a_end_in_b)

    def _piecewise_truth(self, e: sp.Piecewise) -> Truth:
        branches, fallthrough = self._branches(e)
        must, may, count = ~fallthrough, fallthrough.clone(), torch.tensor(0)
        truths = [(inc, self.truth(expr)) for inc, expr in branches]
        for inc, t in truths:
            must, may = must & (~inc | t.must), may | (inc & t.may)
            count = count + inc.to(torch.int64)
        some_true, some_false = _b(False), _b(False)
        for inc, t in truths:
            sole = inc & (count == 1) & ~fallthrough
            some_true, some_false = some_true | (sole & t.some_true), some_false | (sole & t.some_false)
        return Truth(must, may, some_true, some_false)


def _not(t: Truth) -> Truth:
    return Truth(~t.may, ~t.must, t.some_false, t.some_true)


def evaluate_interval(expr: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
                      summaries: Mapping[sp.Basic, Pair] | None = None) -> Pair:
    """``(lo, hi)`` (float64, broadcast over the boxes) bounding ``expr`` at every point of each box."""
    iv = _Intervals(env, captures, summaries or {}).interval(sp.sympify(expr))
    return iv.lo, iv.hi


def evaluate_truth(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
                   summaries: Mapping[sp.Basic, Pair] | None = None) -> Pair:
    """``(must, may)`` (bool, broadcast over the boxes) of a predicate."""
    t = decide(pred, env, captures, summaries)
    return t.must, t.may


def decide(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
           summaries: Mapping[sp.Basic, Pair] | None = None) -> Truth:
    """:class:`Truth` of a predicate over each box (``pred`` may be a Python bool)."""
    p = sp.true if pred is True else sp.false if pred is False else pred
    return _Intervals(env, captures, summaries or {}).truth(p)
