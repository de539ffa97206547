"""Real FlexAttention code traces unchanged: torch's mask combinators and the tensor methods mods call.

``and_masks``, ``or_masks`` and ``noop_mask`` come from ``torch.nn.attention.flex_attention``
itself.  The reference is plain torch: the same mod evaluated by torch on broadcast index grids
``[B, H, M, N]`` (what torch's ``create_block_mask`` computes), then a dense masked softmax, in
float64 (golden) and float32 (the same-dtype yardstick of the 2x rule).  Under
``torch.compile`` the recorded mods must give bitwise the eager results.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sympy as sp
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, masked_softmax_attention
from torch.nn.attention.flex_attention import and_masks, noop_mask, or_masks

import attncc
from attncc.runtime.trace import trace

BACKEND = "aot_eager"


# --- building blocks (written as FlexAttention users write them) -----------------------------------

def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() < 9


def sinks(b, h, q_idx, kv_idx):
    return kv_idx < 3


def created_tensors(b, h, q_idx, kv_idx):
    limit = q_idx.new_full((), 20)
    zero = kv_idx.new_zeros(())
    one = b.new_ones(())
    return ((q_idx - kv_idx).clip(zero, limit) < limit) & (kv_idx * one >= zero) & (q_idx >= kv_idx)


def truncating_casts(b, h, q_idx, kv_idx):
    """``.long()`` of a float truncates toward zero: d in -3..3 gives 0 (floor would give -1 for -3..-1)."""
    d = (q_idx - kv_idx).float() / 4
    return (d.long() == 0) | (kv_idx.to(torch.int32) < 2) | ((h + 1) * q_idx % 5).to(torch.bool).logical_not()


def bool_casts(b, h, q_idx, kv_idx):
    return ((q_idx - kv_idx) % 3).bool() & (q_idx >= kv_idx).int().bool()


def where_spellings(b, h, q_idx, kv_idx):
    d = q_idx - kv_idx
    far = d.where(d >= 0, -2 * d)  # Tensor.where(cond, other)
    return torch.where(kv_idx < 4, far < 30, far < 11)  # a choice between two conditions


def masked_fill_mask(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).masked_fill(kv_idx > q_idx, 1000).abs() < 7


def min_max_sign(b, h, q_idx, kv_idx):
    spread = torch.maximum(q_idx, kv_idx) - torch.minimum(q_idx, kv_idx)
    return (spread < 6) & ((kv_idx - q_idx).sign() <= 0) | (q_idx.minimum(kv_idx).maximum(kv_idx) == 0)


def clamp_spellings(b, h, q_idx, kv_idx):
    d = q_idx - kv_idx
    return (d.clamp_min(0).clamp_max(5) == d) & (torch.clamp(d, min=-1, max=4) >= 0) & (d.clamp(max=9) < 9)


def bit_mask(b, h, q_idx, kv_idx):
    return (((q_idx ^ kv_idx) & 3) == 0) | torch.bitwise_and(kv_idx, 7).eq(0) | (q_idx >> 2 == kv_idx >> 2)


MASKS = [
    pytest.param(and_masks(causal, window), id="and_masks"),
    pytest.param(or_masks(and_masks(causal, window), sinks), id="or_masks-of-and_masks"),
    pytest.param(noop_mask, id="noop_mask"),
    pytest.param(and_masks(), id="and_masks-of-nothing"),
    pytest.param(or_masks(noop_mask, causal), id="or_masks-with-noop"),
    pytest.param(created_tensors, id="new_full-new_zeros-new_ones-clip"),
    pytest.param(truncating_casts, id="float-long-to-int32-to-bool"),
    pytest.param(bool_casts, id="bool-int"),
    pytest.param(where_spellings, id="where-method-and-torch-where"),
    pytest.param(masked_fill_mask, id="masked_fill-abs"),
    pytest.param(min_max_sign, id="minimum-maximum-sign"),
    pytest.param(clamp_spellings, id="clamp_min-clamp_max-clamp"),
    pytest.param(bit_mask, id="bitwise-operators"),
]


def score_methods(score, b, h, q_idx, kv_idx):
    bias = (q_idx - kv_idx).float().clamp(-4, 4).abs()
    return (score.clamp_max(3.0).clamp_min(-3.0) - 0.1 * bias + score.sign() * 0.05
            + (kv_idx % 3).to(score.dtype) * 0.1 + score.abs().minimum(score.new_ones(())) * 0.2)


def score_created(score, b, h, q_idx, kv_idx):
    capped = torch.where(kv_idx < 3, score.new_full((), -1.5), score).masked_fill(q_idx == kv_idx, 0.75)
    return capped + score.new_zeros(()) + torch.maximum(score, score.new_ones(()) * 0.25) * 0.5


def score_casts(score, b, h, q_idx, kv_idx):
    return score + (q_idx >= kv_idx).float() * 0.5 - ((q_idx | kv_idx) & 1).to(score.dtype) * 0.25


SCORES = [
    pytest.param(score_methods, id="clamp-sign-abs-minimum-to"),
    pytest.param(score_created, id="new_full-masked_fill-maximum"),
    pytest.param(score_casts, id="bool-to-float-bitwise"),
]


# --- the plain-torch reference ------------------------------------------------------------------

def grids(B: int, H: int, M: int, N: int) -> tuple[torch.Tensor, ...]:
    return (torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
            torch.arange(M).view(1, 1, M, 1), torch.arange(N).view(1, 1, 1, N))


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable | None,
                    mask_mod: Callable | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The mods evaluated by torch on [B, H, M, N] grids, then a dense masked softmax in ``dtype``."""
    B, H, M, D = q.shape
    N = k.shape[2]
    g = grids(B, H, M, N)
    s = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * D**-0.5
    if score_mod is not None:
        s = score_mod(s, *g).expand(B, H, M, N).to(dtype)
    keep = torch.ones(B, H, M, N, dtype=torch.bool)
    if mask_mod is not None:
        keep = mask_mod(*g).to(torch.bool).expand(B, H, M, N)
    return masked_softmax_attention(s, keep, v.to(dtype))


def inputs(B: int, H: int, M: int, N: int, D: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(M * 100 + N)
    return tuple(torch.randn(B, H, L, D, generator=gen) for L in (M, N, N))


def ours(q, k, v, score_mod, mask_mod) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    bm = attncc.create_block_mask(mask_mod, B, H, M, N) if mask_mod is not None else None
    o, aux = attncc.flex_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), score_mod=score_mod, block_mask=bm,
                                   kernel_options=dict(SMALL_TILES), return_aux=attncc.AuxRequest(lse=True))
    return o.cpu(), aux.lse.cpu()


def check(label: str, score_mod: Callable | None, mask_mod: Callable | None, B: int, H: int, M: int, N: int) -> None:
    q, k, v = inputs(B, H, M, N)
    got = ours(q, k, v, score_mod, mask_mod)
    golden = dense_reference(q, k, v, score_mod, mask_mod, torch.float64)
    same = dense_reference(q, k, v, score_mod, mask_mod, torch.float32)
    assert_close_to_golden(f"{label}: output", got[0], golden[0], same[0], input_dtype=torch.float32)
    assert_close_to_golden(f"{label}: lse", got[1], golden[1], same[1], input_dtype=torch.float32)


@pytest.mark.parametrize("mask_mod", MASKS)
@pytest.mark.parametrize("M,N", [(1, 1), (63, 77)], ids=["1x1", "63x77"])
def test_mask_mod_spellings_match_plain_torch(mask_mod: Callable, M: int, N: int) -> None:
    check(f"mask {getattr(mask_mod, '__name__', mask_mod)} {M}x{N}", None, mask_mod, 1, 2, M, N)


@pytest.mark.parametrize("score_mod", SCORES)
def test_score_mod_spellings_match_plain_torch(score_mod: Callable) -> None:
    check(f"score {score_mod.__name__}", score_mod, causal, 1, 2, 63, 77)


def test_noop_and_empty_combinators_trace_to_no_mask() -> None:
    for mod in (noop_mask, and_masks(), or_masks(noop_mask, causal)):
        assert trace(None, mod).mask == sp.true, f"{mod.__name__}: {trace(None, mod).mask}"
    assert trace(None, or_masks()).mask == sp.false, "or_masks() of nothing masks everything (as torch's)"


def test_created_tensor_of_many_elements_is_a_one_line_error() -> None:
    def grid_of_ones(b, h, q_idx, kv_idx):
        return q_idx.new_ones((4, 4)) > kv_idx

    with pytest.raises(attncc.SpecError, match="one-element") as info:
        trace(None, grid_of_ones)
    assert "\n" not in str(info.value) and f"{__file__}:" in str(info.value), str(info.value)


def test_reduction_spelling_of_max_is_a_one_line_error() -> None:
    def reduce(b, h, q_idx, kv_idx):
        return torch.max(q_idx, 0) > kv_idx

    with pytest.raises(attncc.SpecError, match="maximum") as info:
        trace(None, reduce)
    assert "\n" not in str(info.value), str(info.value)


# --- under torch.compile: recorded like eager tracing ----------------------------------------------

COMPILED = [
    pytest.param(None, or_masks(and_masks(causal, window, created_tensors), sinks), id="combinators-and-new-tensors"),
    pytest.param(None, and_masks(truncating_casts, where_spellings, masked_fill_mask, clamp_spellings), id="methods"),
    pytest.param(score_methods, and_masks(min_max_sign, bit_mask), id="score-methods-and-bit-mask"),
    pytest.param(score_created, noop_mask, id="score-new-tensors-noop"),
]


@pytest.mark.parametrize("score_mod,mask_mod", COMPILED)
def test_compiled_mods_equal_eager(score_mod: Callable | None, mask_mod: Callable) -> None:
    torch._dynamo.reset()
    B, H, M, N = 1, 2, 40, 40
    q, k, v = (x.to(DEVICE) for x in inputs(B, H, M, N))
    bm = attncc.create_block_mask(mask_mod, B, H, M, N)

    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, kernel_options=SMALL_TILES)

    eager = fwd(q, k, v)
    compiled = torch.compile(fwd, fullgraph=True, backend=BACKEND)(q, k, v)
    assert torch.equal(eager, compiled), f"compiled output differs: max |diff| {(eager - compiled).abs().max():.3g}"
    golden = dense_reference(q.cpu(), k.cpu(), v.cpu(), score_mod, mask_mod, torch.float64)
    same = dense_reference(q.cpu(), k.cpu(), v.cpu(), score_mod, mask_mod, torch.float32)
    assert_close_to_golden("compiled: output", compiled.cpu(), golden[0], same[0], input_dtype=torch.float32)
