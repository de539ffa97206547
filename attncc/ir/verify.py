"""Structural verification of the cascade IR, run after every pass."""

from __future__ import annotations

import networkx as nx
import sympy as sp

from attncc.errors import CompileError
from attncc.ir import expr as E
from attncc.ir.graph import OPS
from attncc.ir.variant import variant_of

# Tile reductions an online-softmax update may call (printed by attncc.codegen.rules).
TILE_FUNCTIONS = frozenset({"rowmax", "rowsum", "dot"})

PRED_SYMBOLS = set(E.INDEX_SYMBOLS.values()) | set(E.SIZE_SYMBOLS.values())


class IRError(CompileError):
    """The IR broke an invariant: a bug in a pass, never a user error."""


def verify(g: nx.DiGraph) -> None:
    """Raise :class:`IRError` naming the node and the broken invariant."""
    if not nx.is_directed_acyclic_graph(g):
        raise IRError("IR graph has a cycle")
    for out in g.graph.get("outputs", []):
        if out not in g:
            raise IRError(f"output '{out}' is not a node")
    params = {p.symbol for p in variant_of(g).params}
    for node, d in g.nodes(data=True):
        _verify_node(g, node, d, params)


def _verify_node(g: nx.DiGraph, node: str, d: dict, params: set[sp.Symbol]) -> None:
    op = d.get("op")
    if op not in OPS:
        raise IRError(f"node '{node}': unknown op {op!r}")
    for attr in OPS[op]:
        if attr not in d:
            raise IRError(f"node '{node}' ({op}) lacks attribute '{attr}'")
    ops = d["operands"]
    if sorted(ops) != sorted(g.predecessors(node)):
        raise IRError(f"node '{node}': operands {ops} disagree with graph edges")
    if op == "input":
        if ops:
            raise IRError(f"input '{node}' has operands")
        return
    if not ops:
        raise IRError(f"node '{node}' ({op}) has no operands")
    in_idx = [g.nodes[o]["indices"] for o in ops]
    out = set(d["indices"])
    if op == "einsum":
        union = set().union(*map(set, in_idx)) - set(d["reduce"])
        union = {"h" if i == "hk" else i for i in union}
        if union != out:
            raise IRError(f"einsum '{node}': indices {sorted(out)} != operands minus reduced {sorted(union)}")
    elif op == "reduce":
        if set(in_idx[0]) - {d["index"]} != out or d["index"] not in in_idx[0]:
            raise IRError(f"reduce '{node}': must remove exactly '{d['index']}' from {in_idx[0]}")
        if d["kind"] not in ("max", "sum"):
            raise IRError(f"reduce '{node}': kind {d['kind']!r}")
    elif op == "mask":
        free = d["pred"].free_symbols - PRED_SYMBOLS - params - _load_names(d["pred"])
        if free:
            raise IRError(f"mask '{node}': predicate uses {sorted(map(str, free))}")
        if E.score in d["pred"].free_symbols:
            raise IRError(f"mask '{node}': predicate depends on the score")
    elif op == "online_softmax":
        if d["index"] in out:
            raise IRError(f"online_softmax '{node}' keeps its reduced index '{d['index']}'")
        for key in ("update", "finalize", "merge"):
            if not isinstance(d[key], dict) or not d[key]:
                raise IRError(f"online_softmax '{node}': '{key}' must be a non-empty rule table")
        _verify_merge(node, tuple(d["state"]), d["merge"])
        _verify_table(node, "update", d["update"], {*d["state"], "s", "v"}, TILE_FUNCTIONS, tuple(d["state"]))
        _verify_table(node, "finalize", d["finalize"], set(d["state"]), frozenset(), ("O", "LSE"))
    elif op == "scan":
        if not d["state"]:
            raise IRError(f"scan '{node}' carries no state")


def _verify_merge(node: str, state: tuple[str, ...], rule: dict[str, sp.Basic]) -> None:
    """The merge rule is pairwise (inputs ``<s>_a``, ``<s>_b``), defines every state component,
    uses only inputs and earlier entries by name, and no uninterpreted function (so it prints)."""
    _verify_table(node, "merge", rule, {f"{s}_{side}" for s in state for side in "ab"}, frozenset(), state)


def _verify_table(node: str, label: str, rule: dict[str, sp.Basic], known: set[str], functions: frozenset[str],
                  defines: tuple[str, ...]) -> None:
    """A rule table uses its inputs and earlier entries only, of the uninterpreted functions only
    ``functions`` (tile reductions), and defines ``defines``."""
    known = set(known)
    for key, expr in rule.items():
        unknown = {str(s) for s in expr.free_symbols} - known
        if unknown:
            raise IRError(f"online_softmax '{node}': {label} entry '{key}' uses {sorted(unknown)}")
        calls = {type(f).__name__ for f in expr.atoms(sp.core.function.AppliedUndef)} - functions
        if calls:
            raise IRError(f"online_softmax '{node}': {label} entry '{key}' calls {sorted(calls)}")
        known.add(key)
    missing = [s for s in defines if s not in rule]
    if missing:
        raise IRError(f"online_softmax '{node}': {label} does not define {missing}")


def _load_names(expr: sp.Basic) -> set[sp.Basic]:
    return {s for ld in E.loads(expr) for s in ld.args[:1]}
