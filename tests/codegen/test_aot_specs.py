"""Every built-in spec's kernels (prefill forward and backward, decode) compile ahead of time for
sm_80 and sm_90 (no GPU needed), and the default tile configs have zero spills on sm_90 for head
dims 64 and 128, fp16 and bf16.

The compiles run in one subprocess without Triton's interpreter (see attncc.runtime.aot_spec).
"""

from __future__ import annotations

import pytest

from attncc.codegen.report import KernelReport
from attncc.runtime.aot_spec import report_many
from attncc.spec.loader import library, resolve
from attncc.spec.recurrence import RecurrenceSpec

KERNELS = {"attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq", "attn_decode_units", "attn_decode", "attn_decode_merge"}
KINDS = ("fwd", "bwd", "decode")
SCAN_KERNELS = {"chunk_state_kernel", "chunk_output_kernel", "chunk_dstate_kernel", "chunk_dv_kernel",
                "chunk_dqk_kernel", "recurrent_step_kernel"}
SCAN_KINDS = ("recurrence", "step")
ZERO_SPILL_SCANS = ("gla", "mamba2", "retnet", "linear_attention")


def _is_scan(name: str) -> bool:
    return isinstance(resolve(name), RecurrenceSpec)
ZERO_SPILL_SPECS = ("causal", "sinks_window", "alibi", "softcap", "temperature", "relative_bias", "gqa")


@pytest.fixture(scope="module")
def library_reports() -> dict[tuple[str, str], list[KernelReport]]:
    jobs = [(resolve(name), target, "fp16", 64, None, None, SCAN_KINDS if _is_scan(name) else KINDS)
            for name in library() for target in ("sm_80", "sm_90")]
    reports = report_many(jobs)
    out: dict[tuple[str, str], list[KernelReport]] = {}
    for r in reports:
        out.setdefault((r.kernel.split(".")[0], r.target), []).append(r)
    return out


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", list(library()))
def test_every_spec_compiles(library_reports: dict, name: str, target: str) -> None:
    reps = library_reports[(name, target)]
    want = SCAN_KERNELS if _is_scan(name) else KERNELS
    assert {r.kernel.split(".")[1].split("[")[0] for r in reps} == want, f"{name}/{target}: kernels missing"
    for r in reps:
        assert r.registers > 0, f"{r.kernel} on {target}: no register count"
        assert r.shared_bytes <= r.max_shared_bytes, f"{r.kernel} on {target}: shared memory {r.shared_bytes}"
        if target == "sm_80":
            assert not r.uses_wgmma, f"{r.kernel}: wgmma on sm_80"


def test_default_configs_do_not_spill_on_sm90() -> None:
    jobs = [(resolve(name), "sm_90", dt, hd, None, None, KINDS)
            for name in ZERO_SPILL_SPECS for dt in ("fp16", "bf16") for hd in (64, 128)]
    reports = report_many(jobs)
    assert len(reports) == len(KERNELS) * len(jobs), f"{len(reports)} reports for {len(jobs)} jobs x {len(KERNELS)} kernels"
    for name in ZERO_SPILL_SPECS:  # each spec: every kernel once per (dtype, head dim), all for sm_90
        kernels = sorted(r.kernel.split(".")[1].split("[")[0] for r in reports if r.kernel.split(".")[0] == name)
        assert kernels == sorted(list(KERNELS) * 4), f"{name}: kernels reported {kernels}"
    assert all(r.target == "sm_90" and r.registers > 0 for r in reports), "a report without registers or for another target"
    bad = [f"{r.kernel} {r.config}: {r.spills} spill bytes, smem {r.shared_bytes}" for r in reports if not r.fits]
    assert not bad, "default configs spill on sm_90:\n" + "\n".join(bad)


def test_recurrence_kernels_do_not_spill_on_sm90() -> None:
    """The chunkwise and recurrent kernels of every gate kind, K = V = 64 and 128, fp16 and bf16."""
    jobs = [(resolve(name), "sm_90", dt, hd, None, None, SCAN_KINDS)
            for name in ZERO_SPILL_SCANS for dt in ("fp16", "bf16") for hd in (64, 128)]
    reports = report_many(jobs)
    assert len(reports) == len(SCAN_KERNELS) * len(jobs), f"{len(reports)} reports for {len(jobs)} jobs"
    bad = [f"{r.kernel} {r.config}: {r.spills} spill bytes, {r.registers} registers" for r in reports if not r.fits]
    assert not bad, "recurrence kernels spill on sm_90:\n" + "\n".join(bad)
