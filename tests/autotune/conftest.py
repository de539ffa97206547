"""Fixtures: an isolated cache directory per test and a real PostgreSQL server per session."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attncc.autotune.lookup import invalidate_lookup_cache, reset_lookup_stats


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own default cache directory and a clean lookup state."""
    cache_dir = tmp_path / "attncc-cache"
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(cache_dir))
    for name in ("ATTNCC_STORAGE", "ATTNCC_TUNING_CACHE", "ATTNCC_TUNING_STATS"):
        monkeypatch.delenv(name, raising=False)
    invalidate_lookup_cache()
    reset_lookup_stats()
    yield cache_dir
    invalidate_lookup_cache()
    reset_lookup_stats()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'team' / 'tuning.db'}"


# -- PostgreSQL --------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    """In CI the PostgreSQL tests must run: fail there, skip locally."""
    if _in_ci():
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason} (run .ci/setup_postgres.sh)")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def _postgres_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """PostgreSQL refuses to run as root: use the ``postgres`` account then."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user")
    runuser = shutil.which("runuser")
    if runuser is None:
        _unavailable("running as root and runuser is missing")
    return [runuser, "-u", "postgres", "--"], account.pw_uid, account.pw_gid


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL on 127.0.0.1:<free port>; yields the admin URL prefix."""
    bindir = _postgres_bindir()
    if bindir is None:
        _unavailable("initdb/pg_ctl not found (Debian package 'postgresql')")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    prefix, uid, gid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="attncc-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if uid is not None and gid is not None:
        for path in (root, sockets):
            os.chown(path, uid, gid)
    port = _free_port()
    _run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "attncc", "--auth=trust", "-E", "UTF8",
          "--no-sync"], "initdb")
    options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    _run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
          "-t", "60", "start"], "pg_ctl start")
    try:
        yield f"postgresql://attncc@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database on the session's server for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield f"{postgres_server}/{name}"
    invalidate_lookup_cache()
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
