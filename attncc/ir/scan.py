"""Recurrence spec -> its cascade with a ``scan`` node.

    phi_q = map(q) := feature;  phi_k = map(k) := feature;  G = map(g, captures) := gate
    S = scan over t of (phi_k, v, G):  S_t = exp(G_t) * S_{t-1} + phi_k_t^T v_t   (state [b, h, k, v])
    O = einsum(phi_q, S) over k, * scale

The scan node's ``update`` is a rule table over the symbols ``S`` (the state), ``G`` (the
log-gate), ``phi_k`` and ``v``; ``direction`` is ``causal`` or ``bidirectional``.  The outputs are
``O`` and the final state ``S``.
"""

from __future__ import annotations

import networkx as nx
import sympy as sp

from attncc.ir.graph import add_node, new_graph
from attncc.ir.variant import Variant
from attncc.spec.recurrence import RecurrenceSpec, x

S, G, PHI_K, V = sp.symbols("S G phi_k v", real=True)
UPDATE = {"S": sp.exp(G) * S + PHI_K * V}  # elementwise in (k, v) after the outer product phi_k^T v


def build_scan(spec: RecurrenceSpec) -> nx.DiGraph:
    """The cascade of ``spec`` before any rewrite."""
    g = new_graph(Variant.of(spec))
    add_node(g, "q", "input", ("b", "h", "t", "k"), role="q")
    add_node(g, "k", "input", ("b", "h", "t", "k"), role="k")
    add_node(g, "v", "input", ("b", "h", "t", "v"), role="v")
    gate_operands: tuple[str, ...] = ()
    if spec.gate_input is not None:
        add_node(g, "g", "input", spec.gate_input, role="g")
        gate_operands = ("g",)
    for cap in spec.captures.values():
        add_node(g, cap.name, "input", cap.dims, role="capture", dtype=cap.dtype)
    gate_operands += tuple(spec.captures)
    add_node(g, "phi_q", "map", ("b", "h", "t", "k"), ("q",), expr=spec.feature, role="feature")
    add_node(g, "phi_k", "map", ("b", "h", "t", "k"), ("k",), expr=spec.feature, role="feature")
    gate_idx = ("b", "h", "t", "k") if spec.gate_kind == "vector" else ("b", "h", "t")
    # a gate of no tensor (none, or a constant per head) is a map of k, whose shape it takes
    add_node(g, "G", "map", gate_idx, gate_operands or ("k",), expr=spec.gate, role="gate")
    add_node(g, "S", "scan", ("b", "h", "k", "v"), ("phi_k", "v", "G"), index="t", state=("S",),
             update=dict(UPDATE), direction=spec.direction, decay=spec.decay)
    add_node(g, "O", "einsum", ("b", "h", "t", "v"), ("phi_q", "S"), reduce=("k",), scaled=spec.scaled)
    g.graph["outputs"] = ["O", "S"]
    return g


def feature_map(g: nx.DiGraph) -> sp.Expr:
    """phi, as an expression of :data:`~attncc.spec.recurrence.x` (from the ``phi_k`` node)."""
    return g.nodes["phi_k"]["expr"]


def is_scan(g: nx.DiGraph) -> bool:
    return any(d["op"] == "scan" for _, d in g.nodes(data=True))


__all__ = ["build_scan", "feature_map", "is_scan", "x"]
