"""The ``prefill`` schedule: tiled online-softmax forward and FlashAttention-2 style backward.

Forward and dQ: one program per query tile and (batch, head), sweeping key tiles; dK/dV: one
program per key tile and (batch, key/value head), sweeping query tiles of every query head that
reads it.  Each kernel's sweep is a :class:`~attncc.passes.plans.SegmentPlan` of the symbolic mask
analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attncc.ir import expr as E
from attncc.passes.lowered import Lowered, Lowering
from attncc.passes.plans import Plan, block_table_plan, segment_plan
from attncc.schedules.base import KernelDecl, Schedule
from attncc.schedules.prefill.render import module_text, render
from attncc.schedules.prefill.stats import explain_section, tile_map
from attncc.schedules.space import ConfigSpace

if TYPE_CHECKING:
    from attncc.autotune.tunable import Shape

# Kernel kind -> head dim bound -> default config.  "fwd" is the forward on sm_90 and newer, chosen
# from an ahead-of-time sweep (attncc/codegen/sass.py): at head dims 64 and 128 (fp16, bf16) the
# unmasked key loop of a spec whose tiles read no captured tensor and whose score modification
# folds (causal, windows, GQA, ...) costs at most 36 SASS instructions per key column of a
# 128-query tile, with zero spills.  Specs with heavier tiles (captured-tensor loads, a
# non-linear modification) get HEAVY_FWD instead (module_defaults).  "fwd_pre_sm90": the
# forward below sm_90 (mma.sync keeps both tiles in registers) and in Triton's interpreter (see
# attncc.codegen.launch.device_kind).  256 is a conservative guess (not part of those guarantees).
DEFAULT_CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {
        64: {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
        # d128: with tensor descriptors ptxas serializes this tile's wgmma (C7513, 192 registers);
        # through pointers (USE_TMA=0) it does not, but takes 255 registers and sinks_window spills
        # 440 B.  Which is faster needs a GPU: the tuner chooses; the budget test lists the exception.
        128: {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
        256: {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    },
    "fwd_pre_sm90": {
        64: {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
        128: {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3},
        256: {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    },
    # bwd: tiles of at least 64 rows in both kernels (dQ: BLOCK_M queries, dK/dV: BLOCK_N keys), the
    # rows a warpgroup's wgmma needs; each kernel sweeps the other index 32 at a time inside a tile
    # (STEP_M / STEP_N in the template).  128-row tiles spill on sm_80 (d64) and with a captured-tensor bias (d128).
    "bwd": {
        64: {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
        128: {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
        256: {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
    },
}

# The sm_90 forward of a spec with heavier tiles: zero spills on sm_90 for every built-in softmax spec.
HEAVY_FWD: dict[int, dict[str, int]] = {
    64: {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    128: {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    256: {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
}


def heavy_tiles(low: Lowered) -> bool:
    """Whether the forward's tiles do more than the fold and a mask of indices: the score
    modification does not fold (``low.fold``), or it or the mask reads a captured tensor."""
    return not low.fold.base2 or bool(E.loads(low.modify)) or bool(E.loads(low.mask))


def module_defaults(low: Lowered) -> dict[str, dict[int, dict[str, int]]]:
    """The default configs emitted into ``low``'s module: :data:`DEFAULT_CONFIGS`, with
    :data:`HEAVY_FWD` as the sm_90 forward when :func:`heavy_tiles`."""
    return {**DEFAULT_CONFIGS, "fwd": HEAVY_FWD} if heavy_tiles(low) else dict(DEFAULT_CONFIGS)


_TILES = (16, 32, 64, 128)


def _tile_ok(config: Mapping[str, int]) -> bool:
    """At least four accumulator elements per thread in the BLOCK_M x BLOCK_N tile."""
    return config["BLOCK_M"] * config["BLOCK_N"] >= 128 * config["num_warps"]


SPACE = ConfigSpace({"BLOCK_M": _TILES, "BLOCK_N": _TILES, "num_warps": (2, 4, 8), "num_stages": (1, 2, 3, 4)},
                    valid=_tile_ok)
# The forward also tunes its K/V load path: USE_TMA=1 tensor descriptors where the device and the
# layout allow them (sm_90+, see attncc.codegen.launch.use_tma), 0 the pointer path.  A config
# without the key (cached before it existed) means 1.
FWD_SPACE = ConfigSpace({**SPACE.params, "USE_TMA": (1, 0)}, valid=_tile_ok, defaults={"USE_TMA": 1})

# int32 pointers: the tile log and the block tables of a block-table plan (absent from other variants).
_INT_TENSORS = ("TILE_LOG", "TBL_NUM", "TBL_IDX", "TBL_FULL_NUM", "TBL_FULL_IDX")

ELEM_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
BWD_FLOP_FACTOR = 2.5  # dQ, dK, dV and the recomputed QK^T, relative to the forward


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pad(extent: int, block: int) -> float:
    return _cdiv(extent, block) * block / extent


class PrefillSchedule(Schedule):
    name = "prefill"
    description = ("grid (cdiv(M, BLOCK_M), B*H); each program owns one query tile and sweeps its key segments "
                   "tile by tile: masked tiles at segment edges, unmasked full tiles in between")
    kernels = (
        KernelDecl("attn_fwd", "fwd", "keys", "(cdiv(M, BLOCK_M), B*H)", ("Q", "K", "V", "O"), ("LSE",),
                   _INT_TENSORS),
        # Delta = rowsum(dO * O) - dlse per query row, read by both gradient kernels (no tile loop:
        # its plan over the queries is never printed).
        KernelDecl("attn_bwd_preprocess", "bwd", "queries", "(cdiv(M, BLOCK_M), B*H)", ("O", "DO"),
                   ("DLSE", "DELTA")),
        KernelDecl("attn_bwd_dkdv", "bwd", "queries", "(cdiv(N, BLOCK_N), B*HK)",
                   ("Q", "K", "V", "DO", "DK", "DV"), ("LSE", "DELTA"), _INT_TENSORS),
        KernelDecl("attn_bwd_dq", "bwd", "keys", "(cdiv(M, BLOCK_M), B*H)", ("Q", "K", "V", "DO", "DQ"),
                   ("LSE", "DELTA", "CG_row", "CG_full"), _INT_TENSORS),
    )
    default_configs = DEFAULT_CONFIGS

    def applies(self, low: Lowering) -> bool:
        """Any cascade with an online-softmax node (the other schedules are tried first)."""
        return any(d["op"] == "online_softmax" for _, d in low.graph.nodes(data=True))

    def plan(self, kernel: KernelDecl, low: Lowering) -> Plan:
        """A block table when the call brings one (``CallFacts.block_table``), else the mask's segments."""
        if low.call.block_table:
            return block_table_plan(kernel.sweeps)
        analysis = low.mask_keys if kernel.sweeps == "keys" else low.mask_queries
        if analysis is None:
            raise ValueError("plan_iteration runs after analyse_mask")
        return segment_plan(analysis, kernel.sweeps)

    def prefers_block_table(self, low: Lowered) -> bool:
        """Yes when the mask reads captured tensors (document or modality ids) or the symbolic
        analysis found no exact segments (elementwise fallback, or a segment without full tiles)."""
        analysis = low.mask_keys
        if analysis.always_true:
            return False
        return bool(E.loads(low.mask)) or analysis.note.startswith("elementwise") or any(
            s.full_lo is None for s in analysis.segments)

    def template_text(self) -> str:
        return module_text()

    def render(self, low: Lowered, source_key: str) -> str:
        return render(low, source_key, module_defaults(low))

    def space(self, kind: str) -> ConfigSpace:
        return FWD_SPACE if self.check_kind(kind) == "fwd" else SPACE

    def flops(self, kind: str, shape: Shape) -> float:
        f = 4.0 * shape.B * shape.H * shape.M * shape.N * (shape.D + shape.E) / 2
        return f * (BWD_FLOP_FACTOR if self.check_kind(kind) == "bwd" else 1.0)

    def bytes_moved(self, kind: str, shape: Shape, dtype: str, config: Mapping[str, int]) -> float:
        """Q and O once; K and V once per query tile (the prefill schedule re-reads them)."""
        e = ELEM_BYTES[dtype]
        q_o = shape.B * shape.H * shape.M * (shape.D + shape.E) * e
        kv = shape.B * shape.H * shape.N * (shape.D + shape.E) * e
        total = q_o + kv * _cdiv(shape.M, int(config["BLOCK_M"]))
        return total * (2.0 if self.check_kind(kind) == "bwd" else 1.0)

    def programs(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """fwd: B*H*cdiv(M, BLOCK_M); bwd (its dK/dV kernel): B*H*cdiv(N, BLOCK_N)."""
        extent, block = (shape.M, "BLOCK_M") if self.check_kind(kind) == "fwd" else (shape.N, "BLOCK_N")
        return shape.B * shape.H * _cdiv(extent, config[block])

    def inner_iterations(self, kind: str, shape: Shape, config: Mapping[str, int]) -> int:
        """fwd: N/BLOCK_N key tiles; bwd: M/BLOCK_M query tiles (dense bound)."""
        extent, block = (shape.N, "BLOCK_N") if self.check_kind(kind) == "fwd" else (shape.M, "BLOCK_M")
        return _cdiv(extent, config[block])

    def padding(self, kind: str, shape: Shape, config: Mapping[str, int]) -> float:
        self.check_kind(kind)
        return _pad(shape.M, config["BLOCK_M"]) * _pad(shape.N, config["BLOCK_N"])

    def benchmark_call(self, module: Any, kind: str, inputs: Mapping[str, Any], config: Mapping[str, int],
                       captures: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """fwd: ``attention_forward``; bwd: ``attention_backward`` of a forward run once up front."""
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        cfg, caps = dict(config), dict(captures)
        if self.check_kind(kind) == "fwd":
            return lambda: module.attention_forward(q, k, v, config=cfg, captures=caps, **params)
        o, lse = module.attention_forward(q, k, v, config=cfg, captures=caps, **params)
        do = o.new_empty(o.shape).normal_()
        return lambda: module.attention_backward(q, k, v, o, lse, do, config=cfg, captures=caps, **params)

    def explain(self, low: Lowered, shape: tuple[int, ...] | None, params: Mapping[str, Any],
                tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return explain_section(self, low, shape, params, tiles, captures or {})

    def tile_map(self, low: Lowered, shape: tuple[int, ...], params: Mapping[str, Any],
                 tiles: tuple[int, int] | None, captures: Mapping[str, Any] | None = None) -> Any:
        cfg = self.default_config("fwd", shape[4])
        bm, bn = tiles or (cfg["BLOCK_M"], cfg["BLOCK_N"])
        return tile_map(low, shape, bm, bn, params, self.prefers_block_table(low), captures or {})



PREFILL = PrefillSchedule()
