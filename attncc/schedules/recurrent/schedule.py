"""The ``recurrent`` schedule: the fused recurrent kernel of a linear recurrence, for decode steps.

One program per (batch x head, value block, key block) runs the tokens of the call one by one with
the state in fp32 registers, and returns the new state (``.step(...)`` of a recurrence spec).
Chosen for ``CallFacts(decode=True)`` of a cascade with a ``scan`` node.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attncc.ir.scan import is_scan
from attncc.passes.plans import ChunkPlan, Plan
from attncc.schedules.base import KernelDecl, Schedule
from attncc.schedules.scan_render import render_scan
from attncc.schedules.space import ConfigSpace
from attncc.spec.recurrence import SIZE_NAMES

if TYPE_CHECKING:
    from attncc.autotune.tunable import Shape
    from attncc.passes.lowered import Lowered, Lowering

TEMPLATE = Path(__file__).parent / "templates" / "recurrent.py.tmpl"
DEFAULT_CONFIGS: dict[str, dict[int, dict[str, int]]] = {"step": {
    64: {"BLOCK_K": 64, "BLOCK_V": 32, "num_warps": 2, "num_stages": 1},
    128: {"BLOCK_K": 128, "BLOCK_V": 32, "num_warps": 4, "num_stages": 1},
    256: {"BLOCK_K": 256, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
}}
SPACE = ConfigSpace({"BLOCK_K": (16, 32, 64, 128, 256), "BLOCK_V": (16, 32, 64, 128), "num_warps": (2, 4, 8),
                     "num_stages": (1, 2)})
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class RecurrentSchedule(Schedule):
    name = "recurrent"
    description = ("grid (B*H, cdiv(V, BLOCK_V), cdiv(K, BLOCK_K)); each program runs the call's tokens one by "
                   "one with its block of the state in fp32 registers (decode steps)")
    kernels = (KernelDecl("recurrent_step_kernel", "step", "tokens", "(B*H, cdiv(V, BLOCK_V), cdiv(K, BLOCK_K))",
                          ("Q", "K", "V", "G", "Out"), ("S0", "S1")),)
    default_configs = DEFAULT_CONFIGS

    def applies(self, low: Lowering) -> bool:
        return bool(low.call.decode) and is_scan(low.graph)

    def plan(self, kernel: KernelDecl, low: Lowering) -> Plan:
        return ChunkPlan(SIZE_NAMES["T"])

    def template_text(self) -> str:
        return TEMPLATE.read_text()

    def render(self, low: Lowered, source_key: str) -> str:
        return render_scan(low, source_key, TEMPLATE,  # type: ignore[arg-type]
                           "recurrent_step(q, k, v, g, state, *, scale, gate, config=None, reverse=False)")

    def aot_signature(self, module: Any, kernel: KernelDecl, dtype: str, head_dim: int, head_dim_v: int,
                      config: Mapping[str, int]) -> tuple[dict[str, str], dict[str, Any]]:
        """The module's own signature of its kernel (the spec's gate kind, with a state)."""
        import torch

        dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        sig, consts, _ = module.kernel_signature(dt, head_dim, head_dim_v, gate=module.GATE_KIND, config=dict(config))
        return sig, consts

    def space(self, kind: str) -> ConfigSpace:
        self.check_kind(kind)
        return SPACE

    def flops(self, kind: str, shape: Shape) -> float:
        """Per token: the state update (2 K V) and the output (2 K V)."""
        self.check_kind(kind)
        return 4.0 * shape.B * shape.H * shape.M * shape.D * shape.E

    def bytes_moved(self, kind: str, shape: Shape, dtype: str, config: Mapping[str, int]) -> float:
        """The fp32 state read and written once, q/k/v/o once per token."""
        self.check_kind(kind)
        e = ELEM_BYTES[dtype]
        return shape.B * shape.H * (2 * shape.D * shape.E * 4 + shape.M * (2 * shape.D + 2 * shape.E) * e)

    def programs(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        self.check_kind(kind)
        return shape.B * shape.H * _cdiv(shape.E, config["BLOCK_V"]) * _cdiv(shape.D, config["BLOCK_K"])

    def inner_iterations(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        self.check_kind(kind)
        return max(shape.M, 1)

    def padding(self, kind: str, shape: Shape, config: Mapping[str, int]) -> float:
        self.check_kind(kind)
        bk, bv = config["BLOCK_K"], config["BLOCK_V"]
        return (_cdiv(shape.D, bk) * bk / shape.D) * (_cdiv(shape.E, bv) * bv / shape.E)

    def benchmark_call(self, module: Any, kind: str, inputs: Mapping[str, Any], config: Mapping[str, int],
                       captures: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """One ``recurrent_step`` of the inputs (no gate, a zero state)."""
        self.check_kind(kind)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        return lambda: module.recurrent_step(q, k, v, None, None, scale=None, gate="none", config=dict(config))

    def explain(self, low: Lowered, shape: tuple[int, ...] | None, params: Mapping[str, Any],
                tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return scan_explain(self, low)


def scan_explain(schedule: Schedule, low: Any) -> dict[str, Any]:
    """The schedule section of ``attncc explain`` for a recurrence."""
    return {"schedule": {"name": schedule.name, "description": schedule.description,
                         "kernels": [{"name": k.name, "kind": k.kind, "grid": k.grid, "plan": low.plan(k.name).kind,
                                      "sweeps": k.sweeps} for k in schedule.kernels]},
            "recurrence": {"feature": str(low.feature), "feature_grad": str(low.feature_grad),
                           "gate": str(low.gate), "gate_kind": low.gate_kind, "direction": low.direction,
                           "decay": low.decay, "plan": next(iter(low.plans.values())).describe()}}


RECURRENT = RecurrentSchedule()
