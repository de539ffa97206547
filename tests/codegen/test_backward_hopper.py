"""The backward on Hopper: every product of dK/dV and dQ is a wgmma, loads are pipelined, the
probabilities are recomputed with exp2 and Delta = rowsum(dO * O) - dlse comes from a Triton kernel.

The ahead-of-time compiles run in the AOT worker subprocess (interpreter off, see
attncc.runtime.aot_spec), default configs; the preprocess kernel also runs in the interpreter.
"""

from __future__ import annotations

import re

import pytest
import torch

import attncc
from attncc.codegen.report import KernelReport
from attncc.runtime.aot_spec import report_many
from attncc.spec.loader import resolve

GRAD_KERNELS = ("attn_bwd_dkdv", "attn_bwd_dq")
PREPROCESS = "attn_bwd_preprocess"
# (spec, dtype, head dim): the causal spec everywhere, and specs whose score modification has a
# derivative (softcap) or reads a captured tensor (alibi), so the transposed hooks are compiled too.
SM90_CASES = [("causal", dt, hd) for dt in ("fp16", "bf16") for hd in (64, 128)] + [
    ("softcap", "fp16", 128), ("alibi", "bf16", 64)]
SM80_CASES = [("causal", "fp16", 128), ("softcap", "bf16", 64)]


def _key(r: KernelReport) -> tuple[str, str, str, int, str]:
    spec, rest = r.kernel.split(".", 1)
    kernel, dtype, head_dim = re.fullmatch(r"(\w+)\[(\w+),d(\d+)\]", rest).groups()
    return spec, r.target, dtype, int(head_dim), kernel


@pytest.fixture(scope="module")
def reports() -> dict[tuple[str, str, str, int, str], KernelReport]:
    jobs = [(resolve(name), target, dt, hd, None, None, ("bwd",))
            for target, cases in (("sm_90", SM90_CASES), ("sm_80", SM80_CASES)) for name, dt, hd in cases]
    out = {_key(r): r for r in report_many(jobs)}
    want = {(name, target, dt, hd, k) for target, cases in (("sm_90", SM90_CASES), ("sm_80", SM80_CASES))
            for name, dt, hd in cases for k in (PREPROCESS, *GRAD_KERNELS)}
    assert set(out) == want, f"reports differ from the expected kernels: {sorted(set(out) ^ want)}"
    return out


@pytest.mark.parametrize("kernel", [pytest.param(k, id=k) for k in GRAD_KERNELS])
@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c[0]}-{c[1]}-d{c[2]}") for c in SM90_CASES])
def test_sm90_products_run_on_wgmma_without_spills(reports: dict, case: tuple[str, str, int], kernel: str) -> None:
    r = reports[(case[0], "sm_90", case[1], case[2], kernel)]
    assert r.loop_hgmma is not None and r.loop_hgmma > 0, f"{r.kernel}: key loop HGMMA {r.loop_hgmma}"
    assert r.loop_hmma == 0 and r.hmma == 0, f"{r.kernel}: HMMA {r.hmma} (key loop {r.loop_hmma})"
    assert r.spills == 0 and r.fits, f"{r.kernel} {r.config}: {r.spills} spill bytes, smem {r.shared_bytes}"
    assert r.config["num_stages"] > 1, f"{r.kernel}: num_stages {r.config['num_stages']} (loads not pipelined)"
    assert min(r.config["BLOCK_M"], r.config["BLOCK_N"]) >= 64, f"{r.kernel}: tiles {r.config} below a warpgroup's 64 rows"


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c[0]}-{c[1]}-d{c[2]}") for c in SM80_CASES])
def test_sm80_compiles_on_mma_sync_without_spills(reports: dict, case: tuple[str, str, int]) -> None:
    for kernel in GRAD_KERNELS:
        r = reports[(case[0], "sm_80", case[1], case[2], kernel)]
        assert r.hgmma == 0 and r.loop_hmma > 0, f"{r.kernel}: HGMMA {r.hgmma}, key loop HMMA {r.loop_hmma}"
        assert r.spills == 0 and r.fits, f"{r.kernel} {r.config}: {r.spills} spill bytes, smem {r.shared_bytes}"


def test_preprocess_compiles_for_both_targets(reports: dict) -> None:
    for key, r in reports.items():
        if key[-1] == PREPROCESS:
            assert r.spills == 0 and r.registers > 0, f"{r.kernel} on {r.target}: {r.spills} spill bytes"
            assert (r.hgmma, r.hmma) == (0, 0), f"{r.kernel}: tensor-core instructions {r.hgmma}/{r.hmma}"


# --- the printed kernels: exp2, the folded scale --------------------------------------------------

def _backward_text(name: str) -> str:
    src = attncc.load(name).generated.source
    return src[src.index("def _bwd_scores("):src.index("def attn_bwd_dkdv(")]


def test_identity_modification_folds_scale_and_log2e() -> None:
    text = _backward_text("causal")
    assert text.count("sm = qk * (sm_scale * 1.4426950408889634)") == 2, "both orientations fold the scale"
    assert "tl.exp2(sm - lse2[:, None])" in text and "tl.exp2(sm - lse2[None, :])" in text
    assert "tl.exp(" not in text, "a natural exp left in the backward"


def test_modified_score_is_rescaled_after_the_modification() -> None:
    text = _backward_text("softcap")
    assert "s = qk * sm_scale" in text and "score_mod(s, " in text and "score_mod_t(s, " in text
    assert ") * 1.4426950408889634" in text and "sm_scale * 1.4426950408889634" not in text
    assert "tl.exp(" not in text, "a natural exp left in the backward"


# --- the preprocess kernel in the interpreter -----------------------------------------------------

@pytest.mark.parametrize("with_dlse", [pytest.param(False, id="no-dlse"), pytest.param(True, id="dlse")])
@pytest.mark.parametrize(("M", "E"), [pytest.param(1, 16, id="M1-E16"), pytest.param(63, 24, id="M63-E24"),
                                      pytest.param(77, 64, id="M77-E64")])
def test_preprocess_computes_rowsum_minus_dlse(M: int, E: int, with_dlse: bool) -> None:
    module = attncc.load("causal").module
    B, H = 2, 3
    o, do = torch.randn(B, H, M, E), torch.randn(B, H, M, E)
    dlse = torch.randn(B, H, M) if with_dlse else torch.zeros(B, H, M)
    delta = torch.full((B, H, M), float("nan"))
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    common = {**module.kernel_constexprs(16, E, cfg, o.dtype), **module.launch_options(cfg)}
    module.attn_bwd_preprocess[(-(-M // 16), B * H)](o, do, dlse, delta, B, H, M, **common)
    golden = (o.double() * do.double()).sum(-1) - dlse.double()
    same = (o * do).sum(-1) - dlse
    assert not torch.isnan(delta).any(), f"delta: {int(torch.isnan(delta).sum())} unwritten value(s)"
    err = (delta.double() - golden).abs().max().item()
    bound = 2 * (same.double() - golden).abs().max().item() + 1e-6 * max(1.0, golden.abs().max().item())
    assert err <= bound, f"delta: max err {err:.3g} > {bound:.3g}"


def test_backward_rejects_a_misshaped_dlse() -> None:
    module = attncc.load("causal").module
    q = torch.randn(1, 2, 5, 16)
    o, lse = module.attention_forward(q, q, q)
    with pytest.raises(ValueError, match=r"dlse must be \[B, H, M\] = \(1, 2, 5\)"):
        module.attention_backward(q, q, q, o, lse, torch.randn_like(o), dlse=torch.zeros(1, 2, 4))


# --- gradients with 64-row tiles: two 32-wide steps per tile, transposed hooks ----------------------

def _alibi_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """Causal ALiBi attention in plain torch: softmax(q k^T / sqrt(D) - slope_h (m - n), n <= m) v."""
    M, N = q.shape[2], k.shape[2]
    m, n = torch.arange(M).view(M, 1), torch.arange(N).view(1, N)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 - slopes.view(1, -1, 1, 1) * (m - n)
    return torch.softmax(s.masked_fill(n > m, float("-inf")), dim=-1) @ v


def _alibi_grads(t: dict[str, torch.Tensor], dtype: torch.dtype, kernel: bool) -> dict[str, torch.Tensor]:
    leaves = {name: x.to(dtype, copy=True).requires_grad_() for name, x in t.items() if name != "do"}
    if kernel:
        tiles = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
        o = attncc.load("alibi")(leaves["q"], leaves["k"], leaves["v"], slopes=leaves["slopes"], config=tiles)
    else:
        o = _alibi_dense(leaves["q"], leaves["k"], leaves["v"], leaves["slopes"])
    (o.double() * t["do"].double()).sum().backward()
    return {f"d{name}": x.grad for name, x in leaves.items()}


@pytest.mark.parametrize("length", [pytest.param(77, id="L77"), pytest.param(63, id="L63")])
def test_gradients_with_two_steps_per_tile(length: int) -> None:
    """alibi reads m and n asymmetrically, so a transposed hook printed the wrong way round fails."""
    gen = torch.Generator().manual_seed(length)
    t = {name: torch.randn(1, 2, length, 16, generator=gen) for name in ("q", "k", "v", "do")}
    t["slopes"] = 0.05 + 0.5 * torch.rand(2, generator=gen)
    got = _alibi_grads(t, torch.float32, kernel=True)
    golden = _alibi_grads(t, torch.float64, kernel=False)
    same = _alibi_grads(t, torch.float32, kernel=False)
    for name, want in golden.items():
        assert not torch.isnan(got[name]).any(), f"{name}: NaN in the kernel's gradient"
        err = (got[name].double() - want).abs().max().item()
        bound = 2 * (same[name].double() - want).abs().max().item() + 2e-5 * max(1.0, want.abs().max().item())
        assert err <= bound, f"{name}: max err {err:.3g} > {bound:.3g}"
