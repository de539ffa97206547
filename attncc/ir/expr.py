"""The expression vocabulary shared by spec files, traced Python mods and codegen.

Every score modification and mask predicate, whether parsed from a spec file or
traced from a FlexAttention-style Python function, becomes a sympy expression
built only from the pieces below:

* index symbols ``b, h, m, n`` (integers >= 0): batch, query head, query
  position, key position;
* ``score`` (real): the scaled ``q . k`` value of one (b, h, m, n) element;
* size symbols ``B, H, HK, M, N, D, E`` (positive integers), ``scale`` (positive real);
* spec parameters: runtime scalars declared by the spec (see ``param_symbol``);
* ``Load(name, i0, i1, ...)``: an element of a captured tensor;
* sympy arithmetic, ``Piecewise`` (where), ``Min``/``Max``, ``Abs``, ``exp``,
  ``log``, ``sqrt``, ``tanh``, ``floor`` (integer ``//``), ``Mod`` (``%``, Python
  sign convention), relationals and ``And``/``Or``/``Not``;
* integer bit operations ``BitAnd``, ``BitOr``, ``BitXor``, ``ShiftLeft``,
  ``ShiftRight`` on integer expressions (build them with :func:`bitwise`).

``log2(x)`` is ``log(x) / log(2)``; printers and the dense evaluator recognise that
product (:func:`log2_split`) and compute it as a base-2 logarithm, exactly for
powers of two, and ``floor(log2(x))`` of an integer ``x >= 1`` exactly.

Nothing else may appear; ``check_vocabulary`` enforces this.
"""

from __future__ import annotations

import sympy as sp

from attncc.errors import SpecError

# Index symbols.
b, h, m, n = (sp.Symbol(s, integer=True, nonnegative=True) for s in "bhmn")
INDEX_SYMBOLS: dict[str, sp.Symbol] = {"b": b, "h": h, "m": m, "n": n}

score = sp.Symbol("score", real=True)

# Size symbols: the extent of each index, read from tensor shapes at run time.
SIZE_SYMBOLS: dict[str, sp.Symbol] = {
    s: sp.Symbol(s, integer=True, positive=True) for s in ("B", "H", "HK", "M", "N", "D", "E")
}
scale = sp.Symbol("scale", positive=True)


def param_symbol(name: str, kind: str) -> sp.Symbol:
    """Symbol of a spec parameter; ``kind`` is ``"int"`` or ``"float"``."""
    if kind == "int":
        return sp.Symbol(name, integer=True)
    return sp.Symbol(name, real=True)


class Load(sp.Function):
    """``Load(name, i0, ..., ik)``: element ``name[i0, ..., ik]`` of a captured tensor.

    ``name`` is a ``sympy.Symbol`` carrying the tensor's name; the remaining
    arguments are integer index expressions.
    """

    is_real = True

    @classmethod
    def eval(cls, *args: sp.Basic) -> None:  # never auto-evaluates
        return None

    @property
    def tensor_name(self) -> str:
        return str(self.args[0])

    @property
    def indices(self) -> tuple[sp.Expr, ...]:
        return tuple(self.args[1:])

    def _eval_derivative(self, s: sp.Symbol) -> sp.Expr:
        # A captured tensor is constant with respect to the score.
        return sp.Integer(0)


class IntLoad(Load):
    """A load from an integer-typed captured tensor (lengths, document ids, ...)."""

    is_integer = True


def load(name: str, *indices: sp.Expr, integer: bool = False) -> Load:
    cls = IntLoad if integer else Load
    return cls(sp.Symbol(name), *[sp.sympify(i) for i in indices])


class BitOp(sp.Function):
    """A two's-complement bit operation on two integer expressions (Python's semantics).

    Integer-valued; evaluates only when both arguments are integer literals.
    """

    nargs = 2
    is_integer = True
    symbol = ""

    @staticmethod
    def apply(a: int, b_: int) -> int:
        """The operation on Python ints; each subclass defines it (the base class has none)."""
        raise NotImplementedError("BitOp is abstract: use BitAnd, BitOr, BitXor, ShiftLeft or ShiftRight")

    @classmethod
    def eval(cls, a: sp.Basic, b_: sp.Basic) -> sp.Integer | None:
        if isinstance(a, sp.Integer) and isinstance(b_, sp.Integer):
            return sp.Integer(cls.apply(int(a), int(b_)))
        return None


class BitAnd(BitOp):
    """``a & b``: non-negative when either operand is."""

    symbol = "&"

    @staticmethod
    def apply(a: int, b_: int) -> int:
        return a & b_

    def _eval_is_nonnegative(self) -> bool | None:
        a, b_ = self.args
        if a.is_nonnegative or b_.is_nonnegative:
            return True
        if a.is_negative and b_.is_negative:
            return False
        return None


class BitOr(BitOp):
    """``a | b``: negative when either operand is."""

    symbol = "|"

    @staticmethod
    def apply(a: int, b_: int) -> int:
        return a | b_

    def _eval_is_nonnegative(self) -> bool | None:
        a, b_ = self.args
        if a.is_negative or b_.is_negative:
            return False
        if a.is_nonnegative and b_.is_nonnegative:
            return True
        return None


class BitXor(BitOp):
    """``a ^ b``: non-negative when both operands have the same sign."""

    symbol = "^"

    @staticmethod
    def apply(a: int, b_: int) -> int:
        return a ^ b_

    def _eval_is_nonnegative(self) -> bool | None:
        a, b_ = self.args
        if a.is_nonnegative is None or b_.is_nonnegative is None:
            return None
        return bool(a.is_nonnegative) == bool(b_.is_nonnegative)


MAX_SHIFT = 63  # shift counts a literal shift may use


def _shift_count(k: int) -> int:
    if not 0 <= k <= MAX_SHIFT:
        raise ValueError(f"shift count {k} out of range [0, {MAX_SHIFT}]")
    return k


class ShiftLeft(BitOp):
    """``a << k``: the sign of ``a``."""

    symbol = "<<"

    @staticmethod
    def apply(a: int, b_: int) -> int:
        return a << _shift_count(b_)

    def _eval_is_nonnegative(self) -> bool | None:
        return self.args[0].is_nonnegative


class ShiftRight(BitOp):
    """``a >> k`` (arithmetic: rounds toward -inf): the sign of ``a``."""

    symbol = ">>"

    @staticmethod
    def apply(a: int, b_: int) -> int:
        return a >> _shift_count(b_)

    def _eval_is_nonnegative(self) -> bool | None:
        return self.args[0].is_nonnegative


BIT_OPS: dict[str, type[BitOp]] = {c.symbol: c for c in (BitAnd, BitOr, BitXor, ShiftLeft, ShiftRight)}
for _op in BIT_OPS.values():
    _op._imp_ = staticmethod(_op.apply)  # what sympy.lambdify calls (brute-force checks in tests)


def bitwise(op: str, a: sp.Expr, b_: sp.Expr) -> sp.Expr:
    """``a OP b`` for ``OP`` in ``& | ^ << >> ~`` on integer expressions (``~`` ignores ``b_``).

    ``~a`` is ``-a - 1`` and a shift by a constant count is ``a * 2**k`` or ``floor(a / 2**k)``
    (the same values): plain arithmetic that the mask analysis can reason about.  Other
    operations are :class:`BitOp` functions.  Raises ``ValueError`` for a constant shift count
    outside ``[0, 63]``.
    """
    if op == "~":
        return -a - 1
    if op in ("<<", ">>") and isinstance(b_, sp.Integer):
        k = sp.Integer(2) ** _shift_count(int(b_))
        return a * k if op == "<<" else sp.floor(a / k)
    return BIT_OPS[op](a, b_)


def log2_split(e: sp.Basic) -> tuple[sp.Expr, sp.Expr] | None:
    """``(x, c)`` when ``e`` is ``c * log(x) / log(2)`` (how ``log2(x)`` is spelled), else None."""
    if not isinstance(e, sp.Mul):
        return None
    inv = sp.Pow(sp.log(2), -1)
    factors = list(e.args)
    if inv not in factors:
        return None
    factors.remove(inv)
    logs = [f for f in factors if isinstance(f, sp.log) and len(f.args) == 1]
    if len(logs) != 1:
        return None
    factors.remove(logs[0])
    return logs[0].args[0], sp.Mul(*factors)


def floor_log2_argument(e: sp.Basic) -> sp.Expr | None:
    """``x`` when ``e`` is ``floor(log2(x))`` of an integer expression ``x``, else None."""
    if not isinstance(e, sp.floor):
        return None
    split = log2_split(e.args[0])
    if split is None or split[1] != 1 or not integer_valued(split[0]):
        return None
    return split[0]


def where(cond: sp.Basic, a: sp.Expr, b_: sp.Expr) -> sp.Expr:
    """``cond ? a : b`` as a ``Piecewise``; constant conditions fold."""
    if cond is sp.true:
        return sp.sympify(a)
    if cond is sp.false:
        return sp.sympify(b_)
    return sp.Piecewise((a, cond), (b_, True))


_ALLOWED_FUNCS = (
    sp.Piecewise, sp.Min, sp.Max, sp.Abs, sp.exp, sp.log, sp.tanh, sp.floor, sp.ceiling,
    sp.Mod, sp.sign, Load, IntLoad, BitAnd, BitOr, BitXor, ShiftLeft, ShiftRight,
)
_ALLOWED_ATOMS = (sp.Symbol, sp.Number, sp.logic.boolalg.BooleanAtom, sp.NumberSymbol)
_ALLOWED_OPS = (
    sp.Add, sp.Mul, sp.Pow, sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
    sp.functions.elementary.piecewise.ExprCondPair,
)


def integer_valued(e: sp.Basic) -> bool:
    """True when ``e`` is built only from integers: what an index or a head map must be.

    Structural (``floor(h / floor(H / HK))`` is integer even though sympy cannot rule
    out a division by zero inside).
    """
    if not isinstance(e, sp.Expr):
        return False
    if e.is_integer:
        return True
    if isinstance(e, (sp.floor, sp.ceiling)):
        return True
    if isinstance(e, (sp.Add, sp.Mul, sp.Min, sp.Max, sp.Abs, sp.sign, sp.Mod)):
        return all(integer_valued(a) for a in e.args)
    if isinstance(e, sp.Pow):
        return integer_valued(e.base) and e.exp.is_Integer and e.exp >= 0
    if isinstance(e, sp.Piecewise):
        return all(integer_valued(pair.expr) for pair in e.args)
    return False


def check_vocabulary(expr: sp.Basic, where_: str) -> None:
    """Raise ``SpecError`` if ``expr`` uses anything outside the vocabulary.

    Also refused: complex values, complex infinity (a division by zero), a power
    of a constant base <= 0 whose exponent is not a constant (or, for a negative
    base, not an integer), and captured-tensor indices that are not integers.
    NaN is a value like any other (``score * float('nan')``).
    """
    for node in sp.preorder_traversal(expr):
        if node is sp.zoo:
            raise SpecError("division by zero (the expression is undefined)", where_)
        if node is sp.I:
            raise SpecError("the expression has a complex value", where_)
        if isinstance(node, sp.Pow) and node.base.is_number and not node.exp.is_number:
            if not (node.base.is_positive or (node.base.is_negative and node.exp.is_integer)):
                raise SpecError(f"{node}: a constant base <= 0 needs an integer exponent "
                                "(and 0 a constant one)", where_)
        if isinstance(node, Load) and not all(integer_valued(i) for i in node.indices):
            raise SpecError(f"{node}: captured-tensor indices must be integer expressions", where_)
        if isinstance(node, _ALLOWED_ATOMS + _ALLOWED_FUNCS + _ALLOWED_OPS):
            continue
        raise SpecError(f"unsupported operation {type(node).__name__} in expression", where_)


def loads(expr: sp.Basic) -> list[Load]:
    """All captured-tensor loads in ``expr``, in a deterministic order."""
    found = {x for x in sp.preorder_traversal(expr) if isinstance(x, Load)}
    return sorted(found, key=sp.srepr)


def canonical(expr: sp.Basic) -> str:
    """Canonical text of an expression, used in cache keys."""
    return sp.srepr(expr)


# --- bounded symbolic work --------------------------------------------------------------------
MAX_EXPANDED_TERMS = 400  # expand/simplify only what stays this small


def expanded_terms(expr: sp.Basic) -> int:
    """An upper bound on the number of terms of ``sp.expand(expr)``, computed without expanding."""
    if isinstance(expr, sp.Add):
        return sum(expanded_terms(a) for a in expr.args)
    if isinstance(expr, sp.Mul):
        out = 1
        for a in expr.args:
            out *= expanded_terms(a)
            if out > 10**9:
                return out
        return out
    if isinstance(expr, sp.Pow) and expr.exp.is_Integer and int(expr.exp) > 1:
        k, t = int(expr.exp), expanded_terms(expr.base)
        return sp.binomial(t + k - 1, k) if t < 10**6 and k < 10**6 else 10**9
    return 1


def small_enough(expr: sp.Basic) -> bool:
    """True when expanding (or simplifying) ``expr`` is cheap."""
    return expanded_terms(expr) <= MAX_EXPANDED_TERMS and sp.count_ops(expr) <= 60


def cheap_expand(expr: sp.Expr) -> sp.Expr:
    """``sp.expand(expr)`` when that is cheap, else ``expr`` unchanged."""
    return sp.expand(expr) if small_enough(expr) else expr


def cheap_simplify(expr: sp.Basic) -> sp.Basic:
    """``sp.trigsimp(expr)`` (``1 - tanh(x)**2 -> cosh(x)**-2``) when that is cheap, else ``expr``.

    ``sp.simplify`` is avoided: it can take seconds on small expressions (``tanh(sign(x)**2)``).
    """
    return sp.trigsimp(expr) if small_enough(expr) else expr


class _FloorD(sp.Function):
    """``floor`` while differentiating: a step function, derivative 0 almost everywhere."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Integer(0)


class _CeilD(_FloorD):
    """``ceiling`` while differentiating."""


def derivative(expr: sp.Basic, s: sp.Symbol) -> sp.Expr:
    """d expr / d s almost everywhere, like autograd: floor/ceil contribute 0 and
    ``a % b = a - b * floor(a / b)`` contributes ``a' - b' * floor(a / b)``."""
    e = expr.replace(lambda x: isinstance(x, sp.Mod),
                     lambda x: x.args[0] - x.args[1] * _FloorD(x.args[0] / x.args[1]))
    e = e.replace(sp.floor, _FloorD).replace(sp.ceiling, _CeilD)
    d = sp.diff(e, s)
    return d.replace(_CeilD, sp.ceiling).replace(_FloorD, sp.floor)
