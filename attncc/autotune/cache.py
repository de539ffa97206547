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

from sqlalchemy import Table, and_, delete, func, inspect, or_, select, true
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import SQLAlchemyError

from attncc.autotune.device import GpuIdentity, attncc_version, current_identity, triton_version
from attncc.autotune.schema import (
    DIMS,
    ENTRIES,
    ENTRIES_TABLE,
    KEY_FIELDS,
    META_TABLE,
    SCHEMA_VERSION,
    CacheMissing,
    open_cache_engine,
)
from attncc.autotune.space import (
    DTYPES,
    KINDS,
    Config,
    ConfigSchemaError,
    config_to_str,
    space_for,
    validate_config,
)
from attncc.autotune.storage import (
    StorageError,
    display_url,
    is_sqlite,
    one_line,
    resolve_storage_url,
    retrying,
    sqlite_path,
)
from attncc.autotune.tunable import Shape

__all__ = ["ENTRIES_TABLE", "META_TABLE", "SCHEMA_VERSION", "CacheEntry", "CacheMissing", "TuneKey", "TuningCache"]

METRICS = ("time_ms", "model_ms")
SOURCES = ("online", "offline")
STUDY_PREFIX = "attncc:"
_KEY_FIELDS = KEY_FIELDS
_BUCKET_RE = re.compile(r"^B([0-9]{1,10})-H([0-9]{1,10})-M([0-9]{1,10})-N([0-9]{1,10})-D([0-9]{1,10})-E([0-9]{1,10})$")
# Ranges of the stored numbers (a kernel never sees anything outside them).
MAX_DIM = 2**31 - 1
MAX_VALUE_MS = 1e12
MAX_TRIALS = 10**9
MAX_TIMESTAMP = 1e11
MAX_CONFIG_JSON = 4096


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
    """The dims of a bucket name; B, H, M, N must be powers of two, all in ``[1, MAX_DIM]``."""
    match = _BUCKET_RE.fullmatch(text)
    if match is None:
        raise ConfigSchemaError(f"invalid shape bucket {_show(text)}")
    dims = tuple(int(g) for g in match.groups())
    if any(not 1 <= d <= MAX_DIM for d in dims) or any(d & (d - 1) for d in dims[:4]):
        raise ConfigSchemaError(f"invalid shape bucket {_show(text)}")
    return Shape(*dims)


def _show(value: object, limit: int = 60) -> str:
    """A short one-line repr of a value read from storage, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            raise ConfigSchemaError(f"key: unknown kind {_show(values['kind'])}")
        if values["dtype"] not in DTYPES:
            raise ConfigSchemaError(f"key: unknown dtype {_show(values['dtype'])}")
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
        if not math.isfinite(self.value) or not 0 <= self.value <= MAX_VALUE_MS:
            raise ConfigSchemaError(f"value must be a number in [0, {MAX_VALUE_MS:g}], got {self.value!r}")
        if type(self.trials) is not int or not 0 <= self.trials <= MAX_TRIALS:
            raise ConfigSchemaError(f"trials must be an integer in [0, {MAX_TRIALS}], got {_show(self.trials)}")
        if not math.isfinite(self.updated_at) or not 0 <= self.updated_at <= MAX_TIMESTAMP:
            raise ConfigSchemaError(f"updated_at must be a timestamp in [0, {MAX_TIMESTAMP:g}]")

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


def _int_field(row: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = row.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ConfigSchemaError(f"field {name!r} must be an integer in [{low}, {high}], got {_show(value)}")
    return value


def _float_field(row: Mapping[str, Any], name: str, high: float) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise ConfigSchemaError(f"field {name!r} must be a number in [0, {high:g}], got {_show(value)}")
    return float(value)


def _str_field(row: Mapping[str, Any], name: str, limit: int, *, choices: tuple[str, ...] = ()) -> str:
    value = row.get(name)
    if type(value) is not str or len(value) > limit or (choices and value not in choices):
        allowed = f"one of {list(choices)}" if choices else f"a string of at most {limit} characters"
        raise ConfigSchemaError(f"field {name!r} must be {allowed}, got {_show(value)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _config_of(row: Mapping[str, Any]) -> object:
    text = row.get("config_json")
    if type(text) is not str or len(text) > MAX_CONFIG_JSON:
        raise ConfigSchemaError(f"stored config must be JSON text of at most {MAX_CONFIG_JSON} characters")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ConfigSchemaError(f"stored config is not JSON: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def _entry_of(row: Mapping[str, Any]) -> CacheEntry:
    """Parse and validate a stored row (types, ranges, allowed keys); ``ConfigSchemaError`` if invalid."""
    key = TuneKey.from_json({name: row.get(name) for name in _KEY_FIELDS})
    bucket = key.bucket_dims
    for dim, expected in zip(DIMS, bucket, strict=True):
        if _int_field(row, dim, 1, MAX_DIM) != expected:
            raise ConfigSchemaError(f"field {dim!r} = {row[dim]} disagrees with bucket {key.bucket}")
    study = row.get("study_name")
    if study is not None:
        study = _str_field(row, "study_name", 512)
    return CacheEntry(key, _require_str(row, "spec_name", "stored entry"), _config_of(row),  # type: ignore[arg-type]
                      _float_field(row, "value", MAX_VALUE_MS), _str_field(row, "metric", 16, choices=METRICS),
                      _str_field(row, "source", 16, choices=SOURCES), _str_field(row, "shape", 64), study,
                      _int_field(row, "trials", 0, MAX_TRIALS), _float_field(row, "updated_at", MAX_TIMESTAMP))


def row_label(row: Mapping[str, Any]) -> str:
    """``spec/kind/bucket`` of a stored row, safe to print whatever the row holds."""
    parts = (row.get("spec_name"), row.get("kind"), row.get("bucket"))
    return "/".join(p if isinstance(p, str) and p.isprintable() and len(p) <= 80 else _show(p, 40) for p in parts)


@dataclass(frozen=True)
class ImportCounts:
    """What an import did with each entry: written as ``new`` or ``updated``, ``unchanged`` (equal
    to the stored row, not written), or ``kept`` (the stored entry was better)."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    kept: int = 0

    @property
    def written(self) -> int:
        return self.new + self.updated

    def summary(self) -> str:
        kept = f", {self.kept} kept (the existing entry was better)" if self.kept else ""
        return f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged{kept}"


class TuningCache:
    """Best configs in one database (SQLite file or PostgreSQL), safe for concurrent writers.

    Opening checks what the database is (:func:`~attncc.autotune.schema.open_cache_engine`):
    tables are created only in a new or empty database, and any other database is refused.
    ``create=False`` never writes: a missing file or empty database raises :class:`CacheMissing`.
    Reads validate every row; invalid rows are skipped and recorded in :attr:`invalid`
    (``spec/kind/bucket -> problem``).
    """

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = resolve_storage_url(url)
        self.engine = open_cache_engine(self.url, create=create)
        self.invalid: dict[str, str] = {}

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> TuningCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def table_names(self) -> set[str]:
        """The tables of the database (attncc's, Optuna's, and any others)."""
        return set(self._run(lambda: inspect(self.engine).get_table_names()))

    def _insert(self, table: Table) -> Any:
        dialect = sqlite_dialect if is_sqlite(self.url) else pg_dialect
        return dialect.insert(table)

    def _run(self, fn: Any) -> Any:
        try:
            return retrying(fn)
        except SQLAlchemyError as exc:
            raise StorageError(f"tuning cache {self.display_url}: {one_line(exc)}") from None

    # -- writes -----------------------------------------------------------------------------

    def _upsert(self, entry: CacheEntry, keep_better: bool) -> Any:
        row = _row_of(entry)
        stmt = self._insert(ENTRIES).values(**row)
        updates = {name: stmt.excluded[name] for name in row if name not in _KEY_FIELDS}
        where = None
        if keep_better:
            where = or_(ENTRIES.c.metric != stmt.excluded.metric, stmt.excluded.value <= ENTRIES.c.value)
        stmt = stmt.on_conflict_do_update(index_elements=list(_KEY_FIELDS), set_=updates, where=where)
        if not is_sqlite(self.url):  # psycopg reports rowcount 1 even when the WHERE kept the old row
            stmt = stmt.returning(ENTRIES.c.spec_hash)  # a row comes back only if inserted or updated
        return stmt

    def put_many(self, entries: list[CacheEntry], *, keep_better: bool = True) -> int:
        """Write ``entries`` in one transaction (all or none); returns how many rows were written.

        With ``keep_better`` an existing entry with the same metric and a lower value is kept.
        """
        statements = [self._upsert(entry, keep_better) for entry in entries]
        sqlite = is_sqlite(self.url)

        def write() -> int:
            written = 0
            with self.engine.begin() as conn:
                for stmt in statements:
                    done = conn.execute(stmt)
                    written += bool(done.rowcount) if sqlite else done.first() is not None
            return written

        return int(self._run(write)) if statements else 0

    def merge(self, entries: list[CacheEntry]) -> ImportCounts:
        """Import ``entries`` in one transaction, keeping better existing ones; what each one did.

        An entry equal to the stored row is not written (``unchanged``), so importing the same
        file twice writes nothing the second time.
        """
        sqlite = is_sqlite(self.url)
        rows = [_row_of(entry) for entry in entries]
        statements = [self._upsert(entry, keep_better=True) for entry in entries]

        def write() -> ImportCounts:
            counts: Counter[str] = Counter()
            with self.engine.begin() as conn:
                for row, stmt in zip(rows, statements, strict=True):
                    where = [ENTRIES.c[name] == row[name] for name in _KEY_FIELDS]
                    found = conn.execute(select(ENTRIES).where(and_(*where))).first()
                    old = dict(found._mapping) if found is not None else None
                    if old is not None and all(old.get(name) == value for name, value in row.items()):
                        counts["unchanged"] += 1
                        continue
                    done = conn.execute(stmt)
                    written = bool(done.rowcount) if sqlite else done.first() is not None
                    counts["kept" if not written else "new" if old is None else "updated"] += 1
            return ImportCounts(**counts)

        return self._run(write) if entries else ImportCounts()

    def put(self, entry: CacheEntry, *, keep_better: bool = True) -> bool:
        """Insert or update the entry of ``entry.key``; returns whether the row was written."""
        return self.put_many([entry], keep_better=keep_better) == 1

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

    def _valid(self, rows: list[dict[str, Any]]) -> tuple[list[CacheEntry], list[str]]:
        """The rows that pass validation, and ``label: problem`` of the others (also kept in :attr:`invalid`)."""
        good: list[CacheEntry] = []
        bad: list[str] = []
        for row in rows:
            try:
                good.append(_entry_of(row))
            except ConfigSchemaError as exc:
                label = row_label(row)
                self.invalid[label] = str(exc)
                bad.append(f"{label}: {exc}")
        return good, bad

    def get(self, key: TuneKey) -> CacheEntry | None:
        """The entry of exactly ``key``; ``None`` when absent or invalid (recorded in :attr:`invalid`)."""
        found, _ = self._valid(self._select(*(ENTRIES.c[name] == getattr(key, name) for name in _KEY_FIELDS)))
        return found[0] if found else None

    def nearest(self, key: TuneKey) -> CacheEntry | None:
        """The valid entry of the nearest other bucket with the same spec, kind, dtype, GPU, versions, D, E."""
        dims = key.bucket_dims
        same = [ENTRIES.c[name] == getattr(key, name) for name in _KEY_FIELDS if name != "bucket"]
        rows = self._select(*same, ENTRIES.c.bucket != key.bucket, ENTRIES.c.d == dims.D, ENTRIES.c.e == dims.E)
        found, _ = self._valid(rows)
        if not found:
            return None
        return min(found, key=lambda e: (bucket_distance(dims, e.key.bucket_dims), e.key.bucket))

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
        good, bad = self._valid(self._select(*conditions))
        good.sort(key=lambda e: (e.spec_name, e.key.kind, e.key.dtype, e.key.gpu_name, e.key.bucket))
        return good, bad

    def count(self) -> int:
        """Stored rows, valid or not."""
        def run() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(ENTRIES)).scalar() or 0)

        return int(self._run(run))

    def stats(self) -> dict[str, Any]:
        """Entry counts by kind, GPU, source and version, invalid rows, and the SQLite file's size."""
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
