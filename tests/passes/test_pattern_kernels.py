"""Kernels printed from the new segment shapes (adjacent merges, unions of unordered ranges,
per-head bounds) visit the planned tiles and compute attention and its gradients.

Interpreter launches at tiny shapes: the tile logs of the three kernels must equal the host-side
plan (``Plan.visits``) and cover every tile holding an element the plain-Python predicate keeps;
outputs, lse and gradients are checked against a dense fp64 torch reference by the 2x rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import assert_close_to_golden, masked_softmax_attention
from test_analysis_cost import PATTERNS, spec_text

import attncc
from attncc.passes.plans import tile_env

TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def _keep(name: str, B: int, H: int, M: int, N: int) -> torch.Tensor:
    pat = PATTERNS[name]
    return torch.tensor([[[[bool(pat.pred(b, h, m, n, pat.params)) for n in range(N)] for m in range(M)]
                          for h in range(H)] for b in range(B)])


def _planned(fn: attncc.CompiledAttention, kernel: str, B: int, H: int, M: int, N: int, params: dict) -> torch.Tensor:
    low = fn.generated.lowered
    plan = low.plan(kernel)
    rows, extent, bc = (-(-N // 16), N, 16) if kernel == "attn_bwd_dkdv" else (-(-M // 16), M, 16)
    cols = -(-M // 16) if kernel == "attn_bwd_dkdv" else -(-N // 16)
    sizes = {"B": B, "H": H, "HK": H, "M": M, "N": N, "D": 16, "E": 16}
    values = {p.symbol: params[p.name] for p in low.variant.params}
    out = torch.zeros(B * H, rows, cols, dtype=torch.int32)
    for b in range(B):
        for h in range(H):
            for r in range(rows):
                last = min(r * 16 + 16, extent) - 1
                for t in plan.visits(tile_env(plan, sizes, values, r * 16, last, b, h), bc):
                    out[b * H + h, r, t.start // bc] += 16 if t.masked else 1
    return out


def _non_empty(keep: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    B, H, R, C = keep.shape
    pad = torch.zeros(B, H, -(-R // br) * br, -(-C // bc) * bc, dtype=torch.bool)
    pad[:, :, :R, :C] = keep
    return pad.view(B, H, -(-R // br), br, -(-C // bc), bc).any(5).any(3).reshape(B * H, -(-R // br), -(-C // bc))


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in
                                  ("power-or8", "unordered-ranges", "band-or", "per-head-window")])
def test_pattern_kernels_visit_planned_tiles_and_match_reference(tmp_path: Path, name: str) -> None:
    pat = PATTERNS[name]
    path = tmp_path / "pattern.toml"
    path.write_text(spec_text(pat.mask, pat.params))
    fn = attncc.load(str(path))
    B, H, M, N, D = 1, 2, 77, 63, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(B, H, L, D, generator=gen) for L in (M, N, N, M))
    logs = {kn: torch.zeros(fn.module.tile_log_shape(kn, B, H, M, N, TILES), dtype=torch.int32)
            for kn in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv")}
    o, lse = fn.module.attention_forward(q, k, v, config=TILES, tile_log=logs["attn_fwd"])
    dq, dk, dv, _ = fn.module.attention_backward(q, k, v, o, lse, do, config=TILES,
                                                  tile_log={kn: logs[kn] for kn in ("attn_bwd_dq", "attn_bwd_dkdv")})
    keep = _keep(name, B, H, M, N)
    for kernel, kept in (("attn_fwd", keep), ("attn_bwd_dq", keep), ("attn_bwd_dkdv", keep.transpose(2, 3))):
        planned = _planned(fn, kernel, B, H, M, N, pat.params)
        assert torch.equal(logs[kernel], planned), f"{name} {kernel}: tile log differs from the plan at " \
            f"{(logs[kernel] != planned).nonzero()[:5].tolist()}"
        missed = _non_empty(kept, 16, 16) & (logs[kernel] == 0)
        assert not missed.any(), f"{name} {kernel}: non-empty tiles not visited: {missed.nonzero()[:5].tolist()}"
    grads = {}
    for dtype in (torch.float64, torch.float32):
        qq, kk, vv = (t.to(dtype).requires_grad_() for t in (q, k, v))
        ro, rlse = masked_softmax_attention((qq @ kk.transpose(-1, -2)) * D ** -0.5, keep, vv)
        ro.backward(do.to(dtype))
        grads[dtype] = (ro.detach(), rlse.detach(), qq.grad, kk.grad, vv.grad)
    for label, got, gold, same in zip(("output", "lse", "dq", "dk", "dv"), (o, lse, dq, dk, dv),
                                      grads[torch.float64], grads[torch.float32], strict=True):
        assert_close_to_golden(f"{name} fp32 M={M} N={N}: {label}", got, gold, same, input_dtype=torch.float32)
