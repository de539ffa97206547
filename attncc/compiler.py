"""The pipeline from a spec to a loaded module: lower, render, execute.

:data:`PIPELINE` is the whole lowering of a softmax spec, a flat list of named passes, and
:data:`SCAN_PIPELINE` that of a recurrence spec; :func:`lower` runs the spec's pipeline on its
cascade, verifying the IR after every pass, and returns the typed
:class:`~attncc.passes.lowered.Lowered` (:class:`~attncc.passes.scan.LoweredScan`).  :func:`generate` renders the chosen schedule's module
from that result alone; :func:`load_module` runs the text generated in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from attncc.codegen import cache
from attncc.ir import expr as E
from attncc.ir.build import build_cascade
from attncc.ir.graph import PassRecord
from attncc.ir.scan import build_scan
from attncc.ir.verify import verify
from attncc.passes import Pass, analyse_mask, eliminate_identity, score_gradient
from attncc.passes.lowered import CallFacts, Lowered, Lowering
from attncc.passes.online_softmax import online_softmax
from attncc.passes.scan import LoweredScan, ScanLowering, classify_gate, feature_derivative
from attncc.passes.schedule import choose_schedule, plan_iteration
from attncc.schedules import SCHEDULES
from attncc.spec.model import Spec
from attncc.spec.recurrence import RecurrenceSpec

PIPELINE: tuple[Pass, ...] = (eliminate_identity, analyse_mask, online_softmax, score_gradient,
                              choose_schedule, plan_iteration)
SCAN_PIPELINE: tuple[Callable[[ScanLowering], PassRecord], ...] = (
    feature_derivative, classify_gate, choose_schedule, plan_iteration)  # type: ignore[assignment]

AnySpec = Spec | RecurrenceSpec
AnyLowered = Lowered | LoweredScan


def start(spec: AnySpec, call: CallFacts | None = None) -> Lowering | ScanLowering:
    """The un-lowered state of ``spec``: its cascade and the registered schedules as candidates."""
    if isinstance(spec, RecurrenceSpec):
        return ScanLowering(build_scan(spec), call or CallFacts(), SCHEDULES)
    return Lowering(build_cascade(spec), call or CallFacts(), SCHEDULES)


def lower(spec: AnySpec, *, call: CallFacts | None = None, check: bool = True) -> AnyLowered:
    """Build the cascade of ``spec`` and run its pipeline on it (verified after every pass)."""
    low = start(spec, call)
    if check:
        verify(low.graph)
    for p in (SCAN_PIPELINE if isinstance(low, ScanLowering) else PIPELINE):
        low.records.append(p(low))
        if check:
            verify(low.graph)
    return low.result()


@dataclass
class Generated:
    """A spec's lowered IR, its source key and text, and (once loaded) its module and readable copy."""

    spec: AnySpec
    lowered: AnyLowered
    key: str
    source: str
    path: Path | None = None
    module: ModuleType | None = None


def source_key(spec: AnySpec, low: AnyLowered) -> str:
    """Content key of the module: the spec's canonical form and spelling, the call facts, the schedule
    and its templates."""
    # canonical() identifies a meaning (n <= m and m >= n alike); the key also covers the spelling,
    # which the printed module shows.
    spelling = ([E.canonical(spec.feature), E.canonical(spec.gate)] if isinstance(spec, RecurrenceSpec)
                else [E.canonical(spec.kv_head), E.canonical(spec.modify), E.canonical(spec.mask)])
    return cache.source_key({**spec.canonical(), "spelling": spelling, "call": asdict(low.call)},
                            low.schedule.template_text(), low.schedule.name)


def generate(spec: AnySpec, call: CallFacts | None = None) -> Generated:
    """Lower ``spec`` and render its source (always: nothing is read back from the kernel cache)."""
    low = lower(spec, call=call)
    key = source_key(spec, low)
    return Generated(spec, low, key, low.schedule.render(low, key))


def load_module(gen: Generated) -> ModuleType:
    """Run the generated text as a module; a copy goes to the kernel cache for reading only."""
    if gen.module is None:
        gen.path = cache.write(gen.key, gen.source)
        gen.module = cache.execute(gen.key, gen.source)
    return gen.module
