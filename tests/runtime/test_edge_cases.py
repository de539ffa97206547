"""Edge cases: empty rows, tiny and lopsided lengths, strided inputs, input validation, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, masked_softmax_attention, reference

import attncc

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def qkv(B, H, M, N, D=16, E=None, HK=None, dtype=torch.float32):
    return (rand(B, H, M, D, dtype=dtype, seed=1), rand(B, HK or H, N, D, dtype=dtype, seed=2),
            rand(B, HK or H, N, E or D, dtype=dtype, seed=3))


def dense_golden(q, k, v, keep, score=None, scale=None, dtype=torch.float64):
    """Attention with an explicit elementwise mask ``keep`` [.., M, N], computed in ``dtype``
    (fp64: the golden; the inputs' dtype: same-dtype torch), independent of attncc."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q.cpu().to(dtype) @ k.cpu().to(dtype).transpose(-1, -2) * scale
    if score is not None:
        s = score(s)
    return masked_softmax_attention(s, keep.expand(s.shape), v.cpu().to(dtype))


def check_fp32(label, got, golden, same, atol=2e-5):
    """fp32 kernel results against the fp64 ``golden`` by the 2x rule, ``same`` computed in fp32."""
    o, lse = (t.cpu() for t in got)
    assert same[0].dtype == torch.float32 and same[1].dtype == torch.float32, f"{label}: same-dtype not fp32"
    assert not torch.isnan(o).any() and not torch.isnan(lse).any(), f"{label}: NaN in output or lse"
    assert_close_to_golden(f"{label}: output", o, golden[0], same[0], input_dtype=torch.float32)
    assert_close_to_golden(f"{label}: lse", lse, golden[1], same[1], input_dtype=torch.float32)
    assert (o.double() - golden[0]).abs().max() <= atol


def check_dense_fp32(label, got, q, k, v, keep, score=None):
    """:func:`check_fp32` against :func:`dense_golden` in fp64 and in fp32."""
    check_fp32(label, got, dense_golden(q, k, v, keep, score), dense_golden(q, k, v, keep, score, dtype=torch.float32))


def check_reference_fp32(label, got, name, q, k, v, **kwargs):
    """:func:`check_fp32` against ``reference.reference`` in fp64 and in fp32."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    check_fp32(label, got, reference(name, q, k, v, **kwargs),
               reference(name, q, k, v, compute_dtype=torch.float32, **kwargs))


# --- fully masked rows -----------------------------------------------------------------------------------

def test_rows_without_keys_give_zero_and_neg_inf_flex() -> None:
    """Rows with q % 4 == 1 see no key; they share tiles with ordinary rows."""
    q, k, v = qkv(1, 2, 45, 45)

    def holes(b, h, q_idx, kv_idx):
        return (q_idx % 4 != 1) & (kv_idx <= q_idx)

    bm = attncc.create_block_mask(holes, 1, 2, 45, 45, device=DEVICE)
    o, lse = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    m, n = torch.arange(45).view(45, 1), torch.arange(45).view(1, 45)
    keep = (m % 4 != 1) & (n <= m)
    check_dense_fp32("holes", (o, lse), q, k, v, keep)
    empty = torch.arange(45) % 4 == 1
    assert torch.equal(o.cpu()[:, :, empty], torch.zeros(1, 2, int(empty.sum()), 16)), "empty rows not exactly 0"
    assert torch.isneginf(lse.cpu()[:, :, empty]).all(), "empty rows must have lse -inf"
    assert torch.isfinite(lse.cpu()[:, :, ~empty]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_window_zero_masks_everything(dtype: torch.dtype) -> None:
    """sliding_window with window=0 keeps no key at all: every row is 0 / -inf."""
    q, k, v = qkv(2, 2, 37, 37, dtype=dtype)
    o, lse = attncc.load("sliding_window")(q, k, v, window=0, return_lse=True, config=dict(SMALL_TILES))
    assert torch.equal(o.cpu(), torch.zeros(2, 2, 37, 16, dtype=dtype))
    assert torch.isneginf(lse.cpu()).all()


def test_mask_that_is_never_true() -> None:
    q, k, v = qkv(1, 2, 20, 30)

    def never(b, h, q_idx, kv_idx):
        return kv_idx < 0

    bm = attncc.create_block_mask(never, 1, 2, 20, 30, device=DEVICE)
    o, lse = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    assert torch.equal(o.cpu(), torch.zeros(1, 2, 20, 16)) and torch.isneginf(lse.cpu()).all()


def test_rows_masked_by_score_mod_minus_inf() -> None:
    """score_mod returning -inf for whole rows (no mask_mod): those rows are 0 / -inf, never NaN."""
    q, k, v = qkv(1, 2, 20, 30)

    def drop_rows(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx % 3 == 0, float("-inf"), score)

    o, lse = attncc.flex_attention(q, k, v, score_mod=drop_rows, return_lse=True, kernel_options=dict(SMALL_TILES))
    keep = (torch.arange(20) % 3 != 0).view(20, 1).expand(20, 30)
    check_dense_fp32("score_mod -inf rows", (o, lse), q, k, v, keep)


def test_zero_keys() -> None:
    """N = 0: nothing to attend; 0 / -inf, no NaN."""
    q, k, v = qkv(1, 2, 20, 0)
    o, lse = attncc.load("full")(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    assert o.shape == (1, 2, 20, 16)
    assert torch.equal(o.cpu(), torch.zeros(1, 2, 20, 16)) and torch.isneginf(lse.cpu()).all()


def test_zero_queries() -> None:
    q, k, v = qkv(1, 2, 0, 20)
    o, lse = attncc.load("causal")(q, k, v, return_lse=True)
    assert o.shape == (1, 2, 0, 16) and lse.shape == (1, 2, 0)


# --- tiny and lopsided lengths ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["full", "causal", "sliding_window", "prefix_lm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_single_query_decode(spec: str, dtype: torch.dtype) -> None:
    """M = 1 against a long key sequence (decode-like)."""
    q, k, v = qkv(2, 2, 1, 77, dtype=dtype)
    params = {"window": 1} if spec == "sliding_window" else {"prefix": 30} if spec == "prefix_lm" else {}
    got = attncc.load(spec)(q, k, v, return_lse=True, config=dict(SMALL_TILES), **params)
    golden = reference(spec, q.cpu(), k.cpu(), v.cpu(), **params)
    same = reference(spec, q.cpu(), k.cpu(), v.cpu(), compute_dtype=dtype, **params)
    assert_close_to_golden(f"{spec} M=1 N=77 {dtype}: output", got[0].cpu(), golden[0], same[0])
    assert_close_to_golden(f"{spec} M=1 N=77 {dtype}: lse", got[1].cpu(), golden[1], same[1], input_dtype=dtype)


def test_single_query_decode_bottom_right_flex() -> None:
    """Decode with FlexAttention's usual offset: the last query sees every key."""
    q, k, v = qkv(2, 2, 1, 77)

    def bottom_right(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + 76

    bm = attncc.create_block_mask(bottom_right, 2, 2, 1, 77, device=DEVICE)
    got = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    check_dense_fp32("decode bottom-right", got, q, k, v, torch.ones(1, 77, dtype=torch.bool))


def test_single_key() -> None:
    """N = 1, causal: every row attends key 0 only, so the output is v[..., 0, :] and lse the score."""
    q, k, v = qkv(2, 2, 20, 1)
    o, lse = attncc.load("causal")(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    assert torch.allclose(o.cpu(), v.cpu().expand(2, 2, 20, 16), atol=1e-6)
    want_lse = (q.cpu() @ k.cpu().transpose(-1, -2)).squeeze(-1) / 4
    assert torch.allclose(lse.cpu(), want_lse, atol=1e-5)


@pytest.mark.parametrize("M,N", [(5, 200), (200, 5), (17, 3), (3, 17)])
@pytest.mark.parametrize("spec", ["full", "causal"])
def test_lopsided_lengths(spec: str, M: int, N: int) -> None:
    q, k, v = qkv(1, 1, M, N)
    got = attncc.load(spec)(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    check_reference_fp32(f"{spec} M={M} N={N}", got, spec, q, k, v)


def test_large_scores_stay_finite() -> None:
    """Scores in the thousands (near one-hot softmax): online softmax must not overflow."""
    q, k, v = qkv(1, 2, 40, 40)
    q = q * 40
    got = attncc.load("causal")(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    golden = reference("causal", q.cpu(), k.cpu(), v.cpu())
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert (got[0].cpu().double() - golden[0]).abs().max() < 1e-4
    assert ((got[1].cpu().double() - golden[1]).abs() / golden[1].abs().clamp_min(1)).max() < 1e-5


# --- strided inputs -----------------------------------------------------------------------------------------

def test_non_contiguous_inputs() -> None:
    """Transposed and sliced views (including a non-unit last stride) give the contiguous result."""
    B, H, M, N, D = 2, 2, 40, 50, 16
    q_bmhd = rand(B, M, H, D, seed=11)
    k_bhdn = rand(B, H, D, N, seed=12)
    v_wide = rand(B, H, N, 2 * D, seed=13)
    q = q_bmhd.transpose(1, 2)             # [B, H, M, D], not contiguous, unit last stride
    k = k_bhdn.transpose(-1, -2)           # [B, H, N, D], last stride N
    v = v_wide[..., ::2]                   # [B, H, N, D], last stride 2
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    fn = attncc.load("causal")
    got = fn(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    want = fn(q.contiguous(), k.contiguous(), v.contiguous(), return_lse=True, config=dict(SMALL_TILES))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), "strided inputs change the result"
    check_reference_fp32("causal strided", got, "causal", q, k, v)


def test_non_contiguous_captured_tensor() -> None:
    """A captured table passed as a transposed view is read through its strides."""
    q, k, v = qkv(1, 3, 30, 30)
    table_t = rand(17, 3, seed=21)         # stored [columns, heads]
    bias = table_t.t()                     # [H, 2 * 8 + 1], strides (1, 3)
    assert not bias.is_contiguous()
    fn = attncc.load("relative_bias")
    got = fn(q, k, v, bias=bias, max_distance=8, return_lse=True, config=dict(SMALL_TILES))
    want = fn(q, k, v, bias=bias.contiguous(), max_distance=8, return_lse=True, config=dict(SMALL_TILES))
    assert torch.equal(got[0], want[0]), "a strided captured tensor changes the result"
    check_reference_fp32("relative_bias strided table", got, "relative_bias", q, k, v, bias=bias.cpu(),
                         max_distance=8)


# --- input validation ----------------------------------------------------------------------------------------

def _raises_input_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(attncc.InputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, f"InputError message is not one line: {msg!r}"
    assert msg.strip(), "empty InputError message"
    assert match.lower() in msg.lower(), f"{match!r} not in {msg!r}"
    return msg


def test_error_wrong_ndim() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q[0], k, v, match="4-D")
    _raises_input_error(attncc.load("causal"), q, k, v[None], match="4-D")


def test_error_dtype_mismatch() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q.half(), k, v, match="dtype")


def test_error_unsupported_dtype() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q.double(), k.double(), v.double(), match="dtype")


def test_error_not_a_tensor() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q.tolist(), k, v, match="tensor")


def test_error_batch_mismatch() -> None:
    q, k, v = qkv(2, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q, k[:1], v[:1], match="batch")


def test_error_head_dim_mismatch() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q, k[..., :8], v, match="head dim")


def test_error_key_value_length_mismatch() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q, k, v[:, :, :5], match="differ")


def test_error_head_mismatch_without_gqa() -> None:
    q, k, v = qkv(1, 4, 10, 10, HK=2)
    _raises_input_error(attncc.load("causal"), q, k, v, match="heads")
    _raises_input_error(attncc.flex_attention, q, k, v, match="enable_gqa")


def test_error_gqa_not_divisible() -> None:
    q, k, v = qkv(1, 3, 10, 10, HK=2)
    _raises_input_error(attncc.load("gqa"), q, k, v, match="divisible")
    _raises_input_error(attncc.flex_attention, q, k, v, enable_gqa=True, match="divisible")


def test_error_missing_capture() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("alibi"), q, k, v, match="slopes")


def test_error_unknown_kwarg() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("causal"), q, k, v, window=3, match="window")
    _raises_input_error(attncc.load("alibi"), q, k, v, slopes=torch.ones(2), slope=torch.ones(2), match="slope")


def test_error_wrong_capture_ndim() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("alibi"), q, k, v, slopes=torch.ones(2, 1), match="slopes")
    _raises_input_error(attncc.load("temperature"), q, k, v, temp=torch.ones(2, 10), match="temp")


def test_error_capture_not_a_tensor() -> None:
    q, k, v = qkv(1, 2, 10, 10)
    _raises_input_error(attncc.load("alibi"), q, k, v, slopes=[0.5, 0.25], match="slopes")


def test_error_block_mask_lengths() -> None:
    q, k, v = qkv(1, 2, 10, 12)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    bm = attncc.create_block_mask(causal, 1, 2, 10, 10)
    _raises_input_error(attncc.flex_attention, q, k, v, block_mask=bm, match="block_mask")


def test_error_head_dim_too_large() -> None:
    q, k, v = qkv(1, 1, 4, 4, D=512)
    _raises_input_error(attncc.load("full"), q, k, v, match="256")


# --- determinism ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_deterministic(dtype: torch.dtype) -> None:
    q, k, v = qkv(2, 2, 53, 53, dtype=dtype)
    slopes = torch.tensor([0.5, 0.125], device=DEVICE)
    fn = attncc.load("alibi")
    a = fn(q, k, v, slopes=slopes, return_lse=True, config=dict(SMALL_TILES))
    b = fn(q, k, v, slopes=slopes, return_lse=True, config=dict(SMALL_TILES))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "two runs differ"

    def window(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= 7

    bm = attncc.create_block_mask(window, 2, 2, 53, 53)
    c = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    d = attncc.flex_attention(q, k, v, block_mask=bm, return_lse=True, kernel_options=dict(SMALL_TILES))
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1]), "two flex runs differ"


# --- score modifications written in a spec file ---------------------------------------------------------------

CAUSAL_SPEC = """\
name = "custom"
[inputs]
q = "b h m d"
k = "b h n d"
v = "b h n e"
[cascade]
score = "q[b,h,m,d] * k[b,h,n,d] * scale"
modify = "{modify}"
mask = "n <= m"
output = "p[b,h,m,n] * v[b,h,n,e]"
"""

# (modify expression, the same in torch over the fp64 scaled score s [.., M, N], m [M, 1], n [1, N], D, E)
MODIFY_CASES = [
    ("score * pi", lambda s, m, n, D, E: s * math.pi),
    ("score + exp(1)", lambda s, m, n, D, E: s + math.e),
    ("score * tanh(1)", lambda s, m, n, D, E: s * math.tanh(1)),
    ("score * M / N", lambda s, m, n, D, E: s * s.shape[-2] / s.shape[-1]),
    ("where(m - n > 3, score - 1, score * 2)", lambda s, m, n, D, E: torch.where(m - n > 3, s - 1, s * 2)),
    ("clamp(score, -0.5, 0.5) + (m - n) // 3", lambda s, m, n, D, E: s.clamp(-0.5, 0.5) + (m - n) // 3),
    ("score * sqrt(2)", lambda s, m, n, D, E: s * math.sqrt(2)),
    ("score + log(3)", lambda s, m, n, D, E: s + math.log(3)),
    ("score + 2 ** score", lambda s, m, n, D, E: s + 2**s),
    ("score / sqrt(D)", lambda s, m, n, D, E: s / math.sqrt(D)),
    ("score * E / D", lambda s, m, n, D, E: s * E / D),
    ("score + sign(score)", lambda s, m, n, D, E: s + torch.sign(s)),
    ("1.5", lambda s, m, n, D, E: torch.full_like(s, 1.5)),
    # n - m <= 0 under the causal mask: Python's floor division and modulo of negative integers
    ("score + 0.5 * ((n - m) // 3)", lambda s, m, n, D, E: s + 0.5 * torch.div(n - m, 3, rounding_mode="floor")),
    ("score + 0.5 * ((n - m) % 4)", lambda s, m, n, D, E: s + 0.5 * torch.remainder(n - m, 4)),
    ("score - 0.3 * ((m - n) % -5)", lambda s, m, n, D, E: s - 0.3 * torch.remainder(m - n, -5)),
]


@pytest.mark.parametrize("modify,torch_fn", MODIFY_CASES, ids=[t for t, _ in MODIFY_CASES])
def test_spec_modify_expressions(modify: str, torch_fn) -> None:
    """Every whitelisted function and size symbol compiles and computes what it says (causal, 2 x 2 tiles)."""
    from attncc.spec.loader import load_text
    spec = load_text(CAUSAL_SPEC.format(modify=modify), "custom.toml")
    q, k, v = qkv(1, 2, 29, 29, D=16, E=32)
    got = attncc.load(spec)(q, k, v, return_lse=True, config=dict(SMALL_TILES))
    m, n = torch.arange(29).view(29, 1), torch.arange(29).view(1, 29)
    check_dense_fp32(f"modify '{modify}'", got, q, k, v, n <= m,
                     score=lambda s: torch_fn(s, m, n, 16, 32).expand(s.shape))
