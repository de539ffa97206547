"""Export and import of tuning-cache entries as JSON with a checked metadata block.

File layout::

    {
      "format": "attncc-tuning-cache",
      "format_version": 1,
      "metadata": {"attncc_version": "0.1.0", "triton_version": "3.9.0",
                   "gpus": [{"name": "NVIDIA H100 80GB HBM3", "capability": "sm_90"}],
                   "exported_at": "2025-01-01T00:00:00+00:00", "entries": 12},
      "entries": [{"key": {...}, "spec_name": ..., "config": {...}, "value": ..., ...}, ...]
    }

On import the file is parsed as data only (no pickle, no code), every entry is validated against
its kind's config space, the metadata block must agree with the entries, and the metadata must
match this machine (attncc and Triton versions, GPU) unless ``force`` is given.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attncc.autotune.cache import CacheEntry, ImportCounts, TuningCache
from attncc.autotune.device import GpuIdentity, attncc_version, current_identity, triton_version
from attncc.autotune.space import ConfigSchemaError
from attncc.errors import InputError

FORMAT = "attncc-tuning-cache"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ExportMetadata:
    attncc_version: str
    triton_version: str
    gpus: tuple[GpuIdentity, ...]
    exported_at: str
    entries: int

    def to_json(self) -> dict[str, Any]:
        return {
            "attncc_version": self.attncc_version,
            "triton_version": self.triton_version,
            "gpus": [{"name": g.name, "capability": g.capability} for g in self.gpus],
            "exported_at": self.exported_at,
            "entries": self.entries,
        }


def metadata_for(entries: list[CacheEntry]) -> ExportMetadata:
    """The metadata block describing ``entries`` (current versions when the list is empty)."""
    versions = {(e.key.attncc_version, e.key.triton_version) for e in entries}
    attncc, triton = versions.pop() if len(versions) == 1 else (attncc_version(), triton_version())
    if versions:
        raise InputError("cannot export entries of several attncc/Triton versions into one file; filter them")
    gpus = tuple(sorted({e.key.identity for e in entries}))
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return ExportMetadata(attncc, triton, gpus, now, len(entries))


def write_export(entries: list[CacheEntry], path: str | Path) -> int:
    """Write ``entries`` with their metadata block to ``path`` atomically; returns how many."""
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": metadata_for(entries).to_json(),
        "entries": [e.to_json() for e in entries],
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".attncc-export-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(entries)


def export_file(cache: TuningCache, path: str | Path, *, kind: str | None = None,
                spec_hash: str | None = None, gpu_name: str | None = None) -> int:
    """Write the valid (filtered) entries of ``cache`` to ``path`` atomically; returns how many."""
    entries, _bad = cache.entries(kind=kind, spec_hash=spec_hash, gpu_name=gpu_name)
    return write_export(entries, path)


MAX_INT_DIGITS = 20


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _read_text(path: Path) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, not a tuning-cache export")
    if info.st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: file too large for a tuning-cache export")
    if info.st_size == 0:
        raise InputError(f"{path}: empty file, not a tuning-cache export")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a valid attncc tuning-cache export ({detail})") from None


def _load_json(path: Path) -> Any:
    """The file as JSON data: finite numbers only, integers of at most 20 digits, bounded nesting."""
    text = _read_text(path)
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int)
    except RecursionError:
        raise InputError(f"{path}: not a valid attncc tuning-cache export (JSON nested too deeply)") from None
    except MemoryError:
        raise InputError(f"{path}: not a valid attncc tuning-cache export (too large to parse)") from None
    except ValueError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a valid attncc tuning-cache export ({detail})") from None


def _parse_metadata(path: Path, data: object) -> ExportMetadata:
    if not isinstance(data, dict):
        raise InputError(f"{path}: metadata block missing")
    gpus_raw = data.get("gpus")
    if not isinstance(gpus_raw, list):
        raise InputError(f"{path}: metadata.gpus must be a list")
    gpus: list[GpuIdentity] = []
    for gpu in gpus_raw:
        if not (isinstance(gpu, dict) and isinstance(gpu.get("name"), str) and isinstance(gpu.get("capability"), str)):
            raise InputError(f"{path}: metadata.gpus entries need string name and capability")
        gpus.append(GpuIdentity(gpu["name"], gpu["capability"]))
    fields = {name: data.get(name) for name in ("attncc_version", "triton_version", "exported_at")}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise InputError(f"{path}: metadata.{name} must be a string")
    count = data.get("entries")
    if isinstance(count, bool) or not isinstance(count, int):
        raise InputError(f"{path}: metadata.entries must be an integer")
    return ExportMetadata(str(fields["attncc_version"]), str(fields["triton_version"]), tuple(gpus),
                          str(fields["exported_at"]), count)


def read_export(path: str | Path) -> tuple[ExportMetadata, list[CacheEntry]]:
    """Parse and validate an export file; one-line ``InputError`` on any problem."""
    source = Path(path)
    document = _load_json(source)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{source}: not an attncc tuning-cache export (format is not {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{source}: unsupported format_version {document.get('format_version')!r}")
    metadata = _parse_metadata(source, document.get("metadata"))
    raw_entries = document.get("entries")
    if not isinstance(raw_entries, list):
        raise InputError(f"{source}: entries must be a list")
    entries: list[CacheEntry] = []
    for index, raw in enumerate(raw_entries):
        try:
            entries.append(CacheEntry.from_json(raw))
        except ConfigSchemaError as exc:
            raise InputError(f"{source}: entry {index}: {exc}") from None
    _check_consistent(source, metadata, entries)
    return metadata, entries


def _check_consistent(path: Path, metadata: ExportMetadata, entries: list[CacheEntry]) -> None:
    """The metadata block must describe the entries (this is never overridable)."""
    if metadata.entries != len(entries):
        raise InputError(f"{path}: metadata says {metadata.entries} entries, file has {len(entries)}")
    for index, entry in enumerate(entries):
        key = entry.key
        if (key.attncc_version, key.triton_version) != (metadata.attncc_version, metadata.triton_version):
            raise InputError(f"{path}: entry {index} has versions that disagree with the metadata block")
        if key.identity not in metadata.gpus:
            raise InputError(f"{path}: entry {index} is for GPU {key.identity}, not listed in the metadata block")


def mismatches(metadata: ExportMetadata, identity: GpuIdentity | None = None) -> list[str]:
    """How the file's metadata differs from this machine (empty when it matches)."""
    here = identity or current_identity()
    problems: list[str] = []
    if metadata.attncc_version != attncc_version():
        problems.append(f"attncc {metadata.attncc_version} (here {attncc_version()})")
    if metadata.triton_version != triton_version():
        problems.append(f"triton {metadata.triton_version} (here {triton_version()})")
    others = [str(g) for g in metadata.gpus if g != here]
    if others:
        problems.append(f"GPU {', '.join(others)} (here {here})")
    return problems


def check_import(path: str | Path, *, force: bool = False,
                 identity: GpuIdentity | None = None) -> list[CacheEntry]:
    """The validated entries of an export file, ready to write; one-line ``InputError`` otherwise.

    A metadata mismatch (versions or GPU) is refused unless ``force``.  Nothing is written.
    """
    metadata, entries = read_export(path)
    problems = mismatches(metadata, identity)
    if problems and not force:
        raise InputError(f"{path}: exported for {'; '.join(problems)}; use --force to import anyway")
    return entries


def import_file(cache: TuningCache, path: str | Path, *, force: bool = False,
                identity: GpuIdentity | None = None) -> ImportCounts:
    """Import an export file into ``cache``; what each entry did (:class:`ImportCounts`).

    The whole file is validated before anything is written, and all entries are written in
    one transaction (:meth:`TuningCache.merge`: idempotent, better existing entries kept).  A
    metadata mismatch (versions or GPU) raises a one-line ``InputError`` unless ``force``.
    """
    entries = check_import(path, force=force, identity=identity)
    counts = cache.merge(entries)
    from attncc.autotune.lookup import invalidate_lookup_cache

    invalidate_lookup_cache()
    return counts
