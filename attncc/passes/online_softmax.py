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
# Merging two partial states a and b of a split reduction (pairwise; fold it over any number of
# parts, in any order).  Units: natural log, the units of FINALIZE's LSE (the forward kernel's own
# loop keeps m in log2 units; a partial state is converted before merging).  An empty part is
# (m, l, acc) = (-oo, 0, 0); ``m_shift`` replaces m = -oo (both parts empty) by 0 so that no
# exp(-oo - (-oo)) is formed.  Each entry may use the inputs and the entries before it, by name;
# rows of ``acc`` broadcast against the per-row m and l.  (m, l, acc) = (lse, 1, o) is also a
# valid state, so finalised partial outputs merge with the same rule.
m_a, m_b, m_merged = sp.symbols("m_a m_b m", extended_real=True)
l_a, l_b, acc_a, acc_b, m_shift = sp.symbols("l_a l_b acc_a acc_b m_shift", real=True)
MERGE_INPUTS: tuple[sp.Symbol, ...] = (m_a, l_a, acc_a, m_b, l_b, acc_b)
MERGE = {
    "m": sp.Max(m_a, m_b),
    "m_shift": sp.Piecewise((m_merged, m_merged > -sp.oo), (0, True)),
    "l": sp.exp(m_a - m_shift) * l_a + sp.exp(m_b - m_shift) * l_b,
    "acc": sp.exp(m_a - m_shift) * acc_a + sp.exp(m_b - m_shift) * acc_b,
}


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
