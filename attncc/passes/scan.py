"""The lowering of recurrence cascades (a ``scan`` node): the passes and their typed result.

:data:`SCAN_PIPELINE` (in :mod:`attncc.compiler`) runs ``feature_derivative`` (phi' for the
backward, derived symbolically), ``classify_gate`` (none / constant / scalar / vector, from what
the gate reads), then the shared ``choose_schedule`` and ``plan_iteration``.  :class:`ScanLowering`
is what they read and write; :class:`LoweredScan` the frozen result that code generation reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import networkx as nx
import sympy as sp

from attncc.ir import expr as E
from attncc.ir.graph import PassRecord
from attncc.ir.scan import feature_map
from attncc.ir.variant import Variant, variant_of
from attncc.passes.lowered import CallFacts
from attncc.spec.recurrence import gate_kind, x

if TYPE_CHECKING:
    from attncc.passes.plans import Plan
    from attncc.schedules.base import Schedule


@dataclass
class ScanLowering:
    """Mutable state of the recurrence pipeline (the counterpart of :class:`~attncc.passes.lowered.Lowering`)."""

    graph: nx.DiGraph
    call: CallFacts = CallFacts()
    schedules: tuple[Schedule, ...] = ()
    records: list[PassRecord] = field(default_factory=list)
    feature_grad: sp.Expr | None = None  # feature_derivative: d phi / d x
    gate_kind: str | None = None         # classify_gate
    schedule: Schedule | None = None     # choose_schedule
    plans: dict[str, Plan] = field(default_factory=dict)

    # the attributes the shared passes read on a softmax Lowering (absent here)
    mask_keys = None
    mask_queries = None

    def result(self) -> LoweredScan:
        missing = [n for n in ("feature_grad", "gate_kind", "schedule") if getattr(self, n) is None]
        if missing or not self.plans:
            raise ValueError(f"lowering incomplete: no {', '.join(missing) or 'plans'}")
        assert self.schedule is not None and self.feature_grad is not None and self.gate_kind is not None
        g = self.graph
        scan = g.nodes["S"]
        return LoweredScan(graph=g, variant=variant_of(g), feature=feature_map(g), feature_grad=self.feature_grad,
                           gate=g.nodes["G"]["expr"], gate_kind=self.gate_kind, direction=scan["direction"],
                           decay=scan["decay"], scaled=g.nodes["O"]["scaled"], schedule=self.schedule,
                           plans=MappingProxyType(dict(self.plans)), records=tuple(self.records), call=self.call)


@dataclass(frozen=True)
class LoweredScan:
    """The lowered IR of one recurrence: everything its code generation reads.

    ``feature`` / ``feature_grad``: phi and phi' as expressions of ``x``; ``gate``: the log-gate
    expression (indices ``b, h, t, kd``, params, loads of ``g`` and captured tensors);
    ``gate_kind``: ``none``, ``constant``, ``scalar`` or ``vector``.
    """

    graph: nx.DiGraph
    variant: Variant
    feature: sp.Expr
    feature_grad: sp.Expr
    gate: sp.Expr
    gate_kind: str
    direction: str
    decay: bool
    scaled: bool
    schedule: Schedule
    plans: Mapping[str, Plan]
    records: tuple[PassRecord, ...]
    call: CallFacts

    def plan(self, kernel: str) -> Plan:
        try:
            return self.plans[kernel]
        except KeyError:
            raise KeyError(f"no iteration plan for kernel {kernel!r} (plans: {sorted(self.plans)})") from None

    @property
    def is_gqa(self) -> bool:
        return False


def feature_derivative(low: ScanLowering) -> PassRecord:
    """d phi / d x of the feature map, for the backward's chain rule."""
    phi = feature_map(low.graph)
    low.feature_grad = E.cheap_simplify(E.derivative(phi, x))
    return PassRecord("feature_derivative", True, f"phi = {phi}; d phi / dx = {low.feature_grad}")


def classify_gate(low: ScanLowering) -> PassRecord:
    """The gate's kind from what it reads: none (0), constant per head, scalar per token, vector."""
    gate = low.graph.nodes["G"]["expr"]
    low.gate_kind = gate_kind(gate)
    return PassRecord("classify_gate", True, f"log-gate {gate}: {low.gate_kind}")
