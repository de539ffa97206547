"""The tuning cache: best config per key, stored as validated JSON data in a SQL table.

Key: canonical spec hash, kernel kind, shape bucket, dtype, GPU name, compute capability, Triton
version and attncc version (:class:`TuneKey`).  Shape buckets round ``B, H, M, N`` up to a power of
two and keep the head dims ``D, E`` exact, because head dims change the generated code.

Entries are plain data: the config is JSON text, re-validated against the kind's
:class:`~attncc.autotune.space.ConfigSpace` every time it is read.  Nothing is ever pickled and
nothing read from storage is executed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    inspect,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import SQLAlchemyError

from attncc.autotune.device import GpuIdentity, attncc_version, current_identity, triton_version
from attncc.autotune.space import KINDS, Config, ConfigSchemaError, config_to_str, space_for, validate_config
from attncc.autotune.storage import (
    LOG,
    StorageError,
    display_url,
    enable_wal,
    is_sqlite,
    make_engine,
    one_line,
    resolve_storage_url,
    retrying,
    sqlite_path,
)
from attncc.autotune.tunable import Shape

SCHEMA_VERSION = "1"
ENTRIES_TABLE = "attncc_tuning_entries"
META_TABLE = "attncc_tuning_meta"
METRICS = ("time_ms", "model_ms")
SOURCES = ("online", "offline")
STUDY_PREFIX = "attncc:"
_KEY_FIELDS = (
    "spec_hash",
    "kind",
    "bucket",
    "dtype",
    "gpu_name",
    "capability",
    "triton_version",
    "attncc_version",
)
_BUCKET_RE = re.compile(r"^B(\d+)-H(\d+)-M(\d+)-N(\d+)-D(\d+)-E(\d+)$")

METADATA = MetaData()
ENTRIES = Table(
    ENTRIES_TABLE,
    METADATA,
    *(Column(name, String(255), primary_key=True) for name in _KEY_FIELDS),
    Column("spec_name", String(255), nullable=False),
    *(Column(dim, Integer, nullable=False) for dim in ("b", "h", "m", "n", "d", "e")),
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


def _pow2_ceil(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


def bucket_shape(shape: Shape) -> Shape:
    """Round ``B, H, M, N`` up to powers of two; keep ``D`` and ``E``."""
    return Shape(_pow2_ceil(shape.B), _pow2_ceil(shape.H), _pow2_ceil(shape.M), _pow2_ceil(shape.N), shape.D, shape.E)


def bucket_name(shape: Shape) -> str:
    """``B1-H8-M1024-N1024-D64-E64`` for the bucket of ``shape``."""
    b = bucket_shape(shape)
    return f"B{b.B}-H{b.H}-M{b.M}-N{b.N}-D{b.D}-E{b.E}"


def parse_bucket(text: str) -> Shape:
    match = _BUCKET_RE.match(text)
    if match is None:
        raise ConfigSchemaError(f"invalid shape bucket {text!r}")
    dims = tuple(int(g) for g in match.groups())
    if any(d < 1 for d in dims):
        raise ConfigSchemaError(f"invalid shape bucket {text!r}")
    return Shape(*dims)


def bucket_distance(a: Shape, b: Shape) -> float:
    """Distance between buckets: |log2| differences of M and N, half weight for B and H."""
    return (
        abs(math.log2(a.M / b.M))
        + abs(math.log2(a.N / b.N))
        + 0.5 * abs(math.log2(a.B / b.B))
        + 0.5 * abs(math.log2(a.H / b.H))
    )


def _require_str(data: Mapping[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ConfigSchemaError(f"{what}: field {name!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class TuneKey:
    """Everything a tuned config depends on."""

    spec_hash: str
    kind: str
    bucket: str
    dtype: str
    gpu_name: str
    capability: str
    triton_version: str
    attncc_version: str

    @classmethod
    def for_shape(
        cls, spec_hash: str, kind: str, shape: Shape, dtype: str, identity: GpuIdentity | None = None
    ) -> TuneKey:
        """The key of ``shape``'s bucket on ``identity`` (the current device by default)."""
        space_for(kind)
        ident = identity or current_identity()
        return cls(spec_hash, kind, bucket_name(shape), dtype, ident.name, ident.capability,
                   triton_version(), attncc_version())

    @property
    def identity(self) -> GpuIdentity:
        return GpuIdentity(self.gpu_name, self.capability)

    @property
    def bucket_dims(self) -> Shape:
        return parse_bucket(self.bucket)

    def to_json(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _KEY_FIELDS}

    @classmethod
    def from_json(cls, data: object) -> TuneKey:
        """Validate a key read from a file."""
        if not isinstance(data, Mapping):
            raise ConfigSchemaError("key must be a JSON object")
        extra = sorted(set(data) - set(_KEY_FIELDS))
        if extra:
            raise ConfigSchemaError(f"key has unexpected fields {extra}")
        values = {name: _require_str(data, name, "key") for name in _KEY_FIELDS}
        if values["kind"] not in KINDS:
            raise ConfigSchemaError(f"key: unknown kind {values['kind']!r}")
        parse_bucket(values["bucket"])
        return cls(**values)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def study_name(self, spec_name: str, shape: Shape) -> str:
        """Optuna study of one exact shape under this key (machines with this key share it)."""
        exact = hashlib.sha256(f"{self.digest()}|{shape}".encode()).hexdigest()[:16]
        return f"{STUDY_PREFIX}{spec_name[:80]}:{self.kind}:{self.dtype}:{shape}:{exact}"


@dataclass(frozen=True)
class CacheEntry:
    """The best config of one key and how it was obtained."""

    key: TuneKey
    spec_name: str
    config: Config
    value: float
    metric: str = "time_ms"
    source: str = "online"
    shape: str = ""
    study_name: str | None = None
    trials: int = 0
    updated_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", validate_config(self.key.kind, self.config))
        if self.metric not in METRICS:
            raise ConfigSchemaError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.source not in SOURCES:
            raise ConfigSchemaError(f"source must be one of {list(SOURCES)}, got {self.source!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise ConfigSchemaError(f"value must be a finite non-negative number, got {self.value!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.to_json(),
            "spec_name": self.spec_name,
            "config": dict(self.config),
            "value": self.value,
            "metric": self.metric,
            "source": self.source,
            "shape": self.shape,
            "study_name": self.study_name,
            "trials": self.trials,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: object) -> CacheEntry:
        """Validate one entry read from an export file (strict types, no extra fields)."""
        if not isinstance(data, Mapping):
            raise ConfigSchemaError("entry must be a JSON object")
        allowed = {"key", "spec_name", "config", "value", "metric", "source", "shape", "study_name",
                   "trials", "updated_at"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise ConfigSchemaError(f"entry has unexpected fields {extra}")
        key = TuneKey.from_json(data.get("key"))
        value, trials, updated = data.get("value"), data.get("trials", 0), data.get("updated_at", 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigSchemaError("entry: value must be a number")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
            raise ConfigSchemaError("entry: trials must be a non-negative integer")
        if isinstance(updated, bool) or not isinstance(updated, int | float):
            raise ConfigSchemaError("entry: updated_at must be a number")
        study = data.get("study_name")
        if study is not None and not isinstance(study, str):
            raise ConfigSchemaError("entry: study_name must be a string or null")
        shape = data.get("shape", "")
        if not isinstance(shape, str) or len(shape) > 64:
            raise ConfigSchemaError("entry: shape must be a short string")
        return cls(key, _require_str(data, "spec_name", "entry"), data.get("config"),  # type: ignore[arg-type]
                   float(value), str(data.get("metric")), str(data.get("source")), shape, study, trials,
                   float(updated))

    def describe(self) -> str:
        unit = "ms" if self.metric == "time_ms" else "ms (model)"
        return f"{config_to_str(self.config)}  {self.value:.4g} {unit}"


def _row_of(entry: CacheEntry) -> dict[str, Any]:
    dims = entry.key.bucket_dims
    row: dict[str, Any] = entry.key.to_json()
    row.update(b=dims.B, h=dims.H, m=dims.M, n=dims.N, d=dims.D, e=dims.E)
    row.update(
        spec_name=entry.spec_name,
        config_json=json.dumps(entry.config),
        value=float(entry.value),
        metric=entry.metric,
        source=entry.source,
        shape=entry.shape,
        study_name=entry.study_name,
        trials=int(entry.trials),
        updated_at=float(entry.updated_at),
    )
    return row


def _entry_of(row: Mapping[str, Any]) -> CacheEntry:
    """Parse and validate a stored row; ``ConfigSchemaError`` when it is not valid data."""
    key = TuneKey(*(str(row[name]) for name in _KEY_FIELDS))
    if key.kind not in KINDS:
        raise ConfigSchemaError(f"stored entry has unknown kind {key.kind!r}")
    try:
        config = json.loads(row["config_json"])
    except (TypeError, ValueError) as exc:
        raise ConfigSchemaError(f"stored config is not JSON: {exc}") from None
    return CacheEntry(key, str(row["spec_name"]), config, float(row["value"]), str(row["metric"]),
                      str(row["source"]), str(row["shape"]), row["study_name"], int(row["trials"]),
                      float(row["updated_at"]))


class TuningCache:
    """Best configs in one database (SQLite file or PostgreSQL), safe for concurrent writers.

    ``create=False`` opens an existing cache read-mostly: a missing SQLite file raises
    :class:`CacheMissing` without creating anything, and tables are never created.
    """

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = resolve_storage_url(url)
        path = sqlite_path(self.url)
        if not create and path is not None and not path.exists():
            raise CacheMissing(f"no tuning cache at {path}")
        self.engine = make_engine(self.url, create_dir=create)
        try:
            if create:
                self._create_schema()
            self._check_schema()
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StorageError(f"tuning cache {self.display_url} is unusable: {one_line(exc)}") from None
        except StorageError:
            self.engine.dispose()
            raise

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TuningCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- schema -----------------------------------------------------------------------------

    def _create_schema(self) -> None:
        if is_sqlite(self.url):
            retrying(lambda: enable_wal(self.engine))
        retrying(lambda: METADATA.create_all(self.engine), creating=True)

        def put_version() -> None:
            with self.engine.begin() as conn:
                stmt = self._insert(META).values(name="schema_version", value=SCHEMA_VERSION)
                conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))

        retrying(put_version, creating=True)

    def _check_schema(self) -> None:
        inspector = inspect(self.engine)
        tables = set(inspector.get_table_names())
        if ENTRIES_TABLE not in tables or META_TABLE not in tables:
            raise StorageError(f"{self.display_url} is not an attncc tuning cache (no {ENTRIES_TABLE} table)")
        columns = {col["name"] for col in inspector.get_columns(ENTRIES_TABLE)}
        missing = sorted({c.name for c in ENTRIES.columns} - columns)
        if missing:
            raise StorageError(f"{self.display_url}: foreign {ENTRIES_TABLE} table (missing columns {missing})")
        with self.engine.connect() as conn:
            version = conn.execute(select(META.c.value).where(META.c.name == "schema_version")).scalar()
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{self.display_url}: tuning cache schema version {version!r}, expected {SCHEMA_VERSION!r}"
            )

    def _insert(self, table: Table) -> Any:
        dialect = sqlite_dialect if is_sqlite(self.url) else pg_dialect
        return dialect.insert(table)

    def _run(self, fn: Any) -> Any:
        try:
            return retrying(fn)
        except SQLAlchemyError as exc:
            raise StorageError(f"tuning cache {self.display_url}: {one_line(exc)}") from None

    # -- writes -----------------------------------------------------------------------------

    def put(self, entry: CacheEntry, *, keep_better: bool = True) -> bool:
        """Insert or update the entry of ``entry.key``; returns whether the row was written.

        With ``keep_better`` an existing entry with the same metric and a lower value is kept.
        """
        row = _row_of(entry)
        stmt = self._insert(ENTRIES).values(**row)
        updates = {name: stmt.excluded[name] for name in row if name not in _KEY_FIELDS}
        where = None
        if keep_better:
            where = or_(ENTRIES.c.metric != stmt.excluded.metric, stmt.excluded.value <= ENTRIES.c.value)
        stmt = stmt.on_conflict_do_update(index_elements=list(_KEY_FIELDS), set_=updates, where=where)
        sqlite = is_sqlite(self.url)
        if not sqlite:  # psycopg reports rowcount 1 even when the WHERE kept the old row
            stmt = stmt.returning(ENTRIES.c.spec_hash)  # a row comes back only if inserted or updated

        def write() -> bool:
            with self.engine.begin() as conn:
                done = conn.execute(stmt)
                return bool(done.rowcount) if sqlite else done.first() is not None

        return bool(self._run(write))

    def clear(self, *, kind: str | None = None, spec_hash: str | None = None) -> int:
        """Delete entries (all, or those of one kind and/or spec hash); returns how many."""
        stmt = delete(ENTRIES)
        if kind is not None:
            stmt = stmt.where(ENTRIES.c.kind == kind)
        if spec_hash is not None:
            stmt = stmt.where(ENTRIES.c.spec_hash == spec_hash)

        def run() -> int:
            with self.engine.begin() as conn:
                return int(conn.execute(stmt).rowcount or 0)

        return int(self._run(run))

    # -- reads ------------------------------------------------------------------------------

    def _select(self, *conditions: Any) -> list[dict[str, Any]]:
        stmt = select(ENTRIES).where(and_(true(), *conditions))

        def run() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(stmt)]

        return list(self._run(run))

    def get(self, key: TuneKey) -> CacheEntry | None:
        """The entry of exactly ``key``; ``ConfigSchemaError`` if the stored data is invalid."""
        rows = self._select(*(ENTRIES.c[name] == getattr(key, name) for name in _KEY_FIELDS))
        return _entry_of(rows[0]) if rows else None

    def nearest(self, key: TuneKey) -> CacheEntry | None:
        """The entry of the nearest other bucket with the same spec, kind, dtype, GPU, versions, D, E."""
        dims = key.bucket_dims
        same = [ENTRIES.c[name] == getattr(key, name) for name in _KEY_FIELDS if name != "bucket"]
        rows = self._select(*same, ENTRIES.c.bucket != key.bucket, ENTRIES.c.d == dims.D, ENTRIES.c.e == dims.E)
        scored = sorted(
            rows,
            key=lambda r: (bucket_distance(dims, Shape(r["b"], r["h"], r["m"], r["n"], r["d"], r["e"])), r["bucket"]),
        )
        for row in scored:
            try:
                return _entry_of(row)
            except ConfigSchemaError as exc:
                LOG.warning("attncc tuning cache: skipping invalid entry %s: %s", row.get("bucket"), exc)
        return None

    def entries(
        self, *, kind: str | None = None, spec_hash: str | None = None, gpu_name: str | None = None
    ) -> tuple[list[CacheEntry], list[str]]:
        """Valid entries (sorted) and one-line descriptions of invalid rows that were skipped."""
        conditions = []
        if kind is not None:
            conditions.append(ENTRIES.c.kind == kind)
        if spec_hash is not None:
            conditions.append(ENTRIES.c.spec_hash == spec_hash)
        if gpu_name is not None:
            conditions.append(ENTRIES.c.gpu_name == gpu_name)
        good: list[CacheEntry] = []
        bad: list[str] = []
        for row in self._select(*conditions):
            try:
                good.append(_entry_of(row))
            except (ConfigSchemaError, KeyError, TypeError, ValueError) as exc:
                bad.append(f"{row.get('spec_name')}/{row.get('kind')}/{row.get('bucket')}: {exc}")
        good.sort(key=lambda e: (e.spec_name, e.key.kind, e.key.dtype, e.key.gpu_name, e.key.bucket))
        return good, bad

    def count(self) -> int:
        def run() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(ENTRIES)).scalar() or 0)

        return int(self._run(run))

    def stats(self) -> dict[str, Any]:
        """Entry counts by kind, GPU, source and version, plus the storage size for SQLite."""
        entries, bad = self.entries()
        data: dict[str, Any] = {
            "storage": self.display_url,
            "entries": len(entries),
            "invalid_entries": len(bad),
            "by_kind": dict(Counter(e.key.kind for e in entries)),
            "by_gpu": dict(Counter(str(e.key.identity) for e in entries)),
            "by_source": dict(Counter(e.source for e in entries)),
            "by_versions": dict(
                Counter(f"attncc {e.key.attncc_version}, triton {e.key.triton_version}" for e in entries)
            ),
        }
        path = sqlite_path(self.url)
        if path is not None and path.exists():
            data["file_bytes"] = path.stat().st_size
        return data


class CacheMissing(StorageError):
    """The cache does not exist yet (a fresh machine): not an error for lookups."""
