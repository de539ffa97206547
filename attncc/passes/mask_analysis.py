"""Symbolic mask analysis: per-query-tile key ranges and full/partial/empty tiles.

The predicate is put in disjunctive normal form.  In each conjunct, every atom
that is linear in ``n`` with a numeric coefficient (``n <= m``, ``m - n < W``,
``n < kv_lens[b]``) bounds ``n`` to an interval ``[lo, hi)`` whose ends are
expressions of ``m``, ``b``, ``h``, sizes, params and captured loads that do not
depend on ``n``.  Atoms that are not such bounds are *opaque*: the conjunct then
gives a range but no tile of it is known to be full.

For a query tile covering rows ``[m_first, m_last]`` the visited key range of a
conjunct is ``[min_m lo, max_m hi)`` and its full range ``[max_m lo, min_m hi)``;
the extremes are found from the monotonicity of ``lo``/``hi`` in ``m``.  Several
conjuncts become consecutive *segments*; they must be ordered (``lo`` of each
provably <= ``lo`` of the next) so that the kernel can start each segment at the
end of the previous one and never visit a tile twice.  When no order can be
proven, or no bound exists, the analysis falls back to a single segment that is
visited entirely and masked elementwise (always correct).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sympy as sp

from attncc.ir import expr as E

MAX_ATOMS_FOR_DNF = 10

m_first = sp.Symbol("m_first", integer=True, nonnegative=True)
m_last = sp.Symbol("m_last", integer=True, nonnegative=True)
n_first = sp.Symbol("n_first", integer=True, nonnegative=True)
n_last = sp.Symbol("n_last", integer=True, nonnegative=True)


@dataclass(frozen=True)
class Direction:
    """Which index is swept (``var``, extent ``size``) and which one is tiled (``row``).

    Forward and dQ sweep keys ``n`` for a query tile; dK/dV sweeps queries ``m``
    for a key tile.
    """

    var: sp.Symbol
    row: sp.Symbol
    size: sp.Symbol
    first: sp.Symbol
    last: sp.Symbol


KEYS = Direction(E.n, E.m, E.SIZE_SYMBOLS["N"], m_first, m_last)
QUERIES = Direction(E.m, E.n, E.SIZE_SYMBOLS["M"], n_first, n_last)


@dataclass(frozen=True)
class Segment:
    """Key range of one conjunct for a query tile ``[m_first, m_last]``.

    ``lo``/``hi`` bound the keys to visit; ``full_lo``/``full_hi`` the keys where
    the predicate holds for every row of the tile (``None``: no full tiles).
    All are sympy expressions in ``m_first``, ``m_last``, ``b``, ``h``, sizes,
    params and loads; ``hi``/``full_hi`` are exclusive.
    """

    conjunct: sp.Basic
    lo: sp.Expr
    hi: sp.Expr
    full_lo: sp.Expr | None
    full_hi: sp.Expr | None


@dataclass(frozen=True)
class MaskAnalysis:
    predicate: sp.Basic
    segments: tuple[Segment, ...]
    always_true: bool
    note: str

    @property
    def range_derived(self) -> bool:
        """True when the visited keys are narrower than ``[0, N)`` for some tile."""
        N = E.SIZE_SYMBOLS["N"]
        return not (len(self.segments) == 1 and self.segments[0].lo == 0 and self.segments[0].hi == N)


# --- normalisation rules, as data: (relational type on |x| vs w) -> rewrite --------------
def _abs_rules(rel: sp.Basic) -> sp.Basic:
    """``|x| <= w -> -w <= x <= w`` and friends (both orientations)."""
    lhs, rhs = rel.lhs, rel.rhs
    table = {
        sp.Le: lambda x, w: sp.And(x <= w, -x <= w), sp.Lt: lambda x, w: sp.And(x < w, -x < w),
        sp.Ge: lambda x, w: sp.Or(x >= w, -x >= w), sp.Gt: lambda x, w: sp.Or(x > w, -x > w),
    }
    flipped = {sp.Le: sp.Ge, sp.Lt: sp.Gt, sp.Ge: sp.Le, sp.Gt: sp.Lt}
    kind = type(rel)
    if isinstance(lhs, sp.Abs) and kind in table:
        return table[kind](lhs.args[0], rhs)
    if isinstance(rhs, sp.Abs) and kind in table:
        return table[flipped[kind]](rhs.args[0], lhs)
    return rel


NORMALISATION_RULES = (("abs-comparison", _abs_rules),)


def normalise(pred: sp.Basic) -> sp.Basic:
    """Apply :data:`NORMALISATION_RULES` to every relational of ``pred``."""
    for _name, rule in NORMALISATION_RULES:
        pred = pred.replace(lambda e: isinstance(e, sp.core.relational.Relational), rule)
    return pred


# --- bounds ---------------------------------------------------------------------------------
def _bound(atom: sp.Basic, var: sp.Symbol) -> tuple[sp.Expr | None, sp.Expr | None] | None:
    """``(lo, hi)`` on ``var`` implied by one atom, or ``None`` if the atom is opaque."""
    if not isinstance(atom, sp.core.relational.Relational) or var not in atom.free_symbols:
        return None
    if any(var in ld.free_symbols for ld in E.loads(atom)):
        return None
    diff = E.cheap_expand(atom.lhs - atom.rhs)
    c = sp.diff(diff, var)
    if not (c.is_Rational or c.is_Float) or c == 0:
        return None
    t = E.cheap_expand(-(diff - c * var) / c)  # atom is "c*(var - t) OP 0"
    if var in t.free_symbols:
        return None
    op = type(atom)
    if c < 0:
        op = {sp.Lt: sp.Gt, sp.Le: sp.Ge, sp.Gt: sp.Lt, sp.Ge: sp.Le}.get(op, op)
    if op is sp.Lt:
        return None, sp.ceiling(t)
    if op is sp.Le:
        return None, sp.floor(t) + 1
    if op is sp.Gt:
        return sp.floor(t) + 1, None
    if op is sp.Ge:
        return sp.ceiling(t), None
    if op is sp.Eq:
        return sp.ceiling(t), sp.floor(t) + 1
    return None


def monotonicity(expr: sp.Basic, var: sp.Symbol = E.m) -> int | None:
    """+1 non-decreasing, -1 non-increasing, 0 constant in ``var``; None if unknown."""
    if var not in expr.free_symbols:
        return 0
    if expr == var:
        return 1
    if isinstance(expr, (sp.Add, sp.Max, sp.Min)):
        return _combine([monotonicity(a, var) for a in expr.args])
    if isinstance(expr, (sp.floor, sp.ceiling)):
        return monotonicity(expr.args[0], var)
    if isinstance(expr, sp.Mul):
        const = [a for a in expr.args if var not in a.free_symbols]
        rest = [a for a in expr.args if var in a.free_symbols]
        if len(rest) != 1:
            return None
        coeff = sp.Mul(*const)
        inner = monotonicity(rest[0], var)
        if inner is None:
            return None
        if coeff.is_nonnegative:
            return inner
        if coeff.is_nonpositive:
            return -inner
    return None


def _combine(signs: list[int | None]) -> int | None:
    if any(s is None for s in signs):
        return None
    nonzero = {s for s in signs if s}
    if len(nonzero) > 1:
        return None
    return nonzero.pop() if nonzero else 0


def _extreme(expr: sp.Expr, want: str, d: Direction) -> sp.Expr | None:
    """min (want="min") or max of ``expr`` over the row index in [first, last]."""
    mono = monotonicity(expr, d.row)
    if mono is None:
        return None
    if mono == 0:
        return expr
    at_first = (mono > 0) == (want == "min")
    return expr.subs(d.row, d.first if at_first else d.last)


def _segment(conjunct: sp.Basic, d: Direction) -> Segment:
    N = d.size
    atoms = conjunct.args if isinstance(conjunct, sp.And) else (conjunct,)
    los: list[sp.Expr] = [sp.Integer(0)]
    his: list[sp.Expr] = [N]
    exact = True
    for atom in atoms:
        bnd = _bound(atom, d.var)
        if bnd is None:
            exact = False
            continue
        if bnd[0] is not None:
            los.append(bnd[0])
        if bnd[1] is not None:
            his.append(bnd[1])
    lo_m, hi_m = sp.Max(*los), sp.Min(*his)
    lo = _extreme(lo_m, "min", d)
    hi = _extreme(hi_m, "max", d)
    if lo is None or hi is None:
        return Segment(conjunct, sp.Integer(0), N, None, None)
    full_lo = _extreme(lo_m, "max", d) if exact else None
    full_hi = _extreme(hi_m, "min", d) if exact else None
    if full_lo is None or full_hi is None:
        full_lo = full_hi = None
    return Segment(conjunct, lo, hi, full_lo, full_hi)


def _provably_ordered(segs: tuple[Segment, ...]) -> bool:
    for a, b_ in itertools.pairwise(segs):
        d = E.cheap_expand(b_.lo - a.lo)
        if not (d.is_nonnegative or _nonneg_by_max(b_.lo, a.lo)):
            return False
    return True


def _nonneg_by_max(big: sp.Expr, small: sp.Expr) -> bool:
    """``Max(small, x) - small >= 0`` style facts sympy does not always see."""
    return isinstance(big, sp.Max) and small in big.args


def analyse(pred: sp.Basic, d: Direction = KEYS) -> MaskAnalysis:
    """Derive the segments of ``pred`` along ``d``; see the module docstring.

    Whatever sympy cannot decide (precision exhausted on a constant, a result too
    large to handle) falls back to the elementwise segment, which is always correct.
    """
    try:
        return _analyse(pred, d)
    except (ArithmeticError, TypeError, ValueError, RecursionError) as exc:
        return _fallback(pred, f"analysis gave up ({type(exc).__name__})", d)


def _analyse(pred: sp.Basic, d: Direction) -> MaskAnalysis:
    N = d.size
    pred = normalise(pred)
    if pred is sp.true:
        return MaskAnalysis(pred, (Segment(pred, sp.Integer(0), N, sp.Integer(0), N),), True, "no mask")
    if pred is sp.false:
        return MaskAnalysis(pred, (), False, "everything masked")
    atoms = pred.atoms(sp.core.relational.Relational)
    if len(atoms) > MAX_ATOMS_FOR_DNF:
        return _fallback(pred, f"{len(atoms)} comparisons: too many for DNF", d)
    dnf = sp.to_dnf(pred, simplify=False)
    conjuncts = dnf.args if isinstance(dnf, sp.Or) else (dnf,)
    segs = tuple(_segment(c, d) for c in conjuncts)
    if len(segs) == 1:
        return MaskAnalysis(pred, segs, False, "one interval")
    for perm in itertools.permutations(segs):
        if _provably_ordered(perm):
            return MaskAnalysis(pred, perm, False, f"{len(perm)} ordered intervals")
    return _fallback(pred, "intervals could not be ordered", d)


def _fallback(pred: sp.Basic, why: str, d: Direction) -> MaskAnalysis:
    N = d.size
    return MaskAnalysis(pred, (Segment(pred, sp.Integer(0), N, None, None),), False, f"elementwise: {why}")
