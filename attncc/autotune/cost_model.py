r"""Analytic cost model used to rank statically-pruned candidates without a GPU.

For one candidate (config + its :class:`~attncc.codegen.report.KernelReport`) on a target:

Occupancy (blocks resident per SM)::

    threads      = 32 * num_warps
    warp_regs    = roundup(roundup(registers, 8) * 32, 256)          # allocation granularity
    by_regs      = floor(regs_per_sm / (warp_regs * num_warps))       # 0 when registers > 255
    by_smem      = floor(smem_per_sm / (shared_bytes + 1 KiB reserved))  (inf when no smem)
    by_threads   = floor(max_threads_per_sm / threads)
    blocks_per_sm = min(max_blocks_per_sm, by_regs, by_smem, by_threads)
    occupancy    = blocks_per_sm * num_warps / (max_threads_per_sm / 32)

Waves and padding::

    programs = grid size of the kind (fwd: B*H*ceil(M/BLOCK_M); bwd: B*H*ceil(N/BLOCK_N);
               decode: min(key tiles, 132) persistent programs; recurrence: ceil(E/BLOCK_V)*ceil(M/CHUNK)*B*H)
    waves    = ceil(programs / (SMs * blocks_per_sm))          # tail effect: partial waves cost a full one
    padding  = work done on padded tiles / useful work (>= 1)

Time of one wave on one SM, with ``k = min(blocks_per_sm, ceil(programs / SMs))`` programs resident::

    compute  = k * padding * FLOPs/programs / (peak_flops/SMs * c_eff)
    memory   = k * bytes_moved/programs     / (bandwidth/SMs  * m_eff)
    c_eff    = min(1, k * num_warps / 8) * mma_factor   # 8 warps (two warpgroups) saturate the tensor cores;
                                                       # mma_factor 0.6 on sm_90 without wgmma, 0.7 if serialized
    m_eff    = min(1, k * num_warps * num_stages / 16)  # loads in flight hide DRAM latency
    loop     = 0.02 us * inner iterations per program   # fwd: N/BLOCK_N, bwd: M/BLOCK_M,
                                                        # decode: key tiles / programs, recurrence: M/CHUNK
    wave     = max(compute, memory) + loop + 1 us + 0.25 us * num_stages   # + program start, pipeline fill

Estimated time::

    cost_ms = 0.003 (launch) + waves * wave

The absolute number is only indicative; the ranking within one target is what the tuner uses.
A candidate with ``blocks_per_sm == 0`` (too many registers or too much shared memory per SM) is
infeasible and gets ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from attncc.autotune.tunable import Shape
from attncc.errors import InputError
from attncc.schedules import by_kind

if TYPE_CHECKING:
    from attncc.codegen.report import KernelReport

KIB = 1024


@dataclass(frozen=True)
class TargetSpec:
    """Per-SM resources and peak throughput of a representative card of one compute capability."""

    name: str
    sms: int
    regs_per_sm: int
    smem_per_sm: int
    smem_per_block: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    tensor_tflops: float  # dense fp16/bf16 with fp32 accumulation
    tf32_tflops: float
    bandwidth_gbs: float
    has_wgmma: bool = False


TARGETS: dict[str, TargetSpec] = {
    # A100 SXM 80GB
    "sm_80": TargetSpec("sm_80", 108, 65536, 164 * KIB, 163 * KIB, 2048, 32, 312.0, 156.0, 2039.0),
    # A10 / RTX A-series (GA10x)
    "sm_86": TargetSpec("sm_86", 72, 65536, 100 * KIB, 99 * KIB, 1536, 16, 125.0, 62.5, 600.0),
    # L40S (AD102)
    "sm_89": TargetSpec("sm_89", 142, 65536, 100 * KIB, 99 * KIB, 1536, 24, 362.0, 183.0, 864.0),
    # H100 SXM
    "sm_90": TargetSpec("sm_90", 132, 65536, 228 * KIB, 227 * KIB, 2048, 32, 989.0, 494.0, 3350.0, True),
}


def target_spec(target: str) -> TargetSpec:
    """The spec of ``target`` (``"sm_90"``, ``"sm_90a"`` also accepted); one-line error if unknown."""
    name = target.rstrip("a") if target.endswith("a") and target[:-1] in TARGETS else target
    try:
        return TARGETS[name]
    except KeyError:
        raise InputError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}") from None


@dataclass(frozen=True)
class CostEstimate:
    """The model's verdict on one candidate."""

    ms: float
    blocks_per_sm: int
    occupancy: float
    programs: int
    waves: int
    compute_ms: float
    memory_ms: float
    padding: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bound"] = self.bound
        return data


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _roundup(value: int, multiple: int) -> int:
    return _cdiv(value, multiple) * multiple


def blocks_per_sm(report: KernelReport, num_warps: int, spec: TargetSpec) -> int:
    """Resident programs per SM allowed by registers, shared memory, threads and the block limit."""
    threads = 32 * num_warps
    if report.registers > 255 or threads > spec.max_threads_per_sm:
        return 0
    if report.shared_bytes > min(report.max_shared_bytes, spec.smem_per_block):
        return 0
    warp_regs = _roundup(_roundup(max(report.registers, 1), 8) * 32, 256)
    by_regs = spec.regs_per_sm // (warp_regs * num_warps)
    by_smem = spec.smem_per_sm // (report.shared_bytes + KIB) if report.shared_bytes > 0 else spec.max_blocks_per_sm
    by_threads = spec.max_threads_per_sm // threads
    return max(0, min(spec.max_blocks_per_sm, by_regs, by_smem, by_threads))


def _model(kind: str, which: int) -> Any:
    try:
        sched = by_kind(kind)
    except KeyError:
        raise InputError(f"unknown kernel kind {kind!r}") from None
    method = (sched.programs, sched.padding, sched.inner_iterations)[which]
    return lambda shape, config: method(kind, shape, config)


def _pad(extent: int, block: int) -> float:
    return _roundup(extent, block) / extent


def num_programs(kind: str, shape: Shape, config: Mapping[str, int]) -> int:
    """Grid size of a kernel of ``kind`` (see the module docstring)."""
    return int(_model(kind, 0)(shape, config))


def padding_factor(kind: str, shape: Shape, config: Mapping[str, int]) -> float:
    """Work on padded tiles divided by useful work (1.0 when every tile is full)."""
    return float(_model(kind, 1)(shape, config))


def inner_iterations(kind: str, shape: Shape, config: Mapping[str, int]) -> int:
    """Iterations of the main loop of one program (each costs a fixed overhead)."""
    return int(_model(kind, 2)(shape, config))


def _mma_factor(report: KernelReport, spec: TargetSpec) -> float:
    if spec.has_wgmma and not report.uses_wgmma:
        return 0.6
    if report.wgmma_serialized:
        return 0.7
    return 1.0


def estimate(
    report: KernelReport,
    config: Mapping[str, int],
    *,
    kind: str,
    shape: Shape,
    dtype: str,
    flops: float,
    bytes_moved: float,
    target: str,
    programs: int | None = None,
    padding: float | None = None,
    iterations: int | None = None,
) -> CostEstimate:
    """Estimate the run time of one candidate (formula in the module docstring)."""
    spec = target_spec(target)
    num_warps, num_stages = int(config["num_warps"]), int(config["num_stages"])
    programs = max(1, programs if programs is not None else num_programs(kind, shape, config))
    padding = padding if padding is not None else padding_factor(kind, shape, config)
    resident = blocks_per_sm(report, num_warps, spec)
    if resident == 0:
        return CostEstimate(math.inf, 0, 0.0, programs, 0, math.inf, math.inf, padding)
    occupancy = resident * num_warps / (spec.max_threads_per_sm / 32)
    waves = _cdiv(programs, spec.sms * resident)
    k = min(resident, _cdiv(programs, spec.sms))
    tflops = spec.tf32_tflops if dtype == "fp32" else spec.tensor_tflops
    c_eff = min(1.0, k * num_warps / 8) * _mma_factor(report, spec)
    m_eff = min(1.0, k * num_warps * num_stages / 16)
    sm_flops_per_ms = tflops * 1e9 / spec.sms
    sm_bytes_per_ms = spec.bandwidth_gbs * 1e6 / spec.sms
    compute = k * padding * (flops / programs) / (sm_flops_per_ms * c_eff)
    memory = k * (bytes_moved / programs) / (sm_bytes_per_ms * m_eff)
    loop = 0.02e-3 * (iterations if iterations is not None else inner_iterations(kind, shape, config))
    wave = max(compute, memory) + loop + 1e-3 + 0.25e-3 * num_stages
    ms = 3e-3 + waves * wave
    return CostEstimate(ms, resident, occupancy, programs, waves, waves * compute, waves * memory, padding)
