"""Gradients through attncc (``attncc::fwd`` / ``attncc::bwd``) against a dense fp64 torch reference.

Every variant is written twice: once for attncc (a built-in spec, or FlexAttention-style mods
for ``attncc.flex_attention``), once as plain dense torch ops here, differentiated by torch
autograd.  The accuracy rule is FlashAttention's: for every gradient, the kernel's max error
against the fp64 reference is at most twice the error of the same dense computation carried
out in the input dtype, plus a small floor (scaled by the gradient's magnitude).  Failures
name the gradient ("dk", "grad of bias").
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import Grid

import attncc

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FLOORS = {torch.float32: 2e-5, torch.float16: 2e-3}
NEG_INF = float("-inf")


# --- the dense reference --------------------------------------------------------------------------

def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    score: Callable[[torch.Tensor, Grid, dict], torch.Tensor],
                    mask: Callable[[Grid, dict], torch.Tensor] | None,
                    caps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(score(q k^T * scale) masked) @ v and its natural-log lse, in q's dtype.

    Rows without a visible key give output 0 and lse -inf, and zero gradients (they are
    computed on a constant row, then zeroed).  Key/value heads are repeated for GQA, so autograd
    sums dK and dV over each group.
    """
    B, H, M, _ = q.shape
    HK, N = k.shape[1], k.shape[2]
    kx, vx = k.repeat_interleave(H // HK, dim=1), v.repeat_interleave(H // HK, dim=1)
    g = Grid.make(B, H, M, N)
    s = score((q @ kx.transpose(-1, -2)) * scale, g, caps).expand(B, H, M, N)
    keep = torch.ones(B, H, M, N, dtype=torch.bool) if mask is None else mask(g, caps).expand(B, H, M, N)
    empty = ~keep.any(-1, keepdim=True)
    s = s.masked_fill(~keep, NEG_INF).masked_fill(empty, 0.0)
    p = torch.softmax(s, dim=-1).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty[..., 0], NEG_INF)
    return p @ vx, lse


# --- the variants ---------------------------------------------------------------------------------

def causal(g: Grid, c: dict) -> torch.Tensor:
    return g.n <= g.m


def _spec_runner(name: str, **params: float) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    fn = attncc.load(name)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, caps: dict, scale: float | None) -> tuple:
        return fn(q, k, v, scale=scale, return_lse=True, config=SMALL_TILES, **caps, **params)
    return run


def _flex_runner(make_mods: Callable[[dict], tuple[Callable | None, Callable | None]],
                 gqa: bool = False) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """attncc.flex_attention with mods that close over the captured tensors (as users write them)."""
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, caps: dict, scale: float | None) -> tuple:
        score_mod, mask_mod = make_mods(caps)
        block_mask = None
        if mask_mod is not None:
            block_mask = attncc.create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2])
        return attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                     enable_gqa=gqa, return_lse=True, kernel_options=SMALL_TILES)
    return run


def _rel_bias_mods(caps: dict) -> tuple[Callable, Callable]:
    table = caps["table"]  # [H, 17]: read twice, at distance m - n and n - m

    def twice(score, b, h, m, n):
        return score + table[h, torch.clamp(m - n, -8, 8) + 8] + 0.5 * table[h, torch.clamp(n - m, -8, 8) + 8]

    def is_causal(b, h, m, n):
        return n <= m
    return twice, is_causal


def _sink_mods(caps: dict) -> tuple[Callable, Callable]:
    sink = caps["sink"]  # [H]: a learnable logit added to the first key only (gpt-oss-style sink)

    def first_key_bias(score, b, h, m, n):
        return torch.where(n < 1, score + sink[h], score)

    def is_causal(b, h, m, n):
        return n <= m
    return first_key_bias, is_causal


def _softcap_mods(caps: dict) -> tuple[Callable, Callable]:
    def soft(score, b, h, m, n):
        return 2.0 * torch.tanh(score / 2.0)

    def window(b, h, m, n):
        return (n <= m) & (m - n < 24)
    return soft, window


def _gqa_alibi_mods(caps: dict) -> tuple[Callable, Callable]:
    slopes = caps["slopes"]

    def alibi(score, b, h, m, n):
        return score - slopes[h] * (m - n)

    def is_causal(b, h, m, n):
        return n <= m
    return alibi, is_causal


def _key_bias_mods(caps: dict) -> tuple[Callable, None]:
    kbias = caps["kbias"]  # [B, N]: one learnable logit per key (cross attention, no mask)

    def key_bias(score, b, h, m, n):
        return score + kbias[b, n]
    return key_bias, None


def _strict_causal_mods(caps: dict) -> tuple[None, Callable]:
    def strictly_before(b, h, m, n):
        return n < m  # query 0 sees nothing
    return None, strictly_before


@dataclass(frozen=True)
class Variant:
    """One attention variant: the attncc call, the same thing in dense torch, its captures."""

    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    score: Callable[[torch.Tensor, Grid, dict], torch.Tensor]
    mask: Callable[[Grid, dict], torch.Tensor] | None
    captures: Callable[[int, int, int, int, torch.Generator], dict[str, torch.Tensor]] = lambda *a: {}
    learnable: tuple[str, ...] = ()  # captures that require grad
    gqa: bool = False
    scale: float | None = None


def _table_score(s: torch.Tensor, g: Grid, c: dict) -> torch.Tensor:
    t = c["table"]
    return s + t[g.h, torch.clamp(g.m - g.n, -8, 8) + 8] + 0.5 * t[g.h, torch.clamp(g.n - g.m, -8, 8) + 8]


VARIANTS: dict[str, Variant] = {
    "causal": Variant(_spec_runner("causal"), lambda s, g, c: s, causal),
    "sliding_window": Variant(_spec_runner("sliding_window", window=16), lambda s, g, c: s,
                              lambda g, c: (g.n <= g.m) & (g.m - g.n < 16)),
    "softcap": Variant(_spec_runner("softcap", cap=2.0), lambda s, g, c: 2.0 * torch.tanh(s / 2.0), causal,
                       scale=1.0),
    "alibi": Variant(_spec_runner("alibi"), lambda s, g, c: s - c["slopes"].view(1, -1, 1, 1) * (g.m - g.n), causal,
                     lambda B, H, M, N, gen: {"slopes": 0.05 + 0.5 * torch.rand(H, generator=gen)},
                     learnable=("slopes",)),
    "temperature": Variant(_spec_runner("temperature"), lambda s, g, c: s * c["temp"][..., None], causal,
                           lambda B, H, M, N, gen: {"temp": 0.25 + 1.75 * torch.rand(B, H, M, generator=gen)},
                           learnable=("temp",), scale=1.0),
    "relative_bias": Variant(
        _spec_runner("relative_bias", max_distance=8),
        lambda s, g, c: s + c["bias"][g.h, torch.clamp(g.m - g.n, -8, 8) + 8], None,
        lambda B, H, M, N, gen: {"bias": torch.randn(H, 17, generator=gen)}, learnable=("bias",)),
    "gqa": Variant(_spec_runner("gqa"), lambda s, g, c: s, causal, gqa=True),
    "cross_attention": Variant(
        _spec_runner("cross_attention"), lambda s, g, c: s, lambda g, c: g.n < c["kv_lens"].view(-1, 1, 1, 1),
        lambda B, H, M, N, gen: {"kv_lens": torch.tensor([N, 0, N // 2 + 1][:B], dtype=torch.int32)}),
    "flex_table_twice": Variant(_flex_runner(_rel_bias_mods), _table_score, causal,
                                lambda B, H, M, N, gen: {"table": torch.randn(H, 17, generator=gen)},
                                learnable=("table",)),
    "flex_sink": Variant(_flex_runner(_sink_mods), lambda s, g, c: torch.where(g.n < 1, s + c["sink"][g.h], s),
                         causal, lambda B, H, M, N, gen: {"sink": 2.0 * torch.randn(H, generator=gen)},
                         learnable=("sink",)),
    "flex_softcap_window": Variant(_flex_runner(_softcap_mods), lambda s, g, c: 2.0 * torch.tanh(s / 2.0),
                                   lambda g, c: (g.n <= g.m) & (g.m - g.n < 24), scale=1.0),
    "flex_gqa_alibi": Variant(_flex_runner(_gqa_alibi_mods, gqa=True),
                              lambda s, g, c: s - c["slopes"][g.h] * (g.m - g.n), causal,
                              lambda B, H, M, N, gen: {"slopes": 0.05 + 0.5 * torch.rand(H, generator=gen)},
                              learnable=("slopes",), gqa=True),
    "flex_key_bias": Variant(_flex_runner(_key_bias_mods), lambda s, g, c: s + c["kbias"][g.b, g.n], None,
                             lambda B, H, M, N, gen: {"kbias": torch.randn(B, N, generator=gen)},
                             learnable=("kbias",)),
    "flex_strict_causal": Variant(_flex_runner(_strict_causal_mods), lambda s, g, c: s, lambda g, c: g.n < g.m),
}


@dataclass(frozen=True)
class Case:
    variant: str
    dtype: str
    M: int = 40
    N: int = 40
    B: int = 2
    H: int = 2
    HK: int | None = None
    D: int = 16
    E: int | None = None
    lse_grad: bool = False
    extra: dict = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        s = f"{self.variant}-{self.dtype}-M{self.M}" + (f"-N{self.N}" if self.N != self.M else "")
        s += f"-H{self.H}-HK{self.HK}" if self.HK else ""
        s += f"-E{self.E}" if self.E else ""
        return s + ("-lse" if self.lse_grad else "")

    @property
    def label(self) -> str:
        return self.id.replace("-", " ")


def _cases() -> list:
    cases = [Case(name, dtype) for name in VARIANTS for dtype in DTYPES
             if name not in ("gqa", "cross_attention", "flex_key_bias", "flex_gqa_alibi")]
    for dtype in DTYPES:
        cases += [
            Case("gqa", dtype, H=4, HK=1), Case("gqa", dtype, H=4, HK=2),
            Case("flex_gqa_alibi", dtype, B=1, H=4, HK=2),
            Case("cross_attention", dtype, M=33, N=50, B=3, H=1),
            Case("flex_key_bias", dtype, M=20, N=45),
            Case("causal", dtype, M=1, N=1),
            Case("causal", dtype, M=77, N=77, B=1, H=1, D=32),
            Case("relative_bias", dtype, M=63, N=63, B=1),
            Case("flex_key_bias", dtype, M=63, N=1, B=1),
            Case("causal", dtype, M=40, N=40, E=32, B=1),  # value head dim != query/key head dim
            Case("relative_bias", dtype, lse_grad=True),  # a loss that also uses lse
        ]
    return [pytest.param(c, id=c.id) for c in cases]


# --- running and checking -------------------------------------------------------------------------

def make_inputs(c: Case) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """fp32 master copies of q, k, v, the output gradients and the captured tensors."""
    gen = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))
    HK, E = c.HK or c.H, c.E or c.D
    t = {"q": torch.randn(c.B, c.H, c.M, c.D, generator=gen), "k": torch.randn(c.B, HK, c.N, c.D, generator=gen),
         "v": torch.randn(c.B, HK, c.N, E, generator=gen), "do": torch.randn(c.B, c.H, c.M, E, generator=gen),
         "dlse": torch.randn(c.B, c.H, c.M, generator=gen)}
    caps = VARIANTS[c.variant].captures(c.B, c.H, c.M, c.N, gen)
    return t, caps


def _loss(o: torch.Tensor, lse: torch.Tensor, t: dict, lse_grad: bool) -> torch.Tensor:
    loss = (o.double() * t["do"].double()).sum()
    if lse_grad:
        finite = torch.isfinite(lse)
        loss = loss + (torch.where(finite, lse.double(), 0.0) * t["dlse"].double()).sum()
    return loss


def dense_grads(c: Case, t: dict, caps: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Gradients of the dense reference computed in ``dtype`` (fp64: the golden values)."""
    var = VARIANTS[c.variant]
    # copies (never the master tensors: their .grad would be shared between runs)
    leaves = {n: t[n].to(dtype, copy=True).requires_grad_() for n in ("q", "k", "v")}
    cap_leaves = {n: (x.to(dtype, copy=True).requires_grad_(n in var.learnable) if x.is_floating_point()
                      else x.long()) for n, x in caps.items()}
    scale = var.scale if var.scale is not None else 1.0 / math.sqrt(c.D)
    o, lse = dense_attention(leaves["q"], leaves["k"], leaves["v"], scale, var.score, var.mask, cap_leaves)
    _loss(o, lse, t, c.lse_grad).backward()
    out = {f"d{n}": x.grad for n, x in leaves.items()}
    out.update({f"grad of {n}": cap_leaves[n].grad for n in var.learnable})
    return out


def kernel_grads(c: Case, t: dict, caps: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """attncc's gradients (and the leaves, to inspect ``.grad`` of the others)."""
    var = VARIANTS[c.variant]
    dtype = DTYPES[c.dtype]
    leaves = {n: t[n].to(DEVICE, dtype, copy=True).requires_grad_() for n in ("q", "k", "v")}
    cap_leaves = {n: x.to(DEVICE, copy=True).requires_grad_(n in var.learnable) for n, x in caps.items()}
    o, lse = var.run(leaves["q"], leaves["k"], leaves["v"], cap_leaves, var.scale)
    assert o.dtype == dtype and lse.dtype == torch.float32
    _loss(o, lse, {n: x.to(DEVICE) for n, x in t.items()}, c.lse_grad).backward()
    out = {f"d{n}": x.grad for n, x in leaves.items()}
    out.update({f"grad of {n}": cap_leaves[n].grad for n in var.learnable})
    return out, cap_leaves


def assert_grad_close(label: str, got: torch.Tensor | None, golden: torch.Tensor, same: torch.Tensor,
                      dtype: torch.dtype) -> None:
    """Max |got - golden| <= 2 x max |same - golden| + floor (floor scaled by the gradient's size)."""
    assert got is not None, f"{label}: no gradient"
    assert got.shape == golden.shape, f"{label}: shape {tuple(got.shape)} != {tuple(golden.shape)}"
    got = got.cpu()
    nan = torch.isnan(got)
    assert not nan.any(), f"{label}: {int(nan.sum())} NaN value(s), first at {tuple(nan.nonzero()[0].tolist())}"
    assert torch.isfinite(golden).all(), f"{label}: golden gradient not finite (bad test)"
    err = (got.double() - golden).abs()
    torch_err = (same.double() - golden).abs().max().item()
    floor = FLOORS[dtype] * max(1.0, golden.abs().max().item())
    assert torch_err <= 0.05 * golden.abs().max().item() + floor, f"{label}: same-dtype reference is off (bad test)"
    bound = 2.0 * torch_err + floor
    if not err.max().item() <= bound:
        idx = tuple((err == err.max()).nonzero()[0].tolist())
        raise AssertionError(f"{label}: max err {err.max().item():.3g} > 2 x torch {torch_err:.3g} + {floor:.1e} "
                             f"(worst at {idx}: got {got[idx].item():.6g}, expected {golden[idx].item():.6g})")


@pytest.mark.parametrize("case", _cases())
def test_gradients_match_fp64_reference(case: Case) -> None:
    t, caps = make_inputs(case)
    dtype = DTYPES[case.dtype]
    golden = dense_grads(case, t, caps, torch.float64)
    same = dense_grads(case, t, caps, dtype)
    got, _ = kernel_grads(case, t, caps)
    assert set(got) == set(golden)
    for name in golden:
        assert_grad_close(f"{case.label}: {name}", got[name], golden[name], same[name], dtype)
        if name in ("dq", "dk", "dv"):
            assert got[name].dtype == dtype, f"{case.label}: {name} dtype {got[name].dtype}, expected {dtype}"


# --- special rows, captures without gradients, determinism ---------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fully_masked_rows_get_zero_gradients(dtype: str) -> None:
    """Queries that see no key (kv_lens[b] == 0, or query 0 of a strictly causal mask): zero dq, no NaN;
    keys beyond kv_lens[b] get zero dk and dv."""
    c = Case("cross_attention", dtype, M=33, N=50, B=3, H=1)
    t, caps = make_inputs(c)
    got, _ = kernel_grads(c, t, caps)
    assert torch.equal(got["dq"][1], torch.zeros_like(got["dq"][1])), "dq of rows with kv_lens 0 is not 0"
    n_valid = int(caps["kv_lens"][2])
    for name in ("dk", "dv"):
        g = got[name]
        assert not torch.isnan(g).any(), f"{name}: NaN"
        assert torch.equal(g[1], torch.zeros_like(g[1])), f"{name} of batch element with kv_lens 0 is not 0"
        assert torch.equal(g[2, :, n_valid:], torch.zeros_like(g[2, :, n_valid:])), f"{name} of masked keys is not 0"

    c = Case("flex_strict_causal", dtype, M=40, N=40)
    t, caps = make_inputs(c)
    got, _ = kernel_grads(c, t, caps)
    for name in ("dq", "dk", "dv"):
        assert not torch.isnan(got[name]).any(), f"strict causal: {name} has NaN"
    assert torch.equal(got["dq"][:, :, 0], torch.zeros_like(got["dq"][:, :, 0])), "dq of query 0 is not 0"
    assert torch.equal(got["dk"][:, :, -1], torch.zeros_like(got["dk"][:, :, -1])), "dk of the last key is not 0"


def test_captures_without_requires_grad_get_none() -> None:
    """Integer captures never get gradients; float captures that do not require grad keep .grad None."""
    c = Case("cross_attention", "fp32", M=20, N=30, B=3, H=1)
    t, caps = make_inputs(c)
    _, leaves = kernel_grads(c, t, caps)
    assert leaves["kv_lens"].grad is None
    fn = attncc.load("relative_bias")
    q, k, v = (torch.randn(1, 2, 24, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 17)
    fn(q, k, v, bias=bias, max_distance=8, config=SMALL_TILES).sum().backward()
    assert bias.grad is None and q.grad is not None and torch.isfinite(q.grad).all()


def test_backward_is_deterministic() -> None:
    """Two backward passes give bitwise-equal gradients, including the bias-table gradient."""
    c = Case("flex_table_twice", "fp32", M=48, N=48)
    t, caps = make_inputs(c)
    first, _ = kernel_grads(c, t, caps)
    second, _ = kernel_grads(c, t, caps)
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs between two identical backward passes"
    c = Case("relative_bias", "fp16", M=48, N=48, B=1)
    t, caps = make_inputs(c)
    first, _ = kernel_grads(c, t, caps)
    second, _ = kernel_grads(c, t, caps)
    for name in first:
        assert torch.equal(first[name], second[name]), f"fp16 {name} differs between two identical backward passes"


def test_directional_derivatives_match_finite_differences() -> None:
    """The autograd formula is the derivative of the forward: finite differences in fp32 agree on a tiny case."""
    fn = attncc.load("relative_bias")
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 5, 16, generator=gen, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 17, generator=gen, requires_grad=True)

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        o, lse = fn(q, k, v, bias=bias, max_distance=8, config=SMALL_TILES, return_lse=True)
        return o.sum() + 0.3 * lse.sum()

    loss = f(q, k, v, bias)
    grads = torch.autograd.grad(loss, (q, k, v, bias))
    eps = 1e-2
    for name, x, g in zip(("dq", "dk", "dv", "grad of bias"), (q, k, v, bias), grads, strict=True):
        direction = torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            up = f(*[(y + eps * direction) if y is x else y for y in (q, k, v, bias)])
            down = f(*[(y - eps * direction) if y is x else y for y in (q, k, v, bias)])
        numeric = ((up - down) / (2 * eps)).item()
        analytic = (g * direction).sum().item()
        assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), \
            f"{name}: directional derivative {analytic:.6g} vs finite difference {numeric:.6g}"
