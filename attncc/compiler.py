"""The pipeline from a spec to a loaded module: lower, render, execute.

:data:`PIPELINE` is the whole lowering, a flat list of named passes; :func:`lower` runs it on the
cascade of a spec, verifying the IR after every pass, and returns the typed
:class:`~attncc.passes.lowered.Lowered`.  :func:`generate` renders the chosen schedule's module
from that result alone; :func:`load_module` runs the text generated in this process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from attncc.codegen import cache
from attncc.ir import expr as E
from attncc.ir.build import build_cascade
from attncc.ir.verify import verify
from attncc.passes import Pass, analyse_mask, eliminate_identity, score_gradient
from attncc.passes.lowered import CallFacts, Lowered, Lowering
from attncc.passes.online_softmax import online_softmax
from attncc.passes.schedule import choose_schedule, plan_iteration
from attncc.schedules import SCHEDULES
from attncc.spec.model import Spec

PIPELINE: tuple[Pass, ...] = (eliminate_identity, analyse_mask, online_softmax, score_gradient,
                              choose_schedule, plan_iteration)


def start(spec: Spec, call: CallFacts | None = None) -> Lowering:
    """The un-lowered state of ``spec``: its cascade and the registered schedules as candidates."""
    return Lowering(build_cascade(spec), call or CallFacts(), SCHEDULES)


def lower(spec: Spec, *, call: CallFacts | None = None, check: bool = True) -> Lowered:
    """Build the cascade of ``spec`` and run :data:`PIPELINE` on it (verified after every pass)."""
    low = start(spec, call)
    if check:
        verify(low.graph)
    for p in PIPELINE:
        low.records.append(p(low))
        if check:
            verify(low.graph)
    return low.result()


@dataclass
class Generated:
    """A spec's lowered IR, its source key and text, and (once loaded) its module and readable copy."""

    spec: Spec
    lowered: Lowered
    key: str
    source: str
    path: Path | None = None
    module: ModuleType | None = None


def source_key(spec: Spec, low: Lowered) -> str:
    """Content key of the module: the spec's canonical form and spelling, the call facts, the schedule
    and its templates."""
    # canonical() identifies a meaning (n <= m and m >= n alike); the key also covers the spelling,
    # which the printed module shows.
    spelling = [E.canonical(spec.kv_head), E.canonical(spec.modify), E.canonical(spec.mask)]
    return cache.source_key({**spec.canonical(), "spelling": spelling, "call": asdict(low.call)},
                            low.schedule.template_text(), low.schedule.name)


def generate(spec: Spec, call: CallFacts | None = None) -> Generated:
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
