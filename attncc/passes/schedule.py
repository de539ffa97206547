"""Schedule choice: which kernel template realises the lowered cascade.

Only the ``prefill`` schedule exists today (one program per query tile and
(batch, head), sweeping the key segments of the mask analysis).  Block-sparse,
decode stream-K and chunkwise-recurrence schedules are later passes with their
own templates; they plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from attncc.ir.graph import PassRecord


@dataclass(frozen=True)
class Schedule:
    name: str
    template: str
    description: str


PREFILL = Schedule(
    "prefill", "prefill_fwd",
    "grid (cdiv(M, BLOCK_M), B*H); each program owns one query tile and sweeps its key segments "
    "tile by tile: masked tiles at segment edges, unmasked full tiles in between",
)


def choose_schedule(g: nx.DiGraph) -> PassRecord:
    if not any(g.nodes[n]["op"] == "online_softmax" for n in g):
        raise ValueError("no schedule for a cascade without an online-softmax node")
    g.graph["schedule"] = PREFILL
    return PassRecord("choose_schedule", True, PREFILL.name)
