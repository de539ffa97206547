"""Print the online-softmax merge and finalize rules stored on the IR node.

The ``online_softmax`` node carries ``merge`` (two partial states ``a``, ``b`` -> one) and
``finalize`` (state -> ``O``, ``LSE``) as ordered sympy rule tables; an entry names the inputs
and the entries before it by symbol name.  :func:`merge_source` prints both as ``@triton.jit``
functions through :class:`~attncc.codegen.printer.TritonPrinter`; :func:`merge_states_torch` and
:func:`finalize_state_torch` evaluate the same tables with torch operations for host-side merges.
States are per query row: ``m`` and ``l`` have shape ``[R]``, ``acc`` has ``[R, E]``; in an entry
whose value is as wide as ``acc``, the per-row values broadcast along the last axis.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import sympy as sp
import torch

from attncc.codegen.rules import print_rules
from attncc.passes.online_softmax import FINALIZE_OUTPUTS

# Entries and symbols with a value axis (``acc`` and its ``_a``/``_b`` inputs, the output ``O``).
WIDE: frozenset[str] = frozenset({"acc", "O"})

MERGE_ARGS: tuple[str, ...] = ("m_a", "l_a", "acc_a", "m_b", "l_b", "acc_b")
FINALIZE_ARGS: tuple[str, ...] = ("m", "l", "acc")


def _is_wide(name: str) -> bool:
    return name in WIDE or any(name.startswith(f"{w}_") for w in WIDE)


def _node(g: nx.DiGraph) -> dict:
    for _name, d in g.nodes(data=True):
        if d["op"] == "online_softmax":
            return d
    raise ValueError("the lowered IR has no online_softmax node")


def _ranks(args: tuple[str, ...]) -> dict[str, str]:
    return {a: "wide" if _is_wide(a) else "row" for a in args}


def _function(name: str, doc: str, rule: dict[str, sp.Basic], args: tuple[str, ...], out: tuple[str, ...]) -> str:
    body, _ = print_rules(rule, _ranks(args))
    return "\n".join([
        "@triton.jit",
        f"def {name}({', '.join(args)}):",
        f'    """{doc}"""',
        *body,
        f"    return {', '.join(out)}",
        "",
    ])


def merge_source(g: nx.DiGraph, merge: dict[str, sp.Basic] | None = None,
                 finalize: dict[str, sp.Basic] | None = None) -> str:
    """``_merge_state`` and ``_finalize_state`` as Triton source, printed from the node's rules, or
    from the given forms of them (e.g. the base-2 tables of :mod:`attncc.codegen.rules`, for
    states whose m is in log2 units; the LSE is natural log either way)."""
    d = _node(g)
    state = tuple(d["state"])
    units = "natural-log m" if merge is None else "m in the units of the kernel's update"
    merge_fn = _function("_merge_state", f"Merge partial softmax states a and b ({units}).",
                         d["merge"] if merge is None else merge, MERGE_ARGS, state)
    final = _function("_finalize_state", f"Output and natural-log log-sum-exp of a softmax state ({units}).",
                      d["finalize"] if finalize is None else finalize, FINALIZE_ARGS, FINALIZE_OUTPUTS)
    return merge_fn + "\n\n" + final


def _eval(expr: sp.Basic, env: dict[str, torch.Tensor], wide: bool) -> torch.Tensor | float | bool:
    """``expr`` evaluated with torch operations; symbols are read from ``env`` by name."""
    if isinstance(expr, sp.Symbol):
        value = env[expr.name]
        return value if not wide or _is_wide(expr.name) else value[..., None]
    if expr is sp.S.NegativeInfinity:
        return float("-inf")
    if expr is sp.S.Infinity:
        return float("inf")
    if expr is sp.false:
        return False
    if expr is sp.true:
        return True
    if isinstance(expr, sp.Number):
        return float(expr)
    args = [_eval(a, env, wide) for a in expr.args] if not isinstance(expr, sp.Piecewise) else []
    op = _OPS.get(type(expr))
    if op is not None:
        return op(args)
    if isinstance(expr, sp.Piecewise):
        return _piecewise(expr, env, wide)
    raise KeyError(f"no torch form for {type(expr).__name__} in a softmax state rule")


def _tensor(x: torch.Tensor | float | bool, like: torch.Tensor | float | bool) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    ref = like if isinstance(like, torch.Tensor) else torch.tensor(0.0, dtype=torch.float64)
    return torch.full_like(ref, x, dtype=ref.dtype) if not isinstance(x, bool) else torch.tensor(x)


def _piecewise(expr: sp.Piecewise, env: dict[str, torch.Tensor], wide: bool) -> torch.Tensor:
    *pairs, last = expr.args
    out = _eval(last.expr, env, wide) if last.cond is sp.true else float("nan")
    if last.cond is not sp.true:
        pairs = [*pairs, last]
    for value, cond in reversed(pairs):
        v = _eval(value, env, wide)
        out = torch.where(_tensor(_eval(cond, env, wide), v), _tensor(v, out), _tensor(out, v))
    return out


def _fold(fn: Callable[[object, object], object]) -> Callable[[list], object]:
    def run(args: list) -> object:
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out
    return run


def _pow(args: list) -> object:
    base, ex = args
    return 1.0 / base if ex == -1.0 else base**ex


_OPS: dict[type, Callable[[list], object]] = {
    sp.Add: _fold(lambda a, b: a + b),
    sp.Mul: _fold(lambda a, b: a * b),
    sp.Pow: _pow,
    sp.exp: lambda a: torch.exp(a[0]),
    sp.log: lambda a: torch.log(a[0]),
    sp.Max: _fold(lambda a, b: torch.maximum(_tensor(a, b), _tensor(b, a))),
    sp.Min: _fold(lambda a, b: torch.minimum(_tensor(a, b), _tensor(b, a))),
    sp.StrictGreaterThan: lambda a: a[0] > a[1],
    sp.GreaterThan: lambda a: a[0] >= a[1],
    sp.StrictLessThan: lambda a: a[0] < a[1],
    sp.LessThan: lambda a: a[0] <= a[1],
    sp.Equality: lambda a: _tensor(a[0], a[1]) == _tensor(a[1], a[0]),
}


def _apply(rule: dict[str, sp.Basic], env: dict[str, torch.Tensor], out: tuple[str, ...]) -> tuple:
    env = dict(env)
    for key, expr in rule.items():
        env[key] = _tensor(_eval(expr, env, _is_wide(key)), next(iter(env.values())))
    return tuple(env[k] for k in out)


def merge_states_torch(g: nx.DiGraph, m_a: torch.Tensor, l_a: torch.Tensor, acc_a: torch.Tensor,
                       m_b: torch.Tensor, l_b: torch.Tensor, acc_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The merged state ``(m, l, acc)`` of two partial states, by the node's merge rule."""
    d = _node(g)
    env = dict(zip(MERGE_ARGS, (m_a, l_a, acc_a, m_b, l_b, acc_b), strict=True))
    return _apply(d["merge"], env, tuple(d["state"]))


def finalize_state_torch(g: nx.DiGraph, m: torch.Tensor, l: torch.Tensor,  # noqa: E741 - the rule's name
                         acc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(O, LSE)`` of a state, by the node's finalize rule."""
    d = _node(g)
    return _apply(d["finalize"], dict(zip(FINALIZE_ARGS, (m, l, acc), strict=True)), FINALIZE_OUTPUTS)
