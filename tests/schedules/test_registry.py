"""Schedules are objects chosen from facts of the IR and the call; each owns its kernels, plans,
configs, space and cost, and no module outside attncc/schedules asks which schedule it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attncc
from attncc.autotune.space import SPACES
from attncc.autotune.tunable import Shape
from attncc.codegen.plans import EMITTERS
from attncc.compiler import PIPELINE, start
from attncc.errors import CompileError
from attncc.ir.verify import verify
from attncc.passes.lowered import CallFacts, Lowering
from attncc.schedules import SCHEDULES, by_kind, by_name
from attncc.schedules.base import lookup_default
from attncc.schedules.prefill.schedule import PREFILL, PrefillSchedule
from attncc.spec.loader import resolve

ROOT = Path(attncc.__file__).resolve().parent


class _SingleQuery(PrefillSchedule):
    """A stand-in schedule that claims calls with one query row (as decode will)."""

    name = "single_query"

    def applies(self, low: Lowering) -> bool:
        return low.call.query_len == 1 and super().applies(low)


def _lower(spec: str, call: CallFacts, schedules: tuple) -> Lowering:
    low = start(resolve(spec), call)
    low.schedules = schedules
    for p in PIPELINE:
        low.records.append(p(low))
        verify(low.graph)
    return low


@pytest.mark.parametrize(("query_len", "chosen"), [pytest.param(1, "single_query", id="one-query"),
                                                   pytest.param(None, "prefill", id="any-length"),
                                                   pytest.param(77, "prefill", id="77-queries")])
def test_choice_follows_the_call_facts(query_len: int | None, chosen: str) -> None:
    low = _lower("causal", CallFacts(query_len=query_len), (_SingleQuery(), PREFILL))
    assert low.schedule is not None and low.schedule.name == chosen, f"query_len={query_len}: chose {low.schedule}"
    assert [r.note for r in low.records if r.name == "choose_schedule"] == [chosen], "choose_schedule record"
    assert set(low.plans) == {k.name for k in low.schedule.kernels}, "one plan per kernel"


def test_no_applicable_schedule_is_a_one_line_error() -> None:
    with pytest.raises(CompileError, match="no registered schedule realises this cascade") as err:
        _lower("causal", CallFacts(query_len=5), (_SingleQuery(),))
    assert "\n" not in str(err.value), "one line"


@pytest.mark.parametrize("schedule", [pytest.param(s, id=s.name) for s in SCHEDULES])
def test_a_registered_schedule_owns_its_kernels(schedule: object) -> None:
    assert by_name(schedule.name) is schedule, "by_name"
    scan = schedule.name in ("chunkwise", "recurrent")
    fn = attncc.load("gla" if scan else "causal")
    variants = ((fn.generated, fn.generated_step()) if scan
                else (fn.generated_for(False), fn.generated_for(True), fn.generated_decode()))
    gens = [g for g in variants if g.lowered.schedule is schedule]
    assert gens, f"{schedule.name}: no generated module of causal uses it"
    modules = [fn.module_for(g.key) for g in gens]
    main = fn.generated_of_kind(schedule.kinds[0])
    assert main.lowered.schedule is schedule, "generated_of_kind"
    for decl in schedule.kernels:
        assert by_kind(decl.kind) is schedule, f"{decl.kind}: by_kind"
        assert all(hasattr(m, decl.name) for m in modules), f"{decl.name}: not in the generated module"
        plan = main.lowered.plan(decl.name)
        assert plan.kind in EMITTERS and plan.swept == decl.sweeps, f"{decl.name}: plan {plan.kind} over {plan.swept}"
        variants = [getattr(m, decl.name).arg_names for m in modules]
        for ptr in (*decl.elem_tensors, *decl.fp32_tensors, *decl.int_tensors):
            assert any(ptr in args for args in variants), f"{decl.name}: declared tensor {ptr} is not an argument"
        for m, args in zip(modules, variants, strict=True):  # every pointer argument has a declared dtype
            own = schedule.aot_signature(m, decl, "fp16", 64, 64, schedule.default_config(decl.kind, 64))
            pointers = ([a for a, t in own[0].items() if t.startswith("*")] if own is not None
                        else [a for a in args if a.isupper() or a.startswith("CG_")])
            undeclared = [a for a in pointers if a not in (*decl.elem_tensors, *decl.fp32_tensors, *decl.int_tensors)
                          and not a.startswith(("HEAD_", "BLOCK_", "DOT_", "WRITE_", "LOG_", "TBL_ROW", "TBL_COL", "USE_TMA"))
                          and a not in ("B", "H", "HK", "M", "N", "LQ", "G", "S", "AT_END", "PAGE_SIZE", "PAGED")]
            assert not undeclared, f"{decl.name}: pointer arguments without a declared dtype: {undeclared}"
    shape = Shape.of(2, 4, 1000, 1000, 64)
    for kind in schedule.kinds:
        space = schedule.space(kind)
        assert SPACES[kind] is space, f"{kind}: autotune's space is not the schedule's"
        for head_dim in (32, 64, 128, 256):
            cfg = schedule.default_config(kind, head_dim)
            module = fn.module_for(fn.generated_of_kind(kind).key)
            assert lookup_default(module.DEFAULT_CONFIGS[kind], head_dim) == cfg, \
                f"{kind} d{head_dim}: module default differs"
        cfg = space.enumerate()[0]
        assert schedule.flops(kind, shape) > 0 and schedule.bytes_moved(kind, shape, "fp16", cfg) > 0, kind
        assert schedule.programs(kind, shape, cfg) >= 1 and schedule.inner_iterations(kind, shape, cfg) >= 1, kind
        assert schedule.padding(kind, shape, cfg) >= 1.0, kind


def test_no_module_outside_schedules_asks_which_schedule_it_is() -> None:
    """Schedule names and kernel names appear only under attncc/schedules (and in docstrings of examples)."""
    pattern = re.compile(r"""(["'])(prefill|attn_fwd|attn_bwd_dkdv|attn_bwd_dq|attn_decode\w*)\1"""
                         r"""|schedule\.name\s*==""")
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.is_relative_to(ROOT / "schedules"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "schedule-specific names outside attncc/schedules:\n" + "\n".join(offenders)
