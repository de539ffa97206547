"""Spec -> naive Einsum cascade (three passes over n, as written mathematically)."""

from __future__ import annotations

import networkx as nx
import sympy as sp

from attncc.ir import expr as E
from attncc.ir.graph import add_node, new_graph
from attncc.ir.variant import Variant
from attncc.spec.model import Spec

# Symbols used by map nodes for "the operand" and the row statistics.
x = sp.Symbol("x", real=True)
rowmax = sp.Symbol("rowmax", real=True)
rowsum = sp.Symbol("rowsum", positive=True)


def build_cascade(spec: Spec) -> nx.DiGraph:
    """The cascade of ``spec`` before any rewrite.

    ``S = q.k*scale; S' = modify(S); S'' = mask(S'); MX = max_n S'';
    P_num = exp(S'' - MX); L = sum_n P_num; P = P_num / L; O = sum_n P v;
    LSE = MX + log L``.
    """
    g = new_graph(Variant.of(spec))
    add_node(g, "q", "input", ("b", "h", "m", "d"), role="q")
    add_node(g, "k", "input", ("b", "hk", "n", "d"), role="k", head=spec.kv_head)
    add_node(g, "v", "input", ("b", "hk", "n", "e"), role="v", head=spec.kv_head)
    for cap in spec.captures.values():
        add_node(g, cap.name, "input", cap.dims, role="capture", dtype=cap.dtype)
    bhmn = ("b", "h", "m", "n")
    cur = add_node(g, "S", "einsum", bhmn, ("q", "k"), reduce=("d",), scaled=spec.scaled)
    cap_inputs = tuple(spec.captures)
    cur = add_node(g, "S_mod", "map", bhmn, (cur, *cap_inputs), expr=spec.modify.subs(E.score, x))
    cur = add_node(g, "S_mask", "mask", bhmn, (cur, *cap_inputs), pred=spec.mask)
    add_node(g, "MX", "reduce", ("b", "h", "m"), (cur,), index="n", kind="max")
    add_node(g, "P_num", "map", bhmn, (cur, "MX"), expr=sp.exp(x - rowmax))
    add_node(g, "L", "reduce", ("b", "h", "m"), ("P_num",), index="n", kind="sum")
    add_node(g, "P", "map", bhmn, ("P_num", "L"), expr=x / rowsum)
    add_node(g, "O", "einsum", ("b", "h", "m", "e"), ("P", "v"), reduce=("n",), scaled=False)
    add_node(g, "LSE", "map", ("b", "h", "m"), ("MX", "L"), expr=x + sp.log(rowsum))
    g.graph["outputs"] = ["O", "LSE"]
    return g
