"""Bad and unusual inputs to the Python API: each case has exactly one expected class of outcome.

* :class:`Torch`: the result equals torch's ``flex_attention`` (run eagerly on CPU): NaN and
  infinities at exactly the same places, finite values within twice fp32 torch's error against
  torch in float64 (plus 1e-6);
* :class:`Empty`: an empty problem (torch's eager path raises on these): the result is known
  without a launch (o = 0, lse = -inf for rows without keys; gradients 0), forward and backward;
* :class:`Fails`: a one-line :class:`InputError` / :class:`SpecError` naming the argument.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, masked_softmax_attention
from torch.nn.attention import flex_attention as torch_flex

import attncc

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


class Api(NamedTuple):
    """One implementation of the flex_attention API, and its default kernel_options."""

    name: str
    flex: Callable[..., Any]
    create_block_mask: Callable[..., Any]
    options: dict[str, int] | None


ATTNCC = Api("attncc", attncc.flex_attention, attncc.create_block_mask, dict(SMALL_TILES))
TORCH = Api("torch", torch_flex.flex_attention, torch_flex.create_block_mask, None)


def qkv(dtype: torch.dtype, B: int = 1, H: int = 2, M: int = 63, N: int = 77, D: int = 16, HK: int | None = None,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(B * 1000 + H * 100 + M + N)
    q, k, v = (torch.randn(B, h, L, D, generator=g) for h, L in ((H, M), (HK or H, N), (HK or H, N)))
    return q.to(dtype).to(DEVICE), k.to(dtype).to(DEVICE), v.to(dtype).to(DEVICE)


def with_nan(t: torch.Tensor, *index: int) -> torch.Tensor:
    t = t.clone()
    t[index] = float("nan")
    return t


def flex(api: Api, dtype: torch.dtype, *, q_nan: tuple[int, ...] | None = None,
         k_nan: tuple[int, ...] | None = None, mask: Callable[..., Any] | None = None,
         options: dict[str, Any] | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention of ``api`` on the standard inputs (NaN planted where asked)."""
    q, k, v = qkv(dtype)
    q = with_nan(q, *q_nan) if q_nan else q
    k = with_nan(k, *k_nan) if k_nan else k
    block_mask = api.create_block_mask(mask, None, None, q.shape[2], k.shape[2], device=DEVICE) if mask else None
    return api.flex(q, k, v, block_mask=block_mask, return_lse=True,
                    kernel_options=api.options if options is None else options, **kwargs)


def causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx


def never(b, h, q_idx, kv_idx):
    return kv_idx < 0


def symmetric_window(window: int) -> Callable[[Api, torch.dtype], Any]:
    """attncc's built-in spec with a huge (valid) int param, against torch with the same mask."""
    def run(api: Api, dtype: torch.dtype) -> Any:
        if api is ATTNCC:
            q, k, v = qkv(dtype)
            return attncc.load("sliding_window_symmetric")(q, k, v, window=window, return_lse=True,
                                                            config=dict(SMALL_TILES))
        return flex(api, dtype, mask=lambda b, h, m, n: (m - n).abs() <= window)
    return run


@dataclass(frozen=True)
class Torch:
    """Expect torch's result: ``run(api, dtype)`` calls either implementation."""

    run: Callable[[Api, torch.dtype], Any]


@dataclass(frozen=True)
class Empty:
    """Expect the empty-problem result; ``shape`` is (B, H, HK, M, N)."""

    shape: tuple[int, int, int, int, int]


@dataclass(frozen=True)
class Fails:
    """Expect a one-line ``error`` whose message contains ``names`` (the argument)."""

    error: type[Exception]
    names: str
    call: Callable[[], Any]


def in_flex(**kwargs: Any) -> Callable[[], Any]:
    return lambda: flex(ATTNCC, torch.float32, **kwargs)


def with_spec(spec: str, shapes: dict[str, int] | None = None, **kwargs: Any) -> Callable[[], Any]:
    def call() -> Any:
        q, k, v = qkv(torch.float32, **(shapes or {}))
        return attncc.load(spec)(q, k, v, **{"config": dict(SMALL_TILES), **kwargs})
    return call


_STANDARD = object()


def with_qkv(q: Any = _STANDARD, k: Any = _STANDARD, v: Any = _STANDARD) -> Callable[[], Any]:
    def call() -> Any:
        std = qkv(torch.float32)
        return attncc.flex_attention(*(s if x is _STANDARD else x for x, s in zip((q, k, v), std, strict=True)))
    return call


def mod_reading(table: torch.Tensor, index: Callable[..., Any]) -> Callable[..., Any]:
    def biased(score, b, h, q_idx, kv_idx):
        return score + table[index(b, h, q_idx, kv_idx)]
    return biased


def xor_mod(score, b, h, q_idx, kv_idx):
    return score + (score ^ kv_idx)  # bitwise on a float


def xor_mask(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) ^ kv_idx  # a condition with an integer


def shift_mod(score, b, h, q_idx, kv_idx):
    return score + (score >> 1)  # a shift of a float


def int_power_mod(score, b, h, q_idx, kv_idx):
    return score + 2 ** (q_idx - kv_idx)  # torch: an integer, 0 for negative exponents


def float_power_mod(score, b, h, q_idx, kv_idx):
    return score + 0.01 * 2 ** torch.clamp(q_idx - kv_idx, 0, 20) - 0.5 ** (kv_idx - q_idx).abs()


def torch_xor_mask(b, h, q_idx, kv_idx):
    return torch.bitwise_xor(q_idx >= kv_idx, kv_idx)


CASES = [
    # --- specials: follow torch (lse -inf only for rows with no unmasked key) ---
    pytest.param(Torch(lambda api, dt: flex(api, dt, q_nan=(0, 1, 5, 3))), id="nan-in-query"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, q_nan=(0, 0, 40, 0), mask=causal)), id="nan-in-query-causal"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, k_nan=(0, 1, 70, 2))), id="nan-in-key"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, scale=float("inf"))), id="scale-inf"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, scale=float("-inf"))), id="scale-minus-inf"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, scale=float("nan"))), id="scale-nan"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, scale=0.0)), id="scale-zero"),
    pytest.param(Torch(lambda api, dt: flex(
        api, dt, score_mod=lambda s, b, h, m, n: torch.where(n == 50, float("inf"), s))), id="score-mod-plus-inf"),
    pytest.param(Torch(lambda api, dt: flex(
        api, dt, score_mod=lambda s, b, h, m, n: torch.where(m % 3 == 0, float("-inf"), s))),
        id="score-mod-minus-inf-rows"),
    # The printer fix for a bare `nan` in the kernel comes with issue 7's printer part.
    pytest.param(Torch(lambda api, dt: flex(api, dt, score_mod=lambda s, b, h, m, n: s * float("nan"))),
                 id="score-mod-times-nan"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, mask=never)), id="mask-never-true"),
    # --- valid extremes and torch's kernel_options ---
    pytest.param(Torch(symmetric_window(2**30)), id="int-param-at-limit"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, mask=causal, options={
        **(api.options or {}), "PRESCALE_QK": True, "ROWS_GUARANTEED_SAFE": False, "BLOCKS_ARE_CONTIGUOUS": True,
        "FORCE_USE_FLEX_ATTENTION": True, "bwd_BLOCK_M1": 32, "WRITE_DQ": True})), id="torch-kernel-options-ignored"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, mask=causal, options={"fwd_BLOCK_M": 32, "fwd_BLOCK_N": 16,
                                                                           "bwd_BLOCK_M": 16})),
                 id="kernel-options-per-pass"),
    # --- empty problems ---
    pytest.param(Empty((0, 2, 2, 5, 7)), id="B=0"),
    pytest.param(Empty((1, 0, 0, 5, 7)), id="H=0"),
    pytest.param(Empty((1, 2, 2, 0, 7)), id="M=0"),
    pytest.param(Empty((1, 2, 2, 5, 0)), id="N=0"),
    pytest.param(Empty((0, 4, 2, 5, 7)), id="gqa-B=0"),
    # --- launch configs ---
    *[pytest.param(Fails(attncc.InputError, "BLOCK_M", in_flex(options={"BLOCK_M": b})), id=f"BLOCK_M={b}")
      for b in (-16, 0, 3, 8, 2**20)],
    pytest.param(Fails(attncc.InputError, "BLOCK_N", in_flex(options={"BLOCK_N": 48})), id="BLOCK_N=48"),
    pytest.param(Fails(attncc.InputError, "BLOCK_N", in_flex(options={"bwd_BLOCK_N": 512})), id="bwd_BLOCK_N=512"),
    pytest.param(Fails(attncc.InputError, "num_warps", in_flex(options={"num_warps": 3})), id="num_warps=3"),
    pytest.param(Fails(attncc.InputError, "num_stages", in_flex(options={"num_stages": 0})), id="num_stages=0"),
    pytest.param(Fails(attncc.InputError, "num_stages", in_flex(options={"num_stages": 9})), id="num_stages=9"),
    pytest.param(Fails(attncc.InputError, "BLOCK_M", in_flex(options={"BLOCK_M": "64"})), id="BLOCK_M-str"),
    pytest.param(Fails(attncc.InputError, "BLOCK_M", in_flex(options={"BLOCK_M": True})), id="BLOCK_M-bool"),
    pytest.param(Fails(attncc.InputError, "BLOCK_K", in_flex(options={"BLOCK_K": 64})), id="unknown-kernel-option"),
    pytest.param(Fails(attncc.InputError, "PRESCALE_QK", with_spec("causal", config={"PRESCALE_QK": True})),
                 id="torch-key-in-config"),
    pytest.param(Fails(attncc.InputError, "kernel_options", in_flex(options=[("BLOCK_M", 16)])),
                 id="kernel-options-not-a-dict"),
    # --- params and scale the kernel cannot represent ---
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=2**63 - 1)),
                 id="window=2**63-1"),
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=2**31 - 1)),
                 id="window=2**31-1"),
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=-(2**40))),
                 id="window=-2**40"),
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=10**5000)),
                 id="window=10**5000"),
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=2.5)), id="window=2.5"),
    pytest.param(Fails(attncc.InputError, "window", with_spec("sliding_window", window=float("inf"))),
                 id="window=inf"),
    pytest.param(Fails(attncc.InputError, "cap", with_spec("softcap", cap=1e39)), id="float-param-beyond-fp32"),
    pytest.param(Fails(attncc.InputError, "scale", in_flex(scale=1e39)), id="scale-beyond-fp32"),
    pytest.param(Fails(attncc.InputError, "scale", in_flex(scale="0.5")), id="scale-str"),
    # --- tensors that are not tensors, or empty head dims ---
    pytest.param(Fails(attncc.InputError, "query", with_qkv(q=[[0.0]])), id="query-list"),
    pytest.param(Fails(attncc.InputError, "key", with_qkv(k=None)), id="key-none"),
    pytest.param(Fails(attncc.InputError, "value", with_qkv(v=3.0)), id="value-float"),
    pytest.param(Fails(attncc.InputError, "query", with_qkv(q=torch.ones(2, 63, 16))), id="query-3d"),
    pytest.param(Fails(attncc.InputError, "head dim", with_spec("full", {"D": 0})), id="head-dim-0"),
    # --- out-of-range capture indices that are cheap to check ---
    pytest.param(Fails(attncc.InputError, "slopes", with_spec("alibi", slopes=torch.ones(1, device=DEVICE))),
                 id="alibi-slopes-shorter-than-H"),
    pytest.param(Fails(attncc.InputError, "temp", with_spec("temperature", temp=torch.ones(1, 2, 62, device=DEVICE))),
                 id="temperature-shorter-than-M"),
    pytest.param(Fails(attncc.InputError, "kv_lens", with_spec("cross_attention", {"B": 2},
                                                               kv_lens=torch.ones(1, dtype=torch.int32, device=DEVICE))),
                 id="kv-lens-shorter-than-B"),
    pytest.param(Fails(attncc.InputError, "'table'", in_flex(score_mod=mod_reading(
        torch.zeros(76, device=DEVICE), lambda b, h, m, n: n))), id="flex-capture-shorter-than-N"),
    # --- mod spellings outside the language ---
    pytest.param(Fails(attncc.SpecError, "'^' needs integer", in_flex(score_mod=xor_mod)), id="xor-of-a-float"),
    pytest.param(Fails(attncc.SpecError, "condition and a number", in_flex(mask=xor_mask)),
                 id="xor-of-a-condition-and-int"),
    pytest.param(Fails(attncc.SpecError, "condition and a number", in_flex(mask=torch_xor_mask)),
                 id="torch-bitwise-xor-mixed"),
    pytest.param(Fails(attncc.SpecError, "'>>' needs integer", in_flex(score_mod=shift_mod)), id="shift-of-a-float"),
    pytest.param(Fails(attncc.SpecError, "negative", in_flex(score_mod=int_power_mod)), id="int-power-negative"),
    pytest.param(Torch(lambda api, dt: flex(api, dt, score_mod=float_power_mod)), id="int-power-nonnegative"),
]


def assert_like_torch(label: str, got: torch.Tensor, golden: torch.Tensor, same: torch.Tensor) -> None:
    """NaN and infinities exactly where torch (fp64) has them; finite values by the 2x rule."""
    got, golden, same = got.cpu().double(), golden.cpu().double(), same.cpu().double()
    assert got.shape == golden.shape, f"{label}: shape {tuple(got.shape)}, torch {tuple(golden.shape)}"
    for what, pick in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        bad = pick(got) != pick(golden)
        if bad.any():
            idx = tuple(bad.nonzero()[0].tolist())
            raise AssertionError(f"{label}: {what} differs from torch at {int(bad.sum())} position(s), first "
                                 f"{idx}: got {got[idx].item()}, torch {golden[idx].item()}")
    finite = torch.isfinite(golden)
    err = (got - golden).abs()[finite].max().item() if finite.any() else 0.0
    torch_err = (same - golden).abs()[finite].max().item() if finite.any() else 0.0
    assert err <= 2 * torch_err + 1e-6, f"{label}: max err {err:.3g} > 2 x torch fp32 {torch_err:.3g} + 1e-6"


def check_empty(shape: tuple[int, int, int, int, int]) -> None:
    B, H, HK, M, N = shape
    q, k, v = (t.requires_grad_() for t in qkv(torch.float32, B=B, H=H, M=M, N=N, HK=HK))
    o, lse = attncc.flex_attention(q, k, v, score_mod=lambda s, b, h, m, n: s * 2, block_mask=attncc.create_block_mask(
        causal, None, None, M, N, device=DEVICE), enable_gqa=HK != H, return_lse=True)
    assert o.shape == (B, H, M, 16) and lse.shape == (B, H, M), f"{shape}: o {tuple(o.shape)}, lse {tuple(lse.shape)}"
    assert torch.equal(o.detach().cpu(), torch.zeros(B, H, M, 16)), f"{shape}: output not 0"
    assert torch.isneginf(lse.detach().cpu()).all(), f"{shape}: lse not -inf"
    (o.sum() + lse.clamp(min=-1.0).sum()).backward()
    for name, t in (("dq", q), ("dk", k), ("dv", v)):
        assert t.grad is not None and torch.equal(t.grad.cpu(), torch.zeros(t.shape)), f"{shape}: {name} not 0"


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Torch | Empty | Fails) -> None:
    if isinstance(case, Fails):
        with pytest.raises(case.error) as info:
            case.call()
        assert type(info.value) is case.error, f"raised {type(info.value).__name__}, expected {case.error.__name__}"
        msg = str(info.value)
        assert "\n" not in msg, f"message is not one line: {msg!r}"
        assert case.names in msg, f"message does not name {case.names!r}: {msg}"
        if case.error is attncc.SpecError:
            assert info.value.location and __file__ in info.value.location, f"no location in the mod: {msg}"
    elif isinstance(case, Empty):
        check_empty(case.shape)
    else:
        got = case.run(ATTNCC, torch.float32)
        golden = case.run(TORCH, torch.float64)
        same = case.run(TORCH, torch.float32)
        for i, what in enumerate(("output", "lse")):
            assert_like_torch(what, got[i], golden[i], same[i])


def test_xor_location_is_the_line_of_the_operator() -> None:
    """The SpecError of a bit operator on a float points at file:line:col of the expression."""
    with pytest.raises(attncc.SpecError) as info:
        in_flex(score_mod=xor_mod)()
    lines, first = inspect.getsourcelines(xor_mod)
    col = lines[1].index("score ^") + 1
    assert info.value.location == f"{__file__}:{first + 1}:{col}", info.value.location


# --- bf16 (computed in fp32 where Triton has no bf16 arithmetic) -------------------------------------

def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention with ``score + bias[h]`` in ``dtype``, in plain torch."""
    s = q.to(dtype) @ k.to(dtype).transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias.to(dtype).view(1, -1, 1, 1)
    M, N = s.shape[-2:]
    keep = torch.arange(N).view(1, N) <= torch.arange(M).view(M, 1)
    return masked_softmax_attention(s, keep.expand(s.shape), v.to(dtype))


def test_bf16_forward_and_backward() -> None:
    """bf16 results (o, lse, dq, dk, dv, dbias) against fp64, within 2x torch's own bf16 error."""
    q, k, v = qkv(torch.bfloat16)
    bias = torch.tensor([0.5, -0.25], dtype=torch.bfloat16, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    bias_ref = leaves[3]

    def biased(score, b, h, q_idx, kv_idx):
        return score + bias_ref[h]

    bm = attncc.create_block_mask(causal, None, None, 63, 77, device=DEVICE)
    o, lse = attncc.flex_attention(*leaves[:3], score_mod=biased, block_mask=bm, return_lse=True,
                                   kernel_options=dict(SMALL_TILES))
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).to(DEVICE)
    o.backward(do)
    results = {"output": o, "lse": lse, **dict(zip(("dq", "dk", "dv", "dbias"), (t.grad for t in leaves),
                                                 strict=True))}
    refs = {}
    for dtype in (torch.float64, torch.bfloat16):
        ins = [t.detach().cpu().to(dtype).requires_grad_() for t in (q, k, v, bias)]
        ro, rlse = dense(*ins, dtype)
        ro.backward(do.cpu().to(dtype))
        refs[dtype] = {"output": ro, "lse": rlse, **dict(zip(("dq", "dk", "dv", "dbias"), (t.grad for t in ins),
                                                          strict=True))}
    for name, got in results.items():
        assert got.dtype == (torch.float32 if name == "lse" else torch.bfloat16), f"bf16 {name}: dtype {got.dtype}"
        assert_close_to_golden(f"bf16 {name}", got.detach().cpu(), refs[torch.float64][name].detach(),
                               refs[torch.bfloat16][name].detach(), input_dtype=torch.bfloat16)


def test_standalone_module_bf16_and_config() -> None:
    """The generated module's own host code: bf16 as above, and launch configs it cannot run."""
    module = attncc.load("causal").module
    q, k, v = qkv(torch.bfloat16)
    o, lse = module.attention_forward(q, k, v, config=dict(SMALL_TILES))
    no_bias = torch.zeros(2, dtype=torch.float64)
    golden, same = dense(q.cpu(), k.cpu(), v.cpu(), no_bias, torch.float64), dense(q.cpu(), k.cpu(), v.cpu(),
                                                                                    no_bias, torch.bfloat16)
    assert o.dtype == torch.bfloat16, f"standalone bf16 output dtype {o.dtype}"
    assert_close_to_golden("standalone bf16 output", o.cpu(), golden[0], same[0])
    assert_close_to_golden("standalone bf16 lse", lse.cpu(), golden[1], same[1], input_dtype=torch.bfloat16)
    for bad in ({"BLOCK_M": 3}, {"BLOCK_N": -16}, {"num_warps": 0}, {"BLOCK_K": 16}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            module.attention_forward(q, k, v, config=bad)
