"""Lowering passes over the cascade IR: small, named, each a function of a :class:`Lowering`.

Every pass takes the typed :class:`~attncc.passes.lowered.Lowering` (the graph plus the results
of earlier passes), may rewrite the graph or fill one typed field, and returns a
:class:`~attncc.ir.graph.PassRecord`.  The flat list of passes and the driver that verifies the
IR between them are in :mod:`attncc.compiler` (``PIPELINE``, ``lower``).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from attncc.ir import expr as E
from attncc.ir.build import x
from attncc.ir.graph import PassRecord, replace_uses
from attncc.ir.variant import variant_of
from attncc.passes.lowered import CallFacts, Lowered, Lowering, mask_predicate, score_modification
from attncc.passes.mask_analysis import KEYS, QUERIES, analyse

Pass = Callable[[Lowering], PassRecord]

__all__ = ["CallFacts", "Lowered", "Lowering", "Pass", "analyse_mask", "eliminate_identity", "score_gradient"]


def eliminate_identity(low: Lowering) -> PassRecord:
    """Drop ``map`` nodes that return their operand and ``mask`` nodes that keep everything."""
    g = low.graph
    removed = []
    for node in list(g.nodes):
        d = g.nodes[node]
        trivial = (d["op"] == "map" and d["expr"] == x) or (d["op"] == "mask" and d["pred"] is sp.true)
        if trivial:
            replace_uses(g, node, d["operands"][0])
            g.remove_node(node)
            removed.append(node)
    return PassRecord("eliminate_identity", bool(removed), f"removed {', '.join(removed) or 'nothing'}")


def analyse_mask(low: Lowering) -> PassRecord:
    """Key segments per query tile and query segments per key tile of the mask predicate."""
    pred = mask_predicate(low.graph)
    low.mask_keys = analyse(pred, KEYS)
    low.mask_queries = analyse(pred, QUERIES)
    return PassRecord("analyse_mask", True, f"{low.mask_keys.note}; per key tile: {low.mask_queries.note}")


def _load_derivative(modify: sp.Expr, ld: E.Load) -> sp.Expr:
    """d modify / d ld, treating each load as an independent variable."""
    sym = sp.Dummy("load", real=True)
    return E.derivative(modify.subs(ld, sym), sym).subs(sym, ld)


def score_gradient(low: Lowering) -> PassRecord:
    """d(modify)/d(score), and d(modify)/d(load) for each load of a float captured tensor."""
    modify = score_modification(low.graph)
    low.dscore = E.cheap_simplify(E.derivative(modify, E.score))
    floats = {c.name for c in variant_of(low.graph).captures if c.dtype.startswith("float") or c.dtype == "bfloat16"}
    low.dloads = tuple((ld, _load_derivative(modify, ld)) for ld in E.loads(modify) if ld.tensor_name in floats)
    extra = f"; {len(low.dloads)} captured-tensor load derivative(s)" if low.dloads else ""
    return PassRecord("score_gradient", True, f"d modify / d score = {low.dscore}{extra}")
