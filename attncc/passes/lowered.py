"""The typed state of lowering and its result.

:class:`Lowering` is what the passes of the pipeline read and write: the cascade graph plus one
typed field per thing a pass finds out.  :meth:`Lowering.result` freezes it into
:class:`Lowered`, the only input of code generation: the graph, the expressions read back from
its nodes (score modification, mask, key/value head map), the score derivative, the softmax rule
tables, the mask analyses, one iteration plan per kernel, the chosen schedule and the pass records,
and how the score's scale folds into the softmax (:class:`ScoreFold`, read from the score
modification).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import networkx as nx
import sympy as sp

from attncc.ir import expr as E
from attncc.ir.build import x
from attncc.ir.graph import PassRecord
from attncc.ir.variant import Variant, variant_of
from attncc.passes.mask_analysis import MaskAnalysis

if TYPE_CHECKING:
    from attncc.passes.plans import Plan
    from attncc.schedules.base import Schedule


@dataclass(frozen=True)
class CallFacts:
    """What is known about the call a kernel is generated for, beyond the spec.

    ``query_len``: a fixed query length (``None``: any); ``block_table``: the caller passes a
    runtime block table; ``decode``: a decode call (a few new queries, the last positions of
    each sequence, against a KV cache).  Schedules read these in :meth:`Schedule.applies`.
    """

    query_len: int | None = None
    block_table: bool = False
    decode: bool = False


@dataclass(frozen=True)
class SoftmaxRules:
    """The rule tables stored on the ``online_softmax`` node (see :mod:`attncc.passes.online_softmax`)."""

    node: str
    state: tuple[str, ...]
    update: Mapping[str, sp.Basic]
    finalize: Mapping[str, sp.Basic]
    merge: Mapping[str, sp.Basic]


@dataclass(frozen=True)
class ScoreFold:
    """Whether the scale and log2(e) fold into one multiply of ``q . k`` (see :func:`score_fold`).

    ``kind``: ``"identity"`` (modify = score), ``"linear"`` (modify = ``slope * score + offset``
    with ``slope`` and ``offset`` free of the score) or ``"none"`` (any other modification, e.g.
    a soft cap; ``slope`` and ``offset`` are then ``None``).
    """

    kind: str
    slope: sp.Expr | None = None
    offset: sp.Expr | None = None

    @property
    def base2(self) -> bool:
        """The forward softmax runs in base 2 on ``q . k * scale * log2(e)``."""
        return self.kind != "none"


@dataclass
class Lowering:
    """Mutable state threaded through the pipeline; every field but ``graph`` is set by a named pass."""

    graph: nx.DiGraph
    call: CallFacts = CallFacts()
    schedules: tuple[Schedule, ...] = ()      # the candidates choose_schedule picks from
    records: list[PassRecord] = field(default_factory=list)
    mask_keys: MaskAnalysis | None = None     # analyse_mask: keys per query tile
    mask_queries: MaskAnalysis | None = None  # analyse_mask: queries per key tile
    dscore: sp.Expr | None = None             # score_gradient: d modify / d score
    dloads: tuple[tuple[E.Load, sp.Expr], ...] = ()  # score_gradient: (load, d modify / d load)
    schedule: Schedule | None = None          # choose_schedule
    plans: dict[str, Plan] = field(default_factory=dict)  # plan_iteration: kernel name -> plan

    def result(self) -> Lowered:
        """Freeze into :class:`Lowered`; a missing pass result is a bug (``ValueError``)."""
        missing = [name for name in ("mask_keys", "mask_queries", "dscore", "schedule") if getattr(self, name) is None]
        if missing or not self.plans:
            raise ValueError(f"lowering incomplete: no {', '.join(missing) or 'plans'}")
        g = self.graph
        assert self.mask_keys is not None and self.mask_queries is not None and self.schedule is not None
        return Lowered(
            graph=g, variant=variant_of(g), modify=score_modification(g), mask=mask_predicate(g),
            kv_head=kv_head(g), fold=score_fold(score_modification(g)), dscore=sp.sympify(self.dscore), dloads=self.dloads, softmax=softmax_rules(g),
            mask_keys=self.mask_keys, mask_queries=self.mask_queries, schedule=self.schedule,
            plans=MappingProxyType(dict(self.plans)), records=tuple(self.records), call=self.call)


@dataclass(frozen=True)
class Lowered:
    """The lowered IR of one variant: everything code generation reads (never the Spec).

    ``modify`` is an expression of ``score`` (and indices, params, loads); ``mask`` a predicate
    over ``(b, h, m, n)``; ``kv_head`` an expression of ``h`` and sizes; ``fold`` says whether
    ``modify`` is the identity or linear in the score (:func:`score_fold`).
    """

    graph: nx.DiGraph
    variant: Variant
    modify: sp.Expr
    mask: sp.Basic
    kv_head: sp.Expr
    fold: ScoreFold
    dscore: sp.Expr
    dloads: tuple[tuple[E.Load, sp.Expr], ...]  # float captured-tensor loads of modify and d modify / d load
    softmax: SoftmaxRules
    mask_keys: MaskAnalysis
    mask_queries: MaskAnalysis
    schedule: Schedule
    plans: Mapping[str, Plan]
    records: tuple[PassRecord, ...]
    call: CallFacts

    @property
    def is_gqa(self) -> bool:
        return self.kv_head != E.h

    def plan(self, kernel: str) -> Plan:
        try:
            return self.plans[kernel]
        except KeyError:
            raise KeyError(f"no iteration plan for kernel {kernel!r} (plans: {sorted(self.plans)})") from None


# --- reading expressions back from the graph --------------------------------------------------

def _softmax_node(g: nx.DiGraph) -> tuple[str, dict[str, Any]]:
    for name, d in g.nodes(data=True):
        if d["op"] == "online_softmax":
            return name, d
    raise ValueError("the lowered IR has no online_softmax node")


def _score_chain(g: nx.DiGraph) -> list[str]:
    """The ``map``/``mask`` nodes applied to the ``q . k`` einsum, in order (before or after the
    online-softmax rewrite): each takes the previous value and captured tensors only."""
    start = [n for n, d in g.nodes(data=True) if d["op"] == "einsum" and d["operands"] == ("q", "k")]
    if len(start) != 1:
        raise ValueError("the IR has no single q . k einsum")
    chain, cur = [], start[0]
    while True:
        nxt = [c for c in g.successors(cur) if g.nodes[c]["op"] in ("map", "mask")
               and g.nodes[c]["operands"][0] == cur
               and all(g.nodes[o].get("role") == "capture" for o in g.nodes[c]["operands"][1:])]
        if len(nxt) != 1:
            return chain
        cur = nxt[0]
        chain.append(cur)


def score_modification(g: nx.DiGraph) -> sp.Expr:
    """The composed ``map`` expressions applied to the raw score, as an expression of ``score``."""
    out: sp.Expr = E.score
    for node in _score_chain(g):
        if g.nodes[node]["op"] == "map":
            out = g.nodes[node]["expr"].subs(x, out)
    return out


def score_fold(modify: sp.Expr) -> ScoreFold:
    """Whether ``modify`` is the identity or of degree <= 1 in ``score``: ``slope * score + offset``
    with ``slope = d modify / d score`` and ``offset = modify(score = 0)`` both free of the score,
    and ``modify - (slope * score + offset)`` simplifying to 0 (else ``kind = "none"``)."""
    s = E.score
    if modify == s:
        return ScoreFold("identity", sp.Integer(1), sp.Integer(0))
    if s not in modify.free_symbols:
        return ScoreFold("none")  # the scores do not matter: nothing to fold into
    slope = sp.diff(modify, s)
    offset = modify.subs(s, 0)
    if s in slope.free_symbols or s in offset.free_symbols or offset.has(sp.oo, -sp.oo, sp.zoo, sp.nan):
        return ScoreFold("none")
    if sp.simplify(sp.expand(modify - (slope * s + offset))) != 0:
        return ScoreFold("none")
    return ScoreFold("linear", slope, offset)


def mask_predicate(g: nx.DiGraph) -> sp.Basic:
    """The conjunction of the ``mask`` nodes on the score chain (``True`` when there is none)."""
    preds = [g.nodes[node]["pred"] for node in _score_chain(g) if g.nodes[node]["op"] == "mask"]
    return sp.And(*preds) if preds else sp.true


def kv_head(g: nx.DiGraph) -> sp.Expr:
    """The key/value head map stored on the ``k`` input node."""
    return g.nodes["k"]["head"]


def softmax_rules(g: nx.DiGraph) -> SoftmaxRules:
    name, d = _softmax_node(g)
    return SoftmaxRules(name, tuple(d["state"]), MappingProxyType(dict(d["update"])),
                        MappingProxyType(dict(d["finalize"])), MappingProxyType(dict(d["merge"])))
