"""The host launch layer (attncc/codegen/launch.py): written once, emitted into every generated module."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, reference

import attncc
from attncc.cli import main
from attncc.codegen import launch
from attncc.codegen.launch_text import LAUNCH_PATH, launch_source
from attncc.compiler import generate
from attncc.runtime.aot_spec import kernel_signature
from attncc.schedules.prefill.schedule import DEFAULT_CONFIGS, PREFILL
from attncc.spec.loader import resolve


def test_layer_text_is_emitted_exactly_once() -> None:
    src = attncc.load("causal").source
    text = launch_source()
    assert src.count(text) == 1, "the launch layer's text is not in the generated module exactly once"
    assert '"""The host launch layer' not in src, "the layer's module docstring was emitted"
    rest = src.replace(text, "")
    for duplicate in ("next_power_of_2", '"tf32"', "CONFIG_VALUES =", "def _check(", "def _ctx_args(",
                      "1.0 / math.sqrt(", "*t.stride(), *t.shape", "% k.shape[1]"):
        assert duplicate not in rest, f"generated module repeats host code outside the layer: {duplicate!r}"


def test_layer_imports_only_math_torch_triton() -> None:
    tree = ast.parse(LAUNCH_PATH.read_text())
    imported = set()
    for node in ast.walk(tree):
        assert not isinstance(node, ast.ImportFrom), f"launch.py line {node.lineno}: 'from ... import' is not allowed"
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert imported == {"math", "torch", "triton"}, f"launch.py imports {sorted(imported)}"


def test_layer_change_changes_the_kernel_key(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = resolve("causal")
    before = generate(spec).key
    monkeypatch.setattr("attncc.schedules.prefill.render.launch_source", lambda: launch_source() + "# changed\n")
    assert generate(spec).key != before, "a change of the launch layer keeps the kernel key"


@pytest.mark.parametrize(("head_dim", "bound"), [
    pytest.param(1, 64, id="d1"), pytest.param(48, 64, id="d48"), pytest.param(64, 64, id="d64"),
    pytest.param(65, 128, id="d65"), pytest.param(256, 256, id="d256"), pytest.param(300, 256, id="d300"),
])
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_default_config_lookup(kind: str, head_dim: int, bound: int) -> None:
    module = attncc.load("causal").module
    want = DEFAULT_CONFIGS[kind][bound]
    assert launch.table_config(DEFAULT_CONFIGS, head_dim, kind) == want, f"{kind} d={head_dim}: table_config"
    here = launch.device_kind(DEFAULT_CONFIGS, kind, None, module.INTERPRETED)  # the forward's table is per device
    assert module.default_config(head_dim, kind) == DEFAULT_CONFIGS[here][bound], f"{kind} d={head_dim}: module default_config"
    assert module.DEFAULT_CONFIGS == DEFAULT_CONFIGS, "module DEFAULT_CONFIGS differs from the renderer's"


@pytest.mark.parametrize(("head_dim", "block"), [
    pytest.param(1, 16, id="1"), pytest.param(16, 16, id="16"), pytest.param(63, 64, id="63"),
    pytest.param(77, 128, id="77"), pytest.param(256, 256, id="256"),
])
def test_block_dim(head_dim: int, block: int) -> None:
    assert launch.block_dim(head_dim) == block, f"block_dim({head_dim})"


DIMS = [pytest.param(16, 16, id="d16-e16"), pytest.param(63, 77, id="d63-e77"), pytest.param(128, 1, id="d128-e1")]


@pytest.mark.parametrize(("D", "E"), DIMS)
@pytest.mark.parametrize(("dtype", "precision"), [pytest.param("fp16", "tf32", id="fp16"),
                                                  pytest.param("bf16", "tf32", id="bf16"),
                                                  pytest.param("fp32", "ieee", id="fp32")])
def test_aot_signature_uses_kernel_constexprs(D: int, E: int, dtype: str, precision: str) -> None:
    fn = attncc.load("alibi")
    cfg = fn.module.default_config(max(D, E), "fwd")
    want = launch.kernel_constexprs(D, E, cfg, dtype)
    assert want["DOT_PRECISION"] == precision, f"{dtype}: dot precision {want['DOT_PRECISION']}"
    assert want["BLOCK_D"] == launch.block_dim(D) and want["BLOCK_E"] == launch.block_dim(E), "block dims"
    for decl in PREFILL.kernels:
        _, constexprs = kernel_signature(fn, decl, dtype, D, E, cfg)
        shared = {k: v for k, v in constexprs.items() if k not in ("WRITE_FULL", "LOG_TILES", "USE_TMA")}
        assert shared == want, f"{decl.name} [{dtype}, D={D}, E={E}]: AOT constexprs {shared} != {want}"


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: self.calls.append(kwargs)


@pytest.mark.parametrize(("D", "E"), DIMS)
def test_module_launches_use_kernel_constexprs(D: int, E: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the generated module passes to its kernels is what aot_spec compiles for."""
    fn = attncc.load("causal")
    module = fn.module
    names = tuple(d.name for d in PREFILL.kernels)
    aot = {d.name: kernel_signature(fn, d, "fp32", D, E, SMALL_TILES)[1] for d in PREFILL.kernels}
    recorders = {name: _Recorder() for name in names}
    for name, rec in recorders.items():
        monkeypatch.setattr(module, name, rec)
    q, k, v = torch.randn(1, 2, 5, D), torch.randn(1, 2, 7, D), torch.randn(1, 2, 7, E)
    o, lse = module.attention_forward(q, k, v, config=SMALL_TILES)
    module.attention_backward(q, k, v, torch.zeros_like(o), torch.zeros_like(lse), torch.zeros_like(o),
                              config=SMALL_TILES)
    want = launch.kernel_constexprs(D, E, SMALL_TILES, "fp32")
    for name, rec in recorders.items():
        assert len(rec.calls) == 1, f"{name}: {len(rec.calls)} launches"
        launched = {key: val for key, val in rec.calls[0].items() if key in aot[name]}
        assert launched == aot[name], f"{name}: launched constexprs {launched} != AOT {aot[name]}"
        assert {key: launched[key] for key in want} == want, f"{name}: launch constexprs differ from the layer's"
        assert rec.calls[0]["num_warps"] == SMALL_TILES["num_warps"], f"{name}: num_warps"


def _qkv(H: int = 2, HK: int = 2, D: int = 16, E: int = 16) -> tuple[torch.Tensor, ...]:
    return torch.randn(1, H, 10, D), torch.randn(1, HK, 12, D), torch.randn(1, HK, 12, E)


BAD_INPUTS = [
    pytest.param("causal", lambda q, k, v: (q[0], k, v), {}, id="ndim"),
    pytest.param("causal", lambda q, k, v: (q.tolist(), k, v), {}, id="not-a-tensor"),
    pytest.param("causal", lambda q, k, v: (q.half(), k, v), {}, id="dtype-mismatch"),
    pytest.param("causal", lambda q, k, v: (q.double(), k.double(), v.double()), {}, id="dtype-unsupported"),
    pytest.param("causal", lambda q, k, v: (q, k[..., :8], v), {}, id="head-dim"),
    pytest.param("causal", lambda q, k, v: (q, k, v[:, :, :5]), {}, id="kv-length"),
    pytest.param("causal", lambda q, k, v: (q, k[:, :1], v[:, :1]), {}, id="heads-no-gqa"),
    pytest.param("gqa", lambda q, k, v: (q[:, :1].expand(1, 3, 10, 16), k, v), {}, id="gqa-not-divisible"),
    pytest.param("alibi", lambda q, k, v: (q, k, v), {"slopes": [0.5, 0.25]}, id="capture-not-a-tensor"),
]


@pytest.mark.parametrize(("spec", "make", "captures"), BAD_INPUTS)
def test_module_and_front_end_give_the_same_message(spec: str, make: Any, captures: dict[str, Any]) -> None:
    """One check, two wrappers: the module's ValueError is the front end's InputError without the name."""
    fn = attncc.load(spec)
    q, k, v = make(*_qkv())
    with pytest.raises(attncc.InputError) as front:
        fn(q, k, v, **captures)
    with pytest.raises(ValueError) as module:
        fn.module.attention_forward(q, k, v, captures=captures)
    assert "\n" not in str(module.value), f"{spec}: module message is not one line: {module.value}"
    assert str(front.value) == f"{fn.spec.name}: {module.value}", f"{spec}: messages differ"


def test_capture_ndim_message() -> None:
    """The front end knows the capture's dim names; the module (CAPTURES holds (name, ndim)) only their number."""
    fn = attncc.load("alibi")
    q, k, v = _qkv()
    with pytest.raises(attncc.InputError, match=r"^alibi: captured 'slopes' must be 1-D \[h\], got \(2, 1\)$"):
        fn(q, k, v, slopes=torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"^captured 'slopes' must be 1-D, got \(2, 1\)$"):
        fn.module.attention_forward(q, k, v, captures={"slopes": torch.ones(2, 1)})


def test_module_rejects_bad_config_and_params() -> None:
    module = attncc.load("causal").module
    q, k, v = _qkv()
    for bad, what in (({"BLOCK_M": 24}, "BLOCK_M=24 is not one of"), ({"BLOCK_N": 32.0}, "must be an int"),
                      ({"BLOCK_K": 16}, "unknown config key 'BLOCK_K'")):
        with pytest.raises(ValueError, match=what):
            module.attention_forward(q, k, v, config=bad)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['window'\]"):
        module.attention_forward(q, k, v, window=3)


_CHILD = textwrap.dedent("""
    import importlib.util
    import sys

    sys.modules["attncc"] = None  # the written module must not need attncc
    import torch

    path, data, out, device = sys.argv[1:5]
    spec = importlib.util.spec_from_file_location("standalone_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    t = {name: x.to(device) for name, x in torch.load(data, weights_only=True).items()}
    o, lse = module.attention_forward(t["q"], t["k"], t["v"], config=dict(BLOCK_M=16, BLOCK_N=16, num_warps=4,
                                                                          num_stages=1))
    assert not any(name == "attncc" or name.startswith("attncc.") for name, m in sys.modules.items()
                   if m is not None), "attncc was imported"
    torch.save({"o": o.cpu(), "lse": lse.cpu()}, out)
""")


@pytest.mark.parametrize("length", [pytest.param(77, id="L77")])
def test_written_module_runs_without_attncc(tmp_path: Path, length: int) -> None:
    path = tmp_path / "kernel_module.py"
    result = CliRunner().invoke(main, ["compile", "causal", "-o", str(path)])
    assert result.exit_code == 0, result.output
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, length, 16, generator=gen) for _ in range(3))
    torch.save({"q": q, "k": k, "v": v}, tmp_path / "inputs.pt")
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0")}
    run = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tmp_path / "inputs.pt"),
                          str(tmp_path / "outputs.pt"), DEVICE], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "outputs.pt", weights_only=True)
    golden = reference("causal", q.double(), k.double(), v.double())
    same = reference("causal", q, k, v, compute_dtype=torch.float32)
    for i, name in enumerate(("o", "lse")):
        assert_close_to_golden(f"standalone causal {name} L={length}", got[name].cpu(), golden[i], same[i])
