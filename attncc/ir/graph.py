"""The Einsum-cascade IR: a networkx DiGraph of named tensor computations.

Each node is one tensor defined over named indices; edges point from operands
to consumers.  Node attributes:

* ``op``: one of :data:`OPS`;
* ``indices``: the node's output indices, e.g. ``("b", "h", "m", "n")``;
* op-specific attributes (see :data:`OPS`).

The graph carries two graph-level attributes: ``graph.graph["variant"]`` (the
:class:`~attncc.ir.variant.Variant`: names and declarations, no expressions; read it with
:func:`~attncc.ir.variant.variant_of`) and ``graph.graph["outputs"]``.  What passes find out
(mask analyses, derivatives, iteration plans, the schedule) is not stored on the graph but in the
typed :class:`~attncc.passes.lowered.Lowering` that carries it through the pipeline.

``scan`` carries a state along a sequence index (linear recurrences: :mod:`attncc.ir.scan`);
``merge`` (partial online-softmax states combined after a split reduction) is verified
structurally.  See ``docs/ir.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx

# op -> required attributes
OPS: dict[str, tuple[str, ...]] = {
    "input": ("role",),                      # q, k, v, or a captured tensor
    "einsum": ("reduce",),                   # product of operands summed over `reduce`
    "map": ("expr",),                        # elementwise expression of its single operand
    "mask": ("pred",),                       # operand where pred holds, else -inf
    "reduce": ("index", "kind"),             # kind: max | sum, over one index
    "online_softmax": ("index", "state", "update", "finalize", "merge"),  # one-pass max/sum/PV
    "scan": ("index", "state", "update"),    # recurrence carried along `index`
    "merge": ("index", "rule"),              # combine split partial states
}


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name, the n-passes before/after and a note."""

    name: str
    changed: bool
    note: str = ""


def new_graph(variant: Any) -> nx.DiGraph:
    g = nx.DiGraph()
    g.graph.update(variant=variant, outputs=[])
    return g


def add_node(g: nx.DiGraph, name: str, op: str, indices: tuple[str, ...], inputs: tuple[str, ...] = (),
             **attrs: Any) -> str:
    """Add node ``name`` computed by ``op`` from ``inputs`` (in operand order)."""
    if name in g:
        raise ValueError(f"IR node '{name}' already exists")
    g.add_node(name, op=op, indices=tuple(indices), operands=tuple(inputs), **attrs)
    for pos, src in enumerate(inputs):
        g.add_edge(src, name, pos=pos)
    return name


def operands(g: nx.DiGraph, name: str) -> tuple[str, ...]:
    return g.nodes[name]["operands"]


def consumers(g: nx.DiGraph, name: str) -> list[str]:
    return sorted(g.successors(name))


def replace_uses(g: nx.DiGraph, old: str, new: str) -> None:
    """Point every consumer of ``old`` at ``new`` instead (operand order kept)."""
    for c in list(g.successors(old)):
        ops = tuple(new if o == old else o for o in g.nodes[c]["operands"])
        g.nodes[c]["operands"] = ops
        g.remove_edge(old, c)
        g.add_edge(new, c, pos=ops.index(new))
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]


def sweeps_over(g: nx.DiGraph, index: str = "n") -> int:
    """Sequential passes over ``index`` the cascade needs (FuseMax's pass count).

    A node that still has ``index`` is computed during a sweep; a reduction over
    ``index`` finishes at the end of its sweep, so anything that combines its
    result with ``index``-indexed values needs the next sweep.
    """
    sweep: dict[str, int] = {}
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        if data["op"] == "input":
            sweep[node] = 1 if index in data["indices"] else 0
            continue
        level = 1
        for src in operands(g, node):
            s = sweep[src]
            if g.nodes[src]["op"] in ("reduce", "einsum", "online_softmax") and reduces(g, src, index):
                s += 1  # the result is known only after its sweep ended
            level = max(level, s)
        if data["op"] in ("online_softmax", "scan") and data["index"] == index:
            level = max(level, 1)
        sweep[node] = level if (index in data["indices"] or reduces(g, node, index)) else 0
    return max((sweep[x] for x in g if reduces(g, x, index)), default=0)


def reduces(g: nx.DiGraph, node: str, index: str) -> bool:
    data = g.nodes[node]
    if data["op"] == "einsum":
        return index in data["reduce"]
    if data["op"] in ("reduce", "online_softmax", "scan", "merge"):
        return data["index"] == index
    return False


def describe(g: nx.DiGraph) -> list[str]:
    """Readable lines, one per node in topological order."""
    lines = []
    for node in nx.topological_sort(g):
        d = g.nodes[node]
        idx = ",".join(d["indices"])
        args = ", ".join(d["operands"])
        extra = ""
        if d["op"] == "einsum":
            extra = f" sum over {','.join(d['reduce'])}" + (" * scale" if d.get("scaled") else "")
        elif d["op"] == "map":
            extra = f" := {d['expr']}"
        elif d["op"] == "mask":
            extra = f" where {d['pred']}"
        elif d["op"] == "reduce":
            extra = f" {d['kind']} over {d['index']}"
        elif d["op"] == "online_softmax":
            extra = f" over {d['index']} carrying ({', '.join(d['state'])})"
        lines.append(f"{node}[{idx}] = {d['op']}({args}){extra}")
    return lines
