"""Hostile tuning caches: foreign databases are never written, poisoned rows never reach a kernel,
hostile export files are refused in one line and leave the storage untouched."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

import attncc
from attncc.autotune import cli as autotune_cli
from attncc.autotune import invalidate_lookup_cache, lookup_config, lookup_stats
from attncc.autotune.cache import CacheEntry, TuneKey, TuningCache
from attncc.autotune.schema import ENTRIES
from attncc.autotune.space import default_config
from attncc.autotune.storage import StorageError, optuna_storage, resolve_storage_url
from attncc.autotune.transfer import export_file
from attncc.autotune.tunable import Shape

from .cache_cases import C1, C2, entry
from .fakes import FakeTunable, subspace

SHAPE = Shape.of(2, 8, 1024, 1024, 64)
OTHER_BUCKET = Shape.of(2, 8, 4096, 4096, 64)
DEFAULT = default_config("fwd", 64, "fp16")


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> click.Group:
    """The ``attncc`` group with ``tune`` and ``cache``; ``tune`` resolves specs to a fake kernel."""
    small = subspace("fwd", BLOCK_M=(64, 128), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2, 3))
    monkeypatch.setattr(autotune_cli, "_resolve_tunable",
                        lambda spec, kind: FakeTunable(kind=kind, spec_name=spec, restricted=small))
    group = click.Group("attncc")
    group.add_command(autotune_cli.tune)
    group.add_command(autotune_cli.cache)
    return group


def invoke(main: click.Group, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result: Result) -> str:
    """The single stderr line of a refused command (exit 2, nothing on stdout, no traceback)."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def snapshot(path: Path) -> tuple[Any, ...]:
    """What a write would change: the directory's names, the file's bytes and mtime (or a dir's)."""
    names = sorted(p.name for p in path.parent.iterdir())
    if path.is_dir():
        return names, sorted(p.name for p in path.iterdir()), path.stat().st_mtime_ns
    if not path.exists():
        return names, None, None
    return names, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def journal_mode(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def good_export(tmp_path: Path) -> Path:
    """A valid export made on this machine (it would import cleanly into an attncc cache)."""
    path = tmp_path / "exports" / "good.json"
    with TuningCache(str(tmp_path / "exports" / "source.db")) as cache:
        cache.put(entry(SHAPE, C1))
        export_file(cache, path)
    return path


# -- foreign databases and paths that are not SQLite files -------------------------------------------


def users_db(path: Path, *, wal: bool = False) -> None:
    with sqlite3.connect(path) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO users (name) VALUES (?)", [("ada",), ("grace",)])
    conn.close()


def optuna_db(path: Path) -> None:
    """Another project's Optuna study database (Optuna's tables, none of attncc's)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    optuna.create_study(study_name="theirs", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
    storage.engine.dispose()


def named_like_ours(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE attncc_tuning_entries (blob TEXT)")
        conn.execute("CREATE TABLE attncc_tuning_meta (name TEXT, value TEXT)")
    conn.close()


FOREIGN: list[Any] = [
    pytest.param(users_db, "delete", id="users-table"),
    pytest.param(lambda p: users_db(p, wal=True), "wal", id="users-table-wal"),
    pytest.param(optuna_db, "delete", id="other-optuna-study"),
    pytest.param(named_like_ours, "delete", id="tables-named-like-ours"),
    pytest.param(lambda p: p.write_bytes(random.Random(0).randbytes(8192)), None, id="random-bytes"),
    pytest.param(lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(200)), None, id="sqlite-header-then-zeros"),
    pytest.param(lambda p: p.write_text("id,name\n1,ada\n"), None, id="csv-text"),
    pytest.param(lambda p: p.mkdir(), None, id="directory"),
]


def cli_op(*args: str) -> Callable[[click.Group, str, Path], Result]:
    def run(main: click.Group, storage: str, tmp_path: Path) -> Result:
        extra = [str(good_export(tmp_path))] if args[:2] == ("cache", "import") else []
        return invoke(main, *args, *extra, "--storage", storage)

    return run


CLI_OPS: list[Any] = [
    pytest.param(cli_op("cache", "ls"), id="ls"),
    pytest.param(cli_op("cache", "ls", "--json"), id="ls-json"),
    pytest.param(cli_op("cache", "stats", "--json"), id="stats"),
    pytest.param(lambda m, s, t: invoke(m, "cache", "export", str(t / "out.json"), "--storage", s), id="export"),
    pytest.param(cli_op("cache", "import"), id="import"),
    pytest.param(cli_op("cache", "import", "--force"), id="import-force"),
    pytest.param(cli_op("cache", "clear", "-y"), id="clear"),
    pytest.param(cli_op("tune", "causal", "--shape", "2,8,1024,1024,64", "--offline", "--target", "sm_90", "-q"),
                 id="tune-offline"),
]


@pytest.mark.parametrize(("make", "mode"), FOREIGN)
@pytest.mark.parametrize("operation", CLI_OPS)
def test_cli_never_writes_to_a_foreign_database(main: click.Group, tmp_path: Path, make: Callable[[Path], None],
                                                mode: str | None, operation: Any) -> None:
    path = tmp_path / "theirs" / "data.db"
    path.parent.mkdir()
    make(path)
    before = snapshot(path)
    line = one_line_error(operation(main, str(path), tmp_path))
    assert "not an attncc tuning cache" in line or "unusable" in line or "foreign" in line, line
    assert snapshot(path) == before, "the foreign file or its directory changed"
    if mode is not None:
        assert journal_mode(path) == mode
    assert not (tmp_path / "out.json").exists()


@pytest.fixture(params=[p.values[0] for p in FOREIGN], ids=[p.id for p in FOREIGN])
def foreign(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "theirs" / "data.db"
    path.parent.mkdir()
    request.param(path)
    return path


def test_lookup_and_api_never_write_to_a_foreign_database(foreign: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    before = snapshot(foreign)
    monkeypatch.setenv("ATTNCC_STORAGE", str(foreign))
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        for m in (64, 1024, 4096):
            assert lookup_config("spec0", "fwd", Shape.of(1, 8, m, m, 64), "fp16", DEFAULT) == DEFAULT
    [message] = warnings_of(caplog)
    assert "ignored, using default configs" in message and "\n" not in message
    assert lookup_stats()["errors"] == 1 and lookup_stats()["default"] == 3
    url = resolve_storage_url(str(foreign))
    for opener in (lambda: TuningCache(url), lambda: TuningCache(url, create=False), lambda: optuna_storage(url)):
        with pytest.raises(StorageError) as info:
            opener()
        assert "\n" not in str(info.value)
    assert snapshot(foreign) == before


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: None, id="missing-file"),
        pytest.param(lambda p: p.write_bytes(b""), id="zero-byte-file"),
        pytest.param(lambda p: sqlite3.connect(p).execute("PRAGMA user_version = 7").connection.commit(),
                     id="sqlite-without-tables"),
    ],
)
def test_read_commands_create_nothing_and_import_creates_the_cache(main: click.Group, tmp_path: Path,
                                                                   make: Callable[[Path], None]) -> None:
    path = tmp_path / "new" / "tuning.db"
    path.parent.mkdir()
    make(path)
    before = snapshot(path)
    assert invoke(main, "cache", "ls", "--storage", str(path)).stdout.strip() == "no entries"
    stats = json.loads(invoke(main, "cache", "stats", "--json", "--storage", str(path)).stdout)
    assert stats["entries"] == 0 and stats["studies"] == 0
    assert "removed 0 entries" in invoke(main, "cache", "clear", "-y", "--storage", str(path)).stdout
    assert "exported 0 entries" in invoke(main, "cache", "export", str(tmp_path / "o.json"), "--storage",
                                          str(path)).stdout
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNCC_STORAGE", str(path))
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == DEFAULT
    assert snapshot(path) == before, "a read-only command wrote to the storage"
    done = invoke(main, "cache", "import", str(good_export(tmp_path)), "--storage", str(path))
    assert done.exit_code == 0 and "imported 1 of 1 entries" in done.stdout, done.output
    assert journal_mode(path) == "wal"
    with TuningCache(str(path), create=False) as cache:
        assert [e.config for e in cache.entries()[0]] == [C1]


def test_unwritable_storage_path_is_one_line(main: click.Group, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(invoke(main, "cache", "import", str(good_export(tmp_path)), "--storage",
                                 str(blocker / "sub" / "tuning.db")))
    assert "unusable" in line
    assert blocker.read_text() == "x"


# -- poisoned rows ---------------------------------------------------------------------------------

DEEP = "[" * 2000  # short enough for the length limit, too deep for the JSON parser
C1_JSON = json.dumps(C1)


def config_with(**changes: Any) -> str:
    return json.dumps({**C1, **changes})


# (column, SQLite expression, PostgreSQL expression or None where PostgreSQL's types forbid the value,
#  whether the exact-key lookup reads the row)
POISON: list[Any] = [
    pytest.param("value", "'abc'", None, True, id="value-text"),
    pytest.param("value", "-1", "-1", True, id="value-negative"),
    pytest.param("value", "9e999", "'Infinity'", True, id="value-infinite"),
    pytest.param("value", "1e300", "1e300", True, id="value-huge"),
    pytest.param("value", "X'00ff'", "'NaN'", True, id="value-blob-or-nan"),
    pytest.param("b", "0", "0", True, id="bucket-dim-0"),
    pytest.param("m", "-1024", "-1024", True, id="bucket-dim-negative"),
    pytest.param("d", "2147483647", "2147483647", True, id="bucket-dim-disagrees"),
    pytest.param("n", "'x'", None, True, id="bucket-dim-text"),
    pytest.param("h", "1e20", None, True, id="bucket-dim-real"),
    pytest.param("bucket", "'B0-H8-M1024-N1024-D64-E64'", "'B0-H8-M1024-N1024-D64-E64'", True, id="bucket-zero"),
    pytest.param("bucket", "'B3-H8-M1024-N1024-D64-E64'", "'B3-H8-M1024-N1024-D64-E64'", True, id="bucket-not-pow2"),
    pytest.param("config_json", "'{'", "'{'", True, id="config-malformed-json"),
    pytest.param("config_json", "''", "''", True, id="config-empty"),
    pytest.param("config_json", f"'{DEEP}'", f"'{DEEP}'", True, id="config-deeply-nested"),
    pytest.param("config_json", f"'[{'1' * 5000}]'", f"'[{'1' * 5000}]'", True, id="config-5000-digits"),
    pytest.param("config_json", "'null'", "'null'", True, id="config-null"),
    pytest.param("config_json", "'[64, 32, 4, 2]'", "'[64, 32, 4, 2]'", True, id="config-list"),
    pytest.param("config_json", f"'{config_with(BLOCK_K=64)}'", f"'{config_with(BLOCK_K=64)}'", True,
                 id="config-unknown-key"),
    pytest.param("config_json", f"'{config_with(BLOCK_M=48)}'", f"'{config_with(BLOCK_M=48)}'", True,
                 id="config-block-not-pow2"),
    pytest.param("config_json", f"'{config_with(BLOCK_M=-16)}'", f"'{config_with(BLOCK_M=-16)}'", True,
                 id="config-block-negative"),
    pytest.param("config_json", f"'{config_with(BLOCK_M=2**20)}'", f"'{config_with(BLOCK_M=2**20)}'", True,
                 id="config-block-huge"),
    pytest.param("config_json", """'{"BLOCK_M": "64", "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""",
                 """'{"BLOCK_M": "64", "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""", True,
                 id="config-value-string"),
    pytest.param("config_json", """'{"BLOCK_M": 64.0, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""",
                 """'{"BLOCK_M": 64.0, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""", True,
                 id="config-value-float"),
    pytest.param("config_json", """'{"BLOCK_M": 1e400, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""",
                 """'{"BLOCK_M": 1e400, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""", True,
                 id="config-value-1e400"),
    pytest.param("config_json", """'{"BLOCK_M": NaN, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""",
                 """'{"BLOCK_M": NaN, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}'""", True,
                 id="config-value-nan"),
    pytest.param("config_json", "'__import__(\"os\").system(\"touch pwned\")'",
                 "'__import__(\"os\").system(\"touch pwned\")'", True, id="config-code"),
    pytest.param("config_json", "X'80049505000000'", None, True, id="config-pickle-blob"),
    pytest.param("config_json", "CAST(X'7bff7d' AS TEXT)", None, True, id="config-not-utf8"),
    pytest.param("trials", "-1", "-1", True, id="trials-negative"),
    pytest.param("trials", "'many'", None, True, id="trials-text"),
    pytest.param("trials", "1099511627776", None, True, id="trials-huge"),
    pytest.param("updated_at", "'yesterday'", None, True, id="updated-at-text"),
    pytest.param("updated_at", "-5", "-5", True, id="updated-at-negative"),
    pytest.param("metric", "'speed'", "'speed'", True, id="metric-unknown"),
    pytest.param("source", "X'00'", None, True, id="source-blob"),
    pytest.param("spec_name", "''", "''", True, id="spec-name-empty"),
    pytest.param("shape", f"'{'x' * 100}'", None, True, id="shape-too-long"),
    pytest.param("study_name", "X'00'", None, True, id="study-name-blob"),
    pytest.param("kind", "'sideways'", "'sideways'", False, id="kind-unknown"),
    pytest.param("dtype", "'fp8'", "'fp8'", False, id="dtype-unknown"),
    pytest.param("gpu_name", "CAST(X'ff' AS TEXT)", None, False, id="gpu-name-not-utf8"),
]


def poison(url: str, column: str, expression: str, key_shape: Shape = SHAPE) -> None:
    """A valid entry for ``key_shape``, then one field overwritten by raw SQL."""
    with TuningCache(url) as cache:
        cache.put(entry(key_shape, C1))
        with cache.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE attncc_tuning_entries SET {column} = {expression}")
    invalidate_lookup_cache()


def check_poisoned(url: str, main: click.Group, caplog: pytest.LogCaptureFixture, read_by_lookup: bool,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The bad row is skipped everywhere: lookups give the default, ls and stats report it."""
    monkeypatch.setenv("ATTNCC_STORAGE", url)
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        for shape in (SHAPE, SHAPE, Shape.of(2, 8, 2048, 2048, 64)):  # exact, memoized, nearest
            assert lookup_config("spec0", "fwd", shape, "fp16", DEFAULT) == DEFAULT
    messages = warnings_of(caplog)
    stats = lookup_stats()
    assert stats["default"] == 3 and stats["errors"] == 0
    if read_by_lookup:
        assert len(messages) == 1 and "invalid entries skipped" in messages[0] and "\n" not in messages[0]
        assert stats["invalid_rows"] == 1
    else:
        assert messages == [] and stats["invalid_rows"] == 0
    listing = invoke(main, "cache", "ls", "--storage", url)
    assert listing.exit_code == 0 and listing.stdout.strip() == "no entries", listing.output
    [warning] = listing.stderr.strip().splitlines()
    assert warning.startswith("warning: skipped invalid entry")
    stats_out = invoke(main, "cache", "stats", "--json", "--storage", url)
    data = json.loads(stats_out.stdout)
    assert stats_out.exit_code == 0 and data["entries"] == 0 and data["invalid_entries"] == 1
    with TuningCache(url, create=False) as cache:
        assert cache.count() == 1  # reported, not deleted
    assert not Path("pwned").exists()


@pytest.mark.parametrize(("column", "sqlite_expr", "pg_expr", "read_by_lookup"), POISON)
def test_poisoned_row_in_sqlite(main: click.Group, sqlite_url: str, caplog: pytest.LogCaptureFixture,
                                monkeypatch: pytest.MonkeyPatch, column: str, sqlite_expr: str,
                                pg_expr: str | None, read_by_lookup: bool) -> None:
    poison(sqlite_url, column, sqlite_expr)
    check_poisoned(sqlite_url, main, caplog, read_by_lookup, monkeypatch)


PG_POISON = [p for p in POISON if p.values[2] is not None]


@pytest.mark.parametrize(("column", "sqlite_expr", "pg_expr", "read_by_lookup"), PG_POISON)
def test_poisoned_row_in_postgres(main: click.Group, postgres_url: str, caplog: pytest.LogCaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch, column: str, sqlite_expr: str,
                                  pg_expr: str, read_by_lookup: bool) -> None:
    poison(postgres_url, column, pg_expr)
    check_poisoned(postgres_url, main, caplog, read_by_lookup, monkeypatch)


def test_nearest_skips_bad_rows_and_uses_a_good_one(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A poisoned exact row and a poisoned nearer bucket fall through to the valid farther bucket."""
    poison(sqlite_url, "value", "'abc'")  # the exact bucket M=N=1024
    with TuningCache(sqlite_url) as cache:
        cache.put(entry(Shape.of(2, 8, 2048, 2048, 64), C1))
        with cache.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE attncc_tuning_entries SET m = 0 WHERE bucket LIKE '%M2048%'")
        cache.put(entry(OTHER_BUCKET, C2))
    monkeypatch.setenv("ATTNCC_STORAGE", sqlite_url)
    with caplog.at_level(logging.WARNING, logger="attncc.autotune"):
        assert lookup_config("spec0", "fwd", SHAPE, "fp16", DEFAULT) == C2
        assert lookup_config("spec0", "fwd", Shape.of(2, 8, 1500, 1500, 64), "fp16", DEFAULT) == C2
    assert len(warnings_of(caplog)) == 1  # one warning per storage, however many bad rows
    stats = lookup_stats()
    assert stats["nearest"] == 2 and stats["invalid_rows"] == 2 and stats["errors"] == 0


# -- a real kernel launch with a poisoned tuning cache ------------------------------------------------

SMALL = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1}


@pytest.mark.parametrize(
    ("column", "expression"),
    [
        pytest.param("config_json", f"'{json.dumps({**SMALL, 'BLOCK_M': -16})}'", id="block-negative"),
        pytest.param("config_json", f"'{json.dumps({**SMALL, 'BLOCK_N': 3})}'", id="block-not-pow2"),
        pytest.param("config_json", f"'{json.dumps({**SMALL, 'BLOCK_M': 0})}'", id="block-zero"),
        pytest.param("value", "'abc'", id="value-text"),
        pytest.param("b", "0", id="bucket-dim-0"),
    ],
)
def test_kernel_runs_correctly_with_a_poisoned_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     column: str, expression: str) -> None:
    """attncc.load('causal') on fp32 with the tuning cache pointed at a poisoned database."""
    from reference import check_attention, reference

    B, H, M, N, D = 1, 2, 17, 17, 16
    fn = attncc.load("causal")
    url = f"sqlite:///{tmp_path / 'poisoned.db'}"
    monkeypatch.setenv("ATTNCC_STORAGE", url)
    key = TuneKey.for_shape(fn.spec.tuning_hash, "fwd", Shape.of(B, H, M, N, D), "fp32")
    with TuningCache(url) as cache:
        cache.put(CacheEntry(key, "causal", SMALL, 1.0, shape="probe"))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, length, D, generator=generator) for length in (M, N, N))
    assert fn.config_for("fwd", q, k, v) == SMALL  # the key above is the one the kernel looks up
    with TuningCache(url) as cache, cache.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE attncc_tuning_entries SET {column} = {expression}")
    invalidate_lookup_cache()
    o, lse = fn(q, k, v, return_lse=True)
    stats = lookup_stats()
    assert stats["invalid_rows"] == 1 and stats["exact"] == 1 and stats["default"] >= 1
    golden = reference("causal", q, k, v)
    same_dtype = reference("causal", q, k, v, compute_dtype=torch.float32)
    check_attention(f"causal fp32 M={M} with poisoned {column}", (o, lse), golden, same_dtype, torch.float32)


# -- hostile export files --------------------------------------------------------------------------


def edited(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], bytes]:
    """The good export with one change applied to its parsed document."""
    def build(good: Path) -> bytes:
        document = json.loads(good.read_text())
        change(document)
        return json.dumps(document).encode()

    return build


def replaced(old: str, new: str) -> Callable[[Path], bytes]:
    """The good export's text with ``old`` (which must occur) replaced by ``new``."""
    def build(good: Path) -> bytes:
        text = good.read_text()
        assert old in text, f"bad test: {old!r} not in the export"
        return text.replace(old, new, 1).encode()

    return build


def first_entry(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda document: document["entries"][0].update(changes)


def drop(*where: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        for name in where[:-1]:
            target = target[name] if not name.isdigit() else target[int(name)]
        del target[where[-1]]

    return change


HOSTILE_FILES: list[Any] = [
    pytest.param(replaced('"value": 1.0', '"value": 1e400'), "out of range", id="value-1e400"),
    pytest.param(replaced('"BLOCK_M": 64', '"BLOCK_M": 1e400'), "out of range", id="config-1e400"),
    pytest.param(replaced('"trials": 0', '"trials": ' + "9" * 5000), "out of range", id="trials-5000-digits"),
    pytest.param(replaced('"entries": 1', '"entries": 1' + "0" * 5000), "out of range", id="count-5000-digits"),
    pytest.param(replaced('"value": 1.0', '"value": ' + "1" * 400 + ".5"), "out of range", id="value-400-digit-float"),
    pytest.param(lambda good: b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="100k-deep-list"),
    pytest.param(lambda good: b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply", id="100k-deep-object"),
    pytest.param(replaced('"config": {', '"config": ' + "[" * 50_000 + "]" * 50_000 + ', "x": {'),
                 "nested too deeply", id="deep-config"),
    pytest.param(lambda good: b"[]", "not an attncc tuning-cache export", id="top-level-list"),
    pytest.param(lambda good: b'"attncc-tuning-cache"', "not an attncc tuning-cache export", id="top-level-string"),
    pytest.param(lambda good: b"42", "not an attncc tuning-cache export", id="top-level-number"),
    pytest.param(lambda good: b"null", "not an attncc tuning-cache export", id="top-level-null"),
    pytest.param(edited(lambda d: d.update(entries={"0": d["entries"][0]})), "entries must be a list",
                 id="entries-object"),
    pytest.param(edited(drop("entries")), "entries must be a list", id="missing-entries"),
    pytest.param(edited(drop("metadata")), "metadata block missing", id="missing-metadata"),
    pytest.param(edited(drop("format_version")), "format_version", id="missing-format-version"),
    pytest.param(edited(drop("entries", "0", "key")), "key must be a JSON object", id="entry-missing-key"),
    pytest.param(edited(drop("entries", "0", "value")), "value must be a number", id="entry-missing-value"),
    pytest.param(edited(drop("entries", "0", "key", "bucket")), "'bucket' must be a non-empty string",
                 id="key-missing-bucket"),
    pytest.param(edited(first_entry(value=-1)), "value must be a number in", id="value-negative"),
    pytest.param(edited(first_entry(trials=-3)), "trials must be a non-negative integer", id="trials-negative"),
    pytest.param(edited(first_entry(config=[64, 32, 4, 2])), "must be a JSON object", id="config-list"),
    pytest.param(edited(first_entry(config={**C1, "BLOCK_M": 48})), "BLOCK_M=48 not in", id="config-not-pow2"),
    pytest.param(edited(first_entry(config={**C1, "evil": 1})), "unexpected ['evil']", id="config-unknown-key"),
    pytest.param(edited(lambda d: d["entries"][0]["key"].update(bucket="B0-H8-M1024-N1024-D64-E64")),
                 "invalid shape bucket", id="bucket-dim-0"),
    pytest.param(edited(lambda d: d["entries"][0]["key"].update(dtype="fp8")), "unknown dtype", id="dtype-unknown"),
    pytest.param(lambda good: b"\xff\xfe" + good.read_bytes(), "can't decode", id="non-utf8-prefix"),
    pytest.param(lambda good: good.read_bytes().replace(b'"causal"', b'"caus\xe9al"', 1), "can't decode",
                 id="latin1-inside-a-string"),
    pytest.param(lambda good: b"", "empty file", id="zero-byte-file"),
    pytest.param(lambda good: b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94.", "can't decode",
                 id="pickle"),
    pytest.param(replaced('"value": 1.0', '"value": NaN'), "non-finite", id="nan-literal"),
]


@pytest.mark.parametrize("force", [pytest.param(False, id="plain"), pytest.param(True, id="force")])
@pytest.mark.parametrize(("build", "fragment"), HOSTILE_FILES)
def test_hostile_import_is_one_line_and_writes_nothing(main: click.Group, tmp_path: Path,
                                                       build: Callable[[Path], bytes], fragment: str,
                                                       force: bool) -> None:
    hostile = tmp_path / "hostile.json"
    hostile.write_bytes(build(good_export(tmp_path)))
    fresh = tmp_path / "fresh" / "tuning.db"  # must not be created
    existing = tmp_path / "existing.db"  # must not change
    with TuningCache(str(existing)) as cache:
        cache.put(entry(OTHER_BUCKET, C2))
    before = snapshot(existing)
    flags = ["--force"] if force else []
    line = one_line_error(invoke(main, "cache", "import", str(hostile), "--storage", str(fresh), *flags))
    assert fragment in line and str(hostile) in line, line
    assert not fresh.parent.exists()
    one_line_error(invoke(main, "cache", "import", str(hostile), "--storage", str(existing), *flags))
    assert snapshot(existing) == before


def test_import_of_a_directory_or_a_missing_file_is_one_line(main: click.Group, tmp_path: Path) -> None:
    from attncc.autotune.transfer import read_export
    from attncc.errors import InputError

    folder = tmp_path / "export.json"
    folder.mkdir()
    line = one_line_error(invoke(main, "cache", "import", str(folder), "--storage", str(tmp_path / "t.db")))
    assert "directory" in line
    with pytest.raises(InputError, match="is a directory"):
        read_export(folder)
    missing = tmp_path / "missing.json"
    assert one_line_error(invoke(main, "cache", "import", str(missing), "--storage", str(tmp_path / "t.db"))
                          ) == f"Error: {missing}: no such file"
    assert not (tmp_path / "t.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://localhost:6379/0", id="redis-journal"),
        pytest.param("file:///tmp/optuna-journal.log", id="journal-file"),
        pytest.param("mysql+pymysql://u@h/db", id="mysql"),
    ],
)
def test_only_sql_storages_are_accepted(url: str) -> None:
    """Optuna's journal storages keep pickled snapshots; attncc accepts only SQLite and PostgreSQL."""
    from attncc.errors import InputError

    with pytest.raises(InputError, match="unsupported") as info:
        resolve_storage_url(url)
    assert "\n" not in str(info.value)


# -- arbitrary stored values -----------------------------------------------------------------------

STORED_VALUES = st.one_of(
    st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.text(max_size=40),
    st.binary(max_size=16), st.sampled_from(["fwd", "fp16", "B1-H1-M1-N1-D64-E64", C1_JSON, "time_ms", "online"]),
)
COLUMNS = [c.name for c in ENTRIES.columns]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(COLUMNS), STORED_VALUES, min_size=1, max_size=4))
def test_any_stored_values_are_valid_or_reported(tmp_path: Path, changes: dict[str, Any]) -> None:
    """Whatever SQLite holds in a row's columns, reading it gives an entry or a reported invalid row."""
    url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    with TuningCache(url) as cache:
        cache.clear()
        cache.put(entry(SHAPE, C1))
        assignments = ", ".join(f"{name} = ?" for name in changes)
        with cache.engine.begin() as conn:
            try:
                conn.exec_driver_sql(f"UPDATE attncc_tuning_entries SET {assignments}", tuple(changes.values()))
            except IntegrityError:  # NULL in a NOT NULL column: SQLite refuses it
                return
        good, bad = cache.entries()
        assert len(good) + len(bad) == 1
        assert all("\n" not in problem for problem in bad)
        key = TuneKey.for_shape("spec0", "fwd", SHAPE, "fp16")
        for found in (cache.get(key), cache.nearest(TuneKey.for_shape("spec0", "fwd", OTHER_BUCKET, "fp16"))):
            assert found is None or found.config == C1
