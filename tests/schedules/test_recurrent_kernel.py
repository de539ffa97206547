"""The fused recurrent (decode-step) kernel of linear recurrences, rendered from its template.

The template is filled with :func:`attncc.codegen.context.fill_hooks` (identity and elu+1 feature
maps), written to a temporary directory and imported; ``recurrent_step`` is compared with the
naive step-by-step recurrence of ``tests/recurrence_reference.py`` in fp64, by the 2x same-dtype
rule of ``tests/reference.py``. The ahead-of-time compile for sm_90 runs in a subprocess with
Triton's interpreter off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import scan_templates
import torch
from recurrence_reference import FEATURES, naive_recurrence
from reference import assert_close_to_golden

import attncc

TEMPLATE = Path(attncc.__file__).parent / "schedules" / "recurrent" / "templates" / "recurrent.py.tmpl"

FEATURE_TEXT = {
    "identity": ("@triton.jit\ndef feature(x):\n    return x\n\n\n"
                 "@triton.jit\ndef feature_grad(x):\n    return x * 0.0 + 1.0\n"),
    "elu1": ("@triton.jit\ndef feature(x):\n    return tl.where(x > 0, x + 1.0, tl.exp(x))\n\n\n"
             "@triton.jit\ndef feature_grad(x):\n    return tl.where(x > 0, 1.0, tl.exp(x))\n"),
}

# The configs the tests render with (head-dim bound -> config); also checked for spills below.
STEP_DEFAULTS = {"step": {
    64: {"BLOCK_K": 64, "BLOCK_V": 32, "num_warps": 2, "num_stages": 1},
    128: {"BLOCK_K": 128, "BLOCK_V": 32, "num_warps": 4, "num_stages": 1},
    256: {"BLOCK_K": 256, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
}}


def render(feature: str) -> str:
    """Module text of the template for one feature map."""
    return scan_templates.render(TEMPLATE, f"Recurrent step kernel, feature {feature} (test rendering).",
                                 FEATURE_TEXT[feature], STEP_DEFAULTS)


def write_module(directory: Path, feature: str) -> Path:
    path = directory / f"recurrent_{feature}.py"
    path.write_text(render(feature))
    return path


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    directory = tmp_path_factory.mktemp("recurrent")
    return {f: scan_templates.import_rendered(render(f), directory / f"recurrent_{f}.py") for f in FEATURE_TEXT}


# --- inputs and reference ---------------------------------------------------------------------------


def make_inputs(B: int, H: int, T: int, K: int, V: int, gate: str, with_state: bool,
                dtype: torch.dtype = torch.float32) -> dict:
    """q, k, v, a decaying log-gate (-softplus(randn) / 2) and an initial state (fp32)."""
    q, k = torch.randn(B, H, T, K).to(dtype), torch.randn(B, H, T, K).to(dtype)
    v = torch.randn(B, H, T, V).to(dtype)
    shape = {"none": None, "scalar": (B, H, T), "vector": (B, H, T, K)}[gate]
    g = None if shape is None else (-torch.nn.functional.softplus(torch.randn(shape)) / 2).to(dtype)
    state = torch.randn(B, H, K, V) if with_state else None
    return {"q": q, "k": k, "v": v, "g": g, "state": state}


def naive(x: dict, feature: str, reverse: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference recurrence computed in ``dtype``."""
    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)
    K = x["q"].shape[-1]
    return naive_recurrence(cast(x["q"]), cast(x["k"]), cast(x["v"]), cast(x["g"]), scale=K ** -0.5,
                            feature=FEATURES[feature], initial_state=cast(x["state"]), reverse=reverse)


def run_step(mod: ModuleType, x: dict, gate: str, reverse: bool = False,
             config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    K = x["q"].shape[-1]
    return mod.recurrent_step(x["q"], x["k"], x["v"], x["g"], x["state"], scale=K ** -0.5, gate=gate,
                              config=config, reverse=reverse)


def check_case(label: str, mod: ModuleType, x: dict, gate: str, feature: str, reverse: bool = False,
               config: dict | None = None) -> None:
    dtype = x["q"].dtype
    o, state = run_step(mod, x, gate, reverse, config)
    B, H, T, K = x["q"].shape
    V = x["v"].shape[-1]
    assert o.dtype == dtype and o.shape == (B, H, T, V), f"{label}: output {o.dtype} {tuple(o.shape)}"
    assert state.dtype == torch.float32 and state.shape == (B, H, K, V), f"{label}: state {state.dtype}"
    golden, same = naive(x, feature, reverse, torch.float64), naive(x, feature, reverse, dtype)
    assert_close_to_golden(f"{label}: output", o, golden[0], same[0], input_dtype=dtype)
    assert_close_to_golden(f"{label}: final state", state, golden[1], same[1], input_dtype=dtype)


# --- accuracy -----------------------------------------------------------------------------------------


def _case(gate: str, T: int, with_state: bool, K: int = 16, V: int = 16, feature: str = "identity",
          reverse: bool = False, dtype: torch.dtype = torch.float32, config: dict | None = None,
          tag: str = "") -> pytest.ParameterSet:
    name = f"{gate}-T{T}-K{K}V{V}-{feature}{'-state' if with_state else ''}{'-rev' if reverse else ''}"
    name += "" if dtype == torch.float32 else f"-{str(dtype).split('.')[-1]}"
    return pytest.param(gate, T, with_state, K, V, feature, reverse, dtype, config, id=name + tag)


GATES = ("none", "scalar", "vector")
CASES = [
    *[_case(g, T, s) for g in GATES for T in (1, 3, 17) for s in (False, True)],
    *[_case(g, T, True, feature="elu1", reverse=True) for g in GATES for T in (3, 17)],
    *[_case(g, 17, s, K, V, "elu1") for g in ("scalar", "vector") for s in (False, True)
      for K, V in ((32, 32), (16, 32), (32, 16))],
    *[_case(g, 5, True, 24, 40, "elu1") for g in GATES],  # head dims below their padded blocks
    # key and value dims split over programs: partial outputs summed on the host
    *[_case(g, 17, True, 32, 32, "elu1", config={"BLOCK_K": 16, "BLOCK_V": 16}, tag="-split")
      for g in GATES],
    _case("vector", 17, True, 32, 32, "elu1", dtype=torch.float16),
    _case("scalar", 3, True, 16, 32, "identity", reverse=True, dtype=torch.bfloat16),
]


@pytest.mark.parametrize(("gate", "T", "with_state", "K", "V", "feature", "reverse", "dtype", "config"), CASES)
def test_step_matches_naive_recurrence(modules: dict, gate: str, T: int, with_state: bool, K: int, V: int,
                                       feature: str, reverse: bool, dtype: torch.dtype,
                                       config: dict | None) -> None:
    x = make_inputs(2, 2, T, K, V, gate, with_state, dtype)
    label = f"{gate} gate T={T} K={K} V={V} {feature}{' reverse' if reverse else ''} {dtype}"
    check_case(label, modules[feature], x, gate, feature, reverse, config)


def test_strided_inputs(modules: dict) -> None:
    """q, k, v, g as views of [B, T, H, dim] tensors (token-major layouts)."""
    B, H, T, K, V = 2, 3, 5, 16, 32
    q, k = (torch.randn(B, T, H, K).transpose(1, 2) for _ in range(2))
    v = torch.randn(B, T, H, V).transpose(1, 2)
    g = (-torch.nn.functional.softplus(torch.randn(B, T, H, K)) / 2).transpose(1, 2)
    x = {"q": q, "k": k, "v": v, "g": g, "state": torch.randn(B, H, K, V)}
    assert not q.is_contiguous()
    check_case("strided vector gate", modules["elu1"], x, "vector", "elu1")
    gs = (-torch.nn.functional.softplus(torch.randn(B, T, H)) / 2).transpose(1, 2)
    check_case("strided scalar gate", modules["elu1"], {**x, "g": gs}, "scalar", "elu1")


@pytest.mark.parametrize("reverse", [pytest.param(False, id="forward"), pytest.param(True, id="reverse")])
@pytest.mark.parametrize("gate", [pytest.param(g, id=g) for g in GATES])
def test_steps_equal_one_pass(modules: dict, gate: str, reverse: bool) -> None:
    """T calls with one token each, chained through the state, equal one call with T tokens."""
    T, K, V = 6, 16, 32
    x = make_inputs(1, 2, T, K, V, gate, True)
    mod = modules["elu1"]
    o_all, s_all = run_step(mod, x, gate, reverse)
    state, outs = x["state"], [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        one = {n: None if x[n] is None else x[n][:, :, t:t + 1] for n in ("q", "k", "v", "g")}
        outs[t], state = run_step(mod, {**one, "state": state}, gate, reverse)
    torch.testing.assert_close(torch.cat(outs, 2), o_all, rtol=1e-6, atol=1e-6, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(state, s_all, rtol=1e-6, atol=1e-6, msg=lambda m: f"final state: {m}")


def test_state_is_not_modified_and_defaults(modules: dict) -> None:
    """The input state is read only; the new state is a new tensor; scale None means K ** -0.5."""
    x = make_inputs(1, 2, 1, 16, 16, "scalar", True)
    before = x["state"].clone()
    mod = modules["identity"]
    o, s1 = mod.recurrent_step(x["q"], x["k"], x["v"], x["g"], x["state"], scale=None, gate="scalar")
    assert torch.equal(x["state"], before), "input state was modified"
    assert s1.data_ptr() != x["state"].data_ptr(), "new state aliases the input state"
    o2, _ = run_step(mod, x, "scalar")
    assert torch.equal(o, o2), "scale=None differs from K ** -0.5"


def test_zero_tokens_return_the_state(modules: dict) -> None:
    x = make_inputs(2, 2, 0, 16, 32, "vector", True)
    o, s1 = run_step(modules["identity"], x, "vector")
    assert o.shape == (2, 2, 0, 32)
    assert torch.equal(s1, x["state"]) and s1.data_ptr() != x["state"].data_ptr()
    o, s1 = run_step(modules["identity"], {**x, "state": None}, "vector")
    assert torch.equal(s1, torch.zeros(2, 2, 16, 32)), "T=0 without a state: zeros"


# --- bad input ----------------------------------------------------------------------------------------


def _bad(x: dict, **changes: object) -> dict:
    return {**x, **changes}


BAD = [
    pytest.param({"state": torch.zeros(1, 2, 16, 8)}, "scalar", r"state shape \(1, 2, 16, 8\) != \[B, H, K, V\]",
                 id="state-shape"),
    pytest.param({"g": torch.zeros(1, 2, 3, 16)}, "scalar", "g has rank 4 .* a scalar gate needs rank 3",
                 id="gate-rank-scalar"),
    pytest.param({"g": torch.zeros(1, 2, 3)}, "vector", "g has rank 3 .* a vector gate needs rank 4",
                 id="gate-rank-vector"),
    pytest.param({"g": torch.zeros(1, 2, 4)}, "scalar", r"g shape \(1, 2, 4\) != \[1, 2, 3\]", id="gate-length"),
    pytest.param({}, "none", "g must be None when gate is 'none'", id="gate-none-with-g"),
    pytest.param({"g": None}, "scalar", "g must be a tensor", id="gate-missing"),
    pytest.param({}, "decay", "gate 'decay' must be one of", id="gate-kind"),
    pytest.param({"k": torch.zeros(1, 2, 3, 8)}, "scalar", r"k shape \(1, 2, 3, 8\) != q shape", id="k-shape"),
    pytest.param({"v": torch.zeros(1, 2, 4, 16)}, "scalar", "v shape .* does not match q", id="v-length"),
    pytest.param({"v": torch.zeros(1, 2, 3, 16, dtype=torch.float16)}, "scalar", "q/k/v dtypes differ",
                 id="v-dtype"),
    pytest.param({"q": torch.zeros(2, 3, 16)}, "scalar", "q must be 4-D", id="q-rank"),
]


@pytest.mark.parametrize(("changes", "gate", "match"), BAD)
def test_bad_input_one_line(modules: dict, changes: dict, gate: str, match: str) -> None:
    x = _bad(make_inputs(1, 2, 3, 16, 16, "scalar", True), **changes)
    with pytest.raises(ValueError, match=match) as err:
        run_step(modules["identity"], x, gate)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("config", "match"), [
    pytest.param({"BLOCK_M": 16}, "config key 'BLOCK_M' unknown", id="unknown-key"),
    pytest.param({"BLOCK_V": 24}, r"config BLOCK_V=24 not one of", id="bad-block"),
    pytest.param({"num_warps": 3}, r"config num_warps=3 not one of", id="bad-warps"),
])
def test_bad_config_one_line(modules: dict, config: dict, match: str) -> None:
    x = make_inputs(1, 1, 1, 16, 16, "none", False)
    with pytest.raises(ValueError, match=match) as err:
        run_step(modules["identity"], x, "none", config=config)
    assert "\n" not in str(err.value)


def test_config_caps_blocks_at_head_dims(modules: dict) -> None:
    mod = modules["identity"]
    assert mod.step_config(24, 40) == {"BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 2, "num_stages": 1}
    assert mod.step_config(8, 8, {"BLOCK_V": 64})["BLOCK_V"] == 16
    assert mod.step_config(512, 512) == STEP_DEFAULTS["step"][256]


# --- ahead-of-time compile -------------------------------------------------------------------------

AOT_SCRIPT = """
import importlib.util, json, os, sys
os.environ["TRITON_INTERPRET"] = "0"
import torch
from attncc.codegen.aot import compile_report
spec = importlib.util.spec_from_file_location("recurrent_aot", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
out = []
for d in (64, 128):
    for gate in ("vector", "scalar"):
        sig, consts, cfg = mod.kernel_signature(torch.float16, d, d, gate=gate)
        divisible = [n for n, t in sig.items() if t.startswith("*") or n.startswith("stride_")]
        r = compile_report(mod.recurrent_step_kernel, sig, consts, "sm_90", cfg["num_warps"], cfg["num_stages"],
                           kernel_name=f"recurrent_step[{gate},d{d}]", divisible_by_16=divisible)
        out.append([r.kernel, r.registers, r.spill_store_bytes, r.spill_load_bytes])
print(json.dumps(out))
"""


def test_aot_sm90_fp16_no_spills(tmp_path: Path) -> None:
    """K = V = 64 and 128, fp16, default configs, scalar and vector gates: compiled for sm_90 with no spills."""
    path = write_module(tmp_path, "elu1")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    print(reports)
    assert len(reports) == 4, reports
    spilling = [r for r in reports if r[2] or r[3]]
    assert not spilling, f"recurrent step kernels spill (kernel, registers, store, load bytes): {spilling}"
