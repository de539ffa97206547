"""The forward kernels on Hopper (issue 12): the unmasked key loop's SASS cost, the folded scale,
mask-free tiles without bounds checks, and the tensor-descriptor (TMA) path.

The SASS figures come from ahead-of-time compiles for sm_90 (one subprocess without Triton's
interpreter, see attncc.runtime.aot_spec); the rest runs in the interpreter with tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
from reference import assert_close_to_golden, reference

import attncc
from attncc.codegen import launch
from attncc.codegen.report import KernelReport
from attncc.compiler import lower
from attncc.passes.lowered import score_fold
from attncc.runtime.aot_spec import report_many
from attncc.spec.loader import resolve

MAX_COLUMN_COST = 36  # SASS instructions per key column of a 128-query tile, unmasked loop
FULL, MASKED = 1, 16  # tile log weights
TUTORIAL_TILE = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}


def column_cost(r: KernelReport) -> float:
    """The issue's metric: loop instructions x num_warps / BLOCK_N x 128 / BLOCK_M."""
    assert r.loop_instructions is not None, f"{r.kernel}: no key loop found in the SASS"
    c = r.config
    return r.loop_instructions * c["num_warps"] / c["BLOCK_N"] * 128 / c["BLOCK_M"]


@pytest.fixture(scope="module")
def sm90_reports() -> dict[str, KernelReport]:
    """attn_fwd of causal on sm_90: default configs (fp16/bf16, d64/d128), and the tutorial's tile at d128."""
    jobs = [(resolve("causal"), "sm_90", dt, hd, None, None, ("fwd",)) for dt in ("fp16", "bf16") for hd in (64, 128)]
    jobs.append((resolve("causal"), "sm_90", "fp16", 128, None, TUTORIAL_TILE, ("fwd",)))
    names = [f"{dt} d{hd}" for dt in ("fp16", "bf16") for hd in (64, 128)] + ["tutorial tile fp16 d128"]
    reports = [r for r in report_many(jobs) if ".attn_fwd[" in r.kernel]
    assert len(reports) == len(names), f"{len(reports)} attn_fwd reports for {len(names)} jobs"
    return dict(zip(names, reports, strict=True))


@pytest.mark.parametrize("case", [pytest.param(f"{dt} d{hd}", id=f"{dt}-d{hd}")
                                  for dt in ("fp16", "bf16") for hd in (64, 128)])
def test_default_forward_loop_cost_on_sm90(sm90_reports: dict[str, KernelReport], case: str) -> None:
    r = sm90_reports[case]
    cost = column_cost(r)
    assert cost <= MAX_COLUMN_COST, f"causal attn_fwd {case} {r.config}: {cost:.1f} instructions per key column"
    assert r.spills == 0, f"causal attn_fwd {case} {r.config}: {r.spills} spill bytes"
    assert r.config.get("USE_TMA") is True, f"causal attn_fwd {case}: sm_90 compiled without tensor descriptors"
    assert r.loop_hgmma, f"causal attn_fwd {case}: no wgmma in the key loop"


def test_tutorial_tile_does_not_spill_on_sm90(sm90_reports: dict[str, KernelReport]) -> None:
    r = sm90_reports["tutorial tile fp16 d128"]
    assert r.spills == 0, f"causal attn_fwd 128x128, 8 warps, d128: {r.spills} spill bytes ({r.registers} registers)"


# --- the fold -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "kind"), [
    pytest.param("causal", "identity", id="causal"), pytest.param("alibi", "linear", id="alibi"),
    pytest.param("temperature", "linear", id="temperature"), pytest.param("relative_bias", "linear", id="relbias"),
    pytest.param("softcap", "none", id="softcap"),
])
def test_lowered_ir_says_whether_the_scale_folds(spec: str, kind: str) -> None:
    low = lower(resolve(spec))
    assert low.fold.kind == kind, f"{spec}: fold {low.fold}"


def test_fold_linearity_is_decided_symbolically() -> None:
    import sympy as sp

    from attncc.ir import expr as E
    s, m, n = E.score, E.m, E.n
    assert score_fold(2 * s + m - n).kind == "linear" and score_fold(2 * s + m - n).slope == 2
    assert score_fold(s * s).kind == "none", "degree 2 in the score"
    assert score_fold(sp.tanh(s)).kind == "none"
    assert score_fold(sp.Max(s, 0)).kind == "none", "piecewise in the score"
    assert score_fold(m - n + 0 * s).kind == "none", "no score: nothing to fold"


@pytest.mark.parametrize(("spec", "folded"), [
    pytest.param("causal", True, id="causal"), pytest.param("alibi", True, id="alibi"),
    pytest.param("softcap", False, id="softcap"),
])
def test_fold_in_the_generated_forward(spec: str, folded: bool) -> None:
    fn = attncc.load(spec)
    fwd = fn.source.split("DEFAULT_CONFIGS = ")[0]  # the forward kernels (the backward template follows)
    decode = fn.generated_of_kind("decode").source
    for label, text in (("prefill", fwd), ("decode", decode)):
        one_multiply = "* 1.4426950408889634" in text.split("qk_scale = ")[1].split("\n")[0]
        assert one_multiply == folded, f"{spec} {label}: qk_scale folds log2(e): {one_multiply}"
        natural = "input_precision=DOT_PRECISION) * sm_scale" in text
        assert natural != folded, f"{spec} {label}: the q.k tile is multiplied by sm_scale alone: {natural}"
        assert ("exp2(s * 1.4426950408889634" in text) != folded, f"{spec} {label}: per-score log2(e) multiply"
    if spec == "alibi":
        assert "def score_mod_log2(" in fwd and "s = score_mod_log2(" in fwd, "alibi: linear mod not in log2 units"


# --- interpreter: bounds, the fold's edge cases, TMA ------------------------------------------------

def _qkv(M: int, N: int, D: int = 16, H: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, H, L, D, generator=g) for L in (M, N, N))


def _check(spec: str, out: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor,
           v: torch.Tensor, label: str, scale: float | None = None) -> None:
    golden = reference(spec, q, k, v, scale=scale)
    same = reference(spec, q, k, v, scale=scale, compute_dtype=q.dtype)
    for i, what in enumerate(("output", "lse")):
        assert_close_to_golden(f"{spec} {label}: {what}", out[i], golden[i], same[i])


@pytest.mark.parametrize(("spec", "M", "N"), [
    pytest.param("full", 77, 77, id="full-77"), pytest.param("full", 63, 501, id="full-63x501"),
    pytest.param("causal", 77, 77, id="causal-77"), pytest.param("full", 1, 1, id="full-1"),
])
def test_mask_free_tiles_lie_inside_the_sequence(spec: str, M: int, N: int) -> None:
    """Every tile a kernel runs without bounds checks ends at or before N; the output is right."""
    mod = attncc.load(spec).module
    cfg = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    q, k, v = _qkv(M, N)
    log = torch.zeros(mod.tile_log_shape("attn_fwd", 1, 2, M, N, cfg), dtype=torch.int32)
    out = mod.attention_forward(q, k, v, config=cfg, tile_log=log)
    ends = (torch.arange(log.shape[-1]) + 1) * cfg["BLOCK_N"]
    past = (log == FULL) & (ends > N)
    assert not past.any(), f"{spec} M={M} N={N}: mask-free tiles past N at {past.nonzero()[:5].tolist()}"
    if N >= cfg["BLOCK_N"]:
        assert (log == FULL).any(), f"{spec} M={M} N={N}: no mask-free tile (the check saw nothing)"
    _check(spec, out, q, k, v, f"M={M} N={N}")


@pytest.mark.parametrize("scale", [pytest.param(-0.3, id="negative"), pytest.param(0.0, id="zero"),
                                   pytest.param(2.5, id="large")])
def test_folded_scale_of_any_sign(scale: float) -> None:
    """The fold makes qk_scale positive (the sign moves into q): negative and zero scales still match."""
    q, k, v = _qkv(40, 40)
    out = attncc.load("causal").module.attention_forward(q, k, v, scale=scale,
                                                        config={"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2,
                                                                "num_stages": 1})
    _check("causal", out, q, k, v, f"scale={scale}", scale=scale)


def test_use_tma_is_chosen_by_device_and_layout() -> None:
    q, k, v = _qkv(8, 8, D=64)
    assert not launch.use_tma({}, (k, v), interpreted=True), "the interpreter takes TMA only when asked"
    assert launch.use_tma({"USE_TMA": 1}, (k, v), interpreted=True), "asked for, with 16-byte rows"
    assert not launch.use_tma({"USE_TMA": 0}, (k, v), interpreted=True)
    assert not launch.use_tma({}, (k, v), interpreted=False), "a CPU tensor has no TMA"
    odd = torch.randn(1, 2, 8, 63)
    assert not launch.use_tma({"USE_TMA": 1}, (odd, odd), interpreted=True), "63 fp32 per row: not 16-byte rows"


@pytest.mark.parametrize(("spec", "M", "N"), [pytest.param("causal", 77, 77, id="causal-77"),
                                              pytest.param("full", 63, 501, id="full-63x501")])
def test_tensor_descriptor_path_matches_the_reference(spec: str, M: int, N: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The USE_TMA kernel (run in the interpreter, which implements tensor descriptors)."""
    mod = attncc.load(spec).module
    q, k, v = _qkv(M, N, D=32)
    cfg = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1, "USE_TMA": 1}
    seen: list[bool] = []
    real = mod.use_tma

    def recorded(config: dict, tensors: tuple, interpreted: bool) -> bool:
        seen.append(real(config, tensors, interpreted))
        return seen[-1]

    monkeypatch.setattr(mod, "use_tma", recorded)
    out = mod.attention_forward(q, k, v, config=cfg)
    assert seen == [True], f"{spec}: the launch did not take the descriptor path ({seen})"
    _check(spec, out, q, k, v, f"USE_TMA M={M} N={N}")
