"""Dense evaluation of IR expressions with torch: the spec's own reference semantics.

Used by ``attncc check`` (kernel vs. the spec evaluated densely in float64), by
``BlockMask.to_dense`` and by ``attncc explain`` for tile statistics.  This is
*not* the independent test oracle: tests write their references by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sympy as sp
import torch

from attncc.errors import InputError
from attncc.ir import expr as E

Value = Any  # torch.Tensor | int | float | bool


def evaluate(expr: sp.Basic, env: Mapping[sp.Symbol, Value], captures: Mapping[str, torch.Tensor]) -> Value:
    """Evaluate ``expr``; symbols come from ``env`` (broadcastable tensors or numbers)."""
    return _Eval(env, captures)(expr)


def _t(x: Value) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x)


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """``floor(log2(x))`` of an integer tensor, exact for ``x >= 1`` (the binary exponent of
    ``x = f * 2**e``, ``0.5 <= f < 1``); what ``floor(log2(x))`` gives (-inf, nan) for ``x <= 0``."""
    xd = x.double()
    return torch.where(x > 0, torch.frexp(xd)[1].double() - 1.0, torch.floor(torch.log2(xd)))


_BIT_FUNCS = {
    E.BitAnd: torch.bitwise_and, E.BitOr: torch.bitwise_or, E.BitXor: torch.bitwise_xor,
    E.ShiftLeft: torch.bitwise_left_shift, E.ShiftRight: torch.bitwise_right_shift,
}


class _Eval:
    def __init__(self, env: Mapping[sp.Symbol, Value], captures: Mapping[str, torch.Tensor]) -> None:
        self.env = env
        self.captures = captures

    def __call__(self, e: sp.Basic) -> Value:
        if isinstance(e, sp.Symbol):
            if e not in self.env:
                raise InputError(f"no value for '{e}'")
            return self.env[e]
        if e is sp.true or e is sp.false:
            return bool(e)
        if e.is_Integer:
            return int(e)
        if e is sp.oo:
            return float("inf")
        if e is -sp.oo:
            return float("-inf")
        if e.is_Number or isinstance(e, sp.NumberSymbol):
            return float(e)
        method = getattr(self, f"_{type(e).__name__}", None)
        if method is None:
            raise InputError(f"cannot evaluate {type(e).__name__}")
        return method(e)

    def _args(self, e: sp.Basic) -> list[Value]:
        return [self(a) for a in e.args]

    def _Add(self, e: sp.Basic) -> Value:
        out = 0
        for a in self._args(e):
            out = out + a
        return out

    def _Mul(self, e: sp.Basic) -> Value:
        split = E.log2_split(e)
        if split is not None:  # log2(x): exact at powers of two, like the kernel's tl.log2
            out = torch.log2(_t(self(split[0])).double())
            return out if split[1] == 1 else self(split[1]) * out
        out = 1
        for a in self._args(e):
            out = out * a
        return out

    def _Pow(self, e: sp.Basic) -> Value:
        b_, x = self._args(e)
        if isinstance(b_, int) and isinstance(x, int) and x < 0:
            return float(b_) ** x
        return _t(b_).double() ** x if isinstance(b_, torch.Tensor) and isinstance(x, int) and x < 0 else b_ ** x

    def _unary(self, e: sp.Basic, fn: Any) -> Value:
        return fn(_t(self(e.args[0])).double() if fn is not torch.abs else _t(self(e.args[0])))

    def _exp(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.exp)

    def _log(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.log)

    def _tanh(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.tanh)

    def _cosh(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.cosh)

    def _Abs(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.abs)

    def _sign(self, e: sp.Basic) -> Value:
        return self._unary(e, torch.sign)

    def _floor(self, e: sp.Basic) -> Value:
        x = E.floor_log2_argument(e)
        if x is not None:
            return floor_log2(_t(self(x)))
        arg = e.args[0]
        num, den = sp.fraction(sp.together(arg))
        if num.is_integer and den.is_integer and den != 1:
            return torch.div(_t(self(num)), _t(self(den)), rounding_mode="floor")
        v = self(arg)
        return torch.floor(_t(v)) if not (arg.is_integer) else v

    def _ceiling(self, e: sp.Basic) -> Value:
        arg = e.args[0]
        num, den = sp.fraction(sp.together(arg))
        if num.is_integer and den.is_integer and den != 1:
            return -torch.div(-_t(self(num)), _t(self(den)), rounding_mode="floor")
        v = self(arg)
        return torch.ceil(_t(v)) if not arg.is_integer else v

    def _Mod(self, e: sp.Basic) -> Value:
        a, b_ = self._args(e)
        return torch.remainder(_t(a), _t(b_))

    def _Min(self, e: sp.Basic) -> Value:
        args = [_t(a) for a in self._args(e)]
        out = args[0]
        for a in args[1:]:
            out = torch.minimum(out, a)
        return out

    def _Max(self, e: sp.Basic) -> Value:
        args = [_t(a) for a in self._args(e)]
        out = args[0]
        for a in args[1:]:
            out = torch.maximum(out, a)
        return out

    def _Piecewise(self, e: sp.Piecewise) -> Value:
        out: Value = float("nan")
        for expr, cond in reversed(e.args):
            out = torch.where(_t(self(cond)), _t(self(expr)), _t(out))
        return out

    def _rel(self, e: sp.Basic, op: Any) -> Value:
        return op(_t(self(e.lhs)), _t(self(e.rhs)))

    def _StrictLessThan(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.lt)

    def _LessThan(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.le)

    def _StrictGreaterThan(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.gt)

    def _GreaterThan(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.ge)

    def _Equality(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.eq)

    def _Unequality(self, e: sp.Basic) -> Value:
        return self._rel(e, torch.ne)

    def _And(self, e: sp.Basic) -> Value:
        out = _t(True)
        for a in self._args(e):
            out = out & _t(a)
        return out

    def _Or(self, e: sp.Basic) -> Value:
        out = _t(False)
        for a in self._args(e):
            out = out | _t(a)
        return out

    def _Not(self, e: sp.Basic) -> Value:
        return ~_t(self(e.args[0]))

    def _bitop(self, e: sp.Basic) -> Value:
        a, b_ = (_t(v) for v in self._args(e))
        return _BIT_FUNCS[type(e)](a, b_)

    _BitAnd = _BitOr = _BitXor = _ShiftLeft = _ShiftRight = _bitop

    def _Load(self, e: E.Load) -> Value:
        t = self.captures.get(e.tensor_name)
        if t is None:
            raise InputError(f"missing captured tensor '{e.tensor_name}'")
        idx = [_t(self(i)).long() for i in e.indices]
        for k, (i, size) in enumerate(zip(idx, t.shape, strict=True)):
            if i.numel() and (int(i.min()) < 0 or int(i.max()) >= size):
                raise InputError(f"captured tensor '{e.tensor_name}' dim {k} (size {size}) indexed out of range "
                                 f"[{int(i.min())}, {int(i.max())}]")
        return t[tuple(idx)]

    _IntLoad = _Load
