"""The autotuner's view of a compiled spec: config space, cost inputs, AOT reports, GPU runners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attncc.autotune.space import SPACES, ConfigSpace
from attncc.autotune.tunable import Shape
from attncc.codegen.report import KernelReport
from attncc.errors import InputError
from attncc.runtime.api import CompiledAttention, load
from attncc.runtime.check import DTYPES, example_captures

ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
BWD_FLOP_FACTOR = 2.5  # dQ, dK, dV and the recomputed QK^T, relative to the forward


class SpecTunable:
    """:class:`attncc.autotune.tunable.Tunable` for one spec's ``fwd`` or ``bwd`` kernels."""

    def __init__(self, fn: CompiledAttention, kind: str) -> None:
        if kind not in ("fwd", "bwd"):
            raise InputError(f"kernel kind '{kind}' does not exist for softmax specs (fwd, bwd)")
        self.fn = fn
        self.kind = kind
        self.spec_hash = fn.spec.tuning_hash
        self.spec_name = fn.spec.name

    def space(self) -> ConfigSpace:
        return SPACES[self.kind]

    def flops(self, shape: Shape) -> float:
        f = 4.0 * shape.B * shape.H * shape.M * shape.N * (shape.D + shape.E) / 2
        return f * (BWD_FLOP_FACTOR if self.kind == "bwd" else 1.0)

    def bytes_moved(self, shape: Shape, dtype: str, config: dict) -> float:
        """Q and O once; K and V once per query tile (the prefill schedule re-reads them)."""
        e = ELEM_BYTES[dtype]
        q_o = shape.B * shape.H * shape.M * (shape.D + shape.E) * e
        kv = shape.B * shape.H * shape.N * (shape.D + shape.E) * e
        reloads = -(-shape.M // int(config["BLOCK_M"]))
        total = q_o + kv * reloads
        return total * (2.0 if self.kind == "bwd" else 1.0)

    def aot_report(self, config: dict, shape: Shape, dtype: str, target: str) -> KernelReport:
        """The worst of this kind's kernels (most registers, summed spills, most shared memory)."""
        from attncc.runtime.aot_spec import report_kernels

        reps = report_kernels(self.fn, target, dtype, shape.D, shape.E, dict(config), (self.kind,))
        worst = max(reps, key=lambda r: (r.spills, r.registers, r.shared_bytes))
        return KernelReport(
            kernel=f"{self.spec_name}.{self.kind}", target=target, config=dict(config),
            registers=max(r.registers for r in reps), spill_store_bytes=sum(r.spill_store_bytes for r in reps),
            spill_load_bytes=sum(r.spill_load_bytes for r in reps), shared_bytes=max(r.shared_bytes for r in reps),
            max_shared_bytes=worst.max_shared_bytes, uses_wgmma=all(r.uses_wgmma for r in reps),
            wgmma_serialized=any(r.wgmma_serialized for r in reps))

    def make_runner(self, config: dict, shape: Shape, dtype: str) -> Callable[[], Any]:
        if not torch.cuda.is_available():
            raise InputError("timing needs a CUDA GPU; use --offline --target sm_90 without one")
        spec = self.fn.spec
        gen = torch.Generator().manual_seed(0)
        params = {p.name: p.default for p in spec.params.values()}
        caps = example_captures(spec, tuple(shape), params, "cuda", gen)
        HK = 1 if spec.is_gqa else shape.H
        dt = DTYPES[dtype]
        q = torch.randn(shape.B, shape.H, shape.M, shape.D, device="cuda", dtype=dt)
        k = torch.randn(shape.B, HK, shape.N, shape.D, device="cuda", dtype=dt)
        v = torch.randn(shape.B, HK, shape.N, shape.E, device="cuda", dtype=dt)
        mod = self.fn.module
        cfg = dict(config)
        if self.kind == "fwd":
            return lambda: mod.attention_forward(q, k, v, config=cfg, captures=caps, **params)
        o, lse = mod.attention_forward(q, k, v, config=cfg, captures=caps, **params)
        do = torch.randn_like(o)
        return lambda: mod.attention_backward(q, k, v, o, lse, do, config=cfg, captures=caps, **params)


def tunable_for_spec(spec: str, kind: str = "fwd") -> SpecTunable:
    """Resolve a spec file or built-in name to its tunable kernels of ``kind``."""
    return SpecTunable(load(spec), kind)
