"""The kernels visit exactly the tiles their iteration plans list, and every non-empty tile.

Each kernel is launched in the interpreter with ``LOG_TILES`` on: every visit adds 1 (mask-free)
or 16 (masked) to its tile's entry of an int32 log (code printed by attncc.codegen.plans).  The
log must equal the host-side evaluation of the same plan object (``Plan.visits``), so a tile is
never visited twice; every tile holding an element that the hand-written masks of
tests/reference.py keep must be visited; and every tile visited without the mask must be kept
whole by that mask.
"""

from __future__ import annotations

import pytest
import torch
from reference import REFERENCES, Grid

import attncc
from attncc.passes.plans import tile_env

TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
FULL, MASKED = 1, 16


def _case(spec: str, M: int, N: int, params: dict | None = None, H: int = 2, HK: int | None = None) -> object:
    return pytest.param(spec, M, N, params or {}, H, HK or H, id=f"{spec}-M{M}-N{N}")


CASES = [
    _case("causal", 77, 77), _case("causal", 1, 63), _case("causal", 63, 40),
    _case("full", 40, 33),
    _case("sliding_window", 77, 77, {"window": 20}),
    _case("sliding_window_symmetric", 70, 77, {"window": 9}),
    _case("prefix_lm", 77, 77, {"prefix": 20}),
    _case("sinks_window", 77, 90, {"sinks": 3, "window": 17}),
    _case("cross_attention", 33, 77),
    _case("gqa", 40, 40, H=4, HK=2),
]


def _inputs(spec: str, M: int, N: int, H: int, HK: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, H, M, 16, generator=gen)
    k = torch.randn(2, HK, N, 16, generator=gen)
    v = torch.randn(2, HK, N, 16, generator=gen)
    return q, k, v


def _captures(spec: str, N: int) -> dict[str, torch.Tensor]:
    return {"kv_lens": torch.tensor([N - 30, N], dtype=torch.int32)} if spec == "cross_attention" else {}


def _keep(spec: str, B: int, H: int, M: int, N: int, params: dict, caps: dict) -> torch.Tensor:
    ref = REFERENCES[spec]
    p = {**ref.defaults, **params}
    if "kv_lens" in caps:
        p["kv_lens"] = caps["kv_lens"].long()
    return torch.as_tensor(ref.mask(Grid.make(B, H, M, N), p)).expand(B, H, M, N)


def _blocks(keep: torch.Tensor, br: int, bc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(any kept, all of the in-range elements kept) per [br, bc] block of keep [B, H, R, C]."""
    B, H, R, C = keep.shape
    tr, tc = -(-R // br), -(-C // bc)
    pad = torch.zeros(B, H, tr * br, tc * bc, dtype=torch.bool)
    pad[:, :, :R, :C] = keep
    inside = torch.zeros_like(pad)
    inside[:, :, :R, :C] = True
    blocks = pad.view(B, H, tr, br, tc, bc)
    any_kept = blocks.any(5).any(3)
    all_kept = (blocks | ~inside.view(B, H, tr, br, tc, bc)).all(5).all(3)
    return any_kept, all_kept


def _expected(fn: attncc.CompiledAttention, kernel: str, shape: tuple[int, ...], params: dict,
              caps: dict, rows: int, cols: int, block_row: int, block_col: int) -> torch.Tensor:
    """The log the plan of ``kernel`` predicts: [B * H, rows, cols]."""
    B, H, HK, M, N = shape
    low = fn.generated.lowered
    plan = low.plan(kernel)
    sizes = {"B": B, "H": H, "HK": HK, "M": M, "N": N, "D": 16, "E": 16}
    values = {p.symbol: params.get(p.name, p.default) for p in low.variant.params}
    extent = M if kernel == "attn_bwd_dkdv" else M
    out = torch.zeros(B * H, rows, cols, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            for r in range(rows):
                first = r * block_row
                last = min(first + block_row, N if kernel == "attn_bwd_dkdv" else extent) - 1
                for t in plan.visits(tile_env(plan, sizes, values, first, last, b, h), block_col, caps):
                    out[b * H + h, r, t.start // block_col] += MASKED if t.masked else FULL
    return out


@pytest.mark.parametrize(("spec", "M", "N", "params", "H", "HK"), CASES)
def test_kernels_visit_the_planned_tiles(spec: str, M: int, N: int, params: dict, H: int, HK: int) -> None:
    fn = attncc.load(spec)
    mod = fn.module
    q, k, v = _inputs(spec, M, N, H, HK)
    caps = _captures(spec, N)
    B, bm, bn = 2, TILES["BLOCK_M"], TILES["BLOCK_N"]
    logs = {name: torch.zeros(mod.tile_log_shape(name, B, H, M, N, TILES), dtype=torch.int32)
            for name in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv")}
    o, lse = mod.attention_forward(q, k, v, config=TILES, captures=caps, tile_log=logs["attn_fwd"], **params)
    mod.attention_backward(q, k, v, o, lse, torch.randn_like(o), config=TILES, captures=caps,
                           tile_log={n: logs[n] for n in ("attn_bwd_dq", "attn_bwd_dkdv")}, **params)
    shape = (B, H, HK, M, N)
    tm, tn = -(-M // bm), -(-N // bn)
    keep = _keep(spec, B, H, M, N, params, caps)
    for name, (rows, cols, br, bc, kept) in {
        "attn_fwd": (tm, tn, bm, bn, keep), "attn_bwd_dq": (tm, tn, bm, bn, keep),
        "attn_bwd_dkdv": (tn, tm, bn, bm, keep.transpose(2, 3)),
    }.items():
        log = logs[name]
        expected = _expected(fn, name, shape, params, caps, rows, cols, br, bc)
        assert torch.equal(log, expected), f"{spec} {name}: tiles visited differ from the plan at " \
            f"{(log != expected).nonzero()[:5].tolist()} (log {log[log != expected][:5].tolist()}, " \
            f"plan {expected[log != expected][:5].tolist()})"
        any_kept, all_kept = _blocks(kept, br, bc)
        any_kept, all_kept = any_kept.reshape(B * H, rows, cols), all_kept.reshape(B * H, rows, cols)
        missed = any_kept & (log == 0)
        assert not missed.any(), f"{spec} {name}: non-empty tiles not visited: {missed.nonzero()[:5].tolist()}"
        wrong_full = (log == FULL) & ~all_kept
        assert not wrong_full.any(), f"{spec} {name}: tiles run without the mask hold masked elements: " \
            f"{wrong_full.nonzero()[:5].tolist()}"


def test_the_log_sees_a_skipped_tile() -> None:
    """Negative control: the comparison fails when one planned visit is missing from the log."""
    fn = attncc.load("causal")
    q, k, v = _inputs("causal", 40, 40, 2, 2)
    log = torch.zeros(fn.module.tile_log_shape("attn_fwd", 2, 2, 40, 40, TILES), dtype=torch.int32)
    fn.module.attention_forward(q, k, v, config=TILES, tile_log=log)
    expected = _expected(fn, "attn_fwd", (2, 2, 2, 40, 40), {}, {}, 3, 3, 16, 16)
    assert torch.equal(log, expected), "tile log"
    assert int(log[0, 2, 2]) == MASKED and int(log[0, 2, 0]) == FULL and int(log[0, 0, 2]) == 0, "causal tiles"
    log[0, 2, 1] = 0
    assert not torch.equal(log, expected), "a missing visit must show"
