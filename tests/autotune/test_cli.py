"""``attncc tune`` and ``attncc cache ...`` through click's CliRunner (exit codes 0, 1, 2, 130)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from attncc.autotune import cli as autotune_cli
from attncc.autotune import tuner as tuner_module
from attncc.autotune.cache import TuningCache
from attncc.autotune.device import GpuIdentity
from attncc.errors import SpecError

from .fakes import OPTIMUM, FakeTimer, FakeTunable, subspace

SHAPE = "2,8,1024,1024,64"
REAL_RESOLVE = autotune_cli._resolve_tunable
H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90")


@pytest.fixture
def main() -> click.Group:
    """What the real ``attncc`` group does: ``main.add_command(tune); main.add_command(cache)``."""
    group = click.Group("attncc")
    group.add_command(autotune_cli.tune)
    group.add_command(autotune_cli.cache)
    return group


@pytest.fixture(autouse=True)
def fake_specs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    resolved: list[tuple[str, str]] = []

    def resolve(spec: str, kind: str) -> FakeTunable:
        if spec == "missing":
            raise SpecError("no spec named 'missing' (see attncc specs)")
        resolved.append((spec, kind))
        small = subspace(kind, BLOCK_M=(64, 128), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2, 3))
        return FakeTunable(kind=kind, spec_name=spec, restricted=small)

    monkeypatch.setattr(autotune_cli, "_resolve_tunable", resolve)
    return resolved


def invoke(main: click.Group, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_offline_tune_prints_json_only(main: click.Group, sqlite_url: str,
                                       fake_specs: list[tuple[str, str]]) -> None:
    result = invoke(main, "tune", "causal", "--shape", SHAPE, "--offline", "--target", "sm_90",
                    "--json", "--storage", sqlite_url, "--kind", "bwd")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "offline" and data["kind"] == "bwd" and data["stored"] is True
    assert data["candidates"] == 8 and data["best_config"] is not None
    assert fake_specs == [("causal", "bwd")]
    assert "compile sm_90 [" in result.stderr  # progress never pollutes stdout


def test_online_tune_with_a_gpu(main: click.Group, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    timer = FakeTimer()
    monkeypatch.setattr(tuner_module, "_do_bench", timer)
    monkeypatch.setattr(tuner_module, "current_identity", lambda: H100)
    result = invoke(main, "tune", "causal", "--shape", SHAPE, "--trials", "20", "--storage", sqlite_url, "-q")
    assert result.exit_code == 0, result.output
    assert "best: " + ",".join(f"{k}={v}" for k, v in OPTIMUM.items()) in result.stdout
    assert "pruned statically" in result.stdout and result.stderr == ""
    assert len(timer.calls) == 8


def test_online_tune_without_gpu_is_exit_2(main: click.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuner_module, "current_identity", lambda: GpuIdentity("cpu-interpreter", "none"))
    assert "needs a CUDA GPU" in one_line_error(invoke(main, "tune", "causal", "--shape", SHAPE))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--shape", "1,2,3"], "5 or 6 integers"),
        (["--shape", "1,2,x,4,5"], "only integers"),
        (["--shape", SHAPE, "--dtype", "fp64"], "fp64"),
        (["--shape", SHAPE, "--trials", "0"], "--trials"),
        (["--shape", SHAPE, "--kind", "sideways"], "sideways"),
        (["--shape", SHAPE, "--offline", "--target", "sm_42"], "unknown target 'sm_42'"),
        (["--shape", SHAPE, "--storage", "mysql://u@h/db"], "unsupported storage URL"),
        (["--offline", "--target", "sm_90"], "--shape"),
    ],
)
def test_bad_input_is_one_line_exit_2(main: click.Group, args: list[str], fragment: str) -> None:
    assert fragment in one_line_error(invoke(main, "tune", "causal", *args))


def test_offline_without_target_on_cpu(main: click.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attncc.autotune.device.current_identity", lambda: GpuIdentity("cpu-interpreter", "none"))
    assert "--offline needs --target" in one_line_error(invoke(main, "tune", "causal", "--shape", SHAPE, "--offline"))


def test_unknown_spec_is_one_line(main: click.Group) -> None:
    assert "no spec named 'missing'" in one_line_error(invoke(main, "tune", "missing", "--shape", SHAPE))


def test_missing_runtime_resolver_is_one_line(main: click.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autotune_cli, "_resolve_tunable", REAL_RESOLVE)  # with its import made to fail
    monkeypatch.setitem(sys.modules, "attncc.runtime.tunable", None)
    assert "cannot resolve spec" in one_line_error(invoke(main, "tune", "causal", "--shape", SHAPE))


def test_interrupt_exits_130(main: click.Group, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tuner_module, "tune", interrupted)
    result = invoke(main, "tune", "causal", "--shape", SHAPE, "--offline", "--target", "sm_90")
    assert result.exit_code == 130 and "run the same command to resume" in result.stderr


def test_cache_commands(main: click.Group, tmp_path: Path, sqlite_url: str) -> None:
    assert invoke(main, "cache", "ls", "--storage", sqlite_url).stdout.strip() == "no entries"
    for kind in ("fwd", "bwd"):
        tuned = invoke(main, "tune", "causal", "--kind", kind, "--shape", SHAPE, "--offline", "--target", "sm_90",
                       "--storage", sqlite_url, "-q")
        assert tuned.exit_code == 0, tuned.output
    listing = invoke(main, "cache", "ls", "--storage", sqlite_url)
    header, *rows = listing.stdout.strip().splitlines()
    assert listing.exit_code == 0 and len(rows) == 2
    assert header.split() == ["SPEC", "KIND", "DTYPE", "BUCKET", "GPU", "CONFIG", "TIME", "SOURCE"]
    assert "offline (sm_90)" in listing.stdout
    as_json = json.loads(invoke(main, "cache", "ls", "--storage", sqlite_url, "--json", "--kind", "bwd").stdout)
    assert [e["key"]["kind"] for e in as_json] == ["bwd"]

    stats = json.loads(invoke(main, "cache", "stats", "--storage", sqlite_url, "--json").stdout)
    assert stats["entries"] == 2 and stats["by_source"] == {"offline": 2}
    assert "lookups_this_process" in stats and stats["studies"] == 0

    exported = tmp_path / "shared.json"
    result = invoke(main, "cache", "export", str(exported), "--storage", sqlite_url)
    assert result.exit_code == 0 and "exported 2 entries" in result.stdout
    other = str(tmp_path / "other.db")
    line = one_line_error(invoke(main, "cache", "import", str(exported), "--storage", other))
    assert "GPU offline (sm_90)" in line and "--force" in line
    forced = invoke(main, "cache", "import", str(exported), "--storage", other, "--force")
    assert forced.exit_code == 0 and "imported 2 of 2 entries" in forced.stdout
    assert "2 new, 0 updated, 0 unchanged" in forced.stdout
    again = invoke(main, "cache", "import", str(exported), "--storage", other, "--force")
    assert again.exit_code == 0 and "imported 0 of 2 entries" in again.stdout and "2 unchanged" in again.stdout

    cleared = invoke(main, "cache", "clear", "--storage", sqlite_url, "--kind", "fwd", "--yes")
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.stdout
    with TuningCache(sqlite_url) as cache:
        assert [e.key.kind for e in cache.entries()[0]] == ["bwd"]


def test_clear_removes_studies_and_asks_first(main: click.Group, sqlite_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuner_module, "_do_bench", FakeTimer())
    monkeypatch.setattr(tuner_module, "current_identity", lambda: H100)
    assert invoke(main, "tune", "causal", "--shape", SHAPE, "--trials", "3", "--storage", sqlite_url,
                  "-q").exit_code == 0
    stats = json.loads(invoke(main, "cache", "stats", "--storage", sqlite_url, "--json").stdout)
    assert stats["studies"] == 1 and stats["trials"]["complete"] == 3
    refused = CliRunner().invoke(main, ["cache", "clear", "--storage", sqlite_url], input="n\n")
    assert refused.exit_code == 1
    done = invoke(main, "cache", "clear", "--storage", sqlite_url, "-y")
    assert "removed 1 entries and 1 studies" in done.stdout
    stats = json.loads(invoke(main, "cache", "stats", "--storage", sqlite_url, "--json").stdout)
    assert stats["studies"] == 0 and stats["entries"] == 0


def test_import_of_corrupt_file_is_one_line(main: click.Group, tmp_path: Path, sqlite_url: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    assert "not a valid attncc tuning-cache export" in one_line_error(
        invoke(main, "cache", "import", str(bad), "--storage", sqlite_url)
    )


def test_corrupt_storage_is_one_line(main: click.Group, tmp_path: Path) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"\x00garbage" * 512)
    assert "unusable" in one_line_error(invoke(main, "cache", "ls", "--storage", str(broken)))


def test_tune_plot_draws_the_optimisation_history(main: click.Group, sqlite_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")  # the [test] extra installs it; the CLI says so when it is missing
    monkeypatch.setattr(tuner_module, "_do_bench", FakeTimer())
    monkeypatch.setattr(tuner_module, "current_identity", lambda: H100)
    png = tmp_path / "history.png"
    result = invoke(main, "tune", "causal", "--shape", SHAPE, "--trials", "3", "--storage", sqlite_url, "-q",
                    "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert f"wrote {png}" in result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    line = one_line_error(invoke(main, "tune", "causal", "--shape", SHAPE, "--offline", "--target", "sm_90",
                                 "--plot", str(tmp_path / "x.png")))
    assert "--plot" in line and "--offline" in line


def test_tune_help_offers_exactly_the_registered_kinds(main: click.Group) -> None:
    from attncc.schedules import SCHEDULES

    kinds = {kind for schedule in SCHEDULES for kind in schedule.kinds}
    option = next(p for p in autotune_cli.tune.params if p.name == "kind")
    assert set(option.type.choices) == kinds
    text = invoke(main, "tune", "--help").stdout
    assert f"[{'|'.join(option.type.choices)}]" in " ".join(text.split())
