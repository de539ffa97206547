"""The ``chunkwise`` schedule: chunkwise-parallel kernels of a linear recurrence, forward and backward.

The sequence is cut into chunks of ``CHUNK`` tokens.  A state sweep carries the fp32 state from
chunk to chunk (``S_next = exp(G_last) S + (phi(k) exp(G_last - G))^T v``); the output kernel, parallel
over chunks, adds the intra-chunk quadratic part with the decay mask to the inter-chunk part read
from the chunk's start state.  The backward sweeps the state gradient from the last chunk to the
first and computes dq, dk, dv (and the gate's gradient) chunk-parallel.  Chosen for calls of a
cascade with a ``scan`` node (the ``recurrent`` schedule takes decode steps).
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

TEMPLATE = Path(__file__).parent / "templates" / "chunkwise.py.tmpl"
_TILES = (16, 32, 64, 128)


def _fits(config: Mapping[str, int]) -> bool:
    """The fp32 state tile BLOCK_K x BLOCK_V fits in at most 128 registers per thread."""
    return config["BLOCK_K"] * config["BLOCK_V"] <= 128 * 32 * config["num_warps"]


SPACE = ConfigSpace({"CHUNK": _TILES, "BLOCK_K": _TILES, "BLOCK_V": _TILES, "num_warps": (2, 4, 8),
                     "num_stages": (1, 2, 3, 4)}, valid=_fits)
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
BWD_FACTOR = 2.5  # the backward's work relative to the forward (recomputed states, three products)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Head-dim bound (max(K, V)) -> default config, from an ahead-of-time sweep for zero spills on
# sm_90 (fp16 and bf16, every gate kind; tests/codegen/test_hopper_budgets.py).  BLOCK_K is the key
# slice of chunk_dqk_kernel only; the other kernels hold the whole key dim.  CHUNK = 64 makes the
# chunk-parallel products [CHUNK, *] x [*, *] wide enough for wgmma on sm_90 (a warpgroup needs 64
# rows; at CHUNK = 32 they ran on mma.sync); with 4 warps they spill at 128, so 8.  The vector-gate
# state sweeps apply a chunk 32 tokens at a time (SUB_CHUNK in the template) to stay spill-free.
DEFAULT_CONFIGS: dict[str, dict[int, dict[str, int]]] = {"recurrence": {
    64: {"CHUNK": 64, "BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
    128: {"CHUNK": 64, "BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
    256: {"CHUNK": 16, "BLOCK_K": 64, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
}}


_LOOP_TILES = {"chunk_state_kernel": ("BLOCK_V", "CHUNK"), "chunk_dstate_kernel": ("BLOCK_V", "CHUNK"),
               "chunk_dqk_kernel": ("CHUNK", "BLOCK_V")}


class ChunkwiseSchedule(ScanSchedule):
    name = "chunkwise"
    description = ("chunks of CHUNK tokens: a state sweep per (batch x head, value block) in fp32, then "
                   "chunk-parallel outputs (intra-chunk part with the decay mask + the start state's part); "
                   "the backward sweeps the state gradient in reverse")
    kernels = (
        KernelDecl("chunk_state_kernel", "recurrence", "tokens", "(cdiv(V, BLOCK_V), N*H)",
                   ("K", "V", "G"), ("H0", "HT", "STATES"), ("CU_SEQLENS", "CHUNK_OFFSETS")),
        KernelDecl("chunk_output_kernel", "recurrence", "tokens", "(cdiv(V, BLOCK_V), chunks, H)",
                   ("Q", "K", "V", "G", "OUT"), ("STATES",), ("CU_SEQLENS", "CHUNK_OFFSETS", "SLOT_SEQ")),
        KernelDecl("chunk_dstate_kernel", "recurrence", "tokens", "(cdiv(V, BLOCK_V), N*H)",
                   ("Q", "DO", "G"), ("DHT", "DH0", "DSTATES"), ("CU_SEQLENS", "CHUNK_OFFSETS")),
        KernelDecl("chunk_dv_kernel", "recurrence", "tokens", "(cdiv(V, BLOCK_V), chunks, H)",
                   ("Q", "K", "G", "DO", "DV"), ("DSTATES",), ("CU_SEQLENS", "CHUNK_OFFSETS", "SLOT_SEQ")),
        KernelDecl("chunk_dqk_kernel", "recurrence", "tokens", "(cdiv(K, BLOCK_K), chunks, H)",
                   ("Q", "K", "V", "G", "DO", "DQ", "DK", "DG"), ("STATES", "DSTATES"),
                   ("CU_SEQLENS", "CHUNK_OFFSETS", "SLOT_SEQ")),
    )
    default_configs = DEFAULT_CONFIGS
    DECODE = False
    TEMPLATE = TEMPLATE
    ENTRY = "chunk_forward(q, k, v, g, *, scale, gate, ...) and chunk_backward(...)"
    SPACE = SPACE

    def aot_signature(self, module: Any, kernel: KernelDecl, dtype: str, head_dim: int, head_dim_v: int,
                      config: Mapping[str, int]) -> tuple[dict[str, str], dict[str, Any]] | None:
        """The module's own signature of ``kernel`` for the spec's gate kind, with states."""
        signatures = module.aot_signatures(torch_dtype(dtype), head_dim, head_dim_v, module.GATE_KIND, dict(config))
        for name, _, sig, constexprs, _, _ in signatures:
            if name == kernel.name:
                return sig, constexprs
        raise KeyError(f"chunkwise module has no kernel {kernel.name}")

    def loop_tiles(self, kernel: KernelDecl) -> tuple[str, str] | None:
        """The state sweeps consume CHUNK tokens per iteration for BLOCK_V value columns;
        chunk_dqk_kernel sweeps the value dim BLOCK_V at a time for the CHUNK tokens of its chunk;
        the other chunk-parallel kernels have no tile loop."""
        return _LOOP_TILES.get(kernel.name)

    def flops(self, kind: str, shape: Shape) -> float:
        """Per token: the intra-chunk scores and their product with v (2 CHUNK (K + V), at CHUNK = 64),
        the inter-chunk product and the state update (4 K V); times the backward factor for both."""
        self.check_kind(kind)
        per_token = 2 * 64 * (shape.D + shape.E) + 4 * shape.D * shape.E
        return shape.B * shape.H * shape.M * per_token * (1 + BWD_FACTOR)

    def bytes_moved(self, kind: str, shape: Shape, dtype: str, config: Mapping[str, int]) -> float:
        """q, k, v, o once each way, and the fp32 chunk states written and read."""
        self.check_kind(kind)
        e = ELEM_BYTES[dtype]
        chunks = _cdiv(shape.M, config["CHUNK"])
        return shape.B * shape.H * (shape.M * (2 * shape.D + 2 * shape.E) * e + 2 * chunks * shape.D * shape.E * 4)

    def programs(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """The output kernel's grid: value blocks x chunks x (batch x head)."""
        self.check_kind(kind)
        return _cdiv(shape.E, config["BLOCK_V"]) * _cdiv(shape.M, config["CHUNK"]) * shape.B * shape.H

    def inner_iterations(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """The state sweep's chunks."""
        self.check_kind(kind)
        return _cdiv(shape.M, config["CHUNK"])

    def padding(self, kind: str, shape: Shape, config: Mapping[str, int]) -> float:
        self.check_kind(kind)
        chunk, bv = config["CHUNK"], config["BLOCK_V"]
        return (_cdiv(shape.M, chunk) * chunk / shape.M) * (_cdiv(shape.E, bv) * bv / shape.E)

    def benchmark_call(self, module: Any, kind: str, inputs: Mapping[str, Any], config: Mapping[str, int],
                       captures: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """Forward and backward of the inputs (no gate, no initial state)."""
        self.check_kind(kind)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        cfg = dict(config)
        do = v.new_empty(v.shape).normal_()

        def run() -> Any:
            o, final, saved = module.chunk_forward(q, k, v, None, scale=None, gate="none", output_final_state=True,
                                                   config=cfg)
            return module.chunk_backward(q, k, v, None, do, None, saved, scale=None, gate="none", config=cfg)
        return run



CHUNKWISE = ChunkwiseSchedule()
