"""The chunkwise-parallel recurrence kernels (``attncc/schedules/chunkwise/templates/chunkwise.py.tmpl``),
rendered with hand-written hooks and checked against the naive step-by-step recurrence of
``tests/recurrence_reference.py`` in fp64 (outputs, final states and every gradient), with the
2x same-dtype rule.  Kernels run in Triton's interpreter; the ahead-of-time compile for sm_90 runs
in a subprocess with the interpreter off."""

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

TEMPLATE = (Path(__file__).resolve().parents[2] / "attncc" / "schedules" / "chunkwise" / "templates"
            / "chunkwise.py.tmpl")

# Feature maps as the renderer would print them: phi and its derivative, fp32 expressions of x.
KERNEL_FEATURES = {
    "identity": ("x", "x * 0.0 + 1.0"),
    "elu1": ("tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))", "tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))"),
}

# The recommended defaults: zero spills for every kernel and gate at K = V = 64 and 128 (fp16, sm_90).
CONFIGS = {"recurrence": {
    64: {"CHUNK": 64, "BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
    128: {"CHUNK": 64, "BLOCK_K": 32, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
    256: {"CHUNK": 16, "BLOCK_K": 64, "BLOCK_V": 32, "num_warps": 8, "num_stages": 1},
}}


def render(feature: str) -> str:
    phi, dphi = KERNEL_FEATURES[feature]
    text = (f"@triton.jit\ndef feature(x):\n    return {phi}\n\n\n"
            f"@triton.jit\ndef feature_grad(x):\n    return {dphi}\n")
    return scan_templates.render(TEMPLATE, f"Chunkwise recurrence kernels, feature {feature}.", text, CONFIGS)


def write_module(feature: str, directory: Path) -> Path:
    path = directory / f"chunkwise_{feature}.py"
    path.write_text(render(feature))
    return path


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    directory = tmp_path_factory.mktemp("chunkwise")
    return {name: scan_templates.import_rendered(render(name), directory / f"chunkwise_{name}.py")
            for name in KERNEL_FEATURES}


# --------------------------------------------------------------------------- problem and references


def make_problem(gate: str, B: int, H: int, T: int, K: int, V: int, dtype: torch.dtype,
                 with_h0: bool, gate_scale: float = 0.5) -> dict[str, torch.Tensor | None]:
    """fp64 inputs (rounded through ``dtype``): q, k, v, a decaying log-gate, an initial state."""
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64).to(dtype).double()

    g_shape = {"none": None, "scalar": (B, H, T), "vector": (B, H, T, K)}[gate]
    g = None if g_shape is None else (-torch.nn.functional.softplus(rnd(*g_shape)) * gate_scale).to(dtype).double()
    return {"q": rnd(B, H, T, K), "k": rnd(B, H, T, K), "v": rnd(B, H, T, V), "g": g,
            "h0": rnd(B, H, K, V) if with_h0 else None}


def reference(p: dict, feature: str, dtype: torch.dtype, scale: float, do: torch.Tensor,
              dfinal: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Output, final state and gradients of the naive recurrence computed in ``dtype``."""
    leaves = {n: p[n].to(dtype).requires_grad_() for n in ("q", "k", "v", "g", "h0") if p[n] is not None}
    o, s = naive_recurrence(leaves["q"], leaves["k"], leaves["v"], leaves.get("g"), scale=scale,
                            feature=FEATURES[feature], initial_state=leaves.get("h0"))
    loss = (o * do.to(dtype)).sum() + (0 if dfinal is None else (s * dfinal.to(dtype)).sum())
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out = {"o": o.detach(), "final": s.detach()}
    out.update({f"d{n}": gr for n, gr in zip(leaves, grads, strict=True)})
    return out


def run_kernels(m: ModuleType, p: dict, gate: str, dtype: torch.dtype, scale: float, do: torch.Tensor,
                dfinal: torch.Tensor | None, config: dict, cu_seqlens: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    def cast(x: torch.Tensor | None, to: torch.dtype = dtype) -> torch.Tensor | None:
        return None if x is None else x.to(to)

    q, k, v, g = (cast(p[n]) for n in ("q", "k", "v", "g"))
    h0 = cast(p["h0"], torch.float32)
    o, final, saved = m.chunk_forward(q, k, v, g, scale=scale, gate=gate, initial_state=h0,
                                      output_final_state=True, config=config, cu_seqlens=cu_seqlens)
    dq, dk, dv, dg, dh0 = m.chunk_backward(q, k, v, g, cast(do), cast(dfinal, torch.float32), saved, scale=scale,
                                           gate=gate, initial_state=h0, config=config, cu_seqlens=cu_seqlens)
    out = {"o": o, "final": final, "dq": dq, "dk": dk, "dv": dv}
    if g is not None:
        out["dg"] = dg
    else:
        assert dg is None, "gate 'none' returned a dg"
    if h0 is not None:
        out["dh0"] = dh0
    else:
        assert dh0 is None, "no initial_state but a dinitial was returned"
    return out


def check_case(m: ModuleType, label: str, gate: str, feature: str, T: int, K: int, V: int, dtype: torch.dtype,
               with_h0: bool, with_dfinal: bool, config: dict, B: int = 1, H: int = 2,
               gate_scale: float = 0.5) -> None:
    p = make_problem(gate, B, H, T, K, V, dtype, with_h0, gate_scale)
    scale = K ** -0.5
    do = torch.randn(B, H, T, V, dtype=torch.float64).to(dtype).double()
    dfinal = torch.randn(B, H, K, V, dtype=torch.float64) if with_dfinal else None
    golden = reference(p, feature, torch.float64, scale, do, dfinal)
    same = reference(p, feature, dtype, scale, do, dfinal)
    got = run_kernels(m, p, gate, dtype, scale, do, dfinal, config)
    for name, out in got.items():
        want_dtype = torch.float32 if name in ("final", "dh0") else dtype
        assert out.dtype == want_dtype, f"{label}: {name} dtype {out.dtype}, expected {want_dtype}"
        assert_close_to_golden(f"{label}: {name}", out, golden[name], same[name], input_dtype=dtype)


# --------------------------------------------------------------------------- accuracy


CASES = [
    pytest.param("none", "identity", 63, 16, 16, True, True, {"CHUNK": 16}, id="none-identity-T63-c16-h0-dfinal"),
    pytest.param("none", "elu1", 100, 32, 16, False, True, {"CHUNK": 32}, id="none-elu1-T100-c32"),
    pytest.param("scalar", "identity", 1, 16, 16, True, True, {"CHUNK": 16}, id="scalar-identity-T1-c16-h0"),
    pytest.param("scalar", "elu1", 63, 32, 32, True, True, {"CHUNK": 32}, id="scalar-elu1-T63-c32-h0"),
    pytest.param("scalar", "identity", 100, 32, 32, False, False, {"CHUNK": 16, "BLOCK_K": 16, "BLOCK_V": 16},
                 id="scalar-identity-T100-c16-split-k-v-no-dfinal"),
    pytest.param("vector", "identity", 1, 16, 16, False, True, {"CHUNK": 16}, id="vector-identity-T1-c16"),
    pytest.param("vector", "elu1", 63, 32, 16, True, True, {"CHUNK": 16}, id="vector-elu1-T63-c16-h0"),
    pytest.param("vector", "identity", 100, 32, 32, True, True, {"CHUNK": 32, "BLOCK_K": 16, "BLOCK_V": 16},
                 id="vector-identity-T100-c32-h0-split-k-v"),
]


@pytest.mark.parametrize(("gate", "feature", "T", "K", "V", "with_h0", "with_dfinal", "config"), CASES)
def test_fp32_against_naive_recurrence(modules: dict[str, ModuleType], gate: str, feature: str, T: int, K: int,
                                       V: int, with_h0: bool, with_dfinal: bool, config: dict) -> None:
    label = f"{gate} {feature} fp32 T={T} K={K} V={V} {config}"
    check_case(modules[feature], label, gate, feature, T, K, V, torch.float32, with_h0, with_dfinal, config)


@pytest.mark.parametrize("gate", [pytest.param("scalar", id="scalar"), pytest.param("vector", id="vector")])
def test_fp16_against_naive_recurrence(modules: dict[str, ModuleType], gate: str) -> None:
    check_case(modules["elu1"], f"{gate} elu1 fp16 T=77", gate, "elu1", 77, 16, 16, torch.float16, True, True,
               {"CHUNK": 32})


def test_fp16_vector_gate_at_chunk_64_in_steps_and_slices(modules: dict[str, ModuleType]) -> None:
    """CHUNK = 64 (the d64/d128 default): the state sweeps take two 32-token steps; K = 80 rounds
    to a key block of 128, which the output and dv kernels take in two 64-column slices."""
    check_case(modules["elu1"], "vector elu1 fp16 T=77 K=80 c64", "vector", "elu1", 77, 80, 16, torch.float16,
               True, True, {"CHUNK": 64})


@pytest.mark.parametrize("gate", [pytest.param("scalar", id="scalar"), pytest.param("vector", id="vector")])
def test_strong_decay_stays_finite(modules: dict[str, ModuleType], gate: str) -> None:
    """Log-gates around -15 per token: cumulative sums reach -1000 in a chunk; nothing overflows."""
    check_case(modules["identity"], f"{gate} strong decay", gate, "identity", 63, 16, 16, torch.float32, True, True,
               {"CHUNK": 32}, gate_scale=15.0)


def test_packed_sequences_equal_separate_calls(modules: dict[str, ModuleType]) -> None:
    """cu_seqlens: each packed sequence (lengths 1, 63, 20) restarts from its own initial state and
    matches the naive recurrence run on it alone (outputs, states, every gradient)."""
    m, gate, H, K, V, dtype = modules["elu1"], "vector", 2, 16, 16, torch.float32
    lengths = [1, 63, 20]
    cu = torch.tensor([0, 1, 64, 84], dtype=torch.int32)
    T = int(cu[-1])
    p = make_problem(gate, 1, H, T, K, V, dtype, True)
    p["h0"] = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    do = torch.randn(1, H, T, V, dtype=torch.float64)
    dfinal = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    got = run_kernels(m, p, gate, dtype, K ** -0.5, do, dfinal, {"CHUNK": 16}, cu_seqlens=cu)
    for n, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        part = {name: None if x is None else (x[n:n + 1] if name == "h0" else x[:, :, start:end])
                for name, x in p.items()}
        args = (part, "elu1")
        golden = reference(*args, torch.float64, K ** -0.5, do[:, :, start:end], dfinal[n:n + 1])
        same = reference(*args, dtype, K ** -0.5, do[:, :, start:end], dfinal[n:n + 1])
        for name in golden:
            by_seq = name in ("final", "dh0")
            out = got[name][n:n + 1] if by_seq else got[name][:, :, start:end]
            assert_close_to_golden(f"packed sequence {n} (length {lengths[n]}): {name}", out, golden[name],
                                   same[name], input_dtype=dtype)


# --------------------------------------------------------------------------- host behaviour


def test_empty_sequence_returns_initial_state(modules: dict[str, ModuleType]) -> None:
    m = modules["identity"]
    q = torch.randn(1, 2, 0, 16)
    h0 = torch.randn(1, 2, 16, 16)
    o, final, _ = m.chunk_forward(q, q, q, None, scale=0.25, gate="none", initial_state=h0, output_final_state=True)
    assert o.shape == (1, 2, 0, 16), f"empty T: output shape {tuple(o.shape)}"
    assert torch.equal(final, h0), "empty T: final state is not the initial state"


@pytest.mark.parametrize(("gate", "g_shape", "message"), [
    pytest.param("scalar", (1, 2, 5, 16), "does not fit gate 'scalar'", id="vector-g-for-scalar-gate"),
    pytest.param("none", (1, 2, 5), "does not fit gate 'none'", id="g-for-no-gate"),
    pytest.param("sideways", None, "expected one of none, scalar, vector", id="unknown-gate"),
])
def test_bad_gate_is_one_line(modules: dict[str, ModuleType], gate: str, g_shape: tuple | None, message: str) -> None:
    q = torch.randn(1, 2, 5, 16)
    g = None if g_shape is None else torch.zeros(g_shape)
    with pytest.raises(ValueError, match=message) as err:
        modules["identity"].chunk_forward(q, q, q, g, scale=0.25, gate=gate)
    assert "\n" not in str(err.value), f"multi-line error: {err.value!r}"


def test_backward_refuses_states_of_another_chunk(modules: dict[str, ModuleType]) -> None:
    m = modules["identity"]
    q = torch.randn(1, 1, 40, 16)
    _, _, saved = m.chunk_forward(q, q, q, None, scale=0.25, gate="none", config={"CHUNK": 16})
    with pytest.raises(ValueError, match="saved states"):
        m.chunk_backward(q, q, q, None, q, None, saved, scale=0.25, gate="none", config={"CHUNK": 32})


def test_vector_gate_state_sweeps_step_32_tokens(modules: dict[str, ModuleType]) -> None:
    """At CHUNK = 64 a vector gate's state sweeps apply each chunk in two 32-token steps
    (test_fp16_vector_gate_at_chunk_64_in_steps_and_slices runs that path); the other gates take
    the chunk whole."""
    m = modules["identity"]
    assert [m._sub_chunk(g, 64) for g in ("none", "scalar", "vector")] == [64, 64, 32]
    assert m._sub_chunk("vector", 16) == 16


def test_launch_config_caps_blocks(modules: dict[str, ModuleType]) -> None:
    m = modules["identity"]
    cfg = m.launch_config(20, 8)
    assert cfg["CHUNK"] == CONFIGS["recurrence"][64]["CHUNK"], f"K=20: not the bound-64 default: {cfg}"
    assert (cfg["KEY_BLOCK"], cfg["BLOCK_K"], cfg["BLOCK_V"]) == (32, 32, 16), f"K=20, V=8: {cfg}"
    assert m.launch_config(100, 128)["CHUNK"] == CONFIGS["recurrence"][128]["CHUNK"], "K=100, V=128: bound 128"
    with pytest.raises(ValueError, match="CHUNK=24"):
        m.launch_config(16, 16, {"CHUNK": 24})
    with pytest.raises(ValueError, match="exceeds the largest configured bound 256"):
        m.default_config(512)


# --------------------------------------------------------------------------- ahead of time


AOT_SCRIPT = """
import json, sys, importlib.util
import torch
from attncc.codegen.aot import compile_report
spec = importlib.util.spec_from_file_location("chunkwise_aot", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
out = []
for d in (64, 128):
    for gate in ("none", "scalar", "vector"):
        for name, kernel, sig, cx, warps, stages in m.aot_signatures(torch.float16, d, d, gate):
            r = compile_report(kernel, sig, cx, "sm_90", warps, stages, kernel_name=f"{name}[{gate},d{d}]")
            out.append(r.to_json())
print(json.dumps(out))
"""


def test_aot_sm90_fp16_default_configs_do_not_spill(tmp_path: Path) -> None:
    """Every kernel of every gate at K = V = 64 and 128, fp16, the default configs: compiled for
    sm_90 (in a subprocess, interpreter off) with zero spills and shared memory within the limit."""
    path = write_module("elu1", tmp_path)
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    assert proc.returncode == 0, f"AOT subprocess failed: {proc.stderr.strip().splitlines()[-1:]}"
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(reports) == 2 * 3 * 5, f"expected 30 kernel reports, got {len(reports)}"
    for r in reports:
        print(f"{r['kernel']:40s} registers={r['registers']} spills={r['spill_store_bytes']}/{r['spill_load_bytes']} "
              f"smem={r['shared_bytes']} wgmma={r['uses_wgmma']}")
    bad = [f"{r['kernel']}: {r['registers']} registers, {r['spills']} spill bytes, {r['shared_bytes']} smem"
           for r in reports if not r["fits"]]
    assert not bad, f"kernels that spill or overflow shared memory: {bad}"
