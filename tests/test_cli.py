"""The command line: outputs, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attncc.cli import main
from attncc.schedules import by_kind


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_specs_lists_the_library() -> None:
    code, out, _ = run("specs")
    assert code == 0
    for name in ("causal", "alibi", "gqa", "relative_bias", "sinks_window"):
        assert name in out


def test_compile_writes_a_standalone_module(tmp_path: Path) -> None:
    out = tmp_path / "k.py"
    code, _, _ = run("compile", "causal", "-o", str(out))
    assert code == 0
    text = out.read_text()
    assert "import attncc" not in text and "from attncc" not in text
    assert "def attn_fwd(" in text and "def attn_bwd_dq(" in text and "def attention(" in text
    compile(text, str(out), "exec")


def test_explain_reports_passes_and_tiles() -> None:
    code, out, _ = run("explain", "sliding_window", "--shape", "1,1,1024,1024,64", "--param", "window=128", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["passes_over_n"] == {"index": "n", "before": 3, "after": 1}
    t = info["tiles"]
    cfg = by_kind("fwd").default_config("fwd", 64)  # explain counts tiles of the default forward config
    assert t["total"] == (1024 // cfg["BLOCK_M"]) * (1024 // cfg["BLOCK_N"])
    assert t["non_empty"] <= t["visited"] < t["total"]
    assert t["visited"] == t["full"] + t["partial"]


def test_check_runs_the_kernel() -> None:
    code, out, _ = run("check", "causal", "--shape", "1,1,33,33,16")
    assert code == 0, out
    assert "PASS" in out


BAD = [
    pytest.param(["check", "no_such_spec"], "unknown spec 'no_such_spec'", id="unknown-spec"),
    pytest.param(["explain", "causal", "--shape", "1,2"], "B,H,M,N,D", id="bad-shape"),
    pytest.param(["explain", "causal", "--param", "window=3"], "unknown parameter", id="unknown-param"),
    pytest.param(["compile", "causal", "--report"], "--target", id="report-without-target"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    text = (err or out).strip()
    assert needle in text
    assert "Traceback" not in text


@pytest.mark.parametrize("body,where", [
    pytest.param('mask = "__import__(\'os\').system(\'touch PWNED\')"', ":12:", id="injection"),
    pytest.param('mask = "n <= m +"', ":12:", id="syntax"),
    pytest.param('mask = "n <= q"', ":12:", id="unknown-name"),
], )
def test_bad_spec_file_is_one_line_with_location(tmp_path: Path, body: str, where: str) -> None:
    text = (Path(__file__).parents[1] / "specs" / "causal.toml").read_text().replace('mask = "n <= m"', body)
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "attncc.cli", "check", str(spec)], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and where in lines[0] and "bad.toml" in lines[0], proc.stderr
    assert not (tmp_path / "PWNED").exists()
