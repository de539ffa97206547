"""A non-editable install carries the built-in spec library.

Builds the wheel from a copy of the source tree (the build writes ``build/`` and ``*.egg-info``
next to its sources, so it must not run in the checkout), installs it into a fresh virtual
environment and runs the command line from another directory.  The environment sees the system
site-packages (torch and triton need no reinstall); the test checks that ``attncc`` is imported
from the wheel, not from an editable install or the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("attncc", "specs", "setup.py", "setup.cfg", "MANIFEST.in", "pyproject.toml", "README.md", "LICENSE")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(python of the fresh venv, the wheel, environment without PYTHONPATH) with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if not (REPO / name).exists():
            continue
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", TRITON_INTERPRET="1",
               ATTNCC_CACHE_DIR=str(root / "cache"))
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)], root, env)
    (wheel,) = (root / "dist").glob("attncc-*.whl")
    venv = root / "venv"
    # Without pip: the venv's seeded setuptools would shadow the system one; the system pip installs into it.
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], root, env)
    return python, wheel, env


def test_wheel_contains_the_spec_library(installed: tuple[Path, Path, dict[str, str]]) -> None:
    _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        packaged = {Path(n).name for n in zf.namelist() if n.startswith("attncc/specs/") and n.endswith(".toml")}
    expected = {p.name for p in (REPO / "specs").glob("*.toml")}
    assert packaged == expected, f"wheel attncc/specs/: missing {sorted(expected - packaged)}"


def test_installed_cli_lists_and_checks_builtin_specs(
    installed: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    python, _, env = installed
    where = _run([str(python), "-c", "import attncc, attncc.spec.loader as l; print(attncc.__file__); "
                  "print(l.LIBRARY_DIR)"], tmp_path, env).split()
    site = python.parents[1] / "lib"
    assert Path(where[0]).is_relative_to(site), f"attncc imported from {where[0]}, not from the venv's wheel"
    assert Path(where[1]).is_relative_to(site), f"spec library read from {where[1]}, not from the wheel"
    listed = _run([str(python), "-m", "attncc.cli", "specs"], tmp_path, env)
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"causal", "sliding_window", "gqa"} <= names, f"attncc specs printed:\n{listed}"
    checked = _run([str(python), "-m", "attncc.cli", "check", "causal", "--shape", "1,1,17,17,16",
                    "--dtype", "fp32"], tmp_path, env)
    assert "PASS" in checked, f"attncc check causal printed:\n{checked}"
