"""The tuning cache and the Optuna studies on a real PostgreSQL server (started by the fixtures)."""

from __future__ import annotations

import logging

import pytest

from attncc.autotune import lookup_config, lookup_stats, tune
from attncc.autotune.cache import ImportCounts, TuningCache
from attncc.autotune.space import default_config
from attncc.autotune.storage import StorageError, resolve_storage_url
from attncc.autotune.transfer import export_file, import_file
from attncc.autotune.tunable import Shape

from . import cache_cases
from .fakes import OPTIMUM, FakeTimer, FakeTunable, subspace
from .test_tuner import H100

SHAPE = Shape.of(2, 8, 1024, 1024, 64)


def test_put_get_and_keep_better(postgres_url: str) -> None:
    cache_cases.check_put_get_and_keep_better(postgres_url)


def test_nearest_bucket(postgres_url: str) -> None:
    cache_cases.check_nearest_bucket(postgres_url)


def test_lookup_order_from_a_team_database(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNCC_STORAGE", postgres_url)
    cache_cases.check_lookup_order(postgres_url)
    assert lookup_stats()["storage"].startswith("postgresql+psycopg://attncc@127.0.0.1:")


def test_two_machines_continue_one_study(postgres_url: str) -> None:
    """A second machine with the same GPU resumes the study: nothing measured twice."""
    space = subspace("fwd", BLOCK_M=(32, 64, 128), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2, 3))
    tunable = FakeTunable(restricted=space)
    first, second = FakeTimer(), FakeTimer()
    tune(tunable, SHAPE, "fp16", trials=5, storage_url=postgres_url, timer=first, target="sm_90",
         identity=H100, seed=0, progress=False)
    result = tune(tunable, SHAPE, "fp16", trials=50, storage_url=postgres_url, timer=second, target="sm_90",
                  identity=H100, seed=1, progress=False)
    timed = [tuple(c.values()) for c in first.calls + second.calls]
    assert len(timed) == len(set(timed)) == len(space)
    assert result.best_config == {**OPTIMUM}
    with TuningCache(postgres_url) as cache:
        assert cache.get(result.key).config == OPTIMUM


def test_export_import_between_databases(postgres_url: str, sqlite_url: str, tmp_path) -> None:
    with TuningCache(postgres_url) as team:
        team.put(cache_cases.entry(SHAPE, cache_cases.C1))
        assert export_file(team, tmp_path / "team.json") == 1
    with TuningCache(sqlite_url) as local:
        assert import_file(local, tmp_path / "team.json") == ImportCounts(new=1)
        assert import_file(local, tmp_path / "team.json") == ImportCounts(unchanged=1)
        assert local.entries()[0][0].config == cache_cases.C1


def test_unreachable_server_falls_back_to_defaults(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture, postgres_server: str) -> None:
    dead = postgres_server.rsplit(":", 1)[0] + ":1/nothing"
    monkeypatch.setenv("ATTNCC_STORAGE", dead)
    default = default_config("fwd", 64, "fp16")
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", default) == default
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "\n" not in record.getMessage()
    with pytest.raises(StorageError):
        TuningCache(resolve_storage_url(dead))


def test_missing_postgres_fails_in_ci_and_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    from .conftest import _unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        _unavailable("initdb not found")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="initdb not found"):
        _unavailable("initdb not found")
