"""The FlexAttention API surface: ``return_aux``, ``kernel_options``, ``BlockMask`` methods, and the
compatibility table of ``docs/flex.md`` (one test per row, compared with torch's own
flex_attention in eager CPU mode where torch runs it there).

Numbers follow the 2x rule against fp64 goldens of a plain-torch dense reference (scores, the mods
evaluated by torch on broadcast ``[B, H, M, N]`` index grids, a masked softmax).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.attention.flex_attention as tflex
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden

import attncc
from attncc.runtime import api
from attncc.runtime.flex_options import FLEX_KEYS, INTERNAL_KEYS

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
DOC = Path(__file__).resolve().parents[2] / "docs" / "flex.md"


# --- mods and the dense reference -------------------------------------------------------------------

def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window(b, h, q_idx, kv_idx):
    return (q_idx - kv_idx).abs() <= 9


def softcap(score, b, h, q_idx, kv_idx):
    return 2.0 * torch.tanh(score / 2.0)


def head_bias(score, b, h, q_idx, kv_idx):
    return score * 1.5 - 0.25 * h * (q_idx - kv_idx).abs()


def grids(B: int, H: int, M: int, N: int) -> tuple[torch.Tensor, ...]:
    return (torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
            torch.arange(M).view(1, 1, M, 1), torch.arange(N).view(1, 1, 1, N))


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable | None, mask_mod: Callable | None,
          dtype: torch.dtype, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, row max of the modified masked scores) in ``dtype``, GQA by repeating k and v."""
    B, H, M, D = q.shape
    N, group = k.shape[2], q.shape[1] // k.shape[1]
    q, k, v = q.cpu().to(dtype), k.cpu().to(dtype).repeat_interleave(group, 1), v.cpu().to(dtype).repeat_interleave(group, 1)
    g = grids(B, H, M, N)
    s = (q @ k.transpose(-1, -2)) * (D ** -0.5 if scale is None else scale)
    if score_mod is not None:
        s = score_mod(s, *g).expand(B, H, M, N).to(dtype)
    keep = torch.ones(B, H, M, N, dtype=torch.bool) if mask_mod is None else mask_mod(*g).expand(B, H, M, N)
    s = s.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return p @ v, lse, s.amax(-1)


def rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + sum(shape))
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE).requires_grad_(grad)


def qkv(B: int, H: int, M: int, N: int, D: int = 16, HK: int | None = None, dtype=torch.float32,
        grad: bool = False) -> tuple[torch.Tensor, ...]:
    HK = HK or H
    return (rand(B, H, M, D, dtype=dtype, seed=1, grad=grad), rand(B, HK, N, D, dtype=dtype, seed=2, grad=grad),
            rand(B, HK, N, D, dtype=dtype, seed=3, grad=grad))


def check_aux(label: str, got: tuple, q, k, v, score_mod, mask_mod, scale=None) -> None:
    """``got = (out, AuxOutput)`` with both fields, by the 2x rule against the dense reference."""
    out, aux = got
    golden = dense(q, k, v, score_mod, mask_mod, torch.float64, scale)
    same = dense(q, k, v, score_mod, mask_mod, q.dtype, scale)
    assert aux.lse.dtype == aux.max_scores.dtype == torch.float32, f"{label}: aux dtypes {aux.lse.dtype}"
    assert not aux.max_scores.requires_grad, f"{label}: max_scores must not be differentiable (as in torch)"
    for name, i, val in (("output", 0, out), ("lse", 1, aux.lse), ("max_scores", 2, aux.max_scores)):
        assert_close_to_golden(f"{label}: {name}", val.detach().cpu(), golden[i], same[i].to(golden[i].dtype),
                               input_dtype=q.dtype)


# --- return_aux ------------------------------------------------------------------------------------

def _padding_mod(B: int, N: int) -> Callable:
    lens = torch.tensor([N, 0, 5][:B], device=DEVICE)

    def key_padding(b, h, q_idx, kv_idx):
        return kv_idx < lens[b]
    return key_padding


AUX_CASES = [
    pytest.param(dict(B=1, H=2, M=63, N=77, mask=causal, mod=None), id="causal-63x77"),
    pytest.param(dict(B=2, H=2, M=17, N=63, mask="padding", mod=softcap), id="empty-rows-softcap-17x63"),
    pytest.param(dict(B=1, H=4, HK=2, M=33, N=33, mask=window, mod=head_bias, dtype=torch.float16),
                 id="gqa-fp16-window-head-bias"),
    pytest.param(dict(B=1, H=2, M=1, N=77, mask=None, mod=softcap), id="one-query-decode-routed"),
    pytest.param(dict(B=1, H=1, M=77, N=1, mask=None, mod=None, scale=0.3), id="one-key-scale"),
]


@pytest.mark.parametrize("case", AUX_CASES)
def test_return_aux_lse_and_max_scores(case: dict) -> None:
    B, H, M, N = case["B"], case["H"], case["M"], case["N"]
    q, k, v = qkv(B, H, M, N, HK=case.get("HK"), dtype=case.get("dtype", torch.float32))
    mask_mod = _padding_mod(B, N) if case["mask"] == "padding" else case["mask"]
    bm = attncc.create_block_mask(mask_mod, B, H, M, N) if mask_mod is not None else None
    opts = None if M == 1 else dict(SMALL_TILES)
    got = attncc.flex_attention(q, k, v, score_mod=case["mod"], block_mask=bm, scale=case.get("scale"),
                                enable_gqa="HK" in case, kernel_options=opts,
                                return_aux=attncc.AuxRequest(lse=True, max_scores=True))
    check_aux(f"return_aux {case}", got, q, k, v, case["mod"], mask_mod, case.get("scale"))


def test_max_scores_with_block_lists_and_gradients() -> None:
    """Given block lists (from_kv_blocks) restrict max_scores too; the output stays differentiable."""
    B, H, M, N, bs = 1, 2, 64, 77, 16
    q, k, v = qkv(B, H, M, N, grad=True)
    num = torch.full((B, H, M // bs), 2, dtype=torch.int32)
    idx = torch.tensor([[0, 3], [1, 4], [2, 0], [4, 1]], dtype=torch.int32).expand(B, H, -1, -1).contiguous()
    mask = attncc.BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=bs, seq_lengths=(M, N), mask_mod=causal)
    out, aux = attncc.flex_attention(q, k, v, block_mask=mask, kernel_options=SMALL_TILES,
                                     return_aux=attncc.AuxRequest(lse=True, max_scores=True))
    keep_blocks = torch.zeros(B, H, M // bs, -(-N // bs), dtype=torch.bool).scatter_(-1, idx.long(), True)
    listed = keep_blocks.repeat_interleave(bs, 2).repeat_interleave(bs, 3)[..., :M, :N]

    def listed_causal(b, h, q_idx, kv_idx):
        return listed[b, h, q_idx, kv_idx] & (q_idx >= kv_idx)
    check_aux("from_kv_blocks", (out, aux), q.detach(), k.detach(), v.detach(), None, listed_causal)
    (dq,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.isfinite(dq).all(), "dq of the output next to max_scores"


def test_return_aux_under_torch_compile_equals_eager() -> None:
    q, k, v = qkv(1, 2, 40, 40)
    bm = attncc.create_block_mask(causal, 1, 2, 40, 40)

    def fwd(q, k, v):
        out, aux = attncc.flex_attention(q, k, v, score_mod=head_bias, block_mask=bm, kernel_options=SMALL_TILES,
                                         return_aux=attncc.AuxRequest(lse=True, max_scores=True))
        return out, aux.lse, aux.max_scores

    torch._dynamo.reset()
    eager, compiled = fwd(q, k, v), torch.compile(fwd, fullgraph=True, backend="aot_eager")(q, k, v)
    for name, a, b in zip(("out", "lse", "max_scores"), eager, compiled, strict=True):
        assert torch.equal(a, b), f"compiled {name} differs from eager"
    check_aux("compiled", (compiled[0], tflex.AuxOutput(*compiled[1:])), q, k, v, head_bias, causal)


@pytest.mark.parametrize("request_", [pytest.param(attncc.AuxRequest(), id="nothing"),
                                      pytest.param(tflex.AuxRequest(lse=True), id="torch-class-lse-only"),
                                      pytest.param(attncc.AuxRequest(max_scores=True), id="max-only")])
def test_return_aux_fields_match_the_request(request_) -> None:
    q, k, v = qkv(1, 1, 20, 20)
    out, aux = attncc.flex_attention(q, k, v, kernel_options=SMALL_TILES, return_aux=request_)
    assert isinstance(aux, tflex.AuxOutput), type(aux)
    assert (aux.lse is not None) == request_.lse and (aux.max_scores is not None) == request_.max_scores, aux
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 20, 16)


def test_return_aux_refuses_other_objects() -> None:
    q, k, v = qkv(1, 1, 8, 8)
    with pytest.raises(attncc.InputError, match="return_aux must be an AuxRequest") as info:
        attncc.flex_attention(q, k, v, return_aux={"lse": True})
    assert "\n" not in str(info.value)


# --- kernel_options ---------------------------------------------------------------------------------

def test_flex_keys_are_torchs_documented_keys() -> None:
    """attncc's key table is torch 2.13's FlexKernelOptions, plus the two keys torch sets itself."""
    assert set(FLEX_KEYS) == set(tflex.FlexKernelOptions.__annotations__), \
        f"differs from torch: {set(FLEX_KEYS) ^ set(tflex.FlexKernelOptions.__annotations__)}"
    assert set(INTERNAL_KEYS) == set(tflex._KernelOptionsWithInternals.__annotations__) - set(FLEX_KEYS)


BAD_OPTIONS = [
    pytest.param({"BLOCK_K": 64}, "'BLOCK_K'", id="unknown-key"),
    pytest.param({"BLOKC_M": 64}, "did you mean 'BLOCK_M'", id="misspelt-key"),
    pytest.param({"fwd_PRESCALE": True}, "'fwd_PRESCALE'", id="unknown-prefixed-key"),
    pytest.param({"OUTPUT_MAX": True}, "set internally", id="internal-key"),
    pytest.param({"PRESCALE_QK": "yes"}, "PRESCALE_QK must be a bool", id="hint-not-bool"),
    pytest.param({"bwd_BLOCK_M1": 32.0}, "bwd_BLOCK_M1 must be an int", id="hint-not-int"),
    pytest.param({"BACKEND": "CUDNN"}, "BACKEND must be one of", id="backend-unknown"),
    pytest.param({"fwd_BACKEND": "TRITON"}, "whole call", id="backend-prefixed"),
    pytest.param({"BLOCK_M": 48}, "BLOCK_M", id="tile-value"),
]


@pytest.mark.parametrize("options,needle", BAD_OPTIONS)
def test_bad_kernel_options_are_one_line_errors(options: dict, needle: str) -> None:
    q, k, v = qkv(1, 1, 8, 8)
    with pytest.raises(attncc.InputError, match=re.escape(needle)) as info:
        attncc.flex_attention(q, k, v, kernel_options=options)
    assert "\n" not in str(info.value), str(info.value)


# --- BlockMask --------------------------------------------------------------------------------------

MASK_SHAPES = [pytest.param(causal, 2, 3, 63, 77, id="causal-2x3-63x77"),
               pytest.param(window, 1, 2, 77, 40, id="window-1x2-77x40"),
               pytest.param(causal, None, None, 1, 501, id="causal-broadcast-1x501")]


@pytest.mark.parametrize("mask_mod,B,H,M,N", MASK_SHAPES)
def test_block_mask_views_equal_torchs(mask_mod, B, H, M, N) -> None:
    ours = attncc.create_block_mask(mask_mod, B, H, M, N, BLOCK_SIZE=16)
    theirs = tflex.create_block_mask(mask_mod, B, H, M, N, device="cpu", BLOCK_SIZE=16)
    assert ours.shape == theirs.shape and ours.numel() == theirs.numel(), f"shape {ours.shape} != {theirs.shape}"
    assert torch.equal(ours.to_dense(), theirs.to_dense().int()), "to_dense"
    assert ours.sparsity() == pytest.approx(theirs.sparsity()), "sparsity"
    for kwargs in ({}, {"grid_size": 3}, {"grid_size": -1, "limit": 1}, {"grid_size": (2, 7)}):
        assert ours.to_string(**kwargs) == theirs.to_string(**kwargs), f"to_string({kwargs})"
    assert str(ours) == str(theirs), "str"


@pytest.mark.parametrize("index", [pytest.param(0, id="b"), pytest.param((1, 2), id="b-h"),
                                   pytest.param(-1, id="negative-b"), pytest.param((slice(None), slice(1, 3)), id="h-slice"),
                                   pytest.param((slice(0, 1),), id="b-slice")])
def test_block_mask_indexing_equals_torchs(index) -> None:
    def by_head(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx <= 4 * h + b) & (q_idx >= kv_idx)
    ours = attncc.create_block_mask(by_head, 2, 3, 63, 77, BLOCK_SIZE=16)
    theirs = tflex.create_block_mask(by_head, 2, 3, 63, 77, device="cpu", BLOCK_SIZE=16)
    a, t = ours[index], theirs[index]
    assert a.shape == t.shape, f"shape {a.shape} != {t.shape}"
    assert torch.equal(a.to_dense(), t.to_dense().int()), "to_dense of the slice"
    assert a.sparsity() == pytest.approx(t.sparsity()) and a.to_string() == t.to_string(), "views of the slice"


@pytest.mark.parametrize("index,needle", [pytest.param(2, "batch index 2 out of range", id="out-of-range"),
                                          pytest.param((0, 0, 1), "batch and head dimensions only", id="query-blocks"),
                                          pytest.param((0, slice(5, 9)), "selects nothing", id="empty-slice"),
                                          pytest.param(torch.tensor([0]), "int or a slice", id="tensor-index")])
def test_block_mask_bad_indices_are_one_line_errors(index, needle: str) -> None:
    mask = attncc.create_block_mask(causal, 2, 3, 40, 40, BLOCK_SIZE=16)
    with pytest.raises(attncc.InputError, match=re.escape(needle)) as info:
        mask[index]
    assert "\n" not in str(info.value)


def test_block_mask_stays_lazy_until_a_table_is_needed() -> None:
    mask = attncc.create_block_mask(causal, 1, 2, 4096, 4096)
    assert mask._built is None and mask.given_tables is None, "create_block_mask built tables"
    assert mask.shape == (1, 2, 4096, 4096) and mask.numel() == 2 * 4096 * 4096
    assert mask._built is None, "shape/numel built tables"
    moved = mask.to("cpu")
    assert moved._built is None and moved.mask_mod is causal, "to() built tables or lost the mask_mod"
    assert mask.kv_num_blocks.shape[-1] == 32 and mask._built is not None, "tables on first access"


# --- the compatibility table of docs/flex.md ---------------------------------------------------------

def _torch_out(q, k, v, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tflex.flex_attention(q, k, v, **kwargs)


def row_return_aux_lse() -> None:
    q, k, v = qkv(1, 2, 63, 63)
    bm_t = tflex.create_block_mask(causal, 1, 2, 63, 63, device="cpu")
    t_out, t_aux = _torch_out(q, k, v, block_mask=bm_t, return_aux=tflex.AuxRequest(lse=True))
    out, aux = attncc.flex_attention(q, k, v, block_mask=attncc.create_block_mask(causal, 1, 2, 63, 63),
                                     kernel_options=SMALL_TILES, return_aux=attncc.AuxRequest(lse=True))
    assert type(aux) is type(t_aux) and aux.max_scores is None is t_aux.max_scores
    gold = dense(q, k, v, None, causal, torch.float64)
    assert_close_to_golden("aux.lse vs torch", aux.lse, gold[1], t_aux.lse.double())
    assert_close_to_golden("output vs torch", out, gold[0].float(), t_out)


def row_return_aux_max_scores() -> None:
    q, k, v = qkv(1, 1, 8, 8)
    with pytest.raises(NotImplementedError):  # torch: not on CPU
        _torch_out(q, k, v, return_aux=tflex.AuxRequest(max_scores=True))
    _, aux = attncc.flex_attention(q, k, v, return_aux=attncc.AuxRequest(max_scores=True))
    gold, same = dense(q, k, v, None, None, torch.float64), dense(q, k, v, None, None, torch.float32)
    assert_close_to_golden("max_scores", aux.max_scores, gold[2], same[2].double())


def row_return_lse_deprecated() -> None:
    q, k, v = qkv(1, 1, 20, 20)
    api._WARNED.discard("return_lse")  # warned once per process, as torch does
    with pytest.warns(FutureWarning, match="return_lse is deprecated"):
        out, lse = attncc.flex_attention(q, k, v, kernel_options=SMALL_TILES, return_lse=True)
    _, aux = attncc.flex_attention(q, k, v, kernel_options=SMALL_TILES, return_aux=attncc.AuxRequest(lse=True))
    assert torch.equal(lse, aux.lse), "return_lse and AuxRequest(lse=True) give the same lse"


def row_return_lse_and_aux() -> None:
    q, k, v = qkv(1, 1, 8, 8)
    for fn in (_torch_out, attncc.flex_attention):
        with pytest.raises(ValueError, match="return_lse and return_aux"):
            fn(q, k, v, return_lse=True, return_aux=tflex.AuxRequest(lse=True))


def row_kernel_options_tiles() -> None:
    q, k, v = qkv(1, 2, 77, 77)
    bm = attncc.create_block_mask(causal, 1, 2, 77, 77)
    small = attncc.flex_attention(q, k, v, block_mask=bm, kernel_options=SMALL_TILES)
    other = attncc.flex_attention(q, k, v, block_mask=bm, kernel_options={"fwd_BLOCK_M": 32, "BLOCK_N": 16,
                                                                          "num_warps": 2, "num_stages": 2})
    gold, same = dense(q, k, v, None, causal, torch.float64), dense(q, k, v, None, causal, torch.float32)
    for name, out in (("16x16 tiles", small), ("32x16 tiles", other)):
        assert_close_to_golden(name, out, gold[0], same[0])


def row_kernel_options_hints() -> None:
    q, k, v = qkv(1, 2, 40, 40)
    hints = {"PRESCALE_QK": True, "ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True, "WRITE_DQ": False,
             "USE_TMA": True, "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32, "kpack": 2,
             "matrix_instr_nonkdim": 16, "waves_per_eu": 1}
    base = attncc.flex_attention(q, k, v, kernel_options=SMALL_TILES)
    hinted = attncc.flex_attention(q, k, v, kernel_options={**SMALL_TILES, **hints})
    assert torch.equal(base, hinted), "hints changed the result"
    torch.testing.assert_close(_torch_out(q, k, v, kernel_options=hints), base, atol=1e-5, rtol=1e-5)


def row_kernel_options_unknown() -> None:
    q, k, v = qkv(1, 1, 8, 8)
    _torch_out(q, k, v, kernel_options={"BLOCK_K": 64})  # torch's eager path ignores it
    with pytest.raises(attncc.InputError, match="'BLOCK_K'"):
        attncc.flex_attention(q, k, v, kernel_options={"BLOCK_K": 64})


def row_kernel_options_internal() -> None:
    q, k, v = qkv(1, 1, 8, 8)
    with pytest.raises(AssertionError):
        _torch_out(q, k, v, kernel_options={"OUTPUT_LOGSUMEXP": True})
    with pytest.raises(attncc.InputError, match="set internally"):
        attncc.flex_attention(q, k, v, kernel_options={"OUTPUT_LOGSUMEXP": True})


def row_backend() -> None:
    q, k, v = qkv(1, 1, 4, 40)
    both = {"BACKEND": "TRITON", "FORCE_USE_FLEX_ATTENTION": True}
    with pytest.raises(RuntimeError, match="BACKEND cannot be combined"):
        _torch_out(q, k, v, kernel_options=both)
    with pytest.raises(attncc.InputError, match="BACKEND cannot be combined"):
        attncc.flex_attention(q, k, v, kernel_options=both)
    with pytest.raises(attncc.InputError, match="FLASH"):
        attncc.flex_attention(q, k, v, kernel_options={"BACKEND": "FLASH"})
    runs = [attncc.flex_attention(q, k, v, kernel_options={"BACKEND": b}) for b in ("AUTO", "TRITON", "TRITON_DECODE")]
    runs.append(attncc.flex_attention(q, k, v, kernel_options={"FORCE_USE_FLEX_ATTENTION": True}))
    gold, same = dense(q, k, v, None, None, torch.float64), dense(q, k, v, None, None, torch.float32)
    for name, out in zip(("AUTO", "TRITON", "TRITON_DECODE", "FORCE_USE_FLEX_ATTENTION"), runs, strict=True):
        assert_close_to_golden(f"BACKEND {name}", out, gold[0], same[0])
    with pytest.raises(attncc.InputError, match="TRITON_DECODE"):
        attncc.flex_attention(*qkv(1, 1, 40, 40), kernel_options={"BACKEND": "TRITON_DECODE"})


def row_block_mask_views() -> None:
    ours = attncc.create_block_mask(window, 1, 2, 77, 63, BLOCK_SIZE=32)
    theirs = tflex.create_block_mask(window, 1, 2, 77, 63, device="cpu", BLOCK_SIZE=32)
    assert (ours.shape, ours.numel(), str(ours)) == (theirs.shape, theirs.numel(), str(theirs))
    assert torch.equal(ours.to_dense(), theirs.to_dense().int()) and ours.sparsity() == pytest.approx(theirs.sparsity())


def row_block_mask_repr() -> None:
    ours = attncc.create_block_mask(causal, 2, 1, 40, 40, BLOCK_SIZE=16)
    theirs = tflex.create_block_mask(causal, 2, 1, 40, 40, device="cpu", BLOCK_SIZE=16)
    fields = [re.sub(r"=.*", "", line) for line in repr(ours).splitlines()]
    assert fields == [re.sub(r"=.*", "", line) for line in repr(theirs).splitlines()], repr(ours)
    for key in ("BLOCK_SIZE", "shape", "sparsity", "mask_mod"):
        line = [x for x in repr(ours).splitlines() if x.strip().startswith(key + "=")]
        assert line and line[0] in repr(theirs), f"{key}: {line}"
    assert "kv_num_blocks=torch.Size([1, 1, 3])" in repr(ours), "tables broadcast over b and h"


def row_block_mask_indexing() -> None:
    ours, theirs = (make(causal, 2, 2, 40, 40, BLOCK_SIZE=16) for make in (
        attncc.create_block_mask, lambda *a, **kw: tflex.create_block_mask(*a, device="cpu", **kw)))
    assert ours[1, 0].shape == theirs[1, 0].shape == (1, 1, 40, 40)
    qb = torch.tensor([1], dtype=torch.int32)
    assert theirs[0, 0, qb].kv_num_blocks.shape == (1, 1, 1)  # torch also indexes query blocks
    with pytest.raises(attncc.InputError, match="batch and head dimensions only"):
        ours[0, 0, 1]


def row_sliced_mask() -> None:
    q, k, v = qkv(1, 2, 40, 40)
    ours, theirs = attncc.create_block_mask(causal, 2, 2, 40, 40), tflex.create_block_mask(causal, 2, 2, 40, 40, "cpu")
    a, t = ours[0], theirs[0]
    with pytest.raises(RuntimeError, match="sliced"):
        _torch_out(q, k, v, block_mask=t)
    with pytest.raises(attncc.InputError, match="sliced"):
        attncc.flex_attention(q, k, v, block_mask=a)
    a.mask_mod, t.mask_mod = ours.mask_mod, theirs.mask_mod
    got = attncc.flex_attention(q, k, v, block_mask=a, kernel_options=SMALL_TILES)
    gold, same = dense(q, k, v, None, causal, torch.float64), dense(q, k, v, None, causal, torch.float32)
    assert_close_to_golden("sliced mask, mask_mod set again", got, gold[0], same[0])
    torch.testing.assert_close(got, _torch_out(q, k, v, block_mask=t), atol=1e-5, rtol=1e-5)


def row_torch_block_mask() -> None:
    q, k, v = qkv(1, 2, 63, 77)
    made = tflex.create_block_mask(window, 1, 2, 63, 77, device="cpu", BLOCK_SIZE=16)
    got = attncc.flex_attention(q, k, v, block_mask=made, kernel_options=SMALL_TILES)
    torch.testing.assert_close(got, _torch_out(q, k, v, block_mask=made), atol=1e-5, rtol=1e-5)
    # block lists only (noop mask_mod): torch's eager path ignores the lists (its kernels read them)
    num = torch.tensor([[[1, 2, 1, 0]]], dtype=torch.int32).expand(1, 2, 4).contiguous()
    idx = torch.tensor([[0, 4, 0, 0], [1, 3, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.int32)
    idx = idx.expand(1, 2, 4, 4).contiguous()
    lists = tflex.BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=16, seq_lengths=(63, 77))
    assert torch.equal(_torch_out(q, k, v, block_mask=lists), _torch_out(q, k, v)), "torch eager reads the lists?"
    got = attncc.flex_attention(q, k, v, block_mask=lists, kernel_options=SMALL_TILES)
    listed = torch.zeros(1, 2, 4, 5, dtype=torch.bool)
    for h in range(2):
        for row in range(4):
            listed[0, h, row, idx[0, h, row, :num[0, h, row]].long()] = True
    listed = listed.repeat_interleave(16, 2).repeat_interleave(16, 3)[..., :63, :77]

    def in_lists(b, h, q_idx, kv_idx):
        return listed[b, h, q_idx, kv_idx]
    gold, same = dense(q, k, v, None, in_lists, torch.float64), dense(q, k, v, None, in_lists, torch.float32)
    assert_close_to_golden("torch from_kv_blocks", got, gold[0], same[0])


def row_block_mask_lengths() -> None:
    q, k, v = qkv(1, 1, 40, 40)
    with pytest.raises(ValueError, match="block_mask was created for"):
        _torch_out(q, k, v, block_mask=tflex.create_block_mask(causal, 1, 1, 48, 48, device="cpu"))
    with pytest.raises(attncc.InputError, match="block_mask was made for lengths"):
        attncc.flex_attention(q, k, v, block_mask=attncc.create_block_mask(causal, 1, 1, 48, 48))


def row_create_block_mask_lazy() -> None:
    mask = attncc.create_block_mask(causal, 4, 8, 8192, 8192)
    assert mask._built is None, "attncc builds no table at creation"
    assert tflex.create_block_mask(causal, 1, 1, 256, 256, device="cpu").kv_num_blocks.shape == (1, 1, 2)


COMPAT_ROWS: dict[str, Callable[[], None]] = {
    "return-aux-lse": row_return_aux_lse,
    "return-aux-max-scores": row_return_aux_max_scores,
    "return-lse-deprecated": row_return_lse_deprecated,
    "return-lse-and-aux": row_return_lse_and_aux,
    "kernel-options-tiles": row_kernel_options_tiles,
    "kernel-options-hints": row_kernel_options_hints,
    "kernel-options-unknown": row_kernel_options_unknown,
    "kernel-options-internal": row_kernel_options_internal,
    "backend": row_backend,
    "block-mask-views": row_block_mask_views,
    "block-mask-repr": row_block_mask_repr,
    "block-mask-indexing": row_block_mask_indexing,
    "sliced-block-mask": row_sliced_mask,
    "torch-block-mask": row_torch_block_mask,
    "block-mask-lengths": row_block_mask_lengths,
    "create-block-mask-lazy": row_create_block_mask_lazy,
}


@pytest.mark.parametrize("row", [pytest.param(name, id=name) for name in COMPAT_ROWS])
def test_compatibility_table_row(row: str) -> None:
    COMPAT_ROWS[row]()


def test_compatibility_table_lists_exactly_the_tested_rows() -> None:
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert ids == list(COMPAT_ROWS), f"docs/flex.md rows {ids} != tests {list(COMPAT_ROWS)}"
