"""The tuning cache on SQLite: storage, lookup order, memoization, corrupt and foreign files."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from attncc.autotune import invalidate_lookup_cache, lookup_config, lookup_stats
from attncc.autotune.cache import TuneKey, TuningCache, bucket_name
from attncc.autotune.space import default_config
from attncc.autotune.storage import (
    StorageError,
    default_storage_url,
    display_url,
    resolve_storage_url,
)
from attncc.autotune.tunable import Shape
from attncc.errors import InputError

from . import cache_cases
from .cache_cases import C1, entry

SHAPE = Shape.of(2, 8, 1024, 1024, 64)
DEFAULT = default_config("fwd", 64, "fp16")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_put_get_and_keep_better(sqlite_url: str) -> None:
    cache_cases.check_put_get_and_keep_better(sqlite_url)


def test_nearest_bucket(sqlite_url: str) -> None:
    cache_cases.check_nearest_bucket(sqlite_url)


def test_lookup_order_and_counters() -> None:
    cache_cases.check_lookup_order(default_storage_url())


def test_default_storage_is_sqlite_under_the_cache_dir(isolated_cache: Path) -> None:
    assert default_storage_url() == f"sqlite:///{isolated_cache / 'tuning.db'}"
    with TuningCache() as cache:
        cache.put(entry(SHAPE, C1))
    assert (isolated_cache / "tuning.db").exists()
    with sqlite3.connect(isolated_cache / "tuning.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_storage_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_storage_url("postgresql://u:secret@db:5432/tune").startswith("postgresql+psycopg://u:secret@")
    assert resolve_storage_url("postgres://u@db/tune").startswith("postgresql+psycopg://")
    assert "secret" not in display_url("postgresql+psycopg://u:secret@db:5432/tune")
    monkeypatch.setenv("ATTNCC_STORAGE", "sqlite:////elsewhere/t.db")
    assert resolve_storage_url(None) == "sqlite:////elsewhere/t.db"
    for bad in ("mysql://u@h/db", "sqlite+aiosqlite:///x.db", "::nonsense://"):
        with pytest.raises(InputError) as info:
            resolve_storage_url(bad)
        assert "\n" not in str(info.value)


def test_bucket_keys() -> None:
    assert bucket_name(Shape.of(3, 12, 1000, 77, 64, 128)) == "B4-H16-M1024-N128-D64-E128"
    assert bucket_name(Shape.of(1, 1, 1, 1, 80)) == "B1-H1-M1-N1-D80-E80"
    key = TuneKey.for_shape("h", "fwd", SHAPE, "fp16")
    assert key.triton_version and key.attncc_version == __import__("attncc.version").version.__version__
    assert key.study_name("causal", SHAPE).startswith("attncc:causal:fwd:fp16:2,8,1024,1024,64,64:")


def test_lookup_is_memoized_and_invalidated(isolated_cache: Path) -> None:
    with TuningCache() as cache:
        cache.put(entry(SHAPE, C1))
    assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == C1
    (isolated_cache / "tuning.db").unlink()  # memoized: the answer survives the file
    for suffix in ("-wal", "-shm"):
        Path(f"{isolated_cache / 'tuning.db'}{suffix}").unlink(missing_ok=True)
    for _ in range(100):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == C1
    assert lookup_stats()["exact"] == 101 and lookup_stats()["memoized_keys"] == 1
    invalidate_lookup_cache()
    assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
    assert not (isolated_cache / "tuning.db").exists()  # a lookup never creates the cache


def test_returned_configs_are_copies() -> None:
    with TuningCache() as cache:
        cache.put(entry(SHAPE, C1))
    first = lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT)
    first["BLOCK_M"] = 999
    assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == C1


def test_lookup_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    with TuningCache() as cache:
        cache.put(entry(SHAPE, C1))
    monkeypatch.setenv("ATTNCC_TUNING_CACHE", "off")
    assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
    assert lookup_stats()["default"] == 1


def test_corrupt_cache_file_warns_once_and_uses_default(isolated_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    isolated_cache.mkdir(parents=True)
    (isolated_cache / "tuning.db").write_bytes(os.urandom(4096))
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
        assert lookup_config("spec0", "fwd", Shape.of(1, 1, 64, 64, 64), "fp16", DEFAULT) == DEFAULT
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "ignored, using default configs" in messages[0]
    assert lookup_stats()["errors"] == 1 and lookup_stats()["default"] == 2
    with pytest.raises(StorageError) as info:
        TuningCache(create=True)
    assert "\n" not in str(info.value)


def test_foreign_sqlite_file_is_reported(isolated_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    isolated_cache.mkdir(parents=True)
    with sqlite3.connect(isolated_cache / "tuning.db") as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
    [message] = warnings_of(caplog)
    assert "not an attncc tuning cache" in message


def test_foreign_table_with_our_name_is_rejected(isolated_cache: Path) -> None:
    isolated_cache.mkdir(parents=True)
    with sqlite3.connect(isolated_cache / "tuning.db") as conn:
        conn.execute("CREATE TABLE attncc_tuning_entries (blob TEXT)")
        conn.execute("CREATE TABLE attncc_tuning_meta (name TEXT, value TEXT)")
    with pytest.raises(StorageError, match="foreign attncc_tuning_entries table"):
        TuningCache(create=False)


@pytest.mark.parametrize(
    "payload",
    [
        '{"BLOCK_M": 17, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}',  # not in the space
        '{"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4}',  # missing key
        "__import__('os').system('echo pwned')",  # code is never evaluated
        "\\x80\\x04\\x95pickle",  # nor unpickled
    ],
)
def test_invalid_stored_config_is_skipped(payload: str, caplog: pytest.LogCaptureFixture) -> None:
    with TuningCache() as cache:
        cache.put(entry(SHAPE, C1))
        with cache.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE attncc_tuning_entries SET config_json = ?", (payload,))
        _, bad = cache.entries()
        assert len(bad) == 1
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
    [message] = warnings_of(caplog)
    assert "invalid" in message and "\n" not in message


def test_stats(sqlite_url: str) -> None:
    with TuningCache(sqlite_url) as cache:
        cache.put(entry(SHAPE, C1))
        cache.put(entry(SHAPE, C1, kind="bwd"))
        stats = cache.stats()
    assert stats["entries"] == 2 and stats["by_kind"] == {"fwd": 1, "bwd": 1}
    assert stats["file_bytes"] > 0 and stats["invalid_entries"] == 0
