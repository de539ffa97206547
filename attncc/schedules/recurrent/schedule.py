"""The ``recurrent`` schedule: the fused recurrent kernel of a linear recurrence, for decode steps.

One program per (batch x head, value block, key block) runs the tokens of the call one by one with
the state in fp32 registers, and returns the new state (``.step(...)`` of a recurrence spec).
Chosen for ``CallFacts(decode=True)`` of a cascade with a ``scan`` node.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attncc.schedules.base import KernelDecl
from attncc.schedules.scan_render import ScanSchedule, torch_dtype
from attncc.schedules.space import ConfigSpace

if TYPE_CHECKING:
    from attncc.autotune.tunable import Shape

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


class RecurrentSchedule(ScanSchedule):
    name = "recurrent"
    description = ("grid (B*H, cdiv(V, BLOCK_V), cdiv(K, BLOCK_K)); each program runs the call's tokens one by "
                   "one with its block of the state in fp32 registers (decode steps)")
    kernels = (KernelDecl("recurrent_step_kernel", "step", "tokens", "(B*H, cdiv(V, BLOCK_V), cdiv(K, BLOCK_K))",
                          ("Q", "K", "V", "G", "Out"), ("S0", "S1")),)
    default_configs = DEFAULT_CONFIGS
    DECODE = True
    TEMPLATE = TEMPLATE
    ENTRY = "recurrent_step(q, k, v, g, state, *, scale, gate, config=None, reverse=False)"
    SPACE = SPACE

    def aot_signature(self, module: Any, kernel: KernelDecl, dtype: str, head_dim: int, head_dim_v: int,
                      config: Mapping[str, int]) -> tuple[dict[str, str], dict[str, Any]]:
        """The module's own signature of its kernel (the spec's gate kind, with a state)."""
        sig, consts, _ = module.kernel_signature(torch_dtype(dtype), head_dim, head_dim_v, gate=module.GATE_KIND,
                                                 config=dict(config))
        return sig, consts

    def loop_tiles(self, kernel: KernelDecl) -> tuple[str, str] | None:
        """No tile loop: the step kernel runs its tokens one at a time (outer products, no tensor cores)."""
        return None

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



RECURRENT = RecurrentSchedule()
