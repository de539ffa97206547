"""Rewrite the three-sweep softmax cascade into one online-softmax sweep over n.

Pattern (as data, :data:`PATTERN`): ``MX = max_n X``, ``P_num = exp(X - MX)``,
``L = sum_n P_num``, ``P = P_num / L``, ``O = sum_n P v``, ``LSE = MX + log L``.
Replacement: one ``online_softmax`` node reducing over n with state
``(m, l, acc)`` whose update, finalisation and merge rules are stored on the node as
ordered sympy rule tables.  The kernels print their tile update and epilogue from these tables,
and split schedules (decode stream-K, context parallelism) print their merges from the same node.
"""

from __future__ import annotations

import networkx as nx
import sympy as sp

from attncc.ir.graph import PassRecord, add_node, operands, sweeps_over
from attncc.passes.lowered import Lowering

# (node name, op, required attribute values) in the order the rewrite expects them.
PATTERN: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("MX", "reduce", {"kind": "max", "index": "n"}),
    ("P_num", "map", {}),
    ("L", "reduce", {"kind": "sum", "index": "n"}),
    ("P", "map", {}),
    ("O", "einsum", {}),
    ("LSE", "map", {}),
)

# Rule tables.  Each is an ordered dict: an entry may use the table's inputs and the entries before
# it, by name; they are printed in order (attncc.codegen.rules), so the kernel's loop, its epilogue
# and every split merge are the same equations.  Units: natural log throughout.  Shapes, per query
# row: m, l [R]; acc [R, E]; a key tile's scores s [R, C] and values v [C, E].
# Maxima and scores may be infinite (masked elements are -oo): extended reals, so that sympy keeps
# the comparisons with -oo and +oo.
m_, acc, s_tile, v_tile, m_new, m_shift = sp.symbols("m acc s v m_new m_shift", extended_real=True)
l_, p_tile, alpha, l_safe = sp.symbols("l p alpha l_safe", real=True)
# Tile reductions the printers know: rowmax/rowsum over a tile's columns ([R, C] -> [R]) and
# dot ([R, C] x [C, E] -> [R, E]).
rowmax, rowsum, dot = sp.Function("rowmax"), sp.Function("rowsum"), sp.Function("dot")

UPDATE_INPUTS: tuple[sp.Symbol, ...] = (m_, l_, acc, s_tile, v_tile)
# One key tile folded into the state (m, l, acc).  A row without an unmasked key so far has
# m = -oo; m_shift replaces it by 0 so that no exp(-oo - (-oo)) is formed.
UPDATE = {
    "m_new": sp.Max(m_, rowmax(s_tile)),
    "m_shift": sp.Piecewise((0, sp.Eq(m_new, -sp.oo)), (m_new, True)),
    "p": sp.exp(s_tile - m_shift),
    "alpha": sp.exp(m_ - m_shift),
    "l": alpha * l_ + rowsum(p_tile),
    "acc": alpha * acc + dot(p_tile, v_tile),
    "m": m_new,
}
UPDATE_STATE: tuple[str, ...] = ("m", "l", "acc")
FINALIZE_INPUTS: tuple[sp.Symbol, ...] = (m_, l_, acc)
# As torch: a row without an unmasked key (l = 0) has O = 0 and LSE = -oo; a +oo score gives
# LSE = +oo (l is NaN then), a NaN score NaN.
FINALIZE = {
    "l_safe": sp.Piecewise((1, sp.Eq(l_, 0)), (l_, True)),
    "O": acc / l_safe,
    "LSE": sp.Piecewise((-sp.oo, sp.Eq(l_, 0)), (m_, sp.Eq(m_, sp.oo)), (m_ + sp.log(l_safe), True)),
}
FINALIZE_OUTPUTS: tuple[str, ...] = ("O", "LSE")
# Merging two partial states a and b of a split reduction (pairwise; fold it over any number of
# parts, in any order).  An empty part is (m, l, acc) = (-oo, 0, 0); ``m_shift`` replaces m = -oo
# (both parts empty) by 0.  (m, l, acc) = (lse, 1, o) is also a valid state, so finalised partial
# outputs merge with the same rule.
m_a, m_b, m_merged = sp.symbols("m_a m_b m", extended_real=True)
l_a, l_b, acc_a, acc_b, m_shift_ab = sp.symbols("l_a l_b acc_a acc_b m_shift", real=True)
MERGE_INPUTS: tuple[sp.Symbol, ...] = (m_a, l_a, acc_a, m_b, l_b, acc_b)
MERGE = {
    "m": sp.Max(m_a, m_b),
    "m_shift": sp.Piecewise((m_merged, m_merged > -sp.oo), (0, True)),
    "l": sp.exp(m_a - m_shift_ab) * l_a + sp.exp(m_b - m_shift_ab) * l_b,
    "acc": sp.exp(m_a - m_shift_ab) * acc_a + sp.exp(m_b - m_shift_ab) * acc_b,
}


def _match(g: nx.DiGraph) -> bool:
    for name, op, attrs in PATTERN:
        if name not in g or g.nodes[name]["op"] != op:
            return False
        if any(g.nodes[name].get(k) != v for k, v in attrs.items()):
            return False
    return True


def online_softmax(low: Lowering) -> PassRecord:
    """Replace :data:`PATTERN` by one ``online_softmax`` node (see the module docstring)."""
    g = low.graph
    before = sweeps_over(g, "n")
    if not _match(g):
        return PassRecord("online_softmax", False, "pattern not found")
    scores = operands(g, "MX")[0]
    v = operands(g, "O")[1]
    for name, _op, _attrs in PATTERN:
        g.remove_node(name)
    add_node(g, "OS", "online_softmax", ("b", "h", "m", "e"), (scores, v), index="n",
             state=UPDATE_STATE, update=UPDATE, finalize=FINALIZE, merge=MERGE)
    g.graph["outputs"] = ["OS"]
    after = sweeps_over(g, "n")
    return PassRecord("online_softmax", True, f"passes over n: {before} -> {after}")
