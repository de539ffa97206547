"""Run-time config lookup: exact key, then the nearest shape bucket on the same GPU, then the default.

Every attncc kernel calls :func:`lookup_config` before it launches.  The storage connection is
opened once per URL and every answer is memoized per key in-process, so a lookup after the first
is a dictionary access.  A missing cache is silent; a corrupt or foreign one is reported in one
warning line (once) and ignored, so the kernel still runs with its default config.  Every row
read is validated; invalid rows are skipped, counted (``invalid_rows``) and reported in one
warning line per storage.

Counters (``lookup_stats()``) say which level answered each call; ``ATTNCC_TUNING_STATS=1``
prints them on stderr at exit.  ``ATTNCC_TUNING_CACHE=off`` disables lookups (always default).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from attncc.autotune.cache import CacheMissing, TuneKey, TuningCache
from attncc.autotune.space import Config
from attncc.autotune.storage import (
    CACHE_DIR_ENV,
    LOG,
    STORAGE_ENV,
    StorageError,
    display_url,
    resolve_storage_url,
)
from attncc.autotune.tunable import Shape, as_shape
from attncc.errors import AttnccError

LEVELS = ("exact", "nearest", "default")
DISABLE_ENV = "ATTNCC_TUNING_CACHE"
STATS_ENV = "ATTNCC_TUNING_STATS"

_lock = threading.RLock()
_counts: dict[str, int] = dict.fromkeys((*LEVELS, "errors", "invalid_rows"), 0)
_memo: dict[tuple[str, TuneKey], tuple[str, Config | None]] = {}
# Fast path: raw call arguments + the environment that selects the storage -> answer.
_fast: dict[tuple[Any, ...], tuple[str, Config | None]] = {}
FAST_MEMO_LIMIT = 8192
_handles: dict[str, TuningCache | None] = {}
_warned: set[str] = set()
_invalid_seen: set[tuple[str, str]] = set()
_last_url: str | None = None
_atexit_registered = False


def _warn_once(url: str, message: str, *, once_key: str | None = None, ignored: bool = True) -> None:
    """Log ``message`` once per ``once_key`` (default: the message itself), on one line."""
    key = once_key or message
    if key not in _warned:
        _warned.add(key)
        what = "ignored, using default configs" if ignored else "partly ignored"
        LOG.warning("attncc tuning cache %s %s: %s", display_url(url), what, message.replace("\n", " "))


def _handle(url: str) -> TuningCache | None:
    """The open cache of ``url``; ``None`` when missing or broken (broken ones warn once)."""
    if url in _handles:
        return _handles[url]
    handle: TuningCache | None = None
    try:
        handle = TuningCache(url, create=False)
    except CacheMissing:
        handle = None
    except (StorageError, AttnccError) as exc:
        _counts["errors"] += 1
        _warn_once(url, str(exc))
    _handles[url] = handle
    return handle


def _report_invalid(url: str, cache: TuningCache) -> None:
    """Count the invalid rows the cache skipped; one warning per storage names the first."""
    fresh = [(label, problem) for label, problem in cache.invalid.items() if (url, label) not in _invalid_seen]
    for label, _ in fresh:
        _invalid_seen.add((url, label))
        _counts["invalid_rows"] += 1
    if fresh:
        label, problem = fresh[0]
        _warn_once(url, f"invalid entries skipped (first: {label}: {problem}); `attncc cache ls` lists them",
                   once_key=f"invalid:{url}", ignored=False)


def _resolve(url: str, key: TuneKey) -> tuple[str, Config | None]:
    cache = _handle(url)
    if cache is None:
        return "default", None
    try:
        entry = cache.get(key)
        level = "exact"
        if entry is None:
            entry, level = cache.nearest(key), "nearest"
        _report_invalid(url, cache)
        if entry is not None:
            return level, entry.config
    except StorageError as exc:
        _counts["errors"] += 1
        _warn_once(url, str(exc))
        _handles[url] = None
        cache.close()
    return "default", None


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "false", "no")


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered and os.environ.get(STATS_ENV, "") not in ("", "0"):
        atexit.register(lambda: print(f"attncc tuning lookups: {lookup_stats()}", file=sys.stderr))
        _atexit_registered = True


def lookup_config(spec_hash: str, kind: str, shape: Shape | tuple[int, ...], dtype: str, default: Mapping[str, int]) -> dict[str, int]:
    """The config a kernel should launch with (a fresh dict the caller may modify).

    Order: the exact key (spec hash, kind, shape bucket, dtype, this GPU, versions), then the
    nearest bucket with the same spec, kind, dtype, head dims, GPU and versions, then ``default``.
    """
    environ = os.environ
    env = (environ.get(STORAGE_ENV), environ.get(CACHE_DIR_ENV), environ.get("XDG_CACHE_HOME"),
           environ.get(DISABLE_ENV))
    fast_key = (env, spec_hash, kind, tuple(shape), dtype)
    with _lock:
        answer = _fast.get(fast_key)
        if answer is None:
            answer = _answer(spec_hash, kind, shape, dtype)
            if len(_fast) >= FAST_MEMO_LIMIT:
                _fast.clear()
            _fast[fast_key] = answer
        level, config = answer
        _counts[level] += 1
    return dict(config if config is not None else default)


def _answer(spec_hash: str, kind: str, shape: Shape | tuple[int, ...], dtype: str) -> tuple[str, Config | None]:
    """The level and stored config for one call (memoized per storage URL and bucket key)."""
    global _last_url
    _register_atexit()
    if _disabled():
        return "default", None
    url = resolve_storage_url(None)
    _last_url = url
    key = TuneKey.for_shape(spec_hash, kind, as_shape(shape), dtype)
    answer = _memo.get((url, key))
    if answer is None:
        answer = _resolve(url, key)
        _memo[(url, key)] = answer
    return answer


def lookup_stats() -> dict[str, Any]:
    """Lookup counters: answers per level, ``hits`` (exact + nearest), ``misses``, storage errors."""
    with _lock:
        stats: dict[str, Any] = dict(_counts)
        stats["hits"] = _counts["exact"] + _counts["nearest"]
        stats["misses"] = _counts["default"]
        stats["memoized_keys"] = len(_memo)
        stats["memoized_calls"] = len(_fast)
        stats["storage"] = display_url(_last_url) if _last_url else None
        return stats


def reset_lookup_stats() -> None:
    """Zero the counters (memoized answers are kept)."""
    with _lock:
        for name in _counts:
            _counts[name] = 0


def invalidate_lookup_cache() -> None:
    """Forget memoized answers and open connections (after tuning or importing new entries)."""
    with _lock:
        _memo.clear()
        _fast.clear()
        for handle in _handles.values():
            if handle is not None:
                handle.close()
        _handles.clear()
        _warned.clear()
        _invalid_seen.clear()
