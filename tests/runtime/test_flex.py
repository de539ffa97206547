"""attncc's FlexAttention front end against torch's own FlexAttention (eager on CPU, the oracle).

Each case is a (score_mod, mask_mod) pair, several with captured tensors.  Both
implementations get the same mods.  Outputs and lse are checked by the 2x rule: the
kernel's max error against torch's FlexAttention run on float64 inputs (the golden) is at
most twice that of torch's FlexAttention run in the inputs' dtype, plus a small floor
(``reference.FLOORS``: 1e-6 for fp32, 1e-3 for fp16).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden
from torch.nn.attention import flex_attention as torch_flex_module
from torch.nn.attention.flex_attention import AuxRequest

import attncc

pytestmark = pytest.mark.filterwarnings(
    "ignore:flex_attention called without torch.compile", "ignore:return_lse is deprecated")

Mods = tuple[Callable | None, Callable | None]


def torch_flex(q, k, v, score_mod=None, mask_mod=None, enable_gqa=False, scale=None):
    """torch's FlexAttention (eager): (out, lse)."""
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    bm = (torch_flex_module.create_block_mask(mask_mod, B, H, M, N, device=q.device)
          if mask_mod is not None else None)
    with torch.no_grad():
        out, aux = torch_flex_module.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale,
                                                    enable_gqa=enable_gqa, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def ours(q, k, v, score_mod=None, mask_mod=None, enable_gqa=False, tiles=SMALL_TILES):
    B, H, M, N = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    bm = attncc.create_block_mask(mask_mod, B, H, M, N, device=q.device) if mask_mod is not None else None
    out, aux = attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=enable_gqa,
                                     kernel_options=dict(tiles), return_aux=attncc.AuxRequest(lse=True))
    return out, aux.lse


def assert_matches_torch(label: str, got: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         score_mod=None, mask_mod=None, enable_gqa: bool = False, scale=None) -> None:
    """``got = (out, lse or None)`` against torch's FlexAttention by the 2x rule.

    Golden: torch's flex on float64 copies of q, k, v; same-dtype error: torch's flex on
    q, k, v as given.  Infinities of lse (rows without keys) must match exactly.
    """
    golden = torch_flex(q.double(), k.double(), v.double(), score_mod, mask_mod, enable_gqa, scale)
    same = torch_flex(q, k, v, score_mod, mask_mod, enable_gqa, scale)
    out, lse = got
    assert out.dtype == q.dtype, f"{label}: output dtype {out.dtype}, expected {q.dtype}"
    assert_close_to_golden(f"{label}: output", out.detach().cpu(), golden[0].cpu(), same[0].cpu(),
                           input_dtype=q.dtype)
    if lse is not None:
        assert lse.dtype == torch.float32, f"{label}: lse dtype {lse.dtype}, expected float32"
        assert_close_to_golden(f"{label}: lse", lse.detach().cpu(), golden[1].cpu(), same[1].cpu(),
                               input_dtype=q.dtype)


# --- the mod pairs ---------------------------------------------------------------------------------
# Each builder takes (B, H, M, N) and returns (score_mod, mask_mod); captured tensors are made inside.

def causal_(B, H, M, N) -> Mods:
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx
    return None, causal


def sliding_window_(B, H, M, N) -> Mods:
    def sliding(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 13)
    return None, sliding


def prefix_lm_(B, H, M, N) -> Mods:
    prefix = 11

    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < prefix)
    return None, prefix_lm


def document_(B, H, M, N) -> Mods:
    lengths = [7, 20, 1, 13, M]
    doc_id = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[:M].to(DEVICE)

    def document(b, h, q_idx, kv_idx):
        return (doc_id[q_idx] == doc_id[kv_idx]) & (q_idx >= kv_idx)
    return None, document


def alibi_(B, H, M, N) -> Mods:
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / H) for i in range(H)], device=DEVICE) * 4

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx
    return alibi, causal


def relative_bias_(B, H, M, N) -> Mods:
    table = torch.randn(H, M + N - 1, device=DEVICE)
    offset = N - 1

    def rel_bias(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + offset]
    return rel_bias, None


def softcap_(B, H, M, N) -> Mods:
    cap = 1.5

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score * 3.0 / cap)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx
    return softcap, causal


def dilated_(B, H, M, N) -> Mods:
    def dilated(b, h, q_idx, kv_idx):
        diff = q_idx - kv_idx  # negative above the diagonal: exercises the sign convention of %
        return (diff % 3 == 0) & (torch.abs(diff) <= 24)
    return None, dilated


def global_window_(B, H, M, N) -> Mods:
    def global_plus_window(b, h, q_idx, kv_idx):
        return (kv_idx < 4) | (q_idx < 2) | (torch.abs(q_idx - kv_idx) <= 5)
    return None, global_plus_window


def per_head_scalars_(B, H, M, N) -> Mods:
    head_scale = torch.linspace(0.5, 2.0, H, device=DEVICE)
    head_shift = torch.randn(H, device=DEVICE)

    def per_head(score, b, h, q_idx, kv_idx):
        return score * head_scale[h] + head_shift[h] * (kv_idx % 2)
    return per_head, None


def where_(B, H, M, N) -> Mods:
    def where_mod(score, b, h, q_idx, kv_idx):
        return torch.where(kv_idx > q_idx, score - 2.0, score * 1.5)
    return where_mod, None


def invert_or_(B, H, M, N) -> Mods:
    def not_future_nor_three(b, h, q_idx, kv_idx):
        return ~((kv_idx > q_idx) | (kv_idx == 3))
    return None, not_future_nor_three


def bottom_right_causal_(B, H, M, N) -> Mods:
    offset = N - M

    def bottom_right(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset
    return None, bottom_right


def batch_head_score_(B, H, M, N) -> Mods:
    def by_batch_and_head(score, b, h, q_idx, kv_idx):
        return score + 0.3 * b - 0.2 * h

    def tril_band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx >= -h) & (q_idx - kv_idx <= 9 + b)
    return by_batch_and_head, tril_band


def key_padding_(B, H, M, N) -> Mods:
    lens = torch.tensor([N, N // 3, 1, 0][:B], dtype=torch.int64, device=DEVICE)

    def padding(b, h, q_idx, kv_idx):
        return kv_idx < lens[b]
    return None, padding


def chunked_(B, H, M, N) -> Mods:
    def chunked(b, h, q_idx, kv_idx):
        return q_idx // 8 == kv_idx // 8
    return None, chunked


def anti_band_(B, H, M, N) -> Mods:
    def two_ranges(b, h, q_idx, kv_idx):
        return (kv_idx > q_idx + 5) | (kv_idx < q_idx - 5)
    return None, two_ranges


def overlapping_or_(B, H, M, N) -> Mods:
    def overlapping(b, h, q_idx, kv_idx):
        return (kv_idx < 20) | (kv_idx <= q_idx) | ((kv_idx > 30) & (kv_idx < 34))
    return None, overlapping


def batch_offset_(B, H, M, N) -> Mods:
    shift = torch.tensor([3, 17, 0][:B], dtype=torch.int32, device=DEVICE)

    def per_batch_offset(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + shift[b]
    return None, per_batch_offset


def neg_floordiv_score_(B, H, M, N) -> Mods:
    def floordiv_bias(score, b, h, q_idx, kv_idx):
        # negative above the diagonal: Python's // rounds toward -inf (-5 // 4 == -2), Triton's truncates
        return score + 0.5 * ((q_idx - kv_idx) // 4) - 0.3 * ((kv_idx - q_idx) // -3)
    return floordiv_bias, None


def neg_mod_score_(B, H, M, N) -> Mods:
    def mod_bias(score, b, h, q_idx, kv_idx):
        # Python's % has the sign of the divisor: -5 % 3 == 1, 5 % -4 == -3
        return score + 0.5 * ((q_idx - kv_idx) % 3) - 0.3 * ((q_idx - kv_idx) % -4)
    return mod_bias, None


def neg_floordiv_mask_(B, H, M, N) -> Mods:
    def stripes(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx) // 4) % 2 == 0
    return None, stripes


def neg_mod_mask_(B, H, M, N) -> Mods:
    def offset_dilated(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx) % 3 == 1) | ((kv_idx - q_idx) % -5 == -2) | (kv_idx == q_idx)
    return None, offset_dilated


def plain_(B, H, M, N) -> Mods:
    return None, None


@dataclass(frozen=True)
class FlexCase:
    id: str
    build: Callable[[int, int, int, int], Mods]
    B: int = 2
    H: int = 2
    HK: int | None = None
    M: int = 45
    N: int = 45


FLEX_CASES = [
    FlexCase("causal", causal_),
    FlexCase("sliding_window", sliding_window_, M=70, N=70),
    FlexCase("prefix_lm", prefix_lm_),
    FlexCase("document_ids", document_, M=50, N=50),
    FlexCase("alibi_slopes", alibi_, H=4),
    FlexCase("relative_bias_table", relative_bias_, M=33, N=40),
    FlexCase("tanh_softcap", softcap_),
    FlexCase("dilated_window", dilated_, M=60, N=60),
    FlexCase("global_tokens_window", global_window_, M=50, N=50),
    FlexCase("per_head_scalars", per_head_scalars_, H=3),
    FlexCase("torch_where", where_),
    FlexCase("invert_or", invert_or_),
    FlexCase("bottom_right_causal_M20_N50", bottom_right_causal_, M=20, N=50),
    FlexCase("top_left_causal_M50_N20", causal_, M=50, N=20),
    FlexCase("batch_head_indices", batch_head_score_, H=3),
    FlexCase("key_padding_lengths", key_padding_, B=4, M=30, N=40),
    FlexCase("gqa_causal_H4_HK2", causal_, H=4, HK=2),
    FlexCase("gqa_alibi_H4_HK1", alibi_, H=4, HK=1),
    FlexCase("no_mods", plain_, M=20, N=37),
    FlexCase("chunked_attention", chunked_, M=45, N=45),
    FlexCase("anti_band_two_ranges", anti_band_, M=40, N=61),
    FlexCase("overlapping_or", overlapping_or_, M=61, N=40),
    FlexCase("per_batch_offset_capture", batch_offset_, M=30, N=50),
    FlexCase("negative_floordiv_score", neg_floordiv_score_, M=33, N=40),
    FlexCase("negative_mod_score", neg_mod_score_, M=40, N=33),
    FlexCase("negative_floordiv_mask", neg_floordiv_mask_, M=37, N=37),
    FlexCase("negative_mod_mask", neg_mod_mask_, M=37, N=45),
]


def _inputs(c: FlexCase, dtype: torch.dtype, D: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))
    HK = c.HK or c.H

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)
    return rand(c.B, c.H, c.M, D), rand(c.B, HK, c.N, D), rand(c.B, HK, c.N, D)


def test_at_least_twelve_mod_pairs() -> None:
    assert len({c.build for c in FLEX_CASES}) >= 12


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FLEX_CASES])
def test_flex_matches_torch_fp32(case: FlexCase) -> None:
    q, k, v = _inputs(case, torch.float32)
    score_mod, mask_mod = case.build(case.B, case.H, case.M, case.N)
    gqa = case.HK is not None
    got = ours(q, k, v, score_mod, mask_mod, enable_gqa=gqa)
    assert_matches_torch(f"flex {case.id} fp32 M={case.M} N={case.N}", got, q, k, v, score_mod, mask_mod, gqa)


FP16_CASES = ["causal", "alibi_slopes", "tanh_softcap", "document_ids", "gqa_causal_H4_HK2",
              "negative_floordiv_score", "negative_mod_mask"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FLEX_CASES if c.id in FP16_CASES])
def test_flex_fp16_two_x_rule(case: FlexCase) -> None:
    """fp16: error vs torch's fp64 FlexAttention <= 2 x torch-fp16's error + 1e-3."""
    q, k, v = _inputs(case, torch.float16)
    score_mod, mask_mod = case.build(case.B, case.H, case.M, case.N)
    gqa = case.HK is not None
    got = ours(q, k, v, score_mod, mask_mod, enable_gqa=gqa)
    assert_matches_torch(f"flex {case.id} fp16 M={case.M}", got, q, k, v, score_mod, mask_mod, gqa)


def test_flex_default_kernel_options_and_scale() -> None:
    """No kernel_options (default tiles) and an explicit scale."""
    c = FlexCase("scale", alibi_, M=70, N=90)
    q, k, v = _inputs(c, torch.float32)
    score_mod, mask_mod = c.build(c.B, c.H, c.M, c.N)
    bm = attncc.create_block_mask(mask_mod, c.B, c.H, c.M, c.N, device=DEVICE)
    got = attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=0.37, return_lse=True)
    assert_matches_torch("flex alibi scale=0.37 default tiles", got, q, k, v, score_mod, mask_mod, scale=0.37)


def test_flex_without_return_lse_returns_a_tensor() -> None:
    c = FlexCase("plain", causal_, B=1, H=1, M=20, N=20)
    q, k, v = _inputs(c, torch.float32)
    out = attncc.flex_attention(q, k, v, kernel_options=dict(SMALL_TILES))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 20, 16)
    assert_matches_torch("flex plain (no lse)", (out, None), q, k, v)


# --- BlockMask ---------------------------------------------------------------------------------------

def _dense_blocks(mask_mod: Callable, B: int, H: int, M: int, N: int, bs: int) -> torch.Tensor:
    """Block occupancy computed here by brute force: [B, H, ceil(M/bs), ceil(N/bs)]."""
    b = torch.arange(B).view(B, 1, 1, 1)
    h = torch.arange(H).view(1, H, 1, 1)
    m = torch.arange(M).view(1, 1, M, 1)
    n = torch.arange(N).view(1, 1, 1, N)
    dense = mask_mod(b, h, m, n).expand(B, H, M, N)
    Mb, Nb = -(-M // bs), -(-N // bs)
    out = torch.zeros(B, H, Mb, Nb, dtype=torch.int32)
    for i in range(Mb):
        for j in range(Nb):
            out[:, :, i, j] = dense[:, :, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs].flatten(2).any(-1).int()
    return out


@pytest.mark.parametrize("build", [causal_, sliding_window_, dilated_, bottom_right_causal_],
                         ids=["causal", "sliding_window", "dilated", "bottom_right"])
@pytest.mark.parametrize("M,N", [(64, 64), (77, 77), (40, 77), (77, 40)])
def test_block_mask_to_dense_matches_torch(build, M: int, N: int) -> None:
    """to_dense() is [B, H, ceil(M/BS), ceil(N/BS)] block occupancy (full or partial), as torch's."""
    _, mask_mod = build(1, 1, M, N)
    ours_bm = attncc.create_block_mask(mask_mod, 1, 2, M, N, device=DEVICE, BLOCK_SIZE=16)
    theirs = torch_flex_module.create_block_mask(mask_mod, 1, 2, M, N, device=DEVICE, BLOCK_SIZE=16)
    a, t = ours_bm.to_dense().cpu().int(), theirs.to_dense().cpu().int()
    assert a.shape == t.shape, f"to_dense shape {tuple(a.shape)} != torch {tuple(t.shape)}"
    assert torch.equal(a, t), f"to_dense differs from torch in {int((a != t).sum())} block(s)"
    assert torch.equal(a, _dense_blocks(mask_mod, 1, 2, M, N, 16))
    assert ours_bm.shape == theirs.shape, f"shape {ours_bm.shape} != torch {theirs.shape}"


def test_block_mask_broadcast_batch_and_heads() -> None:
    """B=None, H=None broadcast: torch gives [1, 1, Mb, Nb]."""
    _, mask_mod = causal_(1, 1, 50, 50)
    a = attncc.create_block_mask(mask_mod, None, None, 50, 50, BLOCK_SIZE=16).to_dense().cpu().int()
    t = torch_flex_module.create_block_mask(mask_mod, None, None, 50, 50, device="cpu",
                                            BLOCK_SIZE=16).to_dense().int()
    assert a.shape == t.shape == (1, 1, 4, 4)
    assert torch.equal(a, t)


def test_block_mask_broadcast_used_with_batched_inputs() -> None:
    """A block mask made with B=None, H=None applies to any batch and heads."""
    c = FlexCase("broadcast", sliding_window_, B=2, H=3, M=40, N=40)
    q, k, v = _inputs(c, torch.float32)
    _, mask_mod = c.build(2, 3, 40, 40)
    bm = attncc.create_block_mask(mask_mod, None, None, 40, 40, device=DEVICE)
    got = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    assert_matches_torch("flex broadcast block mask", got, q, k, v, None, mask_mod)


# --- the decorator -------------------------------------------------------------------------------------

def test_attention_decorator_with_mask_mod() -> None:
    c = FlexCase("decorator", relative_bias_, B=1, H=2, M=40, N=40)
    q, k, v = _inputs(c, torch.float32)
    table = torch.randn(2, 79, device=DEVICE)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    @attncc.attention(mask_mod=causal)
    def rel(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + 39]

    def rel_torch(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + 39]

    o, lse = rel(q, k, v, return_lse=True)
    assert_matches_torch("@attention rel bias + causal", (o, lse), q, k, v, rel_torch, causal)
    assert isinstance(rel(q, k, v), torch.Tensor)
    assert rel.__name__ == "rel"


def test_attention_decorator_bare_and_gqa() -> None:
    c = FlexCase("decorator-gqa", plain_, B=1, H=4, HK=1, M=30, N=30)
    q, k, v = _inputs(c, torch.float32)

    @attncc.attention
    def halve(score, b, h, q_idx, kv_idx):
        return score * 0.5

    o = halve(q[:, :1], k, v)
    assert_matches_torch("@attention bare", (o, None), q[:, :1], k, v, lambda s, b, h, qi, ki: s * 0.5)

    @attncc.attention(enable_gqa=True)
    def halve_gqa(score, b, h, q_idx, kv_idx):
        return score * 0.5

    got = halve_gqa(q, k, v, return_lse=True)
    assert_matches_torch("@attention gqa", got, q, k, v, lambda s, b, h, qi, ki: s * 0.5, enable_gqa=True)


@pytest.mark.parametrize("front_end", ["decorator", "flex_attention"])
def test_captured_tensor_updated_in_place_is_reread(front_end: str) -> None:
    """A learnable table changed in place between calls: the second call sees the new values."""
    c = FlexCase("learnable", plain_, B=1, H=2, M=36, N=36)
    q, k, v = _inputs(c, torch.float32)
    table = torch.nn.Parameter(torch.zeros(2, 71, device=DEVICE))

    def learned_bias(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + 35]

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    if front_end == "decorator":
        fn = attncc.attention(learned_bias, mask_mod=causal)
    else:
        bm = attncc.create_block_mask(causal, 1, 2, 36, 36, device=DEVICE)

        def fn(q, k, v, return_lse=False):
            return attncc.flex_attention(q, k, v, score_mod=learned_bias, block_mask=bm, return_lse=return_lse,
                                         kernel_options=dict(SMALL_TILES))

    first = fn(q, k, v, return_lse=True)
    assert_matches_torch(f"{front_end} learnable (zeros)", first, q, k, v, None, causal)
    with torch.no_grad():
        table.copy_(torch.randn(2, 71, generator=torch.Generator().manual_seed(1)).to(DEVICE) * 2)
    second = fn(q, k, v, return_lse=True)
    assert (second[0] - first[0]).abs().max() > 1e-2, f"{front_end}: in-place update of a captured tensor ignored"
    assert_matches_torch(f"{front_end} learnable (updated)", second, q, k, v, learned_bias, causal)


# --- more torch spellings inside mods ----------------------------------------------------------------------------

def _keep_mask_(B, H, M, N) -> Mods:
    keep = torch.rand(B, N, generator=torch.Generator().manual_seed(5)).to(DEVICE) > 0.3

    def bool_padding(b, h, q_idx, kv_idx):
        return keep[b, kv_idx]
    return None, bool_padding


def _scalar_tensor_(B, H, M, N) -> Mods:
    shift = torch.tensor(0.75, device=DEVICE)
    temperature = torch.tensor(1.3, device=DEVICE)

    def scalar_capture(score, b, h, q_idx, kv_idx):
        return score * temperature + shift * (kv_idx % 3)
    return scalar_capture, None


def _clamp_kw_(B, H, M, N) -> Mods:
    def clamp_min(score, b, h, q_idx, kv_idx):
        return torch.clamp(score, min=-0.5)
    return clamp_min, None


def _exp2_(B, H, M, N) -> Mods:
    def exp2_decay(score, b, h, q_idx, kv_idx):
        return score + torch.exp2(-0.1 * torch.abs(q_idx - kv_idx))
    return exp2_decay, None


def _sign_(B, H, M, N) -> Mods:
    def signed(score, b, h, q_idx, kv_idx):
        return score + torch.sign(score)
    return signed, None


def _constant_(B, H, M, N) -> Mods:
    def uniform(score, b, h, q_idx, kv_idx):
        return score * 0.0 + 1.0
    return uniform, None


def _method_spellings_(B, H, M, N) -> Mods:
    def methods(score, b, h, q_idx, kv_idx):
        return (score * 0.5).tanh() * 3 + score.sigmoid() - (q_idx - kv_idx).abs() * 0.05

    def logical(b, h, q_idx, kv_idx):
        return torch.logical_or(torch.logical_and(q_idx >= kv_idx, kv_idx >= 2), kv_idx == 0)
    return methods, logical


MORE_CASES = [
    FlexCase("bool_capture_mask", _keep_mask_, M=30, N=40),
    FlexCase("zero_dim_tensor_capture", _scalar_tensor_),
    FlexCase("clamp_keyword_min", _clamp_kw_),
    FlexCase("exp2", _exp2_),
    FlexCase("sign", _sign_),
    FlexCase("constant_score", _constant_),
    FlexCase("method_spellings", _method_spellings_),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MORE_CASES])
def test_flex_more_spellings_match_torch(case: FlexCase) -> None:
    q, k, v = _inputs(case, torch.float32)
    score_mod, mask_mod = case.build(case.B, case.H, case.M, case.N)
    got = ours(q, k, v, score_mod, mask_mod)
    assert_matches_torch(f"flex {case.id} fp32 M={case.M} N={case.N}", got, q, k, v, score_mod, mask_mod)
