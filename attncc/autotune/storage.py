"""Storage URLs, database engines and retries for the tuning cache and the Optuna studies.

One URL names one database that holds both the best-config table and Optuna's RDB tables:

* ``sqlite:///ABSOLUTE/PATH.db`` (or a plain file path): embedded, no set-up.  The default is
  ``$ATTNCC_CACHE_DIR/tuning.db``, else ``$XDG_CACHE_HOME/attncc/tuning.db``, else
  ``~/.cache/attncc/tuning.db``.  WAL journal, a 60 s busy timeout and retries with backoff make
  several writer processes safe.
* ``postgresql://user:pass@host:port/db`` (also ``postgres://``, ``postgresql+psycopg://``): a
  team database, driven by psycopg 3.  Several GPU machines can tune one Optuna study in parallel.

``$ATTNCC_STORAGE`` overrides the default URL for every command and for the run-time lookup.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine

try:  # POSIX; elsewhere concurrent SQLite tuning relies on Optuna alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from attncc.errors import AttnccError, InputError

LOG = logging.getLogger("attncc.autotune")

STORAGE_ENV = "ATTNCC_STORAGE"
CACHE_DIR_ENV = "ATTNCC_CACHE_DIR"
SQLITE_BUSY_TIMEOUT_S = 60.0
RETRY_DEADLINE_S = 120.0
PG_CONNECT_TIMEOUT_S = 5

T = TypeVar("T")

_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "sqlite_busy",
    "deadlock detected",
    "could not serialize access",
    "could not obtain lock",
    "server closed the connection unexpectedly",
)
# Races between processes creating the same tables at the same moment.
_CREATE_RACES = (
    "already exists",
    "pg_type_typname_nsp_index",
    "duplicate key value violates unique",
    "unique constraint failed",
)


class StorageError(AttnccError):
    """The storage cannot be opened or used (bad URL, corrupt file, unreachable server)."""


def default_cache_dir() -> Path:
    """``$ATTNCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/attncc``, else ``~/.cache/attncc``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "attncc"


def default_storage_url() -> str:
    """``$ATTNCC_STORAGE`` or the SQLite file under :func:`default_cache_dir`."""
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{default_cache_dir() / 'tuning.db'}"


def resolve_storage_url(url: str | None = None) -> str:
    """Normalize a storage URL (``None`` means the default); one-line error when unsupported.

    PostgreSQL URLs are rewritten to the psycopg 3 driver; plain paths become ``sqlite:///``.
    """
    raw = (url or default_storage_url()).strip()
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser().resolve()}"
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise InputError(f"cannot parse storage URL {display_url(raw)!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise InputError(f"unsupported SQLite driver in {display_url(raw)!r}; use sqlite:///PATH")
        return raw
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise InputError(f"unsupported storage URL {display_url(raw)!r}; use sqlite:///PATH or postgresql://...")


def display_url(url: str) -> str:
    """The URL with any password masked, for messages and listings."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for in-memory databases and other backends."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


class UndecodableText(bytes):
    """A TEXT value that is not valid UTF-8, returned as its bytes (row validation rejects it)."""


def _text_factory(raw: bytes) -> str | UndecodableText:
    """Decode TEXT values strictly; bad bytes become :class:`UndecodableText`, not a failed query."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableText(raw)


def sqlite_raw_connect(database: str, **kwargs: Any) -> sqlite3.Connection:
    """A SQLite connection with a busy timeout; text that is not UTF-8 does not abort a query."""
    conn = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False, **kwargs)
    conn.text_factory = _text_factory
    conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    return conn


def sqlite_connect(path: str) -> sqlite3.Connection:
    """A SQLite connection with a busy timeout and ``synchronous=NORMAL`` (no fsync per WAL commit).

    In WAL mode NORMAL keeps the database consistent after a crash; at worst the last commits
    before a power loss are lost, which a tuning cache can afford.  ``synchronous`` is a setting
    of the connection; it writes nothing to the file.
    """
    conn = sqlite_raw_connect(path)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options shared by our engine and Optuna's (busy timeout, pragmas, liveness checks)."""
    if is_sqlite(url):
        path = sqlite_path(url)
        if path is None:
            return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        return {"creator": functools.partial(sqlite_connect, str(path))}
    # A team server that is down must not stall a kernel launch for minutes.
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4,
            "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}


def make_engine(url: str, *, create_dir: bool = True) -> Engine:
    """A SQLAlchemy engine for a resolved URL; creates the SQLite file's directory when asked."""
    path = sqlite_path(url)
    if path is not None and create_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, **engine_kwargs(url))
    except ImportError as exc:
        raise StorageError(
            f"no database driver for {display_url(url)!r} ({exc}); install attncc[postgres]"
        ) from None
    return engine


def enable_wal(engine: Engine) -> None:
    """Switch a SQLite database to WAL (persistent in the file; readers never block writers)."""
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")


def _chain(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(parts).lower()


def is_transient(exc: BaseException, *, creating: bool = False) -> bool:
    """True for lock contention and creation races that a retry resolves."""
    if not isinstance(exc, SQLAlchemyError) and type(exc).__name__ != "StorageInternalError":
        return False
    text = _chain(exc)
    markers = _TRANSIENT + (_CREATE_RACES if creating else ())
    return any(marker in text for marker in markers)


def retrying(fn: Callable[[], T], *, creating: bool = False, deadline_s: float = RETRY_DEADLINE_S) -> T:
    """Call ``fn`` and retry with jittered exponential backoff while it fails transiently."""
    start = time.monotonic()
    delay = 0.02
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc, creating=creating) or time.monotonic() - start > deadline_s:
                raise
            LOG.debug("transient storage error, retrying: %s", exc)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def ask_lock(url: str) -> Iterator[None]:
    """Serialize Optuna's ``ask`` across processes sharing one SQLite file.

    ``ask`` pops an enqueued trial with a read-then-update that SQLite cannot lock by row, so two
    processes could both take the same trial.  An exclusive ``flock`` on ``<db>.lock`` makes the
    pop atomic.  PostgreSQL locks the row itself (``SELECT ... FOR UPDATE``): no lock needed.
    """
    path = sqlite_path(url)
    if path is None or fcntl is None:
        yield
        return
    with open(f"{path}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (drivers add SQL and hints on later lines)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def optuna_storage(url: str, *, create: bool = True) -> Any:
    """Optuna's RDB storage on the same database as the tuning cache (tables created once, race-safe).

    The database must be an attncc tuning cache, or new or empty (the cache's tables are created
    first); any other database is refused with a :class:`StorageError` before Optuna writes to it.
    ``create=False`` never writes: ``None`` when the cache or Optuna's tables do not exist yet.
    """
    import optuna

    from attncc.autotune.cache import CacheMissing, TuningCache

    try:
        with TuningCache(url, create=create) as cache:
            if not create and not {"studies", "version_info"} <= cache.table_names():
                return None
    except CacheMissing:
        return None

    def build() -> Any:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), skip_table_creation=not create)

    try:
        return retrying(build, creating=True)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise StorageError(f"cannot open Optuna storage {display_url(url)}: {one_line(exc)}") from None
