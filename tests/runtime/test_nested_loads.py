"""Loads indexed by loads: a learnable table read through a captured integer tensor (graph transformers).

``bias[dist[b, q_idx, kv_idx]]`` (Graphormer's spatial encoding, ``dist`` a captured int
``[B, N, N]`` distance matrix, ``bias`` a float ``[K]`` or per-head ``[H, K]`` table) must run
forward and backward; the gradient of ``bias`` is a scatter through the loaded index.  The
reference is plain torch autograd on dense ``[B, H, M, N]`` tensors: float64 (golden) and float32
(the same-dtype yardstick of the 2x rule).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, masked_softmax_attention

import attncc

BACKEND = "aot_eager"


def make_case(B: int, H: int, M: int, N: int, K: int, per_head: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, 16, generator=gen) for L in (M, N, N))
    dist = torch.randint(0, K, (B, M, N), generator=gen)
    bias = torch.randn((H, K) if per_head else (K,), generator=gen)
    return {"q": q, "k": k, "v": v, "dist": dist, "bias": bias}


def mods(dist: torch.Tensor, bias: torch.Tensor, per_head: bool, masked: bool) -> tuple[Callable, Callable | None]:
    """The mods as a graph-transformer user writes them (closures over the captured tensors)."""
    if per_head:
        def spatial(score, b, h, q_idx, kv_idx):
            return score + bias[h, dist[b, q_idx, kv_idx]]
    else:
        def spatial(score, b, h, q_idx, kv_idx):
            return score + bias[dist[b, q_idx, kv_idx]]

    def near(b, h, q_idx, kv_idx):  # a mask that reads the captured tensor too
        return (dist[b, q_idx, kv_idx] < 5) | (q_idx == kv_idx)

    return spatial, (near if masked else None)


def reference(c: dict[str, torch.Tensor], per_head: bool, masked: bool, dtype: torch.dtype,
              do: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output and gradients (q, k, v, bias) by plain torch autograd in ``dtype``."""
    q, k, v, bias = (c[n].to(dtype).requires_grad_() for n in ("q", "k", "v", "bias"))
    dist = c["dist"]
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    table = bias[torch.arange(H).view(1, H, 1, 1), dist[:, None]] if per_head else bias[dist][:, None]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + table
    m = torch.arange(M).view(M, 1)
    n = torch.arange(N).view(1, N)
    keep = ((dist < 5) | (m == n))[:, None].expand(B, H, M, N) if masked else torch.ones(B, H, M, N, dtype=torch.bool)
    o, _ = masked_softmax_attention(s, keep, v)
    grads = torch.autograd.grad(o, [q, k, v, bias], do.to(dtype))
    return {"output": o.detach(), **{f"grad of {n}": g for n, g in zip(("q", "k", "v", "bias"), grads, strict=True)}}


def ours(c: dict[str, torch.Tensor], per_head: bool, masked: bool, do: torch.Tensor,
         fn: Callable | None = None) -> dict[str, torch.Tensor]:
    q, k, v, bias = (c[n].to(DEVICE).requires_grad_() for n in ("q", "k", "v", "bias"))
    dist = c["dist"].to(DEVICE)
    score_mod, mask_mod = mods(dist, bias, per_head, masked)
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    bm = attncc.create_block_mask(mask_mod, B, H, M, N) if mask_mod is not None else None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, kernel_options=dict(SMALL_TILES))

    o = (fn(attend) if fn is not None else attend)(q, k, v)
    grads = torch.autograd.grad(o, [q, k, v, bias], do.to(DEVICE))
    out = {"output": o.detach(), **{f"grad of {n}": g for n, g in zip(("q", "k", "v", "bias"), grads, strict=True)}}
    return {name: t.cpu() for name, t in out.items()}


CASES = [
    pytest.param(1, 1, 1, 1, 3, False, False, id="one-element"),
    pytest.param(2, 2, 63, 77, 9, False, False, id="table-63x77"),
    pytest.param(1, 3, 77, 63, 6, True, False, id="per-head-table-77x63"),
    pytest.param(2, 2, 50, 50, 9, True, True, id="per-head-masked-by-dist"),
]


@pytest.mark.parametrize("B,H,M,N,K,per_head,masked", CASES)
def test_table_indexed_by_captured_distances_forward_and_backward(B: int, H: int, M: int, N: int, K: int,
                                                                  per_head: bool, masked: bool) -> None:
    c = make_case(B, H, M, N, K, per_head, seed=M * 7 + N)
    do = torch.randn(B, H, M, 16, generator=torch.Generator().manual_seed(1))
    got = ours(c, per_head, masked, do)
    golden = reference(c, per_head, masked, torch.float64, do)
    same = reference(c, per_head, masked, torch.float32, do)
    for name, t in got.items():
        assert torch.isfinite(t).all(), f"{name}: non-finite values"
        assert_close_to_golden(f"{B}x{H}x{M}x{N} K={K}: {name}", t, golden[name], same[name],
                               input_dtype=torch.float32)
    assert got["grad of bias"].abs().sum() > 0, "bias got no gradient"


def test_bias_gradient_counts_every_use_of_an_entry() -> None:
    """With q = k = 0 and do = 1 on one value channel, d bias[j] is sum over elements with dist == j of
    p * (v - o): checked against a hand count (scatter of the dense dS by dist), not autograd."""
    B, H, M, N, K = 1, 1, 9, 11, 4
    c = make_case(B, H, M, N, K, False, seed=5)
    c["q"].zero_()
    c["k"].zero_()
    do = torch.zeros(B, H, M, 16)
    do[..., 0] = 1.0
    got = ours(c, False, False, do)["grad of bias"]
    s = c["bias"].double()[c["dist"]][:, None]  # [B, 1, M, N]
    p = torch.softmax(s, -1)
    v0 = c["v"].double()[..., 0]  # [B, H, N]
    dp = v0[:, :, None, :].expand(B, H, M, N)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    want = torch.zeros(K, dtype=torch.float64).index_add_(0, c["dist"].reshape(-1), ds.reshape(-1))
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5), f"grad of bias {got.tolist()} != {want.tolist()}"


def test_compiled_nested_loads_equal_eager() -> None:
    torch._dynamo.reset()
    c = make_case(1, 2, 40, 40, 7, True, seed=3)
    do = torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(2))
    eager = ours(c, True, True, do)
    compiled = ours(c, True, True, do, fn=lambda f: torch.compile(f, fullgraph=True, backend=BACKEND))
    for name, t in eager.items():
        assert torch.equal(t, compiled[name]), f"compiled {name} differs: max |diff| {(t - compiled[name]).abs().max():.3g}"
