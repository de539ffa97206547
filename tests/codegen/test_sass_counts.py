"""wgmma (HGMMA) and mma.sync (HMMA) counts from the SASS of ahead-of-time compiled kernels.

The real compiles run in the AOT worker subprocess (interpreter off, see attncc.runtime.aot_spec):
the built-in causal spec, fp16, default configs, head dims 64 and 128 on sm_90 and 64 on sm_80.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from attncc.cli import main
from attncc.codegen.report import KernelReport, format_reports
from attncc.codegen.sass import parse_sass
from attncc.runtime.aot_spec import report_many
from attncc.spec.loader import resolve

KERNELS = ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")  # the kernels with tensor-core products
PREPROCESS = "attn_bwd_preprocess"  # the backward's rowsum(dO * O) kernel: no product, no loop
CASES = (("sm_90", 64), ("sm_90", 128), ("sm_80", 64))


@pytest.fixture(scope="module")
def reports() -> dict[tuple[str, int, str], KernelReport]:
    jobs = [(resolve("causal"), target, "fp16", hd, None, None, ("fwd", "bwd")) for target, hd in CASES]
    out = {}
    for r in report_many(jobs):
        kernel = r.kernel.split(".")[1].split("[")[0]
        head_dim = int(re.search(r",d(\d+)\]", r.kernel).group(1))
        out[(r.target, head_dim, kernel)] = r
    want = {(t, hd, k) for t, hd in CASES for k in (*KERNELS, PREPROCESS)}
    assert set(out) == want, f"kernels reported: {sorted(set(out) ^ want)} differ"
    return out


@pytest.mark.parametrize("head_dim", [pytest.param(64, id="d64"), pytest.param(128, id="d128")])
def test_sm90_forward_uses_wgmma_in_its_key_loop(reports: dict, head_dim: int) -> None:
    r = reports[("sm_90", head_dim, "attn_fwd")]
    assert r.hgmma > 0 and r.loop_hgmma > 0, f"{r.kernel}: HGMMA {r.hgmma}, in the key loop {r.loop_hgmma}"
    assert r.uses_wgmma


@pytest.mark.parametrize("head_dim", [pytest.param(64, id="d64"), pytest.param(128, id="d128")])
@pytest.mark.parametrize("kernel", [pytest.param(k, id=k) for k in ("attn_bwd_dkdv", "attn_bwd_dq")])
def test_sm90_backward_products_all_run_on_wgmma(reports: dict, kernel: str, head_dim: int) -> None:
    """Every product of dK/dV and dQ is a wgmma: HGMMA in the key loop, no HMMA anywhere."""
    r = reports[("sm_90", head_dim, kernel)]
    assert r.loop_hgmma > 0 and r.loop_hmma == 0, f"{r.kernel}: key loop HGMMA {r.loop_hgmma}, HMMA {r.loop_hmma}"
    assert r.hmma == 0 and r.wgmma_fraction == 1.0 and r.uses_wgmma, f"{r.kernel}: HGMMA {r.hgmma}, HMMA {r.hmma}"
    row = next(line for line in format_reports([r]).splitlines() if line.startswith(r.kernel))
    assert f"{r.hgmma}/0 100%" in row and f"{r.loop_hgmma}/0 100%" in row, row


def test_preprocess_has_no_tensor_core_work(reports: dict) -> None:
    for target, head_dim in CASES:
        r = reports[(target, head_dim, PREPROCESS)]
        assert (r.hgmma, r.hmma, r.loop_instructions) == (0, 0, None), f"{r.kernel}: {r.hgmma}/{r.hmma}"
        assert r.spills == 0, f"{r.kernel}: {r.spills} spill bytes"


@pytest.mark.parametrize("kernel", [pytest.param(k, id=k) for k in KERNELS])
def test_sm80_has_only_mma_sync(reports: dict, kernel: str) -> None:
    r = reports[("sm_80", 64, kernel)]
    assert r.hgmma == 0 and r.hmma > 0 and r.loop_hmma > 0, f"{r.kernel}: HGMMA {r.hgmma}, HMMA {r.hmma}"


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c[0]}-d{c[1]}") for c in CASES])
def test_counts_are_consistent(reports: dict, case: tuple[str, int]) -> None:
    for kernel in KERNELS:
        r = reports[(*case, kernel)]
        assert r.uses_wgmma == (r.hgmma > 0), f"{r.kernel}: PTX wgmma {r.uses_wgmma}, SASS HGMMA {r.hgmma}"
        assert 0 < r.loop_instructions < r.sass_instructions, f"{r.kernel}: loop {r.loop_instructions}"
        assert r.loop_hgmma <= r.hgmma and r.loop_hmma <= r.hmma, f"{r.kernel}: loop counts over the totals"


def test_cli_json_reports_counts_and_fraction(reports: dict) -> None:
    result = CliRunner().invoke(main, ["compile", "causal", "--target", "sm_90", "--report", "--json",
                                       "--dtype", "fp16", "--head-dim", "128"])
    assert result.exit_code == 0, result.output
    rows = {row["kernel"].split(".")[1].split("[")[0]: row for row in json.loads(result.stdout)}
    for kernel in KERNELS:
        want = reports[("sm_90", 128, kernel)]
        got = rows[kernel]
        assert (got["hgmma"], got["hmma"], got["loop_instructions"]) == (
            want.hgmma, want.hmma, want.loop_instructions), f"{kernel}: --json {got}"
        assert got["wgmma_fraction"] == want.wgmma_fraction, f"{kernel}: wgmma_fraction {got['wgmma_fraction']}"
        assert KernelReport.from_json(got) == want, f"{kernel}: JSON does not round-trip"


# --- the parser on a hand-written listing ---------------------------------------------------------

LISTING = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;       /* 0x000000000c04723c */
        /*0020*/                   IADD3 R2, R2, 0x1, RZ ;                /* 0x0000000102027810 */
        /*0030*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ; /* 0x0000000000187459 */
        /*0040*/                   HMMA.16816.F32 R4, R8, R12, R4 ;       /* 0x000000000c04723c */
        /*0050*/                   FSEL R3, R3, -INF , P0 ;               /* 0x0000000003037808 */
        /*0060*/                   HMMA.16816.F32 R4, R8, R12, R4 ;       /* 0x000000000c04723c */
        /*0070*/              @!P3 BRA 0x30 ;                             /* 0xffffffec00b0b947 */
        /*0080*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ; /* 0x0000000000187459 */
        /*0090*/                   HMMA.16816.F32 R4, R8, R12, R4 ;       /* 0x000000000c04723c */
        /*00a0*/               @P0 BRA 0x80 ;                             /* 0xffffffec00b0b947 */
        /*00b0*/                   IADD3 R2, R2, 0x1, RZ ;                /* 0x0000000102027810 */
        /*00c0*/                   BRA 0x20 ;                             /* 0xffffffec00b0b947 */
        /*00d0*/                   BRA 0x110 ;                            /* 0x0000000000107947 */
        /*00e0*/                   EXIT ;                                 /* 0x000000000000794d */
        /*00f0*/                   BRA 0xf0;                              /* 0xfffffffc00fc7947 */
"""


def test_parse_sass_picks_the_smallest_innermost_tensor_core_loop() -> None:
    """Loops 0x30-0x70 and 0x80-0xa0 sit inside 0x20-0xc0; 0xf0 branching to itself is no loop;
    a forward branch (0xd0) is no loop.  The key loop is 0x80-0xa0 (3 instructions)."""
    stats = parse_sass(LISTING)
    assert (stats.instructions, stats.hgmma, stats.hmma) == (16, 2, 4)
    assert (stats.loop_instructions, stats.loop_hgmma, stats.loop_hmma) == (3, 1, 1)


def test_parse_sass_without_tensor_core_loop() -> None:
    stats = parse_sass(LISTING.replace("HGMMA", "FFMA").replace("HMMA", "FFMA"))
    assert (stats.hgmma, stats.hmma, stats.loop_instructions, stats.loop_hgmma) == (0, 0, None, None)


LOADS_LISTING = """
        /*0000*/                   LDG.E.128 R4, desc[UR6][R2.64] ;        /* 0x0000000602047981 */
        /*0010*/                   UTMALDG.2D [UR8], [UR4] ;               /* 0x00000008040075b4 */
        /*0020*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR6][R2.64] ; /* 0x0000000002057fae */
        /*0030*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ; /* 0x0000000000187459 */
        /*0040*/                   UBLKCP.S.G [UR4], [UR6], UR8 ;          /* 0x00000004060073ba */
        /*0050*/                   LDGDEPBAR ;                             /* 0x00000000000079af */
        /*0060*/               @P0 BRA 0x10 ;                              /* 0xffffffec00b0b947 */
        /*0070*/                   UTMAPF.L2.2D [UR8], [UR4] ;             /* 0x00000008040075b8 */
        /*0080*/                   EXIT ;                                  /* 0x000000000000794d */
"""


def test_parse_sass_counts_loads_by_path() -> None:
    """UTMALDG/UBLKCP/UTMAPF are TMA, LDGSTS is cp.async, LDG a plain load (LDGDEPBAR is none);
    the loop 0x10-0x60 holds one TMA load, one bulk copy and one cp.async."""
    stats = parse_sass(LOADS_LISTING)
    assert (stats.tma, stats.cp_async, stats.ldg) == (3, 1, 1), stats
    assert (stats.loop_tma, stats.loop_cp_async, stats.loop_ldg) == (2, 1, 0), stats
    no_loop = parse_sass(LOADS_LISTING.replace("HGMMA", "FFMA"))
    assert (no_loop.loop_tma, no_loop.loop_cp_async, no_loop.loop_ldg) == (None, None, None), no_loop


def test_loop_metric_and_loads_of_a_report() -> None:
    """The metric: loop instructions x warps / swept tile x 128 / row tile, from the tile names."""
    base = dict(kernel="k", target="sm_90", registers=128, spill_store_bytes=0, spill_load_bytes=0,
                shared_bytes=0, max_shared_bytes=232448, uses_wgmma=True, hgmma=4, hmma=0,
                loop_instructions=300, loop_hgmma=2, loop_hmma=0, tma=0, cp_async=4, ldg=2,
                loop_tma=0, loop_cp_async=4, loop_ldg=0)
    fwd = KernelReport(config={"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}, row_tile="BLOCK_M",
                       swept_tile="BLOCK_N", **base)
    assert fwd.loop_metric == 300 * 8 / 64 and fwd.loads == "cp.async"
    swapped = KernelReport(config={"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4}, row_tile="BLOCK_N",
                           swept_tile="BLOCK_M", **base)
    assert swapped.loop_metric == 300 * 4 / 32 * 128 / 128
    untiled = KernelReport(config={"BLOCK_M": 128, "num_warps": 8}, **base)
    assert untiled.loop_metric is None, "a kernel without tile names has no metric"
    row = next(line for line in format_reports([fwd, untiled]).splitlines() if line.startswith("k "))
    assert "37.5" in row and "cp.async" in row and "0/4/0" in row, row
    assert KernelReport.from_json(fwd.to_json()) == fwd and fwd.to_json()["loop_metric"] == 37.5
