"""The IR is verified after every pass; the online-softmax rewrite reduces passes over n."""

from __future__ import annotations

import networkx as nx
import pytest
import sympy as sp

from attncc.compiler import PIPELINE, SCAN_PIPELINE, lower, start
from attncc.ir import expr as E
from attncc.ir.build import build_cascade
from attncc.ir.graph import add_node, sweeps_over
from attncc.ir.verify import IRError, verify
from attncc.spec.loader import recurrence_library, resolve, softmax_library


@pytest.mark.parametrize("name", list(softmax_library()))
def test_every_pass_keeps_the_ir_valid(name: str) -> None:
    spec = resolve(name)
    low = start(spec)
    g = low.graph
    verify(g)
    assert sweeps_over(g, "n") == 3
    for p in PIPELINE:
        p(low)
        verify(g)
    assert sweeps_over(g, "n") == 1
    assert low.schedule is not None and low.schedule.name == "prefill"
    assert any(d["op"] == "online_softmax" for _, d in g.nodes(data=True))


def test_lower_records_each_pass() -> None:
    low = lower(resolve("softcap"))
    names = [r.name for r in low.records]
    assert names == [p.__name__ for p in PIPELINE]
    notes = {r.name: r.note for r in low.records}
    assert notes["online_softmax"] == "passes over n: 3 -> 1"
    assert "cosh" in notes["score_gradient"] or "tanh" in notes["score_gradient"]


def test_verify_rejects_broken_graphs() -> None:
    g = build_cascade(resolve("causal"))
    g.nodes["MX"]["index"] = "m"  # a max over the wrong index
    with pytest.raises(IRError, match="MX"):
        verify(g)
    g = build_cascade(resolve("causal"))
    g.nodes["S_mask"]["pred"] = sp.Lt(E.score, 0)
    with pytest.raises(IRError, match="S_mask"):
        verify(g)
    g = build_cascade(resolve("causal"))
    add_node(g, "bad", "map", ("b", "h", "m"), ("LSE",), expr=sp.Symbol("x"))
    g.add_edge("bad", "LSE")
    assert not nx.is_directed_acyclic_graph(g)
    with pytest.raises(IRError, match="cycle"):
        verify(g)


def test_identity_elimination_only_removes_identities() -> None:
    g = lower(resolve("causal")).graph
    ops = {d["op"] for _, d in g.nodes(data=True)}
    assert "map" not in ops and "mask" in ops
    g = lower(resolve("full")).graph
    ops = {d["op"] for _, d in g.nodes(data=True)}
    assert "mask" not in ops


def test_score_gradient_is_symbolic() -> None:
    low = lower(resolve("temperature"))
    assert low.dscore == E.load("temp", E.b, E.h, E.m)


@pytest.mark.parametrize("name", list(recurrence_library()))
def test_every_scan_pass_keeps_the_ir_valid(name: str) -> None:
    """A recurrence spec: a scan cascade, one sweep over t, the chunkwise schedule and a chunks plan."""
    low = start(resolve(name))
    g = low.graph
    verify(g)
    assert sweeps_over(g, "t") == 1 and any(d["op"] == "scan" for _, d in g.nodes(data=True))
    for p in SCAN_PIPELINE:
        low.records.append(p(low))
        verify(g)
    result = low.result()
    assert result.schedule.name == "chunkwise" and all(p.kind == "chunks" for p in result.plans.values())
    assert [r.name for r in result.records] == [p.__name__ for p in SCAN_PIPELINE]
