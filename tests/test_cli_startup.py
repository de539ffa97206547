"""What a process imports: the quick commands load neither torch nor triton; the interpreter is still
chosen before triton's first import; the module from ``attncc compile -o`` runs on its own on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import check_attention, reference

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "triton")


def _env(**extra: str) -> dict[str, str]:
    """This process's environment for a child: attncc from this checkout, no CUDA device, and no
    TRITON_INTERPRET (the conftest sets it; each case sets what it tests)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", **extra)
    return env


def _python(code: str, env: dict[str, str], cwd: Path | None = None) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                         timeout=300)
    assert res.returncode == 0, f"child failed (rc {res.returncode}):\n{res.stderr[-3000:]}"
    return res.stdout


_COMMAND = """
import json, sys
from attncc.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
print("\\n@@" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("args", [
    pytest.param(["--help"], id="help"),
    pytest.param(["specs"], id="specs"),
    pytest.param(["explain", "causal"], id="explain-causal"),
    pytest.param(["explain", "sliding_window", "--json"], id="explain-json"),
    pytest.param(["tune", "--help"], id="tune-help"),
    pytest.param(["compile", "causal", "-o", "{tmp}/k.py"], id="compile-o"),
])
def test_quick_commands_import_neither_torch_nor_triton(args: list[str], tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = _python(_COMMAND.format(args=args, heavy=HEAVY), _env(ATTNCC_CACHE_DIR=str(tmp_path)))
    text, _, loaded = out.rpartition("\n@@")
    assert json.loads(loaded) == [], f"attncc {' '.join(args)} imported {loaded}"
    assert text.strip() or (tmp_path / "k.py").is_file(), f"attncc {' '.join(args)} did nothing"


_SELECTED = """
import os
import attncc
import triton.language
print(os.environ.get("TRITON_INTERPRET"))
"""


@pytest.mark.parametrize(("given", "expected"), [
    pytest.param(None, "1", id="unset-no-gpu"),
    pytest.param("0", "0", id="explicit-0-wins"),
])
def test_interpreter_chosen_before_the_first_triton_import(given: str | None, expected: str,
                                                           tmp_path: Path) -> None:
    env = _env(ATTNCC_CACHE_DIR=str(tmp_path), **({"TRITON_INTERPRET": given} if given is not None else {}))
    assert _python(_SELECTED, env).strip() == expected


def test_lazy_package_still_exposes_the_api(tmp_path: Path) -> None:
    code = ("import attncc, sys\n"
            "assert issubclass(attncc.InputError, attncc.AttnccError)\n"
            "assert 'torch' not in sys.modules, 'import attncc imported torch'\n"
            "print(attncc.__version__)")
    assert _python(code, _env(ATTNCC_CACHE_DIR=str(tmp_path))).strip()
    import attncc

    assert callable(attncc.flex_attention) and callable(attncc.load)
    assert set(attncc.__all__) <= set(dir(attncc))
    with pytest.raises(AttributeError, match="no_such_name"):
        attncc.no_such_name  # noqa: B018


_STANDALONE = """
import importlib.util, os, sys
import torch
spec = importlib.util.spec_from_file_location("causal_kernel", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert os.environ.get("TRITON_INTERPRET") == "1", os.environ.get("TRITON_INTERPRET")
assert not any(m == "attncc" or m.startswith("attncc.") for m in sys.modules), "the module imported attncc"
q, k, v = torch.load(sys.argv[2], weights_only=True)
o, lse = module.attention_forward(q, k, v)
o2, lse2 = module.attention(q.requires_grad_(), k, v)
assert o2.grad_fn is not None
torch.save((o, lse, o2.detach(), lse2.detach()), sys.argv[3])
"""


def test_compiled_module_runs_alone_on_a_cpu(tmp_path: Path) -> None:
    """``attncc compile causal -o FILE``, then FILE in a fresh process without attncc on the path,
    TRITON_INTERPRET unset and CUDA hidden: it chooses the interpreter and runs a tiny forward."""
    from click.testing import CliRunner

    from attncc.cli import main

    path = tmp_path / "causal_kernel.py"
    result = CliRunner().invoke(main, ["compile", "causal", "-o", str(path)])
    assert result.exit_code == 0, result.output
    header = path.read_text().split('"""')[1]
    assert "numpy" in header and "attention_forward(" in header and "attention(" in header
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (63, 77, 77))
    torch.save((q, k, v), tmp_path / "inputs.pt")
    env = {key: val for key, val in _env().items() if key != "PYTHONPATH"}
    script = tmp_path / "run.py"
    script.write_text(_STANDALONE)
    res = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "inputs.pt"),
                          str(tmp_path / "outputs.pt")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    o, lse, o2, lse2 = torch.load(tmp_path / "outputs.pt", weights_only=True)
    golden = reference("causal", q, k, v)
    same = reference("causal", q, k, v, compute_dtype=torch.float32)
    check_attention("standalone causal fp32 M=63 N=77 attention_forward", (o, lse), golden, same, torch.float32)
    check_attention("standalone causal fp32 M=63 N=77 attention", (o2, lse2), golden, same, torch.float32)
