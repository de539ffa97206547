"""Symbolic mask analysis: per-query-tile key ranges and full/partial/empty tiles.

The predicate is put in disjunctive normal form.  In each conjunct, every atom
that is linear in ``n`` with a numeric coefficient (``n <= m``, ``m - n < W``,
``n < kv_lens[b]``) bounds ``n`` to an interval ``[lo, hi)`` whose ends are
expressions of ``m``, ``b``, ``h``, sizes, params and captured loads that do not
depend on ``n``.  Atoms that are not such bounds are *opaque*: the conjunct then
gives a range but no tile of it is known to be full.

For a query tile covering rows ``[m_first, m_last]`` the visited key range of a
conjunct is ``[min_m lo, max_m hi)`` and its full range ``[max_m lo, min_m hi)``;
the extremes are found from the monotonicity in ``m`` of each bound.

Several conjuncts become consecutive *segments*, and all the work is polynomial in the
number ``k`` of conjuncts (bounded by :data:`MAX_CONJUNCTS`, beyond which the analysis
falls back before expanding the DNF):

1. exact conjuncts with one lower and one upper bound whose ends differ by integer
   constants and that overlap or touch merge into one (``n == m | n == m - 1`` is the band
   ``[m - 1, m + 1)``, still exact);
2. segments with identical visited bounds merge into one (an OR inside a conjunct that the
   DNF split apart);
3. segments must be ordered (``lo`` of each provably <= ``lo`` of the next) so that the
   kernel can start each segment at the end of the previous one and never visit a tile
   twice.  ``lo_i <= lo_j`` is proven once per pair (:class:`_Prover`, no ``simplify``) and
   closed transitively; segments that cannot be placed in order are merged into one segment
   covering their union (from the least ``lo`` to the greatest ``hi``).

When no bound exists the analysis falls back to a single segment that is visited entirely
and masked elementwise (always correct).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from attncc.ir import expr as E

MAX_ATOMS_FOR_DNF = 32   # comparisons in the predicate
MAX_CONJUNCTS = 64       # conjuncts of its DNF (an AND of ORs multiplies out)

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


@dataclass(frozen=True)
class _Interval:
    """The bounds of one conjunct along the swept index, before the row tile is applied.

    ``los``/``his`` are the raw bounds of its atoms (functions of the row index; the kept keys are
    ``max(los) <= var < min(his)`` within ``[0, size)``); ``exact`` is False when an atom is opaque.
    """

    conjunct: sp.Basic
    los: tuple[sp.Expr, ...]
    his: tuple[sp.Expr, ...]
    exact: bool


def _interval(conjunct: sp.Basic, d: Direction) -> _Interval:
    atoms = conjunct.args if isinstance(conjunct, sp.And) else (conjunct,)
    los: list[sp.Expr] = []
    his: list[sp.Expr] = []
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
    return _Interval(conjunct, tuple(los), tuple(his), exact)


def _segment(iv: _Interval, d: Direction) -> Segment:
    """The :class:`Segment` of one interval for a row tile ``[first, last]``.

    ``lo(m) = max(0, *los)`` and ``hi(m) = min(size, *his)``; each bound is taken to its extreme
    over the tile on its own (``min_m max_i <= max_i min_m`` keeps the visited range a cover, and
    the full range ``[max_m lo, min_m hi)`` is exact), so only the results are built as sympy
    ``Max``/``Min``, whose construction is the expensive step.
    """
    N = d.size
    lo = _extremes(sp.Max, (sp.Integer(0), *iv.los), "min", d)
    hi = _extremes(sp.Min, (N, *iv.his), "max", d)
    if lo is None or hi is None:
        return Segment(iv.conjunct, sp.Integer(0), N, None, None)
    full_lo = _extremes(sp.Max, (sp.Integer(0), *iv.los), "max", d) if iv.exact else None
    full_hi = _extremes(sp.Min, (N, *iv.his), "min", d) if iv.exact else None
    if full_lo is None or full_hi is None:
        full_lo = full_hi = None
    return Segment(iv.conjunct, lo, hi, full_lo, full_hi)


def _extremes(combine: type[sp.Max] | type[sp.Min], bounds: tuple[sp.Expr, ...], want: str,
              d: Direction) -> sp.Expr | None:
    """``combine`` of each bound's ``want`` extreme over the row tile; None if one is unknown."""
    ends = [_extreme(b, want, d) for b in bounds]
    return None if any(e is None for e in ends) else combine(*ends)


# --- unions per conjunct ----------------------------------------------------------------------
def _const(e: sp.Expr) -> int | None:
    """``e`` as a Python int when it is an integer constant, else None."""
    e = E.cheap_expand(e)
    return int(e) if e.is_Integer else None


def _merge_adjacent(ivs: list[_Interval]) -> tuple[list[_Interval], int]:
    """Merge exact single-bound intervals whose union is an interval (``n == m - 1 | n == m``).

    Two such intervals merge when their ends differ by integer constants and they overlap or
    touch; the result is again exact, so its full range stays exact.  Returns the intervals (a
    merged one takes the place of its first member) and how many were merged away.
    """
    classes: list[tuple[sp.Expr, list[tuple[int, int, int]]]] = []  # (reference lo, [(offset, width, index)])
    for i, iv in enumerate(ivs):
        if not (iv.exact and len(iv.los) == 1 and len(iv.his) == 1):
            continue
        width = _const(iv.his[0] - iv.los[0])
        if width is None or width <= 0:
            continue
        for ref, members in classes:
            off = _const(iv.los[0] - ref)
            if off is not None:
                members.append((off, width, i))
                break
        else:
            classes.append((iv.los[0], [(0, width, i)]))
    out: dict[int, _Interval | None] = dict(enumerate(ivs))
    merged = 0
    for _ref, members in classes:
        for run in _touching_runs(sorted(members)):
            if len(run) < 2:
                continue
            first = min(i for _, _, i in run)
            lo_i = min(run)[2]
            hi_i = max(run, key=lambda r: r[0] + r[1])[2]
            conj = sp.Or(*(ivs[i].conjunct for _, _, i in sorted(run, key=lambda r: r[2])))
            for _, _, i in run:
                out[i] = None
            out[first] = _Interval(conj, ivs[lo_i].los, ivs[hi_i].his, True)
            merged += len(run) - 1
    return [iv for iv in out.values() if iv is not None], merged


def _touching_runs(members: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Split ``(offset, width, index)`` sorted by offset into runs whose union is one interval."""
    runs: list[list[tuple[int, int, int]]] = []
    end = None
    for off, width, i in members:
        if end is None or off > end:
            runs.append([])
            end = off + width
        runs[-1].append((off, width, i))
        end = max(end, off + width)
    return runs


def _dedupe(segs: list[Segment]) -> tuple[list[Segment], int]:
    """One segment per distinct ``(lo, hi)``: conjuncts with the same bounds visit the same keys.

    A later duplicate would visit nothing (it starts where the first ended); the merged segment
    keeps the first known full range, which is sound since a tile full for one conjunct of an OR
    is full for the OR.
    """
    groups: dict[tuple[sp.Expr, sp.Expr], list[Segment]] = {}
    for s in segs:
        groups.setdefault((s.lo, s.hi), []).append(s)
    out = []
    for (lo, hi), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        full = next(((s.full_lo, s.full_hi) for s in group if s.full_lo is not None), (None, None))
        out.append(Segment(sp.Or(*(s.conjunct for s in group)), lo, hi, *full))
    return out, len(segs) - len(out)


# --- ordering -------------------------------------------------------------------------------
_span = sp.Symbol("_span", integer=True, nonnegative=True)


class _Prover:
    """Provable ``x >= y`` between bound expressions of a row tile, memoised.

    ``Max``/``Min``/``floor``/``ceiling`` are taken apart structurally; a leaf is decided from the
    expanded difference (an integer, or sympy's sign of it).  Callers pass expressions in which
    ``last`` is written ``first + span`` (:meth:`tile`), so ``last >= first`` is known.  Each pair of
    subexpressions is decided at most once: the work is polynomial in the expression sizes.
    """

    def __init__(self, d: Direction) -> None:
        self.d = d
        self.memo: dict[tuple[sp.Expr, sp.Expr], bool] = {}

    def tile(self, e: sp.Expr) -> sp.Expr:
        """``e`` with the row tile's last index written as ``first + span``."""
        return e.subs(self.d.last, self.d.first + _span)

    def ge(self, x: sp.Expr, y: sp.Expr) -> bool:
        key = (x, y)
        if key not in self.memo:
            self.memo[key] = self._ge(x, y)
        return self.memo[key]

    def _ge(self, x: sp.Expr, y: sp.Expr) -> bool:
        if x == y:
            return True
        lx, ly = _linear(x), _linear(y)
        if lx is not None and ly is not None:
            return _linear_nonneg({k: lx.get(k, 0) - ly.get(k, 0) for k in lx.keys() | ly.keys()})
        if isinstance(y, sp.Max) and all(self.ge(x, b) for b in y.args):
            return True
        if isinstance(x, sp.Min) and all(self.ge(a, y) for a in x.args):
            return True
        if isinstance(x, sp.Max) and any(self.ge(a, y) for a in x.args):
            return True
        if isinstance(y, sp.Min) and any(self.ge(x, b) for b in y.args):
            return True
        if isinstance(x, (sp.floor, sp.ceiling)) and type(x) is type(y) and self.ge(x.args[0], y.args[0]):
            return True
        # Max/Min were taken apart above; sympy's sign of a difference holding them is slow and weak
        if x.has(sp.Max, sp.Min) or y.has(sp.Max, sp.Min):
            return False
        return bool(E.cheap_expand(x - y).is_nonnegative)


def _linear(e: sp.Expr) -> dict[sp.Basic, sp.Rational] | None:
    """``e`` as ``{symbol: coefficient, 1: constant}`` when it is linear in plain symbols, else None."""
    if not (e.is_Number or e.is_Symbol or isinstance(e, (sp.Add, sp.Mul))):
        return None
    out: dict[sp.Basic, sp.Rational] = {}
    for term, coeff in e.as_coefficients_dict().items():
        if not (coeff.is_Rational and (term is sp.S.One or term.is_Symbol)):
            return None
        out[term] = coeff
    return out


def _linear_nonneg(form: dict[sp.Basic, sp.Rational]) -> bool:
    """``sum(c * s) + const >= 0`` for every value of the symbols, from their sign assumptions."""
    low = form.get(sp.S.One, sp.Integer(0))
    for sym, c in form.items():
        if sym is sp.S.One or c == 0:
            continue
        if c > 0 and sym.is_nonnegative:
            low += c if (sym.is_positive and sym.is_integer) else 0
        elif c < 0 and sym.is_nonpositive:
            low += -c if (sym.is_negative and sym.is_integer) else 0
        else:
            return False
    return bool(low >= 0)


def _order(segs: list[Segment], d: Direction) -> list[list[int]]:
    """Consecutive blocks of segment indices, each block's least ``lo`` provably <= every later ``lo``.

    ``before[i][j]``: ``lo_i <= lo_j`` is proven, pairwise once and then closed transitively.  Each
    step takes the segment ``x`` that needs the fewest companions: the segments not provably at or
    above ``x`` (ties: the earliest).  Alone, ``x`` is the next segment; with companions, the block
    becomes one segment covering their union.
    """
    k = len(segs)
    prove = _Prover(d)
    los = [prove.tile(s.lo) for s in segs]
    before = [[i == j or prove.ge(los[j], los[i]) for j in range(k)] for i in range(k)]
    for via in range(k):
        for i in range(k):
            if before[i][via]:
                row, mid = before[i], before[via]
                for j in range(k):
                    row[j] = row[j] or mid[j]
    left = list(range(k))
    blocks = []
    while left:
        best = min(([x] + [y for y in left if y != x and not before[x][y]] for x in left), key=len)
        blocks.append(sorted(best))
        left = [y for y in left if y not in best]
    return blocks


def _union(group: list[Segment]) -> Segment:
    """One segment covering ``group``: from the least ``lo`` to the greatest ``hi``.

    Its full range is the first member's (sound: a tile full for one conjunct is full for the OR).
    """
    full = next(((s.full_lo, s.full_hi) for s in group if s.full_lo is not None), (None, None))
    return Segment(sp.Or(*(s.conjunct for s in group)), sp.Min(*(s.lo for s in group)),
                   sp.Max(*(s.hi for s in group)), *full)


# --- the analysis ------------------------------------------------------------------------------
def dnf_size(pred: sp.Basic, limit: int, negated: bool = False) -> int:
    """Number of conjuncts of the DNF of ``pred`` (``Not`` pushed to the atoms), or more than ``limit``.

    Counted on the formula before any expansion: an OR adds, an AND multiplies; other boolean
    functions (``Xor``, ``Implies``, ...) count ``2**atoms``, an upper bound.
    """
    kind = type(pred)
    if kind is sp.Not:
        return dnf_size(pred.args[0], limit, not negated)
    if kind in (sp.And, sp.Or):
        adds = (kind is sp.Or) != negated
        total = 0 if adds else 1
        for a in pred.args:
            size = dnf_size(a, limit, negated)
            total = total + size if adds else total * size
            if total > limit:
                return limit + 1
        return total
    if isinstance(pred, sp.logic.boolalg.BooleanFunction):
        return min(2 ** len(pred.atoms(sp.core.relational.Relational)), limit + 1)
    return 1


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
    if dnf_size(pred, MAX_CONJUNCTS) > MAX_CONJUNCTS:
        return _fallback(pred, f"DNF of more than {MAX_CONJUNCTS} conjuncts", d)
    dnf = sp.to_dnf(pred, simplify=False)
    conjuncts = dnf.args if isinstance(dnf, sp.Or) else (dnf,)
    if len(conjuncts) == 1:
        return MaskAnalysis(pred, (_segment(_interval(conjuncts[0], d), d),), False, "one interval")
    ivs, adjacent = _merge_adjacent([_interval(c, d) for c in conjuncts])
    segs, duplicates = _dedupe([_segment(iv, d) for iv in ivs])
    blocks = _order(segs, d)
    ordered = tuple(segs[b[0]] if len(b) == 1 else _union([segs[i] for i in b]) for b in blocks)
    return MaskAnalysis(pred, ordered, False, _note(len(conjuncts), ordered, adjacent, duplicates, blocks))


def _note(conjuncts: int, segs: tuple[Segment, ...], adjacent: int, duplicates: int,
          blocks: list[list[int]]) -> str:
    unions = [len(b) for b in blocks if len(b) > 1]
    head = "one interval" if len(segs) == 1 else f"{len(segs)} ordered intervals"
    parts = ([f"{adjacent} merged with an adjacent interval"] if adjacent else []) + \
        ([f"{duplicates} duplicate bounds merged"] if duplicates else []) + \
        [f"union of {u} unordered intervals" for u in unions]
    return head if not parts else f"{head} from {conjuncts} conjuncts ({', '.join(parts)})"


def _fallback(pred: sp.Basic, why: str, d: Direction) -> MaskAnalysis:
    N = d.size
    return MaskAnalysis(pred, (Segment(pred, sp.Integer(0), N, None, None),), False, f"elementwise: {why}")
