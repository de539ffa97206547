"""Rewrite the three-sweep softmax cascade into one online-softmax sweep over n.

Pattern (as data, :data:`PATTERN`): ``MX = max_n X``, ``P_num = exp(X - MX)``,
``L = sum_n P_num``, ``P = P_num / L``, ``O = sum_n P v``, ``LSE = MX + log L``.
Replacement: one ``online_softmax`` node reducing over n with state
``(m, l, acc)`` whose update, finalisation and merge rules are stored as sympy
equations, so that later schedules (split-KV decode, context parallelism) can
merge partial states with the same rules.
"""

from __future__ import annotations

import networkx as nx
import sympy as sp

from attncc.ir.graph import PassRecord, add_node, operands, sweeps_over

# (node name, op, required attribute values) in the order the rewrite expects them.
PATTERN: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("MX", "reduce", {"kind": "max", "index": "n"}),
    ("P_num", "map", {}),
    ("L", "reduce", {"kind": "sum", "index": "n"}),
    ("P", "map", {}),
    ("O", "einsum", {}),
    ("LSE", "map", {}),
)

# State symbols and tile-level quantities.
m_, l_, acc, m_new, s_tile, v_tile = sp.symbols("m l acc m_new s v", real=True)
alpha = sp.exp(m_ - m_new)
UPDATE = {
    "m_new": sp.Max(m_, sp.Function("rowmax")(s_tile)),
    "l": alpha * l_ + sp.Function("rowsum")(sp.exp(s_tile - m_new)),
    "acc": alpha * acc + sp.Function("dot")(sp.exp(s_tile - m_new), v_tile),
}
FINALIZE = {"O": sp.Piecewise((acc / l_, l_ > 0), (0, True)),
            "LSE": sp.Piecewise((m_ + sp.log(l_), l_ > 0), (-sp.oo, True))}
# Merging partial states i = 1..k (split reductions): m = max m_i, l = sum e^(m_i-m) l_i, ...
m_i, l_i, acc_i, m_all = sp.symbols("m_i l_i acc_i m_all", real=True)
MERGE = {"m": sp.Function("max_i")(m_i), "l": sp.Function("sum_i")(sp.exp(m_i - m_all) * l_i),
         "acc": sp.Function("sum_i")(sp.exp(m_i - m_all) * acc_i)}


def _match(g: nx.DiGraph) -> bool:
    for name, op, attrs in PATTERN:
        if name not in g or g.nodes[name]["op"] != op:
            return False
        if any(g.nodes[name].get(k) != v for k, v in attrs.items()):
            return False
    return True


def online_softmax(g: nx.DiGraph) -> PassRecord:
    before = sweeps_over(g, "n")
    if not _match(g):
        return PassRecord("online_softmax", False, "pattern not found")
    scores = operands(g, "MX")[0]
    v = operands(g, "O")[1]
    for name, _op, _attrs in PATTERN:
        g.remove_node(name)
    add_node(g, "OS", "online_softmax", ("b", "h", "m", "e"), (scores, v), index="n",
             state=("m", "l", "acc"), update=UPDATE, finalize=FINALIZE, merge=MERGE)
    g.graph["outputs"] = ["OS"]
    after = sweeps_over(g, "n")
    g.graph["sweeps"] = (before, after)
    return PassRecord("online_softmax", True, f"passes over n: {before} -> {after}")
