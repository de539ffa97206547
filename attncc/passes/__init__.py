"""Lowering: a flat, named list of small passes over the cascade IR.

``PIPELINE`` is the whole lowering of a softmax forward; :func:`lower` runs it,
verifying the IR after every pass (``verify=True``) and recording what each did.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import sympy as sp

from attncc.ir import expr as E
from attncc.ir.build import build_cascade, x
from attncc.ir.graph import PassRecord, replace_uses
from attncc.ir.verify import verify
from attncc.passes.mask_analysis import KEYS, QUERIES, analyse
from attncc.passes.online_softmax import online_softmax
from attncc.passes.schedule import choose_schedule
from attncc.spec.model import Spec


def eliminate_identity(g: nx.DiGraph) -> PassRecord:
    """Drop ``map`` nodes that return their operand and ``mask`` nodes that keep everything."""
    removed = []
    for node in list(g.nodes):
        d = g.nodes[node]
        trivial = (d["op"] == "map" and d["expr"] == x) or (d["op"] == "mask" and d["pred"] is sp.true)
        if trivial:
            replace_uses(g, node, d["operands"][0])
            g.remove_node(node)
            removed.append(node)
    return PassRecord("eliminate_identity", bool(removed), f"removed {', '.join(removed) or 'nothing'}")


def analyse_mask(g: nx.DiGraph) -> PassRecord:
    """Attach :class:`MaskAnalysis` to the graph (``g.graph['mask']``)."""
    masks = [n for n in g if g.nodes[n]["op"] == "mask"]
    pred = g.nodes[masks[0]]["pred"] if masks else sp.true
    g.graph["mask"] = analyse(pred, KEYS)
    g.graph["mask_t"] = analyse(pred, QUERIES)
    return PassRecord("analyse_mask", True, f"{g.graph['mask'].note}; per key tile: {g.graph['mask_t'].note}")


def score_gradient(g: nx.DiGraph) -> PassRecord:
    """d(modify)/d(score), derived symbolically, for the backward pass."""
    spec: Spec = g.graph["spec"]
    g.graph["dmodify"] = E.cheap_simplify(E.derivative(spec.modify, E.score))
    return PassRecord("score_gradient", True, f"d modify / d score = {g.graph['dmodify']}")


Pass = Callable[[nx.DiGraph], PassRecord]
PIPELINE: tuple[Pass, ...] = (eliminate_identity, analyse_mask, online_softmax, score_gradient, choose_schedule)


def lower(spec: Spec, *, check: bool = True) -> nx.DiGraph:
    """Build the cascade of ``spec`` and run :data:`PIPELINE` on it."""
    g = build_cascade(spec)
    if check:
        verify(g)
    for p in PIPELINE:
        record = p(g)
        g.graph["applied"].append(record)
        if check:
            verify(g)
    return g
