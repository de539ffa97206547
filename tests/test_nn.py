"""attncc.nn.MultiheadAttention against the same weights on torch's scaled_dot_product_attention.

The reference projects with the module's weights, applies rotary embeddings written as complex
rotations (not the module's rotate-half form), repeats GQA heads and calls SDPA with a dense mask:
fp64 for the golden values, fp32 for the same-dtype error of the 2x rule.  Output and the
gradients of x and every weight are checked; torch.compile(fullgraph=True) must give the eager
results exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import DEVICE
from reference import assert_close_to_golden

import attncc
from attncc.nn import MultiheadAttention

E = 32


def _complex_rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding as multiplication of (x_i, x_{i+D/2}) by exp(i * pos * base^(-2i/D))."""
    L, D = x.shape[2], x.shape[3]
    freq = base ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2 / D)
    angle = torch.arange(L, dtype=torch.float64)[:, None] * freq
    z = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _reference(m: MultiheadAttention, x: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    B, L, _ = x.shape
    H, HK, D = m.num_heads, m.num_kv_heads, m.head_dim
    q = m.q_proj(x).view(B, L, H, D).transpose(1, 2)
    k = m.k_proj(x).view(B, L, HK, D).transpose(1, 2)
    v = m.v_proj(x).view(B, L, HK, D).transpose(1, 2)
    if m.rotary:
        q, k = _complex_rotary(q, m.rotary_base), _complex_rotary(k, m.rotary_base)
    k, v = k.repeat_interleave(H // HK, dim=1), v.repeat_interleave(H // HK, dim=1)
    mask = torch.where(keep, 0.0, float("-inf")).to(x.dtype)
    if bias is not None:
        mask = mask + bias.to(x.dtype)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return m.o_proj(o.transpose(1, 2).reshape(B, L, H * D))


def _window(L: int, w: int) -> torch.Tensor:
    q, kv = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return (kv <= q) & (q - kv < w)


def _distance_penalty(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    return score - 0.125 * (h + 1) * (q_idx - kv_idx)


def _causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    return kv_idx <= q_idx


def _penalty_bias(H: int, L: int) -> torch.Tensor:
    q, kv = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return -0.125 * torch.arange(1, H + 1, dtype=torch.float64).view(H, 1, 1) * (q - kv)


# (constructor kwargs, forward kwargs, keep(L), bias(H, L) or None)
CASES = {
    "causal-mha": (dict(num_heads=4), {}, lambda L: _window(L, L), None),
    "causal-gqa-rotary-bias": (dict(num_heads=4, num_kv_heads=2, rotary=True, bias=True), {},
                               lambda L: _window(L, L), None),
    "sliding_window-mqa": (dict(num_heads=4, num_kv_heads=1, spec="sliding_window"), {"window": 5},
                           lambda L: _window(L, 5), None),
    "mods-gqa-rotary": (dict(num_heads=4, num_kv_heads=2, rotary=True, rotary_base=500.0,
                             score_mod=_distance_penalty, mask_mod=_causal), {}, lambda L: _window(L, L),
                        lambda H, L: _penalty_bias(H, L)),
}


def _outputs_and_grads(fn: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module, x: torch.Tensor,
                       w: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (out * w.to(out.dtype)).sum().backward()
    return [("output", out.detach()), ("grad of x", x.grad)] + [
        (f"grad of {n}", p.grad) for n, p in module.named_parameters()]


@pytest.mark.parametrize("L", [pytest.param(1, id="L=1"), pytest.param(33, id="L=33")])
@pytest.mark.parametrize("case", [pytest.param(c, id=c) for c in CASES])
def test_matches_sdpa_with_the_same_weights(case: str, L: int) -> None:
    init, fwd, keep_of, bias_of = CASES[case]
    torch.manual_seed(0)
    module = MultiheadAttention(E, **init).to(DEVICE)
    golden_module = copy.deepcopy(module).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, L, E, generator=gen).to(DEVICE)
    w = torch.randn(2, L, E, generator=gen).to(DEVICE)
    keep = keep_of(L).to(DEVICE)
    bias = bias_of(module.num_heads, L).to(DEVICE) if bias_of is not None else None
    got = _outputs_and_grads(lambda t: module(t, **fwd), module, x, w)
    same = _outputs_and_grads(lambda t: _reference(module, t, keep, bias), module, x, w)
    gold = _outputs_and_grads(lambda t: _reference(golden_module, t, keep, bias), golden_module, x.double(), w)
    for (name, a), (_, s), (_, g) in zip(got, same, gold, strict=True):
        assert_close_to_golden(f"{case} L={L}: {name}", a, g, s)


def test_torch_compile_gives_the_eager_results() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    for init in (dict(num_heads=4, num_kv_heads=2, rotary=True, score_mod=_distance_penalty, mask_mod=_causal),):
        module = MultiheadAttention(E, **init).to(DEVICE)
        x = torch.randn(2, 21, E, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        w = torch.randn(2, 21, E, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        eager = _outputs_and_grads(module, module, x, w)
        traced = _outputs_and_grads(compiled, module, x, w)
        for (name, a), (_, b) in zip(eager, traced, strict=True):
            assert torch.equal(a, b), f"{init}: {name} differs under torch.compile: {(a - b).abs().max():.3g}"


@pytest.mark.parametrize(("kwargs", "needle"), [
    pytest.param(dict(embed_dim=30, num_heads=4), "not a multiple", id="embed-not-multiple"),
    pytest.param(dict(embed_dim=32, num_heads=4, num_kv_heads=3), "must divide", id="kv-heads-not-dividing"),
    pytest.param(dict(embed_dim=12, num_heads=4, rotary=True), "even head_dim", id="odd-rotary-dim"),
    pytest.param(dict(embed_dim=32, num_heads=4, spec="causal", mask_mod=_causal), "not both", id="spec-and-mods"),
    pytest.param(dict(embed_dim=32, num_heads=0), "positive int", id="zero-heads"),
])
def test_bad_arguments_fail_with_one_line(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(attncc.InputError) as err:
        MultiheadAttention(**kwargs)
    assert "\n" not in str(err.value) and needle in str(err.value), str(err.value)


def test_bad_input_shape_fails_with_one_line() -> None:
    module = MultiheadAttention(E, 4)
    with pytest.raises(attncc.InputError, match=r"x must be \[B, L, 32\], got \(2, 5, 16\)"):
        module(torch.randn(2, 5, 16))
