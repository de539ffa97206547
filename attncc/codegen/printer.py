"""Print sympy expressions of the IR vocabulary as Triton code.

A :class:`TritonPrinter` is given a ``names`` table mapping each symbol to the
code that holds its value in the kernel (``m -> offs_m[:, None]`` inside a
tile, ``m_first`` for tile bounds, ``window -> p_window``) and a ``capture``
callback that prints a captured-tensor load.  Integer ``//`` and ``%`` follow
Python semantics (floor), through helpers emitted only when used.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.printing.str import StrPrinter

from attncc.ir import expr as E

HELPERS: dict[str, str] = {
    "_tanh": '''@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) * (1 - e^(-2|x|)) / (1 + e^(-2|x|)), stable for large |x|."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)
''',
    "_floordiv": '''@triton.jit
def _floordiv(a, b):
    """Python's a // b for integers (rounds toward -inf; Triton's // truncates)."""
    q = a // b
    return q - (((a % b) != 0) & ((a < 0) != (b < 0))).to(q.dtype)
''',
    "_floor_log2": '''@triton.jit
def _floor_log2(x):
    """floor(log2(x)) of an integer x: exact for x >= 1 (fp32 log2, then corrected by one where the
    conversion to fp32 or the rounding crossed a power of two); for x <= 0 what tl.log2 gives."""
    f = tl.floor(tl.log2(x.to(tl.float32)))
    k = tl.where(x > 0, f, 0.0).to(x.dtype)
    y = x >> k
    k = tl.where(y >= 2, k + 1, tl.where(y == 0, k - 1, k))
    return tl.where(x > 0, k.to(tl.float32), f)
''',
    "_pymod": '''@triton.jit
def _pymod(a, b):
    """Python's a % b for integers (result has the sign of b)."""
    r = a % b
    return r + (((r != 0) & ((r < 0) != (b < 0))).to(r.dtype) * b)
''',
}


class TritonPrinter(StrPrinter):
    """sympy -> Triton expression text; records which helpers it used."""

    def __init__(self, names: dict[sp.Symbol, str], capture: Callable[[E.Load, TritonPrinter], str]) -> None:
        super().__init__({"order": "none"})
        self.names = names
        self.capture = capture
        self.helpers: set[str] = set()

    def doprint(self, expr: sp.Basic) -> str:  # type: ignore[override]
        return super().doprint(sp.sympify(expr))

    def p(self, e: sp.Basic) -> str:
        return self._print(e)

    def _print(self, expr: sp.Basic, **kwargs: object) -> str:  # type: ignore[override]
        # Closed-form numbers (log(3), sqrt(2), 2**0.5) become float literals.
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Integer and not expr.is_infinite:
            value = complex(expr.evalf())
            if value.imag == 0:
                return repr(float(value.real))
        return super()._print(expr, **kwargs)

    def _print_DiracDelta(self, e: sp.Basic) -> str:
        return "0.0"  # derivative of sign / step functions: zero almost everywhere

    def _print_Heaviside(self, e: sp.Basic) -> str:
        a = self.p(e.args[0])
        return f"tl.where({a} > 0, 1.0, 0.0)"

    def _print_Symbol(self, s: sp.Symbol) -> str:
        if s not in self.names:
            raise KeyError(f"no kernel value for symbol '{s}'")
        return self.names[s]

    def _print_Integer(self, e: sp.Integer) -> str:
        return str(int(e))

    def _print_Float(self, e: sp.Float) -> str:
        return repr(float(e))

    def _print_Rational(self, e: sp.Rational) -> str:
        return repr(float(e))

    def _print_NaN(self, e: sp.Basic) -> str:
        return 'float("nan")'

    def _print_ComplexInfinity(self, e: sp.Basic) -> str:
        raise ValueError("no kernel value for complex infinity (a division by zero)")

    def _print_ImaginaryUnit(self, e: sp.Basic) -> str:
        raise ValueError("no kernel value for a complex number")

    def _print_Derivative(self, e: sp.Basic) -> str:
        raise ValueError(f"no kernel form for the derivative {e}")

    def _print_Subs(self, e: sp.Basic) -> str:
        raise ValueError(f"no kernel form for {e}")

    def _print_Infinity(self, e: sp.Basic) -> str:
        return 'float("inf")'

    def _print_NegativeInfinity(self, e: sp.Basic) -> str:
        return 'float("-inf")'

    def _print_Pi(self, e: sp.Basic) -> str:
        return repr(float(sp.pi))

    def _print_Exp1(self, e: sp.Basic) -> str:
        return repr(float(sp.E))

    def _print_BooleanTrue(self, e: sp.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, e: sp.Basic) -> str:
        return "False"

    def _print_Add(self, e: sp.Add) -> str:
        terms = list(e.args)
        out = self.p(terms[0])
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += f" - {self._wrap(-t)}"
            else:
                out += f" + {self.p(t)}"
        return f"({out})"

    def _wrap(self, e: sp.Basic) -> str:
        s = self.p(e)
        return s if (e.is_Atom or s.startswith("(")) else f"({s})"

    def _print_Mul(self, e: sp.Mul) -> str:
        split = E.log2_split(e)
        if split is not None:
            text = self.log2(split[0])
            return text if split[1] == 1 else f"({self._wrap(split[1])} * {text})"
        num, den = [], []
        for a in e.args:
            if a.is_Pow and a.exp.is_negative and a.exp == -1:
                den.append(a.base)
            elif a.is_Rational and not a.is_Integer and a.p == 1:
                den.append(sp.Integer(a.q))
            else:
                num.append(a)
        if num and num[0] == -1:
            num = num[1:]
            sign = "-"
        else:
            sign = ""
        top = " * ".join(self._wrap(a) for a in num) if num else "1.0"
        if den:
            bottom = " * ".join(self._wrap(a) for a in den)
            top = f"{top} / ({bottom})" if len(den) > 1 else f"{top} / {bottom}"
        return f"({sign}{top})"

    def f(self, e: sp.Basic) -> str:
        """An operand of a float function: integer expressions are promoted to float first."""
        return f"({self.p(e)} * 1.0)" if e.is_integer else self.p(e)

    def _print_Pow(self, e: sp.Pow) -> str:
        text = self._print_real_pow(e)
        # An integer to a non-negative integer power is an integer (2 ** k in torch): exp/log leave it
        # a few ulps off, so round back to the exact value (exact up to 2**24 in fp32).
        if e.is_integer and not e.exp.is_Integer and not text.startswith("(1.0 / "):
            return f"tl.floor({text} + 0.5)"
        return text

    def _print_real_pow(self, e: sp.Pow) -> str:
        base, ex = e.args
        if base.is_number:  # c ** x = exp(log(c) * x); for c < 0 only integer x (sign from its parity)
            if base.is_positive:
                return f"tl.exp({float(sp.log(base).evalf())!r} * {self._wrap(ex)})"
            if base.is_negative and ex.is_integer:
                mag = f"tl.exp({float(sp.log(-base).evalf())!r} * {self._wrap(ex)})"
                return f"(tl.where(({self._wrap(ex)} % 2) != 0, -1.0, 1.0) * {mag})"
            raise ValueError(f"no real kernel value for {e}")
        if ex == -1:
            return f"(1.0 / {self._wrap(base)})"
        if ex == sp.Rational(1, 2):
            return f"tl.sqrt({self.f(base)})"
        if ex == sp.Rational(-1, 2):
            return f"tl.rsqrt({self.f(base)})"
        if ex.is_Integer and 1 < int(ex) <= 4:
            b_ = self._wrap(base)
            return "(" + " * ".join([b_] * int(ex)) + ")"
        if ex.is_Integer and -4 <= int(ex) < -1:
            b_ = self._wrap(base)
            return "(1.0 / (" + " * ".join([b_] * -int(ex)) + "))"
        if ex.is_Integer:  # |x|**k with the sign of x**k: x < 0 and k odd gives a negative result
            b_ = self.f(base)
            mag = f"tl.exp(tl.log(tl.abs({b_})) * {int(ex)}.0)"
            return f"(tl.where({b_} < 0, -1.0, 1.0) * {mag})" if int(ex) % 2 else mag
        return f"tl.exp(tl.log({self.f(base)}) * {self._wrap(ex)})"

    def _print_exp(self, e: sp.Basic) -> str:
        return f"tl.exp({self.f(e.args[0])})"

    def log2(self, x: sp.Expr) -> str:
        """``log2(x)``: a base-2 logarithm (exact at powers of two), not ``log(x) * (1 / log(2))``."""
        return f"tl.log2({self.f(x)})"

    def floor_log2(self, x: sp.Expr) -> str:
        """``floor(log2(x))`` of an integer expression, exact."""
        self.helpers.add("_floor_log2")
        return f"_floor_log2({self.p(x)})"

    def _print_BitOp(self, e: E.BitOp) -> str:
        a, b_ = e.args
        return f"({self._wrap(a)} {e.symbol} {self._wrap(b_)})"

    # sympy dispatches a Function subclass by its own name only
    _print_BitAnd = _print_BitOr = _print_BitXor = _print_ShiftLeft = _print_ShiftRight = _print_BitOp

    def _print_log(self, e: sp.Basic) -> str:
        return f"tl.log({self.f(e.args[0])})"

    def _print_tanh(self, e: sp.Basic) -> str:
        self.helpers.add("_tanh")
        return f"_tanh({self.f(e.args[0])})"

    def _print_cosh(self, e: sp.Basic) -> str:
        a = self.p(e.args[0])
        return f"(0.5 * (tl.exp({a}) + tl.exp(-({a}))))"

    def _print_Abs(self, e: sp.Basic) -> str:
        return f"tl.abs({self.p(e.args[0])})"

    def _print_sign(self, e: sp.Basic) -> str:
        a = self.p(e.args[0])
        return f"tl.where({a} > 0, 1.0, tl.where({a} < 0, -1.0, 0.0))"

    def _minmax(self, e: sp.Basic, fn: str) -> str:
        args = [self.p(a) for a in e.args]
        out = args[0]
        for a in args[1:]:
            out = f"tl.{fn}({out}, {a})"
        return out

    def _print_Min(self, e: sp.Basic) -> str:
        return self._minmax(e, "minimum")

    def _print_Max(self, e: sp.Basic) -> str:
        return self._minmax(e, "maximum")

    def _int_div(self, e: sp.Basic) -> tuple[sp.Expr, sp.Expr] | None:
        """a/b with a, b integer expressions (``floor(a/b)``), else None."""
        num, den = sp.fraction(sp.together(e))
        if num.is_integer and den.is_integer:
            return num, den
        return None

    def _print_floor(self, e: sp.Basic) -> str:
        arg = e.args[0]
        if arg.is_integer:
            return self.p(arg)
        x = E.floor_log2_argument(e)
        if x is not None:
            return self.floor_log2(x)
        nd = self._int_div(arg)
        if nd is None:
            return f"tl.floor({self.p(arg)})"
        a, b_ = nd
        if a.is_nonnegative and b_.is_positive:
            return f"({self._wrap(a)} // {self._wrap(b_)})"
        self.helpers.add("_floordiv")
        return f"_floordiv({self.p(a)}, {self.p(b_)})"

    def _print_ceiling(self, e: sp.Basic) -> str:
        arg = e.args[0]
        if arg.is_integer:
            return self.p(arg)
        nd = self._int_div(arg)
        if nd is None:
            return f"tl.ceil({self.p(arg)})"
        a, b_ = nd
        self.helpers.add("_floordiv")
        return f"(-_floordiv(-({self.p(a)}), {self.p(b_)}))"

    def _print_Mod(self, e: sp.Basic) -> str:
        a, b_ = e.args
        if a.is_nonnegative and b_.is_positive:
            return f"({self._wrap(a)} % {self._wrap(b_)})"
        self.helpers.add("_pymod")
        return f"_pymod({self.p(a)}, {self.p(b_)})"

    def _print_Piecewise(self, e: sp.Piecewise) -> str:
        *pairs, last = e.args
        out = self.p(last.expr) if last.cond is sp.true else 'float("nan")'
        if last.cond is not sp.true:
            pairs = [*pairs, last]
        for expr, cond in reversed(pairs):
            out = f"tl.where({self.p(cond)}, {self.p(expr)}, {out})"
        return out

    def _rel(self, e: sp.Basic, op: str) -> str:
        return f"({self.p(e.lhs)} {op} {self.p(e.rhs)})"

    def _print_StrictLessThan(self, e: sp.Basic) -> str:
        return self._rel(e, "<")

    def _print_LessThan(self, e: sp.Basic) -> str:
        return self._rel(e, "<=")

    def _print_StrictGreaterThan(self, e: sp.Basic) -> str:
        return self._rel(e, ">")

    def _print_GreaterThan(self, e: sp.Basic) -> str:
        return self._rel(e, ">=")

    def _print_Equality(self, e: sp.Basic) -> str:
        return self._rel(e, "==")

    def _print_Unequality(self, e: sp.Basic) -> str:
        return self._rel(e, "!=")

    def _print_And(self, e: sp.Basic) -> str:
        return "(" + " & ".join(self.p(a) for a in e.args) + ")"

    def _print_Or(self, e: sp.Basic) -> str:
        return "(" + " | ".join(self.p(a) for a in e.args) + ")"

    def _print_Not(self, e: sp.Basic) -> str:
        return f"({self.p(e.args[0])} == 0)"

    def _print_Function(self, e: sp.Basic) -> str:
        if isinstance(e, E.Load):
            return self.capture(e, self)
        raise KeyError(f"no Triton form for function {type(e).__name__}")

    _print_Load = _print_Function
    _print_IntLoad = _print_Function


class TorchPrinter(TritonPrinter):
    """sympy -> torch expression text (for index arithmetic in generated launchers).

    Values are wrapped with ``_t`` (``torch.as_tensor``) where torch needs tensors.
    """

    def _minmax(self, e: sp.Basic, fn: str) -> str:
        args = [self.p(a) for a in e.args]
        out = args[0]
        for a in args[1:]:
            out = f"torch.{fn}(_t({out}), _t({a}))"
        return out

    def _print_Abs(self, e: sp.Basic) -> str:
        return f"torch.abs(_t({self.p(e.args[0])}))"

    def _print_Pow(self, e: sp.Pow) -> str:
        return f"torch.pow(_t({self.p(e.base)}), {self.p(e.exp)})"

    def _torch_fn(self, e: sp.Basic, fn: str) -> str:
        return f"torch.{fn}(_t({self.p(e.args[0])}).double())"

    def _print_exp(self, e: sp.Basic) -> str:
        return self._torch_fn(e, "exp")

    def _print_log(self, e: sp.Basic) -> str:
        return self._torch_fn(e, "log")

    def _print_tanh(self, e: sp.Basic) -> str:
        return self._torch_fn(e, "tanh")

    def log2(self, x: sp.Expr) -> str:
        return f"torch.log2(_t({self.p(x)}).double())"

    def floor_log2(self, x: sp.Expr) -> str:
        """Exact through the binary exponent: x = f * 2**e with 0.5 <= f < 1 for x >= 1."""
        t = f"_t({self.p(x)})"
        return (f"torch.where({t} > 0, torch.frexp({t}.double())[1] - 1.0, "
                f"torch.floor(torch.log2({t}.double())))")

    def _print_BitOp(self, e: E.BitOp) -> str:
        a, b_ = e.args
        return f"(_t({self.p(a)}) {e.symbol} _t({self.p(b_)}))"

    _print_BitAnd = _print_BitOr = _print_BitXor = _print_ShiftLeft = _print_ShiftRight = _print_BitOp

    def _print_sign(self, e: sp.Basic) -> str:
        return f"torch.sign(_t({self.p(e.args[0])}))"

    def _print_floor(self, e: sp.Basic) -> str:
        arg = e.args[0]
        if arg.is_integer:
            return self.p(arg)
        x = E.floor_log2_argument(e)
        if x is not None:
            return self.floor_log2(x)
        nd = self._int_div(arg)
        if nd is None:
            return f"torch.floor(_t({self.p(arg)}))"
        return f'torch.div(_t({self.p(nd[0])}), {self.p(nd[1])}, rounding_mode="floor")'

    def _print_ceiling(self, e: sp.Basic) -> str:
        arg = e.args[0]
        if arg.is_integer:
            return self.p(arg)
        nd = self._int_div(arg)
        if nd is None:
            return f"torch.ceil(_t({self.p(arg)}))"
        return f'(-torch.div(-_t({self.p(nd[0])}), {self.p(nd[1])}, rounding_mode="floor"))'

    def _print_Mod(self, e: sp.Basic) -> str:
        return f"torch.remainder(_t({self.p(e.args[0])}), {self.p(e.args[1])})"

    def _print_Piecewise(self, e: sp.Piecewise) -> str:
        *pairs, last = e.args
        out = self.p(last.expr)
        for expr, cond in reversed(pairs):
            out = f"torch.where(_t({self.p(cond)}), _t({self.p(expr)}), _t({out}))"
        return out

    def _print_Function(self, e: sp.Basic) -> str:
        if isinstance(e, E.Load):
            return self.capture(e, self)  # a load inside an index (bias[dist[b, m, n]])
        raise KeyError(f"no torch form for {type(e).__name__} in an index expression")

    _print_Load = _print_Function
    _print_IntLoad = _print_Function


def tile_shaped(fn: str, expr: sp.Basic, call_args: str) -> str:
    """A call of a score hook, broadcast to the tile when the expression does not involve it."""
    call = f"{fn}(s, {call_args})"
    if not ({E.score, E.m, E.n} & expr.free_symbols):
        return f"{call} + tl.zeros_like(s)"
    return call
