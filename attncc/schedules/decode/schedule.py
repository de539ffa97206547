"""The ``decode`` schedule: stream-K split reduction over contiguous and paged KV caches.

For a few new queries (the last ``Lq`` positions of each sequence) against a long cache, the
key tiles of every (sequence, key/value head, key segment of the mask) are laid end to end and
divided evenly over a persistent grid (LeanAttention); one program may finish one unit and start
the next.  Programs write partial softmax states that ``attn_decode_merge`` combines with the
merge rule of the IR's online-softmax node.  The query heads of a GQA group are packed into the
rows of one tile, so each key tile is loaded once per group.  Chosen for calls with
``CallFacts(decode=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attncc.passes.lowered import Lowered, Lowering
from attncc.passes.plans import PagePlan, Plan, segment_plan
from attncc.schedules.base import KernelDecl, Schedule
from attncc.schedules.decode.render import module_text, render
from attncc.schedules.space import ConfigSpace

if TYPE_CHECKING:
    from attncc.autotune.tunable import Shape

# BLOCK_M is the least number of packed rows (query heads per key/value head x query length,
# rounded up to a power of two); BLOCK_N the key tile.  Chosen from an ahead-of-time sweep for zero
# spills on sm_90 (fp16, bf16) for the specs of tests/codegen/test_aot_specs.py: at head dim 128,
# 4 warps spill 16-68 bytes for some specs (ptxas keeps them under 100 registers), 2 warps do not.
DEFAULT_CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "decode": {
        64: {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
        128: {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2},
        256: {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    },
}
SPACE = ConfigSpace({"BLOCK_M": (16,), "BLOCK_N": (16, 32, 64, 128), "num_warps": (2, 4, 8),
                     "num_stages": (1, 2, 3, 4)})
PROGRAMS = 132  # the persistent grid the cost model assumes (an H100/H200 SM count)
ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
_INT_TENSORS = ("SEQLENS", "BT", "UNITS", "UNIT_START", "PROG_START", "PROG_UNIT", "TILE_LOG")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class DecodeSchedule(Schedule):
    name = "decode"
    description = ("persistent grid (by default 8 warps of programs per SM); the key tiles of every (sequence, "
                   "key/value head, key segment) are split evenly over it (stream-K), GQA groups packed into "
                   "the rows; partial softmax states merged by the IR's merge rule")
    kernels = (
        KernelDecl("attn_decode_units", "decode", "keys", "(B*HK,)", (), (), ("SEQLENS", "UNITS")),
        KernelDecl("attn_decode", "decode", "keys", "(programs,)", ("Q", "K", "V"), ("OPART", "MPART", "LPART"),
                   _INT_TENSORS),
        KernelDecl("attn_decode_merge", "decode", "keys", "(B*HK,)", ("O",), ("OPART", "MPART", "LPART", "LSE"),
                   ("UNIT_FIRST", "UNIT_LAST")),
    )
    default_configs = DEFAULT_CONFIGS

    def applies(self, low: Lowering) -> bool:
        """Decode calls (``CallFacts(decode=True)``) of a cascade with an online-softmax node."""
        return low.call.decode and any(d["op"] == "online_softmax" for _, d in low.graph.nodes(data=True))

    def plan(self, kernel: KernelDecl, low: Lowering) -> Plan:
        """Every kernel of a call follows the ``pages`` plan: the key segments of the mask."""
        if low.mask_keys is None:
            raise ValueError("plan_iteration runs after analyse_mask")
        return PagePlan(segment_plan(low.mask_keys, "keys"))

    def aot_constexprs(self, kernel: KernelDecl) -> dict[str, Any]:
        """Ahead of time, ``attn_decode`` compiles its paged variant (a gather per key row)."""
        return {"PAGED": True}

    def template_text(self) -> str:
        return module_text()

    def render(self, low: Lowered, source_key: str) -> str:
        return render(low, source_key)

    def space(self, kind: str) -> ConfigSpace:
        self.check_kind(kind)
        return SPACE

    def flops(self, kind: str, shape: Shape) -> float:
        self.check_kind(kind)
        return 4.0 * shape.B * shape.H * shape.M * shape.N * (shape.D + shape.E) / 2

    def bytes_moved(self, kind: str, shape: Shape, dtype: str, config: Mapping[str, int]) -> float:
        """K and V once per head (an upper bound: GQA groups read them once per key/value head), Q and O once."""
        self.check_kind(kind)
        e = ELEM_BYTES[dtype]
        return shape.B * shape.H * (shape.N + shape.M) * (shape.D + shape.E) * e

    def programs(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """min(key tiles of all heads, :data:`PROGRAMS`)."""
        self.check_kind(kind)
        return min(shape.B * shape.H * _cdiv(shape.N, config["BLOCK_N"]), PROGRAMS)

    def inner_iterations(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """Key tiles per program: the total divided evenly over the grid."""
        tiles = shape.B * shape.H * _cdiv(shape.N, config["BLOCK_N"])
        return _cdiv(tiles, self.programs(kind, shape, config))

    def padding(self, kind: str, shape: Shape, config: Mapping[str, int]) -> float:
        self.check_kind(kind)
        return _cdiv(shape.N, config["BLOCK_N"]) * config["BLOCK_N"] / shape.N

    def benchmark_call(self, module: Any, kind: str, inputs: Mapping[str, Any], config: Mapping[str, int],
                       captures: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """``decode_forward`` of ``inputs`` (``q`` holds the new queries, ``k``/``v`` the caches)."""
        self.check_kind(kind)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        cfg, caps = dict(config), dict(captures)
        return lambda: module.decode_forward(q, k, v, config=cfg, captures=caps, **params)

    def explain(self, low: Lowered, shape: tuple[int, ...] | None, params: Mapping[str, Any],
                tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"schedule": {"name": self.name, "description": self.description,
                             "kernels": [{"name": k.name, "kind": k.kind, "grid": k.grid,
                                          "plan": low.plan(k.name).kind, "sweeps": k.sweeps} for k in self.kernels]},
                "mask": {"predicate": str(low.mask_keys.predicate), "analysis": low.mask_keys.note,
                         "units": low.plan("attn_decode").describe()}}



DECODE = DecodeSchedule()
