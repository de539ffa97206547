"""Budgets of every schedule's kernels at their DEFAULT configs, compiled ahead of time (no GPU).

Each kernel is held to the numbers of the AOT report (``attncc compile SPEC --target T --report``;
see docs/performance.md): zero spills everywhere; on sm_90 the prefill forward's key loop at
most 36 instructions per key column of a 128-query tile (fp16 and bf16), its loads through TMA,
no default kernel with serialized wgmma but the listed exceptions,
and every matrix product of the prefill backward on wgmma (the targets of issue 12); on sm_80 the prefill kernels on pointer loads; the decode, chunkwise and recurrent kernels at most the numbers
measured when this table was written plus about 10%, with their tensor-core mix, so that a
regression fails.  One ``report_many`` call per target compiles everything (in the AOT worker
subprocess, interpreter off).

To update a budget after an intended change, run the report for the kernel and edit its row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from attncc.codegen.report import KernelReport, format_reports
from attncc.runtime.aot_spec import report_many
from attncc.schedules import by_kind
from attncc.spec.loader import resolve

HEAD_DIMS = (64, 128)
PREFILL = ("attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
BACKWARD_PRODUCTS = ("attn_bwd_dkdv", "attn_bwd_dq")  # the kernels with matrix products
SCANS = ("linear_attention", "retnet", "gla")  # gate kinds none, scalar, vector
FORWARD_TARGET = 36.0  # issue 12: instructions per key column of a 128-query tile, unmasked loop

# (spec, kinds, dtypes) compiled per target, at both head dims.
JOBS = {
    "sm_90": [("causal", ("fwd",), ("fp16", "bf16")), ("causal", ("bwd",), ("fp16",)),
              ("causal", ("decode",), ("fp16",)),
              *((name, ("recurrence", "step"), ("fp16",)) for name in SCANS)],
    "sm_80": [("causal", ("fwd", "bwd"), ("fp16",))],
}

Key = tuple[str, str, str, int]  # spec, kernel, dtype, head dim


def _key(r: KernelReport) -> Key:
    spec, rest = r.kernel.split(".", 1)
    match = re.fullmatch(r"(\w+)\[(\w+),d(\d+)\]", rest)
    assert match, f"unexpected report name {r.kernel}"
    return spec, match.group(1), match.group(2), int(match.group(3))


def _kernels(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The kernels each kind's schedule declares (what ``report_many`` compiles)."""
    return tuple(k.name for kind in kinds for k in by_kind(kind).kernels_of(kind))


def _expected(target: str) -> set[Key]:
    return {(spec, kernel, dt, hd) for spec, kinds, dts in JOBS[target] for kernel in _kernels(kinds)
            for dt in dts for hd in HEAD_DIMS}


_CACHE: dict[str, dict[Key, KernelReport]] = {}


def _reports(target: str) -> dict[Key, KernelReport]:
    """Every kernel of ``JOBS[target]``, from one ``report_many`` call (memoized for the module)."""
    if target not in _CACHE:
        jobs = [(resolve(spec), target, dt, hd, None, None, kinds)
                for spec, kinds, dts in JOBS[target] for dt in dts for hd in HEAD_DIMS]
        out = {_key(r): r for r in report_many(jobs)}
        assert set(out) == _expected(target), f"{target}: kernels missing: {_expected(target) - set(out)}"
        _CACHE[target] = out
    return _CACHE[target]


@pytest.fixture(scope="module")
def sm90() -> dict[Key, KernelReport]:
    return _reports("sm_90")


@pytest.fixture(scope="module")
def sm80() -> dict[Key, KernelReport]:
    return _reports("sm_80")


def _id(key: Key) -> str:
    spec, kernel, dt, hd = key
    return f"{spec}-{kernel}-{dt}-d{hd}"


# --------------------------------------------------------------------------- every kernel


@pytest.mark.parametrize("target", [pytest.param(t, id=t) for t in JOBS])
def test_default_configs_do_not_spill(sm90: dict, sm80: dict, target: str) -> None:
    reports = {"sm_90": sm90, "sm_80": sm80}[target]
    bad = [f"{r.kernel} {r.config}: {r.spill_store_bytes}/{r.spill_load_bytes} spill bytes, {r.registers} "
           f"registers, smem {r.shared_bytes}" for r in reports.values() if not r.fits]
    assert not bad, f"default configs spill or overflow shared memory on {target}:\n" + "\n".join(bad)


# Defaults whose wgmma ptxas serializes, on purpose: the d128 forward with tensor descriptors
# (C7513); through pointers it is not serialized but needs 255 registers and sinks_window spills.
# Which is faster needs a GPU (the tuner's USE_TMA); every other default must stay asynchronous.
SERIALIZED_KNOWN = {("causal", "attn_fwd", "fp16", 128), ("causal", "attn_fwd", "bf16", 128)}


def test_default_configs_keep_wgmma_asynchronous(sm90: dict) -> None:
    """ptxas serializes wgmma (C7513: non-wgmma instructions define a wgmma's inputs inside its
    pipeline stage) at some tile and load-path combinations; a default must never be one."""
    bad = [f"{r.kernel} {r.config}" for key, r in sm90.items() if r.wgmma_serialized and key not in SERIALIZED_KNOWN]
    known = {key for key, r in sm90.items() if r.wgmma_serialized}
    assert known == SERIALIZED_KNOWN, f"the known exceptions changed: now {sorted(known)}; update SERIALIZED_KNOWN"
    assert not bad, "default configs whose wgmma ptxas serializes:\n" + "\n".join(bad)


def test_report_columns_carry_the_metric_and_loads(sm90: dict) -> None:
    """Every row of the table has the metric (or '-') and a load path; the forward has both."""
    fwd = sm90[("causal", "attn_fwd", "fp16", 128)]
    assert fwd.row_tile == "BLOCK_M" and fwd.swept_tile == "BLOCK_N", fwd
    assert fwd.loop_metric == pytest.approx(fwd.loop_instructions * fwd.config["num_warps"] / fwd.config["BLOCK_N"]
                                            * 128 / fwd.config["BLOCK_M"]), fwd
    dkdv = sm90[("causal", "attn_bwd_dkdv", "fp16", 128)]
    assert (dkdv.row_tile, dkdv.swept_tile) == ("BLOCK_N", "BLOCK_M"), "dK/dV sweeps queries: roles swap"
    assert sm90[("gla", "recurrent_step_kernel", "fp16", 64)].loop_metric is None, "the step kernel has no tile loop"
    table = format_reports(list(sm90.values())).splitlines()
    header = table[0].split()
    assert "metric" in header and "loads" in header, table[0]
    for r in sm90.values():
        assert r.loads in ("tma", "cp.async", "ldg"), f"{r.kernel}: loads {r.loads}"
        row = next(line for line in table if line.startswith(r.kernel + " "))
        metric = "-" if r.loop_metric is None else f"{r.loop_metric:.1f}"
        assert f" {metric} " in row and f" {r.loads} " in row, row


# --------------------------------------------------------------------------- prefill: the targets


PREFILL_CASES = [pytest.param(dt, hd, id=f"{dt}-d{hd}") for dt in ("fp16", "bf16") for hd in HEAD_DIMS]


@pytest.mark.parametrize(("dt", "hd"), PREFILL_CASES)
def test_prefill_forward_loop_metric(sm90: dict, dt: str, hd: int) -> None:
    r = sm90[("causal", "attn_fwd", dt, hd)]
    assert r.loop_metric is not None and r.loop_metric <= FORWARD_TARGET, (
        f"{r.kernel} {r.config}: {r.loop_metric} instructions per key column (loop {r.loop_instructions})")


@pytest.mark.parametrize(("dt", "hd"), PREFILL_CASES)
def test_prefill_forward_load_path_on_sm90(sm90: dict, dt: str, hd: int) -> None:
    r = sm90[("causal", "attn_fwd", dt, hd)]
    assert r.loop_tma and not r.loop_cp_async and not r.loop_ldg, (
        f"{r.kernel}: key loop TMA/cp.async/LDG {r.loop_tma}/{r.loop_cp_async}/{r.loop_ldg}")


@pytest.mark.parametrize("hd", [pytest.param(hd, id=f"d{hd}") for hd in HEAD_DIMS])
def test_prefill_uses_pointer_loads_on_sm80(sm80: dict, hd: int) -> None:
    for kernel in PREFILL:
        r = sm80[("causal", kernel, "fp16", hd)]
        assert r.tma == 0 and r.loads in ("cp.async", "ldg"), f"{r.kernel}: loads {r.loads}, TMA {r.tma}"


@pytest.mark.parametrize(("kernel", "dt", "hd"), [pytest.param(k, dt, hd, id=f"{k}-{dt}-d{hd}")
                                                  for k in BACKWARD_PRODUCTS for dt in ("fp16",) for hd in HEAD_DIMS])
def test_prefill_backward_products_on_wgmma(sm90: dict, kernel: str, dt: str, hd: int) -> None:
    r = sm90[("causal", kernel, dt, hd)]
    assert r.loop_hgmma and r.loop_hmma == 0 and r.hmma == 0, (
        f"{r.kernel} {r.config}: HGMMA/HMMA {r.hgmma}/{r.hmma}, in the loop {r.loop_hgmma}/{r.loop_hmma}")


# --------------------------------------------------------------------------- decode, chunkwise, recurrent


@dataclass(frozen=True)
class Budget:
    """Upper bounds of one kernel (sm_90, fp16): ``metric`` (its loop metric) when it has a tile
    loop in SASS, else ``instructions`` (all its SASS instructions); ``hmma`` the mma.sync
    instructions it may issue; ``hgmma`` the fewest wgmma instructions it must issue."""

    instructions: int | None = None
    metric: float | None = None
    hgmma: int = 0
    hmma: int = 0


# Measured on the default configs (triton 3.9.0, ptxas of its wheel), plus about 10%.
BUDGETS: dict[tuple[str, str, int], Budget] = {
    ("causal", "attn_decode", 128): Budget(metric=659.0, hmma=64),  # 598.5, HGMMA/HMMA 0/64
    ("causal", "attn_decode", 64): Budget(metric=404.0, hmma=32),  # 367, HGMMA/HMMA 0/32
    ("causal", "attn_decode_merge", 128): Budget(instructions=660),  # 600 ins, HGMMA/HMMA 0/0
    ("causal", "attn_decode_merge", 64): Budget(instructions=652),  # 592 ins, HGMMA/HMMA 0/0
    ("causal", "attn_decode_units", 128): Budget(instructions=106),  # 96 ins, HGMMA/HMMA 0/0
    ("causal", "attn_decode_units", 64): Budget(instructions=106),  # 96 ins, HGMMA/HMMA 0/0
    ("gla", "chunk_dqk_kernel", 128): Budget(instructions=3494, hgmma=1),  # 3176 ins, HGMMA/HMMA 24/0
    ("gla", "chunk_dqk_kernel", 64): Budget(metric=55.0, hgmma=1),  # 49.5, HGMMA/HMMA 6/0
    ("gla", "chunk_dstate_kernel", 128): Budget(metric=1195.0, hgmma=1),  # 1086, HGMMA/HMMA 4/0
    ("gla", "chunk_dstate_kernel", 64): Budget(metric=805.0, hgmma=1),  # 731, HGMMA/HMMA 6/0
    ("gla", "chunk_dv_kernel", 128): Budget(instructions=4013, hgmma=1),  # 3648 ins, HGMMA/HMMA 20/0
    ("gla", "chunk_dv_kernel", 64): Budget(instructions=2165, hgmma=1),  # 1968 ins, HGMMA/HMMA 12/0
    ("gla", "chunk_output_kernel", 128): Budget(instructions=3600, hgmma=1),  # 3272 ins, HGMMA/HMMA 20/0
    ("gla", "chunk_output_kernel", 64): Budget(instructions=1954, hgmma=1),  # 1776 ins, HGMMA/HMMA 12/0
    ("gla", "chunk_state_kernel", 128): Budget(metric=1176.0, hgmma=1),  # 1069, HGMMA/HMMA 4/0
    ("gla", "chunk_state_kernel", 64): Budget(metric=804.0, hgmma=1),  # 730, HGMMA/HMMA 6/0
    ("gla", "recurrent_step_kernel", 128): Budget(instructions=493),  # 448 ins, HGMMA/HMMA 0/0
    ("gla", "recurrent_step_kernel", 64): Budget(instructions=476),  # 432 ins, HGMMA/HMMA 0/0
    ("linear_attention", "chunk_dqk_kernel", 128): Budget(instructions=1144, hgmma=1),  # 1040 ins, HGMMA/HMMA 32/0
    ("linear_attention", "chunk_dqk_kernel", 64): Budget(metric=48.0, hgmma=1),  # 43, HGMMA/HMMA 14/0
    ("linear_attention", "chunk_dstate_kernel", 128): Budget(metric=278.0, hgmma=1),  # 252.5, HGMMA/HMMA 4/0
    ("linear_attention", "chunk_dstate_kernel", 64): Budget(metric=157.0, hgmma=1),  # 142.5, HGMMA/HMMA 4/0
    ("linear_attention", "chunk_dv_kernel", 128): Budget(instructions=1497, hgmma=1),  # 1360 ins, HGMMA/HMMA 32/0
    ("linear_attention", "chunk_dv_kernel", 64): Budget(instructions=942, hgmma=1),  # 856 ins, HGMMA/HMMA 20/0
    ("linear_attention", "chunk_output_kernel", 128): Budget(instructions=1461, hgmma=1),  # 1328 ins, HGMMA/HMMA 32/0
    ("linear_attention", "chunk_output_kernel", 64): Budget(instructions=925, hgmma=1),  # 840 ins, HGMMA/HMMA 20/0
    ("linear_attention", "chunk_state_kernel", 128): Budget(metric=262.0, hgmma=1),  # 238, HGMMA/HMMA 4/0
    ("linear_attention", "chunk_state_kernel", 64): Budget(metric=146.0, hgmma=1),  # 132.5, HGMMA/HMMA 4/0
    ("linear_attention", "recurrent_step_kernel", 128): Budget(instructions=423),  # 384 ins, HGMMA/HMMA 0/0
    ("linear_attention", "recurrent_step_kernel", 64): Budget(instructions=414),  # 376 ins, HGMMA/HMMA 0/0
    ("retnet", "chunk_dqk_kernel", 128): Budget(instructions=2218, hgmma=1),  # 2016 ins, HGMMA/HMMA 34/0
    ("retnet", "chunk_dqk_kernel", 64): Budget(metric=54.0, hgmma=1),  # 49, HGMMA/HMMA 16/0
    ("retnet", "chunk_dstate_kernel", 128): Budget(metric=202.0, hgmma=1),  # 183.5, HGMMA/HMMA 4/0
    ("retnet", "chunk_dstate_kernel", 64): Budget(metric=145.0, hgmma=1),  # 131.5, HGMMA/HMMA 4/0
    ("retnet", "chunk_dv_kernel", 128): Budget(instructions=1347, hgmma=1),  # 1224 ins, HGMMA/HMMA 32/0
    ("retnet", "chunk_dv_kernel", 64): Budget(instructions=1039, hgmma=1),  # 944 ins, HGMMA/HMMA 20/0
    ("retnet", "chunk_output_kernel", 128): Budget(instructions=1224, hgmma=1),  # 1112 ins, HGMMA/HMMA 32/0
    ("retnet", "chunk_output_kernel", 64): Budget(instructions=960, hgmma=1),  # 872 ins, HGMMA/HMMA 20/0
    ("retnet", "chunk_state_kernel", 128): Budget(metric=181.0, hgmma=1),  # 164.5, HGMMA/HMMA 4/0
    ("retnet", "chunk_state_kernel", 64): Budget(metric=135.0, hgmma=1),  # 122, HGMMA/HMMA 4/0
    ("retnet", "recurrent_step_kernel", 128): Budget(instructions=467),  # 424 ins, HGMMA/HMMA 0/0
    ("retnet", "recurrent_step_kernel", 64): Budget(instructions=449),  # 408 ins, HGMMA/HMMA 0/0
}


@pytest.mark.parametrize("key", [pytest.param(k, id=f"{k[0]}-{k[1]}-d{k[2]}") for k in BUDGETS])
def test_budget(sm90: dict, key: tuple[str, str, int]) -> None:
    spec, kernel, hd = key
    budget = BUDGETS[key]
    r = sm90[(spec, kernel, "fp16", hd)]
    got = f"{r.kernel} {r.config}: metric {r.loop_metric}, {r.sass_instructions} instructions, HGMMA/HMMA {r.hgmma}/{r.hmma}"
    assert r.spills == 0, got
    if budget.metric is not None:
        assert r.loop_metric is not None and r.loop_metric <= budget.metric, f"over {budget.metric}: {got}"
    else:
        assert r.sass_instructions <= budget.instructions, f"over {budget}: {got}"
    assert r.hgmma >= budget.hgmma and r.hmma <= budget.hmma, f"tensor-core mix off {budget}: {got}"


def test_every_decode_and_recurrence_kernel_has_a_budget(sm90: dict) -> None:
    want = {(spec, kernel, hd) for spec, kernel, dt, hd in sm90 if kernel not in PREFILL}
    assert want == set(BUDGETS), f"without a budget: {sorted(want - set(BUDGETS))}; stale: {sorted(set(BUDGETS) - want)}"
