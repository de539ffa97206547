"""Trace FlexAttention-style ``score_mod`` / ``mask_mod`` Python functions into sympy.

The function is called once with :class:`Sym` proxies for ``score, b, h, q_idx,
kv_idx``.  Python operators and the torch functions a mod may use (``torch.where``,
``torch.tanh``, ``torch.abs``, comparisons, ``& | ^ << >> ~``, indexing of
captured tensors, ...) are intercepted through ``__torch_function__`` and build
an expression of :mod:`attncc.ir.expr`; tensor methods (``x.clamp_min(0)``,
``b.new_ones(())``, ``x.to(torch.bool)``, :data:`_METHODS`) are methods of the proxy,
so torch's ``and_masks``, ``or_masks`` and ``noop_mask`` trace as written.  Bit
operators are logical on conditions and bitwise on integers, as in torch; dtype
conversions follow torch (a float converted to an integer truncates toward zero).
Captured tensors become named loads (an index may itself be a load); Python numbers
captured by closures become constants.  Anything else (data-dependent ``if``,
unsupported torch functions) is a one-line :class:`SpecError`.
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
from attncc.spec.parser import bit_operation, short_text


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
    def __and__(self, o: Any) -> Sym: return _bit("&", self, o)
    def __rand__(self, o: Any) -> Sym: return _bit("&", o, self)
    def __or__(self, o: Any) -> Sym: return _bit("|", self, o)
    def __ror__(self, o: Any) -> Sym: return _bit("|", o, self)
    def __xor__(self, o: Any) -> Sym: return _bit("^", self, o)
    def __rxor__(self, o: Any) -> Sym: return _bit("^", o, self)
    def __lshift__(self, o: Any) -> Sym: return _bit("<<", self, o)
    def __rlshift__(self, o: Any) -> Sym: return _bit("<<", o, self)
    def __rshift__(self, o: Any) -> Sym: return _bit(">>", self, o)
    def __rrshift__(self, o: Any) -> Sym: return _bit(">>", o, self)
    def __invert__(self) -> Sym: return _invert(self)
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

    # --- tensor attributes and methods (the methods are added below, from _METHODS) -------
    @property
    def dtype(self) -> torch.dtype:
        """torch's dtype of this value: bool for conditions, int64 for integers, else float32."""
        return _DTYPE_OF_KIND[_kind(self.e)]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def where(self, condition: Any, other: Any) -> Sym:
        """``self.where(c, y)`` is ``torch.where(c, self, y)``."""
        return _where(condition, self, other)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func is torch.Tensor.where:  # x.where(c, y) on a captured tensor
            return _where(args[1], args[0], *args[2:], **kwargs)
        handler = _TORCH.get(name)
        if handler is None:
            raise SpecError(f"torch.{name} is not supported in score_mod/mask_mod", Sym._loc)
        return handler(*args, **kwargs)


# Python operators a mod may spell that have no meaning in the spec language.
_UNSUPPORTED = {
    "__matmul__": "matrix products (@) are not supported in score_mod/mask_mod",
    "__divmod__": "divmod is not supported in score_mod/mask_mod; use // and %",
}
_TORCH_UNSUPPORTED = {"matmul": "__matmul__"}
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


def _is_bool(e: sp.Basic) -> bool:
    return isinstance(e, sp.logic.boolalg.Boolean) and not isinstance(e, sp.Expr)


def _kind(e: sp.Basic) -> str:
    """torch's kind of a traced value: ``bool``, ``int`` or ``float``."""
    if _is_bool(e):
        return "bool"
    return "int" if E.integer_valued(e) else "float"


_DTYPE_OF_KIND = {"bool": torch.bool, "int": torch.int64, "float": torch.float32}


def _kind_of_dtype(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "float" if dtype.is_floating_point else "int"


def _convert(e: sp.Basic, kind: str) -> sp.Basic:
    """``e`` converted as torch converts a tensor to a dtype of ``kind`` (floats to integers truncate)."""
    have = _kind(e)
    if have == kind:
        return e
    if kind == "bool":
        return sp.Ne(e, 0)
    if have == "bool":
        one, zero = (sp.Integer(1), sp.Integer(0)) if kind == "int" else (sp.Float(1.0), sp.Float(0.0))
        return E.where(e, one, zero)
    if kind == "int":  # toward zero
        return E.where(sp.Ge(e, 0), sp.floor(e), sp.ceiling(e))
    return e


def _truth(e: sp.Basic) -> sp.Basic:
    """``e`` as a condition, as torch's logical_* functions read a number (nonzero is true)."""
    return e if _is_bool(e) else sp.Ne(e, 0)


def _bit(op: str, a: Any, b: Any) -> Sym:
    """``a OP b`` for ``& | ^ << >>``: logical on conditions, bitwise on integers (by the operands)."""
    x, y = _ex(a), _ex(b)
    if _is_bool(x) != _is_bool(y) and op in ("&", "|", "^"):  # a condition with a constant number:
        x, y = (_truth(v) if v.is_number else v for v in (x, y))  # the number's truth value, as before
    try:
        return Sym(bit_operation(op, x, y))
    except (TypeError, ValueError) as exc:
        raise SpecError(str(exc), _mod_loc()) from None


def _invert(a: Any) -> Sym:
    """``~a``: logical not of a condition, bitwise not of an integer."""
    x = _ex(a)
    if _is_bool(x):
        return Sym(sp.Not(x))
    if not E.integer_valued(x):
        raise SpecError(f"bitwise '~' needs an integer operand or a condition, got {short_text(x)}", _mod_loc())
    return Sym(E.bitwise("~", x, x))


def _dtype_arg(args: tuple, kwargs: dict) -> str | None:
    """The kind of the dtype ``x.to(...)`` / ``x.type_as(...)`` converts to, or None (a device only)."""
    for x in (kwargs.get("dtype"), *args):
        if isinstance(x, torch.dtype):
            return _kind_of_dtype(x)
        if isinstance(x, Sym):
            return _kind(x.e)
        if isinstance(x, torch.Tensor):
            return _kind_of_dtype(x.dtype)
    return None


def _to(a: Any, *args: Any, **kwargs: Any) -> Sym:
    kind = _dtype_arg(args, kwargs)
    x = _ex(a)
    return Sym(x if kind is None else _convert(x, kind))


def _cast(kind: str) -> Callable[..., Sym]:
    def run(a: Any, *rest: Any, **kw: Any) -> Sym:
        return Sym(_convert(_ex(a), kind))
    return run


def _scalar_size(size: Any) -> None:
    """Tensors a mod creates must hold one element (they are broadcast like a number)."""
    dims = tuple(size) if isinstance(size, (tuple, list, torch.Size)) else (size,)
    if any(not isinstance(d, int) or d != 1 for d in dims):
        raise SpecError(f"a mod may create only one-element tensors (size () or (1,)), got size {size!r}",
                        _mod_loc())


def _filled(value: Any, like: Any, size: Any, dtype: torch.dtype | None) -> Sym:
    """A one-element tensor holding ``value``, of ``dtype`` (default: the dtype of ``like``)."""
    _scalar_size(size)
    v = _ex(value)
    kind = _kind_of_dtype(dtype) if dtype is not None else _kind(_ex(like))
    if kind == "float" and v.is_number and not _is_bool(v):
        v = sp.Float(float(v)) if v.is_finite else v
    return Sym(_convert(v, kind))


def _new_full(a: Any, size: Any = (), fill_value: Any = 0, *rest: Any, dtype: torch.dtype | None = None,
              **kw: Any) -> Sym:
    return _filled(fill_value, a, size, dtype)


def _new_const(value: int) -> Callable[..., Sym]:
    def run(a: Any, *size: Any, dtype: torch.dtype | None = None, **kw: Any) -> Sym:
        shape = kw.get("size", size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size)
        return _filled(value, a, shape, dtype)
    return run


def _like(value: Any | None) -> Callable[..., Sym]:
    def run(a: Any, *rest: Any, dtype: torch.dtype | None = None, **kw: Any) -> Sym:
        fill = kw.get("fill_value", rest[0] if rest else 0) if value is None else value
        return _filled(fill, a, (), dtype)
    return run


def _masked_fill(a: Any, mask: Any, value: Any) -> Sym:
    return Sym(E.where(_cond(_ex(mask)), _ex(value), _ex(a)))


def _two_way(fn: Callable[[sp.Basic, sp.Basic], sp.Basic], name: str) -> Callable[..., Sym]:
    """``torch.min(a, b)`` / ``torch.max(a, b)`` elementwise; a reduction (one argument) is refused."""
    def run(a: Any, b: Any = None, *rest: Any, other: Any = None, **kw: Any) -> Sym:
        o = b if b is not None else other
        if o is None or (isinstance(o, int) and not isinstance(o, bool)):  # torch.max(x, dim)
            raise SpecError(f"torch.{name} over a dimension is not supported in score_mod/mask_mod; "
                            f"use torch.{name}imum(a, b)", _mod_loc())
        return Sym(fn(_ex(a), _ex(o)))
    return run


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
    c, x, y = _cond(_ex(cond)), _ex(a), _ex(b)
    if _is_bool(x) and _is_bool(y):  # a choice between two conditions is a condition
        return Sym(sp.Or(sp.And(c, x), sp.And(sp.Not(c), y)))
    if _is_bool(x) or _is_bool(y):
        x, y = (_convert(v, "int") if _is_bool(v) else v for v in (x, y))  # torch promotes the bool branch
    return Sym(E.where(c, x, y))


def _binary(op: Callable[[Any, Any], Any]) -> Callable[..., Sym]:
    def run(a: Any, b: Any, *rest: Any, **kw: Any) -> Sym:
        return op(a if isinstance(a, Sym) else Sym(_ex(a)), b)
    return run


def _unary(fn: Callable[[sp.Basic], sp.Basic]) -> Callable[..., Sym]:
    def run(a: Any, *rest: Any, **kw: Any) -> Sym:
        return Sym(fn(_ex(a)))
    return run


def _clamp_min(a: Any, min: Any = None, **kw: Any) -> Sym:  # noqa: A002 - torch's keyword name
    return _clamp(a, min, None)


def _clamp_max(a: Any, max: Any = None, **kw: Any) -> Sym:  # noqa: A002 - torch's keyword name
    return _clamp(a, None, max)


_TORCH: dict[str, Callable[..., Any]] = {
    "where": _where, "__getitem__": _getitem, "clamp": _clamp, "clip": _clamp,
    "tanh": _unary(sp.tanh), "exp": _unary(sp.exp), "log": _unary(sp.log), "sqrt": _unary(sp.sqrt),
    "abs": _unary(sp.Abs), "sigmoid": _unary(lambda x: 1 / (1 + sp.exp(-x))), "sign": _unary(sp.sign),
    "floor": _unary(sp.floor), "ceil": _unary(sp.ceiling), "neg": _unary(lambda x: -x),
    "rsqrt": _unary(lambda x: 1 / sp.sqrt(x)), "square": _unary(lambda x: x * x),
    "exp2": _unary(lambda x: 2**x), "log2": _unary(lambda x: sp.log(x) / sp.log(2)),
    "logical_not": _unary(lambda x: sp.Not(_truth(x))), "bitwise_not": lambda a, *r, **k: _invert(a),
    "__invert__": lambda a, *r, **k: _invert(a),
    "minimum": lambda a, b, **k: Sym(sp.Min(_ex(a), _ex(b))), "maximum": lambda a, b, **k: Sym(sp.Max(_ex(a), _ex(b))),
    "min": _two_way(sp.Min, "min"), "max": _two_way(sp.Max, "max"),
    "clamp_min": _clamp_min, "clamp_max": _clamp_max, "masked_fill": _masked_fill,
    "logical_and": lambda a, b, **k: Sym(sp.And(_truth(_ex(a)), _truth(_ex(b)))),
    "logical_or": lambda a, b, **k: Sym(sp.Or(_truth(_ex(a)), _truth(_ex(b)))),
    "logical_xor": lambda a, b, **k: _bit("^", Sym(_truth(_ex(a))), Sym(_truth(_ex(b)))),
    "bitwise_and": lambda a, b, **k: _bit("&", a, b), "bitwise_or": lambda a, b, **k: _bit("|", a, b),
    "bitwise_xor": lambda a, b, **k: _bit("^", a, b),
    "bitwise_left_shift": lambda a, b, **k: _bit("<<", a, b), "bitwise_right_shift": lambda a, b, **k: _bit(">>", a, b),
    "__xor__": lambda a, b: _bit("^", a, b), "__rxor__": lambda a, b: _bit("^", b, a),
    "__lshift__": lambda a, b: _bit("<<", a, b), "__rlshift__": lambda a, b: _bit("<<", b, a),
    "__rshift__": lambda a, b: _bit(">>", a, b), "__rrshift__": lambda a, b: _bit(">>", b, a),
    "__rand__": lambda a, b: _bit("&", b, a), "__ror__": lambda a, b: _bit("|", b, a),
    "to": _to, "type_as": lambda a, other, **k: _to(a, other),
    "float": _cast("float"), "double": _cast("float"), "half": _cast("float"), "bfloat16": _cast("float"),
    "int": _cast("int"), "long": _cast("int"), "short": _cast("int"), "bool": _cast("bool"),
    "new_ones": _new_const(1), "new_zeros": _new_const(0), "new_full": _new_full,
    "ones_like": _like(1), "zeros_like": _like(0), "full_like": _like(None),
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

# Tensor methods a mod may call on its arguments or on traced values (x.abs(), b.new_ones(()), ...).
_METHODS = (
    "abs", "exp", "log", "log2", "exp2", "tanh", "sqrt", "rsqrt", "sigmoid", "sign", "square", "floor", "ceil",
    "neg", "clamp", "clip", "clamp_min", "clamp_max", "minimum", "maximum", "masked_fill",
    "to", "type_as", "float", "double", "half", "bfloat16", "int", "long", "short", "bool",
    "new_ones", "new_zeros", "new_full", "logical_and", "logical_or", "logical_xor", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift", "bitwise_right_shift",
    "add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
)


def _method(name: str) -> Callable[..., Any]:
    def method(self: Sym, *args: Any, **kwargs: Any) -> Any:
        return _TORCH[name](self, *args, **kwargs)
    method.__name__ = name
    method.__doc__ = f"``x.{name}(...)``, as ``torch.{name}(x, ...)``."
    return method


for _name in _METHODS:
    setattr(Sym, _name, _method(_name))


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
