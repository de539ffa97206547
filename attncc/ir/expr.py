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
  sign convention), relationals and ``And``/``Or``/``Not``.

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


def where(cond: sp.Basic, a: sp.Expr, b_: sp.Expr) -> sp.Expr:
    """``cond ? a : b`` as a ``Piecewise``; constant conditions fold."""
    if cond is sp.true:
        return sp.sympify(a)
    if cond is sp.false:
        return sp.sympify(b_)
    return sp.Piecewise((a, cond), (b_, True))


_ALLOWED_FUNCS = (
    sp.Piecewise, sp.Min, sp.Max, sp.Abs, sp.exp, sp.log, sp.tanh, sp.floor, sp.ceiling,
    sp.Mod, sp.sign, Load, IntLoad,
)
_ALLOWED_ATOMS = (sp.Symbol, sp.Number, sp.logic.boolalg.BooleanAtom, sp.NumberSymbol)
_ALLOWED_OPS = (
    sp.Add, sp.Mul, sp.Pow, sp.core.relational.Relational, sp.And, sp.Or, sp.Not,
    sp.functions.elementary.piecewise.ExprCondPair,
)


def check_vocabulary(expr: sp.Basic, where_: str) -> None:
    """Raise ``SpecError`` if ``expr`` uses anything outside the vocabulary."""
    for node in sp.preorder_traversal(expr):
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
