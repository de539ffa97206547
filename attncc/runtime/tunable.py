"""The autotuner's view of a compiled spec: config space, cost inputs, AOT reports, GPU runners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attncc.autotune.tunable import Shape
from attncc.codegen.report import KernelReport
from attncc.errors import InputError
from attncc.runtime.api import CompiledAttention, load
from attncc.runtime.check import DTYPES, example_captures
from attncc.schedules.space import ConfigSpace


class SpecTunable:
    """:class:`attncc.autotune.tunable.Tunable` for the kernels of one config kind of a spec's schedule.

    Space, cost inputs, defaults and the kernel list come from the schedule whose kernels have
    config kind ``kind`` (the spec's default module, or its decode module).
    """

    def __init__(self, fn: CompiledAttention, kind: str) -> None:
        try:
            self.generated = fn.generated_of_kind(kind)
        except KeyError:
            raise InputError(f"kernel kind '{kind}' does not exist for spec {fn.spec.name} "
                             f"({', '.join(fn.kinds())})") from None
        self.schedule = self.generated.lowered.schedule
        self.fn = fn
        self.kind = kind
        self.spec_hash = fn.spec.tuning_hash
        self.spec_name = fn.spec.name

    def space(self) -> ConfigSpace:
        return self.schedule.space(self.kind)

    def default_config(self, head_dim: int) -> dict[str, int]:
        return self.schedule.default_config(self.kind, head_dim)

    def flops(self, shape: Shape) -> float:
        return self.schedule.flops(self.kind, shape)

    def bytes_moved(self, shape: Shape, dtype: str, config: dict) -> float:
        return self.schedule.bytes_moved(self.kind, shape, dtype, config)

    def num_programs(self, shape: Shape, config: dict) -> int:
        return self.schedule.programs(self.kind, shape, config)

    def inner_iterations(self, shape: Shape, config: dict) -> int:
        return self.schedule.inner_iterations(self.kind, shape, config)

    def padding(self, shape: Shape, config: dict) -> float:
        return self.schedule.padding(self.kind, shape, config)

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
        module = self.fn.module_for(self.generated.key)
        return self.schedule.benchmark_call(module, self.kind, {"q": q, "k": k, "v": v}, config, caps, params)


def tunable_for_spec(spec: str, kind: str = "fwd") -> SpecTunable:
    """Resolve a spec file or built-in name to its tunable kernels of ``kind``."""
    return SpecTunable(load(spec), kind)
