"""The GPU benchmark scripts import, parse their options and count bytes on a machine without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_decode_bandwidth_help_exits_0() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "decode_bandwidth.py"), "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--contexts" in proc.stdout and "--peak-gbps" in proc.stdout, proc.stdout


@pytest.mark.parametrize("value", [pytest.param("4096,x", id="not-int"), pytest.param("0", id="zero")])
def test_decode_bandwidth_rejects_bad_contexts(value: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "decode_bandwidth.py"), "--contexts", value],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--contexts" in proc.stderr, proc.stderr


def test_decode_bandwidth_defaults_and_byte_count() -> None:
    mod = _load("decode_bandwidth")
    args = mod.parse_args([])
    assert args.contexts == [4096, 32768, 131072, 524288] and args.batches == [1, 16], args
    assert (args.hq, args.hkv, args.head_dim, args.query_len, args.peak_gbps) == (32, 4, 128, 1, 4800.0), args
    # the skewed batch: every cached position of K and V once, bf16
    assert mod.kv_bytes([128, 128, 128, 32768], 4, 128) == (3 * 128 + 32768) * 4 * 128 * 2 * 2


def test_recurrence_throughput_parses_and_refuses_without_a_gpu() -> None:
    script = str(BENCH / "recurrence_throughput.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "--lengths" in proc.stdout, proc.stderr
    bad = subprocess.run([sys.executable, script, "--lengths", "1k"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "comma-separated integers" in bad.stderr, bad.stderr


# --- attention_tflops.py: the parts that run without a GPU ---------------------------------------


@pytest.fixture(scope="module")
def tflops() -> ModuleType:
    return _load("attention_tflops")


def test_attention_tflops_defaults_and_grid(tflops: ModuleType) -> None:
    args = tflops.parse_args(["--masks", "causal,document", "--gqa", "1,8,3", "--head-dims", "64,256",
                              "--lengths", "1024,16384", "--modes", "fwd"])
    cases = tflops.shape_grid(args)
    # H = 2048 / D: 32 heads at d64 (gqa 1 and 8; 3 does not divide), 8 heads at d256 (gqa 1 and 8)
    assert len(cases) == 2 * 2 * 2 * 2, [c.label for c in cases]
    for c in cases:
        assert c.B * c.L == tflops.TOKENS and c.H * c.D == tflops.HEAD_PRODUCT and c.H % c.HK == 0, c
    assert {c.H // c.HK for c in cases} == {1, 8}, "a GQA ratio that does not divide H was kept"
    defaults = tflops.parse_args([])
    assert (defaults.modes, defaults.dtypes, defaults.head_dims, defaults.masks) == (
        ["fwd", "fwdbwd"], ["bf16"], [64, 128], ["full", "causal"]), defaults
    assert defaults.impls == ["attncc", "sdpa_flash", "sdpa_cudnn", "flex"] and defaults.json is None, defaults


@pytest.mark.parametrize("argv", [pytest.param(["--head-dims", "96"], id="head-dim-96"),
                                  pytest.param(["--masks", "causal,diagonal"], id="unknown-mask"),
                                  pytest.param(["--lengths", "1k"], id="lengths-not-int")])
def test_attention_tflops_rejects_bad_arguments(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "attention_tflops.py"), *argv], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2 and argv[0] in proc.stderr, proc.stderr


@pytest.mark.parametrize("mask", [pytest.param(m, id=m) for m in ("full", "causal", "document", "sliding_window",
                                                                    "block_sparse")])
@pytest.mark.parametrize("L", [pytest.param(1, id="L1"), pytest.param(501, id="L501"),
                               pytest.param(1100, id="L1100")])
def test_attention_tflops_density_matches_the_dense_mask(tflops: ModuleType, mask: str, L: int) -> None:
    """The FLOP count's mask density (closed form) against the mask_mod evaluated densely on CPU."""
    case = tflops.Case(mask, "fwd", "bf16", 64, L, 1, 1, 1)
    mod = tflops.mask_mod(case, "cpu")
    m, n = torch.arange(L)[:, None], torch.arange(L)[None, :]
    dense = torch.ones(L, L, dtype=torch.bool) if mod is None else mod(0, 0, m, n).expand(L, L)
    assert tflops.density(case) == pytest.approx(dense.double().mean().item(), rel=1e-12), f"{mask} L={L}"
    fwdbwd = tflops.Case(mask, "fwdbwd", "bf16", 64, L, 1, 1, 1)
    assert tflops.flops(fwdbwd) == pytest.approx(3.5 * tflops.flops(case)), "fwd+bwd FLOPs are not 3.5x"


def test_attention_tflops_documents_cover_the_sequence(tflops: ModuleType) -> None:
    for L in (1, 7, 63, 16384):
        lengths = tflops.document_lengths(L)
        assert sum(lengths) == L and min(lengths) >= 1 and len(lengths) == min(tflops.DOCUMENTS, L), (L, lengths)


def test_attention_tflops_output_check(tflops: ModuleType) -> None:
    g = torch.Generator().manual_seed(0)
    o = torch.randn(2, 4, 77, 64, generator=g)
    noise = 1e-3 * torch.randn(o.shape, generator=g)
    results = {"sdpa_flash": {"o": o}, "flex": {"o": o + noise}, "attncc": {"o": o - noise},
               "wrong": {"o": o.flip(-1)}, "nan": {"o": o.masked_fill(o > 2, float("nan"))}}
    checks = tflops.check_outputs(results, "bf16")
    assert checks["attncc"]["ok"] and checks["flex"]["ok"] and checks["sdpa_flash"]["ok"], checks
    assert not checks["wrong"]["ok"] and not checks["nan"]["ok"], checks
    assert checks["attncc"]["reference"] == "sdpa_flash" and checks["nan"]["diff"]["o"] == float("inf"), checks
    missing = tflops.check_outputs({"flex": {"o": o, "dq": o}, "attncc": {"o": o}}, "fp16")
    assert not missing["attncc"]["ok"], "a missing gradient passed the check"


def test_attention_tflops_median_summary_and_json(tflops: ModuleType, tmp_path: Path) -> None:
    assert tflops.median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    rows = [{"case": "fwd L2048", "impl": "attncc", "mode": "fwd", "L": 2048, "tflops": 330.0},
            {"case": "fwd L2048", "impl": "sdpa_flash", "mode": "fwd", "L": 2048, "tflops": 300.0},
            {"case": "fwd L2048", "impl": "flex", "mode": "fwd", "L": 2048, "tflops": 310.0},
            {"case": "fwdbwd L1024", "impl": "attncc", "mode": "fwdbwd", "L": 1024, "tflops": 100.0},
            {"case": "fwdbwd L1024", "impl": "flex", "mode": "fwdbwd", "L": 1024, "tflops": 200.0}]
    fwd, bwd = tflops.summarize(rows)
    assert fwd["vs_sdpa_flash"] == pytest.approx(1.1) and fwd["vs_flex"] == pytest.approx(330 / 310), fwd
    assert fwd["vs_sdpa_cudnn"] is None and fwd["goal_met"] is False, "1.06x flex is under the 1.1x goal"
    assert bwd["vs_flex"] == pytest.approx(0.5) and bwd["goal_met"] is None, "goals apply from 2K on"
    path = tflops.write_json(tmp_path / "NVIDIA_H200" / "out.json",
                             {"rows": rows, "nan": float("nan"), "path": tmp_path})
    data = json.loads(path.read_text())
    assert data["nan"] is None and data["path"] == str(tmp_path) and data["rows"] == rows, data
    assert tflops.gpu_dir("NVIDIA H200") == "NVIDIA_H200"
