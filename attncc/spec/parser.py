"""Safe parsing of spec expressions: Python ``ast`` with a whitelist, lowered to sympy.

Nothing in a spec is ever passed to ``eval``, ``exec`` or ``sympify``.  An
expression is parsed by :func:`ast.parse` in ``eval`` mode, every node is checked
against a whitelist, and the tree is lowered node by node into the vocabulary of
:mod:`attncc.ir.expr`.  Anything else (attribute access, imports, lambdas,
dunder names, unknown functions or names, keyword arguments, starred
arguments, strings) is rejected with a one-line :class:`SpecError` naming the
file, line and column.

Every expression is bounded before sympy sees it (:data:`LIMITS`): its length,
its nesting depth and node count, the size of every constant and of every
power's exponent.  Constant powers are checked *before* they are computed, so
``9**9**9**9`` is an error, never a hang.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import sympy as sp

from attncc.errors import SpecError
from attncc.ir import expr as E


@dataclass(frozen=True)
class Limits:
    """Bounds on one spec expression (documented in docs/spec-format.md)."""

    chars: int = 2000          # characters of the expression text
    depth: int = 40            # nesting depth of its syntax tree
    nodes: int = 500           # nodes of its syntax tree
    int_bits: int = 63         # |integer constant| < 2**63 (the kernel's widest integer)
    rational_bits: int = 128   # numerator and denominator of an exact fraction
    float_max: float = 1.7976931348623157e308  # finite float64
    exponent: int = 64         # |constant exponent| of a power of a non-constant base


LIMITS = Limits()


@dataclass(frozen=True)
class Location:
    """Where an expression string sits in its source (1-based line, 0-based column)."""

    file: str
    line: int = 0
    col: int = 0

    def at(self, node: ast.AST | None) -> str:
        if not self.line:
            return self.file
        if node is None or not hasattr(node, "col_offset"):
            return f"{self.file}:{self.line}:{self.col + 1}"
        line = self.line + node.lineno - 1
        col = (self.col if node.lineno == 1 else 0) + node.col_offset
        return f"{self.file}:{line}:{col + 1}"


@dataclass
class Scope:
    """Names an expression may use.

    ``names`` maps plain names to sympy symbols; ``tensors`` maps each captured
    tensor name to its number of indices; ``score`` says whether ``score`` is
    visible (score modifications) or not (mask predicates).
    """

    names: Mapping[str, sp.Basic]
    tensors: Mapping[str, int] = field(default_factory=dict)
    int_tensors: frozenset[str] = frozenset()


def _clamp(x: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr:
    return sp.Min(sp.Max(x, lo), hi)


def _sigmoid(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


# name -> (number of arguments, builder)
FUNCTIONS: dict[str, tuple[int, Callable[..., sp.Basic]]] = {
    "abs": (1, sp.Abs),
    "exp": (1, sp.exp),
    "log": (1, sp.log),
    "sqrt": (1, sp.sqrt),
    "tanh": (1, sp.tanh),
    "sigmoid": (1, _sigmoid),
    "floor": (1, sp.floor),
    "ceil": (1, sp.ceiling),
    "sign": (1, sp.sign),
    "min": (2, sp.Min),
    "max": (2, sp.Max),
    "clamp": (3, _clamp),
    "where": (3, E.where),
    "log2": (1, lambda x: sp.log(x) / sp.log(2)),
    "relu": (1, lambda x: E.where(x > 0, x, 0)),
    "elu": (1, lambda x: E.where(x > 0, x, sp.exp(x) - 1)),
    "softplus": (1, lambda x: sp.log(1 + sp.exp(x))),
}

CONSTANTS: dict[str, sp.Basic] = {"inf": sp.oo, "pi": sp.pi, "True": sp.true, "False": sp.false}

_BINOPS: dict[type, Callable[[sp.Basic, sp.Basic], sp.Basic]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: sp.floor(a / b),
    ast.Mod: lambda a, b: sp.Mod(a, b),
    ast.Pow: lambda a, b: a**b,
}
# Bit operators: logical on two conditions, bitwise on two integer expressions (decided by the operands).
_BITOPS: dict[type, str] = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}
_LOGICAL: dict[str, Callable[[sp.Basic, sp.Basic], sp.Basic]] = {
    "&": sp.And, "|": sp.Or, "^": lambda a, b: sp.Or(sp.And(a, sp.Not(b)), sp.And(sp.Not(a), b)),
}
MAX_SHIFT = 31  # constant shift counts: the kernel computes indices in 32-bit integers
_CMPOPS: dict[type, Callable[[sp.Basic, sp.Basic], sp.Basic]] = {
    ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge, ast.Eq: sp.Eq, ast.NotEq: sp.Ne,
}


def _is_bool(x: sp.Basic) -> bool:
    return isinstance(x, sp.logic.boolalg.Boolean) and not isinstance(x, sp.Expr)


def _as_bool(x: sp.Basic) -> sp.Basic:
    if _is_bool(x):
        return x
    raise TypeError("expected a condition (comparison or boolean)")


def short_text(x: sp.Basic, chars: int = 60) -> str:
    """``x`` as text, cut to ``chars`` characters (for error messages)."""
    text = sp.sstr(x, full_prec=False)
    return text if len(text) <= chars else text[: chars - 3] + "..."


def bit_operation(op: str, a: sp.Basic, b_: sp.Basic) -> sp.Basic:
    """``a OP b`` for a bit operator: logical on two conditions, bitwise on two integer expressions.

    Raises ``TypeError`` (a one-line message) for a condition mixed with a number, a shift of
    conditions, or a bitwise operation on a non-integer; ``ValueError`` for a constant shift
    count outside ``[0, MAX_SHIFT]``.
    """
    if _is_bool(a) and _is_bool(b_):
        if op not in _LOGICAL:
            raise TypeError(f"'{op}' needs integer operands, not conditions")
        return _LOGICAL[op](a, b_)
    if _is_bool(a) or _is_bool(b_):
        raise TypeError(f"'{op}' between a condition and a number: write (x != 0) to make the number a "
                        "condition, or where(c, 1, 0) to make the condition a number")
    for x in (a, b_):
        if not E.integer_valued(x):
            raise TypeError(f"bitwise '{op}' needs integer operands (indices, int params, integer captured "
                            f"tensors), got {short_text(x)}")
    if op in ("<<", ">>") and isinstance(b_, sp.Integer) and not 0 <= int(b_) <= MAX_SHIFT:
        raise ValueError(f"shift count {int(b_)} out of range [0, {MAX_SHIFT}]")
    return E.bitwise(op, a, b_)


def _as_number(x: sp.Basic) -> sp.Expr:
    if isinstance(x, sp.Expr):
        return x
    raise TypeError("expected a number, got a condition (use where(c, a, b) to turn one into a number)")


class _Lowering:
    """Lowers one whitelisted Python expression tree to sympy."""

    def __init__(self, scope: Scope, loc: Location, text: str = "") -> None:
        self.scope = scope
        self.loc = loc
        self.text = text.encode()  # ast columns are UTF-8 byte offsets

    def fail(self, node: ast.AST | None, message: str) -> SpecError:
        return SpecError(message, self.loc.at(node))

    def __call__(self, node: ast.AST) -> sp.Basic:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.fail(node, f"'{_describe(node)}' is not allowed in a spec expression")
        try:
            out = method(node)
        except SpecError:
            raise
        except ZeroDivisionError:
            raise self.fail(node, "division or modulo by zero") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise self.fail(node, str(exc).split("\n")[0] or type(exc).__name__) from None
        return self.bounded(node, out)

    def bounded(self, node: ast.AST, e: sp.Basic) -> sp.Basic:
        """``e`` if every constant in it is within :data:`LIMITS`, else a ``SpecError`` at ``node``."""
        problem = constant_problem(e)
        if problem:
            raise self.fail(node, problem)
        return e

    def visit_Expression(self, node: ast.Expression) -> sp.Basic:
        return self(node.body)

    def visit_Constant(self, node: ast.Constant) -> sp.Basic:
        v = node.value
        if isinstance(v, bool):
            return sp.true if v else sp.false
        if isinstance(v, int):
            if abs(v).bit_length() > LIMITS.int_bits:
                raise self.fail(node, f"integer constant out of range (|x| < 2**{LIMITS.int_bits})")
            return sp.Integer(v)
        if isinstance(v, float):
            return sp.oo if v == math.inf else sp.Float(v)
        raise self.fail(node, f"constant {v!r} is not a number")

    def visit_Name(self, node: ast.Name) -> sp.Basic:
        name = node.id
        if name.startswith("_"):
            raise self.fail(node, f"name '{name}' is not allowed")
        if name in self.scope.names:
            return self.scope.names[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in self.scope.tensors:
            raise self.fail(node, f"captured tensor '{name}' must be indexed, e.g. {name}[h]")
        raise self.fail(node, f"unknown name '{name}'")

    def visit_BinOp(self, node: ast.BinOp) -> sp.Basic:
        if type(node.op) in _BITOPS:
            return bit_operation(_BITOPS[type(node.op)], self(node.left), self(node.right))
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.fail(node, f"operator {_OP_SPELLING.get(type(node.op), type(node.op).__name__)} "
                            "is not allowed")
        a, b_ = _as_number(self(node.left)), _as_number(self(node.right))
        if isinstance(node.op, ast.Pow):
            problem = power_problem(a, b_)
            if problem:
                raise self.fail(node, problem)
        return op(a, b_)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> sp.Basic:
        x = self(node.operand)
        if isinstance(node.op, ast.USub):
            return -_as_number(x)
        if isinstance(node.op, ast.UAdd):
            return _as_number(x)
        if isinstance(node.op, ast.Invert) and not _is_bool(x):
            if not E.integer_valued(x):
                raise TypeError(f"bitwise '~' needs an integer operand or a condition, got {short_text(x)}")
            return E.bitwise("~", x, x)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            return sp.Not(_as_bool(x))
        raise self.fail(node, f"operator {type(node.op).__name__} is not allowed")

    def visit_BoolOp(self, node: ast.BoolOp) -> sp.Basic:
        vals = [_as_bool(self(v)) for v in node.values]
        return sp.And(*vals) if isinstance(node.op, ast.And) else sp.Or(*vals)

    def visit_Compare(self, node: ast.Compare) -> sp.Basic:
        if len(node.ops) > 1:
            for operand in [node.left, *node.comparators]:
                if isinstance(operand, ast.BinOp) and type(operand.op) in _BITOPS and not self.parenthesised(operand):
                    spelled = _BITOPS[type(operand.op)]
                    raise self.fail(operand, f"'{_describe(operand)}' inside a chained comparison: '{spelled}' binds "
                                    "tighter than comparisons; add parentheses to say which you mean")
        terms = [_as_number(self(node.left))] + [_as_number(self(c)) for c in node.comparators]
        parts = []
        for op, lhs, rhs in zip(node.ops, terms[:-1], terms[1:], strict=True):
            fn = _CMPOPS.get(type(op))
            if fn is None:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            parts.append(fn(lhs, rhs))
        return sp.And(*parts)

    def parenthesised(self, node: ast.AST) -> bool:
        """Whether ``node`` is written inside its own parentheses in the expression text."""
        if not self.text or getattr(node, "end_col_offset", None) is None or node.lineno != node.end_lineno:
            return True  # no text to look at: nothing to refuse
        before = self.text[:node.col_offset].rstrip()
        after = self.text[node.end_col_offset:].lstrip()
        return before.endswith(b"(") and after.startswith(b")")

    def visit_IfExp(self, node: ast.IfExp) -> sp.Basic:
        return E.where(_as_bool(self(node.test)), _as_number(self(node.body)), _as_number(self(node.orelse)))

    def visit_Call(self, node: ast.Call) -> sp.Basic:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, f"only plain function calls are allowed, not '{_describe(node.func)}'")
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.fail(node, f"unknown function '{name}' (allowed: {', '.join(sorted(FUNCTIONS))})")
        if node.keywords:
            raise self.fail(node, f"{name}() takes no keyword arguments")
        arity, build = FUNCTIONS[name]
        if len(node.args) != arity:
            raise self.fail(node, f"{name}() takes {arity} argument(s), got {len(node.args)}")
        args = [self(a) for a in node.args]
        if name == "where":
            args = [_as_bool(args[0]), _as_number(args[1]), _as_number(args[2])]
        else:
            args = [_as_number(a) for a in args]
        return build(*args)

    def visit_Subscript(self, node: ast.Subscript) -> sp.Basic:
        if not isinstance(node.value, ast.Name):
            raise self.fail(node, "only captured tensors may be indexed")
        name = node.value.id
        if name not in self.scope.tensors:
            raise self.fail(node, f"'{name}' is not a captured tensor of this spec")
        idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        want = self.scope.tensors[name]
        if len(idx) != want:
            raise self.fail(node, f"'{name}' has {want} index(es), indexed with {len(idx)}")
        args = [self(i) for i in idx]
        for i, a in zip(idx, args, strict=True):
            if not E.integer_valued(a):
                raise self.fail(i, f"an index of '{name}' must be an integer expression (use // for division)")
        return E.load(name, *args, integer=name in self.scope.int_tensors)


_OP_SPELLING = {ast.MatMult: "@"}


def _numeric_value(e: sp.Expr) -> float | None:
    """|e| as a float for a real constant (inf when beyond float64), None when not real."""
    try:
        v = complex(e.evalf(20))
    except (TypeError, ValueError, ArithmeticError):
        return None
    if v.imag != 0 or math.isnan(v.real):
        return None
    return abs(v.real)


def constant_problem(e: sp.Basic) -> str | None:
    """Why a constant in ``e`` is out of bounds (too large, complex, division by zero), or None."""
    walk = sp.preorder_traversal(e)
    for x in walk:
        if x is sp.zoo:
            return "division by zero (the expression is undefined)"
        if x is sp.I:
            return "the expression has a complex value"
        if isinstance(x, sp.Pow) and (problem := power_problem(*x.args)):
            return problem
        if not (isinstance(x, sp.Expr) and x.is_number) or x in (sp.oo, -sp.oo, sp.nan):
            continue
        if x.is_Integer:
            if abs(int(x)).bit_length() > LIMITS.int_bits:
                return f"integer constant out of range (|x| < 2**{LIMITS.int_bits})"
        elif x.is_Rational:
            if max(abs(x.p), x.q).bit_length() > LIMITS.rational_bits:
                return "fraction with too many digits"
        else:
            if x.has(sp.zoo, sp.I):
                continue  # reported when the walk reaches it
            v = _numeric_value(x)
            if v is None or v > LIMITS.float_max:
                return "constant out of range (complex, undefined, or beyond float64)"
            walk.skip()  # a bounded constant: its parts were bounded when they were built
    return None


def power_problem(base: sp.Basic, ex: sp.Basic) -> str | None:
    """Why ``base ** ex`` must not be built, or None.  Checked before sympy computes it."""
    if not (isinstance(base, sp.Expr) and isinstance(ex, sp.Expr)):
        return None
    if ex.is_number:
        if ex in (sp.oo, -sp.oo, sp.nan, sp.zoo):
            return "the exponent of a power must be finite"
        ve = _numeric_value(ex)
        if ve is None:
            return "the exponent of a power must be a real number"
        if base.is_number:
            vb = _numeric_value(base)
            if vb is None:
                return "the base of a power must be a real number"
            if vb not in (0.0, 1.0) and ve * abs(math.log2(vb)) > 1100:
                return "constant power out of range (the result would exceed float64)"
            return None
        if ve > LIMITS.exponent:
            return f"exponent out of range (|exponent| <= {LIMITS.exponent} for a non-constant base)"
        return None
    if base.is_number:
        vb = _numeric_value(base)
        if vb is None or base in (sp.oo, -sp.oo, sp.nan):
            return "the base of a power must be a finite real number"
        if vb == 0.0:
            return "a power of 0 needs a constant exponent"
        if base.is_negative and not ex.is_integer:
            return f"a negative base ({base}) needs an integer exponent (the result would be complex)"
    return None


def _describe(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # noqa: BLE001 - description only
        return type(node).__name__


def parse_expression(text: str, scope: Scope, loc: Location) -> sp.Basic:
    """Parse one spec expression into sympy, or raise a one-line ``SpecError``."""
    tree = parse_tree(text, loc)
    out = _Lowering(scope, loc, text.strip())(tree)
    E.check_vocabulary(out, loc.at(None))
    return out


def parse_tree(text: object, loc: Location) -> ast.Expression:
    """``ast.parse`` of one bounded, one-line expression; every failure is a ``SpecError``."""
    if not isinstance(text, str):
        raise SpecError("expected an expression string", loc.at(None))
    if len(text) > LIMITS.chars:
        raise SpecError(f"expression too long ({len(text)} characters, at most {LIMITS.chars})", loc.at(None))
    if "\n" in text.strip() or "\r" in text.strip():
        raise SpecError("an expression must fit on one line", loc.at(None))
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = (exc.offset or 1) - 1 if exc.lineno in (None, 1) else 0
        node = ast.Constant(0, lineno=1, col_offset=max(col, 0))
        raise SpecError(f"syntax error: {exc.msg}", loc.at(node)) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        msg = "nested too deeply" if isinstance(exc, (RecursionError, MemoryError)) else str(exc)
        raise SpecError(f"syntax error: {msg}", loc.at(None)) from None
    _check_size(tree, loc)
    return tree


def _check_size(tree: ast.Expression, loc: Location) -> None:
    """Depth and node count of the syntax tree, without recursion."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > LIMITS.depth:
            raise SpecError(f"expression nested too deeply (at most {LIMITS.depth} levels)", loc.at(node))
        if count > LIMITS.nodes:
            raise SpecError(f"expression too large (at most {LIMITS.nodes} syntax nodes)", loc.at(None))
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
