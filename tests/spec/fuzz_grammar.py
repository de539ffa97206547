"""A grammar of spec expressions for the fuzzer, each generated with its own torch semantics.

Every expression is built as an :class:`X`: its spec text and, independently of
attncc, a torch evaluator written from the spec language's documented meaning
(Python's floor ``//`` and ``%``, ``where``, ``clamp``, captured loads, ...).
``tame`` marks expressions whose value is finite and exactly defined in fp32 and
fp64 alike (integer arithmetic within int32, smooth float functions of bounded
arguments, no division by a variable): only those are run against the kernel.
The wider grammar also produces what must be rejected: huge constants and powers,
deep nesting, division by zero, complex values, unknown names and code payloads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from hypothesis import strategies as st

Env = dict[str, Any]

INT_BOUND = 2**30  # tame integer values stay within int32 in the kernel


@dataclass(frozen=True)
class X:
    """One generated expression: text, kind ("int" | "float" | "bool"), torch evaluator, bound on |value|."""

    text: str
    kind: str
    ev: Callable[[Env], Any] = field(compare=False)
    bound: float = math.inf
    tame: bool = True
    caps: frozenset[str] = frozenset()


def _t(x: Any, env: Env) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, bool):
        return torch.tensor(x)
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.int64)
    return torch.tensor(x, dtype=env["dtype"])


def _f(x: Any, env: Env) -> torch.Tensor:
    """As a float tensor of the environment's dtype."""
    return _t(x, env).to(env["dtype"])


def _load(name: str, *idx: Any) -> Callable[[Env], torch.Tensor]:
    """``name[idx]``: the documented semantics, indices outside the tensor read 0."""
    def ev(env: Env) -> torch.Tensor:
        t = env["caps"][name]
        ix = [_t(i(env), env).long() for i in idx]
        ix = list(torch.broadcast_tensors(*ix))
        ok = torch.ones_like(ix[0], dtype=torch.bool)
        for k, i in enumerate(ix):
            ok &= (i >= 0) & (i < t.shape[k])
        safe = [i.clamp(0, t.shape[k] - 1) for k, i in enumerate(ix)]
        val = t[tuple(safe)]
        val = val if not val.is_floating_point() else val.to(env["dtype"])
        return torch.where(ok, val, torch.zeros_like(val))
    return ev


# --- leaves -----------------------------------------------------------------------------------

def _index(name: str, bound: float) -> X:
    return X(name, "int", lambda env: env[name], bound)


INT_LEAVES = [_index(s, 100) for s in ("b", "h", "m", "n", "B", "H", "M", "N")]
PARAM_LEAVES = [X("w", "int", lambda env: env["params"]["w"], 100),
                X("alpha", "float", lambda env: env["params"]["alpha"], 4.0)]
LOAD_LEAVES = [
    X("bias[h]", "float", _load("bias", lambda env: env["h"]), 4.0, caps=frozenset({"bias"})),
    X("table[h, (m - n) % 5]", "float",
      _load("table", lambda env: env["h"], lambda env: torch.remainder(env["m"] - env["n"], 5)), 4.0,
      caps=frozenset({"table"})),
    X("lens[b]", "int", _load("lens", lambda env: env["b"]), 100, caps=frozenset({"lens"})),
]


def int_literals() -> st.SearchStrategy[X]:
    return st.integers(-9, 40).map(lambda c: X(str(c) if c >= 0 else f"({c})", "int", lambda env, c=c: c, abs(c)))


def float_literals() -> st.SearchStrategy[X]:
    vals = st.sampled_from([0.5, 0.25, 1.5, 2.0, 0.1, 3.0, -0.75, 1e-3])
    return vals.map(lambda c: X(repr(c) if c >= 0 else f"({c!r})", "float", lambda env, c=c: c, abs(c)))


@cache
def tame_leaves() -> st.SearchStrategy[X]:
    return st.one_of(st.sampled_from(INT_LEAVES + PARAM_LEAVES + LOAD_LEAVES), int_literals(), float_literals())


# --- composition ------------------------------------------------------------------------------

def _num(kind_a: str, kind_b: str) -> str | None:
    if not {kind_a, kind_b} <= {"int", "float"}:
        return None
    return "int" if kind_a == kind_b == "int" else "float"


def _arith(a: X, op: str, b: X) -> X:
    kind = _num(a.kind, b.kind)
    text = f"({a.text} {op} {b.text})"
    caps = a.caps | b.caps
    lit = _literal_value(b)
    if kind is None:
        return X(text, "bad", lambda env: None, tame=False, caps=caps)
    if op in "+-":
        fn = (lambda x, y: x + y) if op == "+" else (lambda x, y: x - y)
        bound, tame = a.bound + b.bound, True
    elif op == "*":
        fn, bound, tame = (lambda x, y: x * y), a.bound * b.bound, True
    elif op == "/":
        kind, fn = "float", (lambda x, y: x / y)
        tame = lit is not None and lit != 0
        bound = a.bound / abs(lit) if tame else math.inf
    elif op == "//":
        fn = _floordiv
        tame = lit is not None and lit != 0 and kind == "int"
        bound = a.bound + 1
    else:  # %
        fn = torch.remainder
        tame = lit is not None and lit != 0 and kind == "int"
        bound = abs(lit) if lit else math.inf
    cast = (lambda v, env: _t(v, env)) if kind == "int" else _f

    def ev(env: Env) -> torch.Tensor:
        return fn(cast(a.ev(env), env), cast(b.ev(env), env))
    tame = tame and a.tame and b.tame and bound <= (INT_BOUND if kind == "int" else 100.0)
    return X(text, kind, ev, bound, tame, caps)


def _floordiv(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.div(x, y, rounding_mode="floor")


def _literal_value(x: X) -> float | None:
    try:
        return float(x.text.strip("()"))
    except ValueError:
        return None


def _power(a: X, k: int) -> X:
    text = f"({a.text} ** {k})"
    kind = a.kind if a.kind in ("int", "float") else "bad"
    bound = a.bound**k if a.bound < 1e6 else math.inf
    tame = a.tame and kind != "bad" and bound <= (INT_BOUND if kind == "int" else 100.0)
    return X(text, kind, lambda env: _t(a.ev(env), env) ** k, bound, tame, a.caps)


_UNARY: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[float], float]]] = {
    # name -> (text template, torch function, bound of the result from the argument's bound)
    "tanh": ("tanh({})", torch.tanh, lambda b: 1.0),
    "sigmoid": ("sigmoid({})", torch.sigmoid, lambda b: 1.0),
    "abs": ("abs({})", torch.abs, lambda b: b),
    "sqrtabs": ("sqrt(abs({}))", lambda x: torch.sqrt(torch.abs(x)), lambda b: math.sqrt(b)),
    "log1p": ("log(1 + abs({}))", lambda x: torch.log(1 + torch.abs(x)), lambda b: math.log1p(b)),
    "expneg": ("exp(-abs({}))", lambda x: torch.exp(-torch.abs(x)), lambda b: 1.0),
    "neg": ("-({})", lambda x: -x, lambda b: b),
}


def _unary(name: str, a: X) -> X:
    template, fn, bnd = _UNARY[name]
    ok = a.kind in ("int", "float")
    kind = "int" if name in ("abs", "neg") and a.kind == "int" else "float"
    bound = bnd(a.bound) if ok and a.bound < math.inf else math.inf

    def ev(env: Env) -> torch.Tensor:
        x = a.ev(env)
        return fn(_t(x, env)) if kind == "int" else fn(_f(x, env))
    return X(template.format(a.text), kind if ok else "bad", ev, bound, a.tame and ok, a.caps)


def _int_fn(name: str, a: X) -> X:
    """floor / ceil / sign of an integer expression: exact in every dtype."""
    ok = a.kind == "int"
    fn = {"floor": lambda x: x, "ceil": lambda x: x, "sign": torch.sign}[name]
    bound = 1 if name == "sign" else a.bound
    return X(f"{name}({a.text})", "int" if ok else "float", lambda env: fn(_t(a.ev(env), env)), bound,
             a.tame and ok, a.caps)


def _minmax(name: str, a: X, b: X) -> X:
    kind = _num(a.kind, b.kind)
    fn = torch.minimum if name == "min" else torch.maximum

    def ev(env: Env) -> torch.Tensor:
        x, y = a.ev(env), b.ev(env)
        if kind == "int":
            return fn(_t(x, env), _t(y, env))
        return fn(_f(x, env), _f(y, env))
    return X(f"{name}({a.text}, {b.text})", kind or "bad", ev, max(a.bound, b.bound),
             a.tame and b.tame and kind is not None, a.caps | b.caps)


_CMP = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


def _compare(a: X, op: str, b: X) -> X:
    ok = a.kind == b.kind == "int"  # float comparisons may flip between fp32 and fp64: not tame
    valid = _num(a.kind, b.kind) is not None

    def ev(env: Env) -> torch.Tensor:
        return _CMP[op](_t(a.ev(env), env), _t(b.ev(env), env))
    return X(f"({a.text} {op} {b.text})", "bool" if valid else "bad", ev, 1, a.tame and b.tame and ok,
             a.caps | b.caps)


def _boolop(a: X, op: str, b: X) -> X:
    ok = a.kind == b.kind == "bool"
    fn = {"&": torch.logical_and, "|": torch.logical_or, "and": torch.logical_and, "or": torch.logical_or}[op]
    return X(f"({_paren(a.text)} {op} {_paren(b.text)})", "bool" if ok else "bad",
             lambda env: fn(_t(a.ev(env), env), _t(b.ev(env), env)), 1, a.tame and b.tame and ok, a.caps | b.caps)


def _paren(text: str) -> str:
    return text if text.startswith("(") and text.endswith(")") else f"({text})"


def _not(a: X, spelling: str) -> X:
    ok = a.kind == "bool"
    text = f"(not {a.text})" if spelling == "not" else f"(~{a.text})"
    return X(text, "bool" if ok else "bad", lambda env: torch.logical_not(_t(a.ev(env), env)), 1,
             a.tame and ok, a.caps)


def _where(c: X, a: X, b: X, spelling: str) -> X:
    kind = _num(a.kind, b.kind)
    ok = c.kind == "bool" and kind is not None

    def ev(env: Env) -> torch.Tensor:
        x, y = a.ev(env), b.ev(env)
        cast = (lambda v: _t(v, env)) if kind == "int" else (lambda v: _f(v, env))
        return torch.where(_t(c.ev(env), env), cast(x), cast(y))
    text = (f"where({c.text}, {a.text}, {b.text})" if spelling == "where"
            else f"({a.text} if {c.text} else {b.text})")
    return X(text, kind if ok else "bad", ev, max(a.bound, b.bound), ok and c.tame and a.tame and b.tame,
             c.caps | a.caps | b.caps)


def _clamp(a: X, lo: int, hi: int) -> X:
    ok = a.kind in ("int", "float")

    def ev(env: Env) -> torch.Tensor:
        x = a.ev(env)
        x = _t(x, env) if a.kind == "int" else _f(x, env)
        return torch.clamp(x, lo, hi)
    return X(f"clamp({a.text}, {lo}, {hi})", a.kind if ok else "bad", ev, max(abs(lo), abs(hi)), a.tame and ok,
             a.caps)


def extend(children: st.SearchStrategy[X]) -> st.SearchStrategy[X]:
    """One more level of the grammar over ``children``."""
    return st.one_of(
        st.builds(_arith, children, st.sampled_from(["+", "-", "*", "/", "//", "%"]), children),
        st.builds(_power, children, st.integers(2, 3)),
        st.builds(_unary, st.sampled_from(sorted(_UNARY)), children),
        st.builds(_int_fn, st.sampled_from(["floor", "ceil", "sign"]), children),
        st.builds(_minmax, st.sampled_from(["min", "max"]), children, children),
        st.builds(_compare, children, st.sampled_from(sorted(_CMP)), children),
        st.builds(_boolop, children, st.sampled_from(["&", "|", "and", "or"]), children),
        st.builds(_not, children, st.sampled_from(["not", "~"])),
        st.builds(_where, children, children, children, st.sampled_from(["where", "ifexp"])),
        st.builds(_clamp, children, st.integers(-5, 0), st.integers(1, 40)),
    )


@cache
def expressions(max_leaves: int = 10) -> st.SearchStrategy[X]:
    return st.recursive(tame_leaves(), extend, max_leaves=max_leaves)


# --- the score modification and the mask --------------------------------------------------------

def _score_forms(f: X) -> list[X]:
    """Score modifications around a float term ``f`` (smooth in the score)."""
    s = lambda env: env["score"]  # noqa: E731
    forms = [
        X(f"score + tanh({f.text})", "float", lambda env: s(env) + torch.tanh(_f(f.ev(env), env))),
        X(f"score * (1 + 0.25 * tanh({f.text}))", "float",
          lambda env: s(env) * (1 + 0.25 * torch.tanh(_f(f.ev(env), env)))),
        X(f"4.0 * tanh(score / 4.0) + sigmoid({f.text})", "float",
          lambda env: 4.0 * torch.tanh(s(env) / 4.0) + torch.sigmoid(_f(f.ev(env), env))),
        X(f"score - abs({f.text}) / 8", "float", lambda env: s(env) - torch.abs(_f(f.ev(env), env)) / 8),
    ]
    return [X(x.text, x.kind, x.ev, tame=f.tame and f.kind in ("int", "float"), caps=f.caps) for x in forms]


@cache
def modifications(typed: bool = True) -> st.SearchStrategy[X]:
    """Score modifications; ``typed``: only well-typed terms (else anything the grammar makes)."""
    terms = expressions().filter(lambda x: x.kind in ("int", "float")) if typed else expressions()
    return st.builds(lambda f, i: _score_forms(f)[i], terms, st.integers(0, 3))


@cache
def masks(typed: bool = True) -> st.SearchStrategy[X]:
    causal = X("n <= m", "bool", lambda env: env["n"] <= env["m"])
    everything = X("True", "bool", lambda env: torch.tensor(True))
    terms = expressions(8).filter(lambda x: x.kind == "bool") if typed else expressions(8)
    return st.one_of(st.just(causal), st.just(everything), terms)


# --- what must be rejected ----------------------------------------------------------------------

HOSTILE_EXPRESSIONS = [
    "score + 9**9**9**9", "2**2**2**2**2", "H ** 2**1023", "score + " + "9" * 5000, "score % 0", "score // 0",
    "score / 0", "(-2)**score", "0**score", "log(0) + score", "sqrt(-1) * score", "score + 1e999 - 1e999",
    "score + (inf - inf)", "score * 10**19", "score + 2**63", "score ** 100", "(score + 1) ** (2**70)",
    "((m + n + b + h) ** 16 + 1) ** 16 + score", "exp(exp(exp(exp(100)))) + score",
    "score + " + " + ".join(["1"] * 2500), "(" * 300 + "score" + ")" * 300, "-" * 3000 + "score",
    "not " * 200 + "True", "score + __import__('os').system('touch CANARY')",
    "score + open('CANARY', 'w').write('x')", "(lambda: 1)()", "score.real", "[score][0]",
    "score if score else score", "score ^ 2", "score << 2", "score @ score", "'a'", "f'{score}'",
    "score + bias[score]", "score + bias[h / 2]", "bias", "score + nan", "score + w()",
    "exp(score, 1)", "where(score, 1, 2)", "score + (n < m)", "score\n+ 1", "score + \x00",
    "score + 1j", "score + 0x7fffffffffffffffff", "clamp(score, 1, 2, 3)", "max(score)", "min(score, k=1)",
    "score + pi ** pi ** pi ** pi", "score * 1e308 * 1e308", "floor(score) // 0.0",
    "score + (2 ** 62) * (2 ** 62)", "score + 1 / 3 ** 39 / 3 ** 39 / 3 ** 39",
]


@cache
def hostile_expressions() -> st.SearchStrategy[str]:
    garbage = st.text(alphabet="()[]+-*/%<>=!~&|^.,:'\"0123456789 abcehmnpqsxBHMN_", max_size=40)
    return st.one_of(st.sampled_from(HOSTILE_EXPRESSIONS), garbage,
                     st.builds(lambda x, y: f"({x}) + ({y})", st.sampled_from(HOSTILE_EXPRESSIONS),
                               expressions(6).map(lambda x: x.text)))


@cache
def tame_masks() -> st.SearchStrategy[X]:
    """Conditions over integer expressions (exact in the kernel and in torch), some combined."""
    ints = expressions(6).filter(lambda x: x.kind == "int" and x.tame)
    atoms = st.builds(_compare, ints, st.sampled_from(sorted(_CMP)), ints)
    causal = X("n <= m", "bool", lambda env: env["n"] <= env["m"])
    return st.one_of(atoms, st.builds(_boolop, atoms, st.sampled_from(["&", "|", "and", "or"]),
                                      st.one_of(atoms, st.just(causal))),
                     st.builds(_not, atoms, st.sampled_from(["not", "~"])))
