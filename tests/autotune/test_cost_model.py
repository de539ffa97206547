"""The analytic cost model: occupancy from registers and shared memory, waves, padding, ranking."""

from __future__ import annotations

import math

import pytest

from attncc.autotune.cost_model import (
    TARGETS,
    blocks_per_sm,
    estimate,
    num_programs,
    padding_factor,
    target_spec,
)
from attncc.autotune.tunable import Shape
from attncc.codegen.report import KernelReport
from attncc.errors import InputError

SM90 = TARGETS["sm_90"]
SM80 = TARGETS["sm_80"]


def report(registers: int, shared: int, *, wgmma: bool = True, max_shared: int = 232448) -> KernelReport:
    return KernelReport("k", "sm_90", {}, registers, 0, 0, shared, max_shared, wgmma)


def test_target_table_matches_the_issue() -> None:
    assert (SM80.sms, SM80.regs_per_sm, SM80.smem_per_sm) == (108, 65536, 164 * 1024)
    assert (SM90.sms, SM90.regs_per_sm, SM90.smem_per_sm) == (132, 65536, 228 * 1024)
    assert target_spec("sm_90a") is SM90
    with pytest.raises(InputError, match="unknown target 'sm_70'"):
        target_spec("sm_70")


@pytest.mark.parametrize(
    ("registers", "shared", "warps", "expected"),
    [
        (128, 50 * 1024, 4, 4),  # 4096 regs/warp -> 4 blocks by regs; 228/51 -> 4 by smem
        (128, 100 * 1024, 4, 2),  # shared memory limits
        (255, 0, 8, 1),  # 256 regs/thread * 256 threads = 65536
        (32, 0, 4, 16),  # thread limit 2048 / 128
        (64, 0, 2, 16),  # 64 registers * 64 threads = 4096 per block
        (96, 240 * 1024, 4, 0),  # does not fit at all
        (300, 0, 4, 0),  # impossible register count
    ],
)
def test_blocks_per_sm(registers: int, shared: int, warps: int, expected: int) -> None:
    assert blocks_per_sm(report(registers, shared, max_shared=10**9), warps, SM90) == expected


def test_register_allocation_granularity() -> None:
    # 129 registers round to 136 per thread -> 4352 per warp -> 65536 // (4352*4) == 3 blocks
    assert blocks_per_sm(report(129, 0), 4, SM90) == 3
    assert blocks_per_sm(report(128, 0), 4, SM90) == 4
    # sm_86 allows 16 resident blocks although registers and threads would allow 32 and 24
    assert blocks_per_sm(report(32, 0), 2, TARGETS["sm_86"]) == 16


def test_programs_and_padding_per_kind() -> None:
    shape = Shape(2, 8, 1000, 1000, 64, 64)
    assert num_programs("fwd", shape, {"BLOCK_M": 128}) == 16 * 8
    assert num_programs("bwd", shape, {"BLOCK_N": 64}) == 16 * 16
    assert num_programs("decode", shape, {"BLOCK_N": 64}) == min(2 * 8 * 16, 132)  # stream-K: at most the SMs
    assert num_programs("recurrence", shape, {"CHUNK": 64, "BLOCK_K": 32, "BLOCK_V": 64}) == 1 * 16 * 2 * 8
    assert padding_factor("fwd", shape, {"BLOCK_M": 128, "BLOCK_N": 64}) == pytest.approx(1024 / 1000 * 1024 / 1000)
    assert padding_factor("fwd", Shape.of(1, 1, 1024, 1024, 64), {"BLOCK_M": 128, "BLOCK_N": 64}) == 1.0


def _estimate(rep: KernelReport, config: dict[str, int], shape: Shape, target: str = "sm_90") -> float:
    flops = 4.0 * shape.B * shape.H * shape.M * shape.N * shape.D
    bytes_moved = 2.0 * shape.B * shape.H * (shape.M + shape.N) * shape.D * 2
    return estimate(rep, config, kind="fwd", shape=shape, dtype="fp16", flops=flops,
                    bytes_moved=bytes_moved, target=target).ms


def test_compute_bound_time_is_close_to_peak() -> None:
    shape = Shape.of(16, 32, 4096, 4096, 128)
    config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    ms = _estimate(report(168, 96 * 1024), config, shape)
    ideal = 4.0 * 16 * 32 * 4096 * 4096 * 128 / (SM90.tensor_tflops * 1e9)
    assert ideal < ms < 1.5 * ideal


def test_occupancy_and_waves_change_the_ranking() -> None:
    shape = Shape.of(4, 16, 2048, 2048, 64)
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    roomy = _estimate(report(96, 40 * 1024), config, shape)
    starved = _estimate(report(255, 200 * 1024), config, shape)  # one block per SM
    assert roomy < starved
    no_wgmma = _estimate(report(96, 40 * 1024, wgmma=False), config, shape)
    assert roomy < no_wgmma


def test_infeasible_candidate_costs_infinity() -> None:
    shape = Shape.of(1, 8, 1024, 1024, 64)
    config = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    assert math.isinf(_estimate(report(96, 300 * 1024, max_shared=10**9), config, shape))


def test_sm80_is_slower_than_sm90_for_the_same_kernel() -> None:
    shape = Shape.of(8, 16, 2048, 2048, 64)
    config = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    rep = report(128, 64 * 1024)
    assert _estimate(rep, config, shape, "sm_90") < _estimate(rep, config, shape, "sm_80")
