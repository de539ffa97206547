"""Trace FlexAttention-style ``score_mod`` / ``mask_mod`` Python functions into sympy.

The function is called once with :class:`Sym` proxies for ``score, b, h, q_idx,
kv_idx``.  Python operators and the torch functions a mod may use (``torch.where``,
``torch.tanh``, ``torch.abs``, comparisons, ``&``, ``|``, ``~``, indexing of
captured tensors, ...) are intercepted through ``__torch_function__`` and build
an expression of :mod:`attncc.ir.expr`.  Captured tensors become named loads;
Python numbers captured by closures become constants.  Anything else (data-
dependent ``if``, unsupported torch functions) is a one-line :class:`SpecError`.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sympy as sp
import torch

from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.spec.names import collisions, name_problem


def _where_loc(fn: Callable[..., Any]) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{fn.__code__.co_firstlineno}"
    except (TypeError, AttributeError):
        return getattr(fn, "__name__", "<mod>")


@dataclass
class Captures:
    """Tensors met while tracing, deduplicated by identity, with readable names."""

    fn_names: dict[int, str] = field(default_factory=dict)  # id(tensor) -> closure/global name
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    by_id: dict[int, str] = field(default_factory=dict)

    def name_of(self, t: torch.Tensor) -> str:
        if id(t) in self.by_id:
            return self.by_id[id(t)]
        base = self.fn_names.get(id(t), "")
        if not base or name_problem(base, "capture") or collisions([], [(base, max(t.dim(), 1))]):
            base = f"cap{len(self.tensors)}"  # a name the generated code cannot confuse
        name, k = base, 1
        while name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        self.by_id[id(t)] = name
        self.tensors[name] = t
        return name

    def learn_names(self, fn: Callable[..., Any]) -> None:
        """Name captured tensors after the closure or global variables that hold them."""
        code = getattr(fn, "__code__", None)
        if code is None:
            return
        cells = dict(zip(code.co_freevars, [c.cell_contents for c in (fn.__closure__ or ())], strict=False))
        glb = {n: fn.__globals__[n] for n in code.co_names if n in getattr(fn, "__globals__", {})}
        for name, val in {**glb, **cells}.items():
            if isinstance(val, torch.Tensor) and name.isidentifier() and not name.startswith("_"):
                self.fn_names.setdefault(id(val), name)


class Sym:
    """A traced value: wraps a sympy expression (number or condition)."""

    _ctx: Captures | None = None
    _loc: str = "<mod>"

    def __init__(self, e: sp.Basic) -> None:
        self.e = e

    # --- Python operators -----------------------------------------------------------
    def __add__(self, o: Any) -> Sym: return Sym(self.e + _ex(o))
    def __radd__(self, o: Any) -> Sym: return Sym(_ex(o) + self.e)
    def __sub__(self, o: Any) -> Sym: return Sym(self.e - _ex(o))
    def __rsub__(self, o: Any) -> Sym: return Sym(_ex(o) - self.e)
    def __mul__(self, o: Any) -> Sym: return Sym(self.e * _ex(o))
    def __rmul__(self, o: Any) -> Sym: return Sym(_ex(o) * self.e)
    def __truediv__(self, o: Any) -> Sym: return Sym(self.e / _ex(o))
    def __rtruediv__(self, o: Any) -> Sym: return Sym(_ex(o) / self.e)
    def __floordiv__(self, o: Any) -> Sym: return Sym(sp.floor(self.e / _ex(o)))
    def __rfloordiv__(self, o: Any) -> Sym: return Sym(sp.floor(_ex(o) / self.e))
    def __mod__(self, o: Any) -> Sym: return Sym(sp.Mod(self.e, _ex(o)))
    def __rmod__(self, o: Any) -> Sym: return Sym(sp.Mod(_ex(o), self.e))
    def __pow__(self, o: Any) -> Sym: return Sym(_power(self.e, _ex(o)))
    def __rpow__(self, o: Any) -> Sym: return Sym(_power(_ex(o), self.e))
    def __neg__(self) -> Sym: return Sym(-self.e)
    def __pos__(self) -> Sym: return self
    def __abs__(self) -> Sym: return Sym(sp.Abs(self.e))
    def __lt__(self, o: Any) -> Sym: return Sym(sp.Lt(self.e, _ex(o)))
    def __le__(self, o: Any) -> Sym: return Sym(sp.Le(self.e, _ex(o)))
    def __gt__(self, o: Any) -> Sym: return Sym(sp.Gt(self.e, _ex(o)))
    def __ge__(self, o: Any) -> Sym: return Sym(sp.Ge(self.e, _ex(o)))
    def __eq__(self, o: Any) -> Sym: return Sym(sp.Eq(self.e, _ex(o)))  # type: ignore[override]
    def __ne__(self, o: Any) -> Sym: return Sym(sp.Ne(self.e, _ex(o)))  # type: ignore[override]
    def __and__(self, o: Any) -> Sym: return Sym(sp.And(_cond(self.e), _cond(_ex(o))))
    def __rand__(self, o: Any) -> Sym: return Sym(sp.And(_cond(_ex(o)), _cond(self.e)))
    def __or__(self, o: Any) -> Sym: return Sym(sp.Or(_cond(self.e), _cond(_ex(o))))
    def __ror__(self, o: Any) -> Sym: return Sym(sp.Or(_cond(_ex(o)), _cond(self.e)))
    def __invert__(self) -> Sym: return Sym(sp.Not(_cond(self.e)))
    def __xor__(self, o: Any) -> Sym: return _unsupported("__xor__")
    def __rxor__(self, o: Any) -> Sym: return _unsupported("__xor__")
    def __lshift__(self, o: Any) -> Sym: return _unsupported("__lshift__")
    def __rlshift__(self, o: Any) -> Sym: return _unsupported("__lshift__")
    def __rshift__(self, o: Any) -> Sym: return _unsupported("__rshift__")
    def __rrshift__(self, o: Any) -> Sym: return _unsupported("__rshift__")
    def __matmul__(self, o: Any) -> Sym: return _unsupported("__matmul__")
    def __rmatmul__(self, o: Any) -> Sym: return _unsupported("__matmul__")
    def __divmod__(self, o: Any) -> Sym: return _unsupported("__divmod__")
    def __rdivmod__(self, o: Any) -> Sym: return _unsupported("__divmod__")
    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise SpecError("data-dependent Python control flow (if/and/or/not on a traced value); "
                        "use torch.where, &, | and ~ instead", Sym._loc)

    def __index__(self) -> int:
        raise SpecError("a traced index cannot be used as a Python int", Sym._loc)

    # --- tensor-method spellings ------------------------------------------------------
    def abs(self) -> Sym: return Sym(sp.Abs(self.e))
    def exp(self) -> Sym: return Sym(sp.exp(self.e))
    def log(self) -> Sym: return Sym(sp.log(self.e))
    def tanh(self) -> Sym: return Sym(sp.tanh(self.e))
    def sqrt(self) -> Sym: return Sym(sp.sqrt(self.e))
    def sigmoid(self) -> Sym: return Sym(1 / (1 + sp.exp(-self.e)))
    def clamp(self, min: Any = None, max: Any = None) -> Sym: return _clamp(self, min, max)  # noqa: A002
    def to(self, *args: Any, **kwargs: Any) -> Sym: return self
    def float(self) -> Sym: return self
    def int(self) -> Sym: return self
    def long(self) -> Sym: return self
    def bool(self) -> Sym: return self
    def logical_and(self, o: Any) -> Sym: return self & o
    def logical_or(self, o: Any) -> Sym: return self | o
    def logical_not(self) -> Sym: return ~self

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        handler = _TORCH.get(name)
        if handler is None:
            raise SpecError(f"torch.{name} is not supported in score_mod/mask_mod", Sym._loc)
        return handler(*args, **kwargs)


# Python operators a mod may spell that have no meaning in the spec language.
_UNSUPPORTED = {
    "__xor__": "bitwise xor (^) is not supported in score_mod/mask_mod; for conditions write (a) != (b)",
    "__lshift__": "bit shifts (<<) are not supported in score_mod/mask_mod; multiply by a power of two",
    "__rshift__": "bit shifts (>>) are not supported in score_mod/mask_mod; use // by a power of two",
    "__matmul__": "matrix products (@) are not supported in score_mod/mask_mod",
    "__divmod__": "divmod is not supported in score_mod/mask_mod; use // and %",
}
_TORCH_UNSUPPORTED = {"bitwise_xor": "__xor__", "logical_xor": "__xor__", "bitwise_left_shift": "__lshift__",
                      "bitwise_right_shift": "__rshift__", "matmul": "__matmul__"}
_NOT_THE_MOD = (str(Path(__file__).resolve().parent), str(Path(torch.__file__).resolve().parent))


def _mod_loc() -> str:
    """``file:line:col`` of the innermost frame of the mod being traced (else the mod's first line)."""
    frame = sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_NOT_THE_MOD):
        frame = frame.f_back
    if frame is None:
        return Sym._loc
    positions = list(frame.f_code.co_positions())
    line, _, col, _ = positions[frame.f_lasti // 2] if frame.f_lasti // 2 < len(positions) else (None,) * 4
    return f"{frame.f_code.co_filename}:{line or frame.f_lineno}:{(col or 0) + 1}"


def _unsupported(op: str, *args: Any, **kwargs: Any) -> Sym:
    raise SpecError(_UNSUPPORTED[op], _mod_loc())


def _power(base: sp.Basic, ex: sp.Basic) -> sp.Basic:
    """``base ** ex`` with torch's meaning: an integer to a negative integer power is an integer
    in torch (``2 ** -1 == 0``), not a fraction, so an integer exponent that may be negative on an
    integer base is refused rather than given float semantics."""
    if base.is_integer and ex.is_integer and not ex.is_nonnegative:
        raise SpecError("integer ** integer with an exponent that may be negative is an integer in torch "
                        "(2 ** -1 == 0); write a float base (2.0 ** x) or clamp the exponent at 0", _mod_loc())
    return base ** ex


def _ex(x: Any) -> sp.Basic:
    if isinstance(x, Sym):
        return x.e
    if isinstance(x, bool):
        return sp.true if x else sp.false
    if isinstance(x, int):
        return sp.Integer(x)
    if isinstance(x, float):
        if x == float("inf"):
            return sp.oo
        if x == float("-inf"):
            return -sp.oo
        return sp.Float(x)
    if isinstance(x, torch.Tensor):
        return _tensor_value(x)
    raise SpecError(f"cannot trace a value of type {type(x).__name__}", Sym._loc)


def _tensor_value(t: torch.Tensor) -> sp.Basic:
    """A captured tensor used as a value: only 0-d (or 1-element) tensors make sense."""
    if t.numel() != 1:
        raise SpecError(f"captured tensor of shape {tuple(t.shape)} used without indexing", Sym._loc)
    assert Sym._ctx is not None
    name = Sym._ctx.name_of(t)
    ld = E.load(name, *([0] * max(t.dim(), 1)), integer=not t.dtype.is_floating_point)
    return sp.Ne(ld, 0) if t.dtype == torch.bool else ld


def _cond(e: sp.Basic) -> sp.Basic:
    if isinstance(e, sp.logic.boolalg.Boolean) and not isinstance(e, sp.Expr):
        return e
    if e.is_number:
        return sp.true if e != 0 else sp.false
    raise SpecError(f"expected a condition, got the number {e}", Sym._loc)


def _clamp(x: Any, min: Any = None, max: Any = None) -> Sym:  # noqa: A002 - torch's keyword names
    e = _ex(x)
    if min is not None:
        e = sp.Max(e, _ex(min))
    if max is not None:
        e = sp.Min(e, _ex(max))
    return Sym(e)


def _getitem(t: Any, idx: Any) -> Sym:
    if not isinstance(t, torch.Tensor):
        raise SpecError("only captured tensors may be indexed", Sym._loc)
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis or i is None or isinstance(i, slice) for i in items):
        raise SpecError("captured tensors must be indexed elementwise, without slices or ...", Sym._loc)
    if len(items) != t.dim():
        raise SpecError(f"captured tensor of shape {tuple(t.shape)} indexed with {len(items)} index(es)", Sym._loc)
    assert Sym._ctx is not None
    name = Sym._ctx.name_of(t)
    ld = E.load(name, *[_ex(i) for i in items], integer=not t.dtype.is_floating_point)
    return Sym(sp.Ne(ld, 0) if t.dtype == torch.bool else ld)


def _where(cond: Any, a: Any, b: Any) -> Sym:
    return Sym(E.where(_cond(_ex(cond)), _ex(a), _ex(b)))


def _binary(op: Callable[[Any, Any], Any]) -> Callable[..., Sym]:
    def run(a: Any, b: Any, *rest: Any, **kw: Any) -> Sym:
        return op(a if isinstance(a, Sym) else Sym(_ex(a)), b)
    return run


def _unary(fn: Callable[[sp.Basic], sp.Basic]) -> Callable[..., Sym]:
    def run(a: Any, *rest: Any, **kw: Any) -> Sym:
        return Sym(fn(_ex(a)))
    return run


def _identity(a: Any, *rest: Any, **kw: Any) -> Any:
    return a


_TORCH: dict[str, Callable[..., Any]] = {
    "where": _where, "__getitem__": _getitem, "clamp": _clamp, "clip": _clamp,
    "tanh": _unary(sp.tanh), "exp": _unary(sp.exp), "log": _unary(sp.log), "sqrt": _unary(sp.sqrt),
    "abs": _unary(sp.Abs), "sigmoid": _unary(lambda x: 1 / (1 + sp.exp(-x))), "sign": _unary(sp.sign),
    "floor": _unary(sp.floor), "ceil": _unary(sp.ceiling), "neg": _unary(lambda x: -x),
    "rsqrt": _unary(lambda x: 1 / sp.sqrt(x)), "square": _unary(lambda x: x * x),
    "exp2": _unary(lambda x: 2**x), "log2": _unary(lambda x: sp.log(x) / sp.log(2)),
    "logical_not": _unary(lambda x: sp.Not(_cond(x))), "bitwise_not": _unary(lambda x: sp.Not(_cond(x))),
    "minimum": lambda a, b: Sym(sp.Min(_ex(a), _ex(b))), "maximum": lambda a, b: Sym(sp.Max(_ex(a), _ex(b))),
    "logical_and": _binary(lambda a, b: a & b), "logical_or": _binary(lambda a, b: a | b),
    "to": _identity, "float": _identity, "int": _identity, "long": _identity, "type_as": _identity,
    "__add__": _binary(lambda a, b: a + b), "__radd__": _binary(lambda a, b: b + a),
    "__sub__": _binary(lambda a, b: a - b), "__rsub__": _binary(lambda a, b: a.__rsub__(b)),
    "__mul__": _binary(lambda a, b: a * b), "__rmul__": _binary(lambda a, b: b * a),
    "__truediv__": _binary(lambda a, b: a / b), "__rtruediv__": _binary(lambda a, b: a.__rtruediv__(b)),
    "__floordiv__": _binary(lambda a, b: a // b), "__mod__": _binary(lambda a, b: a % b),
    "__lt__": _binary(lambda a, b: a < b), "__le__": _binary(lambda a, b: a <= b),
    "__gt__": _binary(lambda a, b: a > b), "__ge__": _binary(lambda a, b: a >= b),
    "__eq__": _binary(lambda a, b: a == b), "__ne__": _binary(lambda a, b: a != b),
    "__and__": _binary(lambda a, b: a & b), "__or__": _binary(lambda a, b: a | b),
    "add": _binary(lambda a, b: a + b), "sub": _binary(lambda a, b: a - b),
    "mul": _binary(lambda a, b: a * b), "div": _binary(lambda a, b: a / b),
    "eq": _binary(lambda a, b: a == b), "ne": _binary(lambda a, b: a != b),
    "lt": _binary(lambda a, b: a < b), "le": _binary(lambda a, b: a <= b),
    "gt": _binary(lambda a, b: a > b), "ge": _binary(lambda a, b: a >= b),
    **{name: functools.partial(_unsupported, name) for name in _UNSUPPORTED},
    **{name: functools.partial(_unsupported, op) for name, op in _TORCH_UNSUPPORTED.items()},
}


@dataclass
class Traced:
    """Result of tracing: expressions and the captured tensors they read."""

    modify: sp.Basic
    mask: sp.Basic
    captures: dict[str, torch.Tensor]


def trace(score_mod: Callable[..., Any] | None, mask_mod: Callable[..., Any] | None) -> Traced:
    """Trace both mods (either may be None) into one expression pair."""
    ctx = Captures()
    for fn in (score_mod, mask_mod):
        if fn is not None:
            ctx.learn_names(fn)
    Sym._ctx = ctx
    try:
        modify: sp.Basic = E.score
        mask: sp.Basic = sp.true
        if score_mod is not None:
            Sym._loc = _where_loc(score_mod)
            out = score_mod(Sym(E.score), Sym(E.b), Sym(E.h), Sym(E.m), Sym(E.n))
            modify = _ex(out)
            if isinstance(modify, sp.logic.boolalg.Boolean) and not isinstance(modify, sp.Expr):
                raise SpecError("score_mod returned a condition; it must return a score", Sym._loc)
            E.check_vocabulary(modify, Sym._loc)
        if mask_mod is not None:
            Sym._loc = _where_loc(mask_mod)
            out = mask_mod(Sym(E.b), Sym(E.h), Sym(E.m), Sym(E.n))
            mask = _cond(_ex(out))
            if E.score in mask.free_symbols:
                raise SpecError("mask_mod cannot depend on the score", Sym._loc)
            E.check_vocabulary(mask, Sym._loc)
    finally:
        Sym._ctx = None
    return Traced(modify, mask, ctx.tensors)
