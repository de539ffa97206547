"""The tuning cache's tables, and how a database is recognised as one before anything is written.

A database is an attncc tuning cache when it holds ``attncc_tuning_meta`` with a
``schema_version`` row and an ``attncc_tuning_entries`` table with all of attncc's columns.
:func:`open_cache_engine` writes only to such a database, or to a new or empty one (no tables),
where it creates the tables in one transaction.  A database with other tables is refused with a
one-line :class:`~attncc.autotune.storage.StorageError` and left untouched.  SQLite files are
examined through a read-only connection first (``mode=ro``), so a foreign file is never written,
never switched to WAL, and a path that is not a SQLite file is reported without opening it.
"""

from __future__ import annotations

import stat
import urllib.parse
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from attncc.autotune.storage import (
    StorageError,
    display_url,
    enable_wal,
    is_sqlite,
    make_engine,
    one_line,
    retrying,
    sqlite_path,
    sqlite_raw_connect,
)

SCHEMA_VERSION = "1"
ENTRIES_TABLE = "attncc_tuning_entries"
META_TABLE = "attncc_tuning_meta"
KEY_FIELDS = (
    "spec_hash",
    "kind",
    "bucket",
    "dtype",
    "gpu_name",
    "capability",
    "triton_version",
    "attncc_version",
)
DIMS = ("b", "h", "m", "n", "d", "e")
SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100  # the database header; byte 18 is 2 in WAL mode
# Serializes table creation on PostgreSQL (pg_advisory_xact_lock key: "attncc" in ASCII).
_PG_CREATE_LOCK = 0x617474_6E6363

METADATA = MetaData()
ENTRIES = Table(
    ENTRIES_TABLE,
    METADATA,
    *(Column(name, String(255), primary_key=True) for name in KEY_FIELDS),
    Column("spec_name", String(255), nullable=False),
    *(Column(dim, Integer, nullable=False) for dim in DIMS),
    Column("config_json", Text, nullable=False),
    Column("value", Float, nullable=False),
    Column("metric", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("shape", String(64), nullable=False),
    Column("study_name", String(512), nullable=True),
    Column("trials", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
META = Table(
    META_TABLE,
    METADATA,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)


class CacheMissing(StorageError):
    """The cache does not exist yet (no file, or an empty database): not an error for lookups."""


def sqlite_file_state(path: Path) -> str:
    """``"missing"``, ``"empty"`` (0 bytes), ``"database"`` or ``"wal"`` (a WAL-mode database).

    Anything that is not a SQLite file (a directory, random bytes) is a one-line StorageError.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise StorageError(f"tuning cache {path} is unusable: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise StorageError(f"tuning cache {path} is unusable: a directory, not a SQLite file")
    if not stat.S_ISREG(info.st_mode):
        raise StorageError(f"tuning cache {path} is unusable: not a regular file")
    if info.st_size == 0:
        return "empty"
    try:
        with open(path, "rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except OSError as exc:
        raise StorageError(f"tuning cache {path} is unusable: cannot be read ({exc.strerror or exc})") from None
    if len(header) < _HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        raise StorageError(f"tuning cache {path} is unusable: not a SQLite database (not an attncc tuning cache)")
    return "wal" if header[18] == 2 else "database"


def _foreign(where: str) -> StorageError:
    return StorageError(f"{where} is not an attncc tuning cache (no {META_TABLE} and {ENTRIES_TABLE} tables); "
                        "refusing to use it")


def identify(conn: Connection, where: str) -> bool:
    """True for an attncc tuning cache, False for a database without tables; else StorageError."""
    inspector = inspect(conn)
    tables = {name for name in inspector.get_table_names() if not name.startswith("sqlite_")}
    if not tables:
        return False
    if META_TABLE not in tables or ENTRIES_TABLE not in tables:
        raise _foreign(where)
    columns = {col["name"] for col in inspector.get_columns(ENTRIES_TABLE)}
    missing = sorted({c.name for c in ENTRIES.columns} - columns)
    if missing:
        raise StorageError(f"{where}: foreign {ENTRIES_TABLE} table (missing columns {missing})")
    meta_columns = {col["name"] for col in inspector.get_columns(META_TABLE)}
    if not {"name", "value"} <= meta_columns:
        raise StorageError(f"{where}: foreign {META_TABLE} table")
    version = conn.execute(select(META.c.value).where(META.c.name == "schema_version")).scalar()
    if version != SCHEMA_VERSION:
        raise StorageError(f"{where}: tuning cache schema version {version!r}, expected {SCHEMA_VERSION!r}")
    return True


def _readonly_sqlite_engine(path: Path, *, immutable: bool = False) -> Engine:
    """An engine whose connections cannot write the file (``mode=ro``).

    ``immutable`` also keeps SQLite from creating the ``-wal``/``-shm`` files beside a WAL-mode
    database; it reads only what has been checkpointed into the file.
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
    return create_engine("sqlite://", creator=lambda: sqlite_raw_connect(uri, uri=True))


def _tables_of_checkpointed(path: Path) -> set[str] | None:
    """The tables of a WAL-mode file as checkpointed, touching nothing; None if unreadable."""
    engine = _readonly_sqlite_engine(path, immutable=True)
    try:
        with engine.connect() as conn:
            return {t for t in inspect(conn).get_table_names() if not t.startswith("sqlite_")}
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def _autocommit_sqlite_engine(path: Path) -> Engine:
    """An engine whose connections leave transactions to explicit ``BEGIN``/``COMMIT``."""
    return create_engine("sqlite://", creator=lambda: sqlite_raw_connect(str(path), isolation_level=None))


def _probe_sqlite(path: Path, where: str) -> bool | None:
    """None: no file or an empty one; True: an attncc cache; False: a SQLite file without tables."""
    state = sqlite_file_state(path)
    if state in ("missing", "empty"):
        return None
    if state == "wal":  # a foreign WAL-mode file is refused without creating -wal/-shm beside it
        tables = _tables_of_checkpointed(path)
        if tables and not {META_TABLE, ENTRIES_TABLE} <= tables:
            raise _foreign(where)
    engine = _readonly_sqlite_engine(path)
    try:
        with engine.connect() as conn:
            return identify(conn, where)
    finally:
        engine.dispose()


def _create_sqlite(path: Path, where: str) -> None:
    """Create the tables in a new or empty SQLite file, atomically (``BEGIN IMMEDIATE``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = _autocommit_sqlite_engine(path)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                if not identify(conn, where):
                    METADATA.create_all(conn)
                    conn.execute(insert(META).values(name="schema_version", value=SCHEMA_VERSION))
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
    finally:
        engine.dispose()


def _create_in_server(engine: Engine, where: str) -> None:
    """Create the tables in an empty database (PostgreSQL creators are serialized by a lock)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CREATE_LOCK})
        if not identify(conn, where):
            METADATA.create_all(conn)
            conn.execute(insert(META).values(name="schema_version", value=SCHEMA_VERSION))


def _open_sqlite(url: str, path: Path, create: bool) -> Engine:
    where = display_url(url)
    state = _probe_sqlite(path, where)
    if state is None and not create:
        raise CacheMissing(f"no tuning cache at {path}")
    if state is False and not create:
        raise CacheMissing(f"no tuning cache at {path} (empty database)")
    if not state:
        retrying(lambda: _create_sqlite(path, where), creating=True)
    engine = make_engine(url, create_dir=False)
    if create:
        try:
            retrying(lambda: enable_wal(engine))
        except BaseException:
            engine.dispose()
            raise
    return engine


def _open_server(url: str, create: bool) -> Engine:
    where = display_url(url)
    engine = make_engine(url, create_dir=False)
    try:
        with engine.connect() as conn:
            ours = identify(conn, where)
        if not ours:
            if not create:
                raise CacheMissing(f"no tuning cache in {where} (empty database)")
            retrying(lambda: _create_in_server(engine, where), creating=True)
    except BaseException:
        engine.dispose()
        raise
    return engine


def open_cache_engine(url: str, *, create: bool) -> Engine:
    """An engine on the tuning cache at ``url`` (a resolved URL), after checking what it is.

    ``create=False`` never writes: a missing file or empty database raises :class:`CacheMissing`.
    ``create=True`` creates the tables only in a new or empty database.  Any other database, and
    any path that is not a SQLite file, raises a one-line :class:`StorageError`.
    """
    path = sqlite_path(url)
    try:
        if is_sqlite(url) and path is not None:
            return _open_sqlite(url, path, create)
        return _open_server(url, create)
    except SQLAlchemyError as exc:
        raise StorageError(f"tuning cache {display_url(url)} is unusable: {one_line(exc)}") from None
    except OSError as exc:
        raise StorageError(f"tuning cache {display_url(url)} is unusable: {exc.strerror or exc}") from None
