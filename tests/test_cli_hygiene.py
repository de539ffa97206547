"""Docs and help match the code; the README's main job and the test suite write nowhere they should not."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attncc.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _autotune_doc() -> object:
    spec = importlib.util.spec_from_file_location("autotune_doc", ROOT / "tools" / "autotune_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_autotune_doc_states_the_default_configs_of_the_code() -> None:
    """docs/autotune.md's table is the schedules' DEFAULT_CONFIGS (regenerate: python tools/autotune_doc.py)."""
    from attncc.schedules import SCHEDULES

    doc = _autotune_doc()
    table = doc.documented((ROOT / "docs" / "autotune.md").read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    assert table == doc.render(), "docs/autotune.md is stale: run python tools/autotune_doc.py"  # type: ignore[attr-defined]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (\d+) \| (.*) \|$", table, flags=re.MULTILINE)
    read = {(kind, int(bound)): dict(re.findall(r"`(\w+)=(\d+)`", cells)) for kind, _, bound, cells in rows}
    code = {(kind, bound): {k: str(v) for k, v in cfg.items()}
            for s in SCHEDULES for kind, table_ in s.default_configs.items() for bound, cfg in table_.items()}
    assert read == code


def _spec_with_kind(kind: str) -> str:
    """The first of causal and the recurrence specs whose kernels include ``kind``."""
    from attncc.cli import _tunable
    from attncc.errors import InputError
    from attncc.spec.loader import recurrence_library

    for spec in ("causal", *recurrence_library()):
        try:
            _tunable(spec, kind)
        except InputError:
            continue
        return spec
    raise AssertionError(f"attncc tune --kind {kind}: no built-in spec has kernels of this kind")


def test_every_tune_kind_works_for_some_spec() -> None:
    """``attncc tune --help`` offers exactly the registered kinds, and each resolves for a built-in spec."""
    from attncc.autotune.cli import tune

    option = next(p for p in tune.params if p.name == "kind")
    kinds = tuple(option.type.choices)
    assert kinds and all(_spec_with_kind(kind) for kind in kinds)
    shown = " ".join(CliRunner().invoke(main, ["tune", "--help"]).stdout.split())
    assert f"[{'|'.join(kinds)}]" in shown


def test_readme_main_job_writes_only_ignored_paths(tmp_path: Path) -> None:
    """Every ``-o PATH`` of the README's commands is under an ignored folder, and compile creates it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    outputs = re.findall(r"attncc compile \S+ -o (\S+)", readme)
    assert outputs, "the README's main job writes a module with attncc compile -o"
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for out in outputs:
        parts = Path(out).parts
        assert len(parts) > 1 and parts[0] in ignored, f"README: -o {out} would leave a file in the repository root"
        result = CliRunner().invoke(main, ["compile", "causal", "-o", str(tmp_path / out)])
        assert result.exit_code == 0 and (tmp_path / out).is_file(), result.output


def test_tests_never_write_the_home_cache(tmp_path: Path) -> None:
    """A kernel test run with no cache variables set, HOME pointing at an empty folder: the suite's
    conftest sends kernel copies elsewhere, so HOME/.cache/attncc is never created."""
    home = tmp_path / "home"
    home.mkdir()
    unset = ("ATTNCC_CACHE_DIR", "ATTNCC_STORAGE", "XDG_CACHE_HOME", "TRITON_INTERPRET")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_cli.py::test_check_runs_the_kernel"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert not (home / ".cache" / "attncc").exists(), sorted(str(p) for p in home.rglob("*"))[:20]


def test_this_session_caches_in_a_temporary_directory() -> None:
    """Kernel copies and the default tuning database of this test process live under the temp dir."""
    import tempfile

    from attncc.autotune.storage import default_storage_url
    from attncc.codegen.cache import configured_dir

    root = Path(os.environ["ATTNCC_CACHE_DIR"]).resolve()
    assert root.is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert configured_dir().resolve().is_relative_to(root)
    assert str(root) in default_storage_url()


def test_compile_and_aot_report_show_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--progress``: the compile stages, then one step per (dtype, head dim) of the AOT report."""
    from attncc.codegen.report import KernelReport
    from attncc.runtime import aot_spec

    jobs: list[tuple[str, int]] = []

    def fake_reports(*args: object, **_: object) -> list[KernelReport]:
        dtype, head_dim = (args[0][0][2:4] if len(args) == 1 else args[2:4])  # report_many or report_kernels
        jobs.append((str(dtype), int(head_dim)))
        return [KernelReport(f"k{len(jobs)}", "sm_90", {}, 64, 0, 0, 1024, 232448, uses_wgmma=False)]

    monkeypatch.setattr(aot_spec, "report_many", fake_reports)
    monkeypatch.setattr(aot_spec, "report_kernels", fake_reports)
    out = tmp_path / "k.py"
    result = CliRunner().invoke(main, ["compile", "causal", "-o", str(out), "--target", "sm_90", "--progress",
                                       "--dtype", "fp16", "--dtype", "bf16", "--head-dim", "64", "--head-dim", "128"])
    assert result.exit_code == 0, result.output
    assert jobs == [("fp16", 64), ("fp16", 128), ("bf16", 64), ("bf16", 128)]
    lines = result.stderr.splitlines()
    assert any(line.startswith("compile causal [") and "2/2" in line for line in lines), result.stderr
    assert any(line.startswith("aot sm_90 [") and "4/4" in line and "4 kernel(s)" in line for line in lines)
    assert "compiled 4 kernel(s) for sm_90" in result.stderr
    quiet = CliRunner().invoke(main, ["compile", "causal", "-o", str(out)])
    assert quiet.exit_code == 0 and quiet.stderr.strip().splitlines() == [f"wrote {out} ({len(out.read_text().splitlines())} lines)"]
