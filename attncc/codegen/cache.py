"""Generated kernel modules: executed from the text generated in this process, copied to disk to read.

Nothing read from the kernel directory is ever executed.  A module is compiled from the source
text attncc has just generated (:func:`execute`), under a pseudo file name registered in
:mod:`linecache` (so Triton's ``inspect.getsourcelines`` sees exactly the executed text); no
import machinery is involved, so no ``__pycache__`` bytecode is read or written.  The copy in
the kernel directory (:func:`write`, atomic: temp file + ``os.replace``) is only for people and
tools to read.

The key is the sha256 of a canonical JSON serialisation of: the spec's canonical form, the
template text, the schedule, the attncc and Triton versions and the compiler's own sources.

When the kernel directory cannot be used (a path that cannot exist, a file in the way, no write
permission), one warning is given and a private temporary directory is used instead; when that
fails too, no copy is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import linecache
import os
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from attncc.version import __version__


class KernelCacheWarning(UserWarning):
    """The kernel directory could not be used; a temporary one (or none) is used instead."""


_FALLBACK: dict[str, Path | None] = {}  # unusable configured directory -> what is used instead
_EXECUTED: dict[str, tuple[str, ModuleType]] = {}  # key -> (source text, module), this process only


def configured_dir() -> Path:
    """``$ATTNCC_CACHE_DIR/kernels``, else ``~/.cache/attncc/kernels`` (not checked)."""
    root = os.environ.get("ATTNCC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "attncc")
    return Path(root) / "kernels"


def _usable(path: Path) -> bool:
    """Create ``path`` if needed and check that a file can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe_")
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError):
        return False
    return True


def _fall_back(path: Path, reason: str) -> Path | None:
    """The replacement of an unusable ``path`` (a private temporary directory, else None); warns once."""
    key = str(path)
    if key not in _FALLBACK:
        try:
            fallback: Path | None = Path(tempfile.mkdtemp(prefix="attncc-kernels-"))
        except OSError:
            fallback = None
        where = f"using {fallback}" if fallback is not None else "generated sources are not written"
        warnings.warn(f"attncc: kernel cache {path} is unusable ({reason}); {where}", KernelCacheWarning,
                      stacklevel=3)
        _FALLBACK[key] = fallback
    return _FALLBACK[key]


def cache_dir() -> Path | None:
    """The directory generated sources are copied to, or None when no directory can be used."""
    path = configured_dir()
    if str(path) in _FALLBACK:
        return _FALLBACK[str(path)]
    if _usable(path):
        return path
    return _fall_back(path, "cannot create files there")


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """sha256 of the compiler's own sources (IR, passes, codegen): a change there changes keys."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("ir", "passes", "codegen"):
        for f in sorted((root / sub).rglob("*")):
            if f.suffix in (".py", ".tmpl") and f.is_file():
                h.update(f.relative_to(root).as_posix().encode())
                h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def triton_version() -> str:
    """Triton's version, read without importing triton when it is not imported yet (it is slow to import)."""
    module = sys.modules.get("triton")
    if module is not None:
        return str(module.__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton")
    except PackageNotFoundError:  # a source build without metadata
        import triton

        return str(triton.__version__)


def source_key(spec_canonical: dict[str, Any], template: str, schedule: str) -> str:
    """Hex key (24 characters) of everything that shapes a generated module's text."""
    payload = {
        "spec": spec_canonical, "template": hashlib.sha256(template.encode()).hexdigest(),
        "schedule": schedule, "attncc": __version__, "triton": triton_version(),
        "compiler": compiler_fingerprint(),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data  # compared as bytes: never decoded, never executed
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".py")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write(key: str, text: str) -> Path | None:
    """Copy ``text`` to ``k_<key>.py`` for reading (unless identical there); its path, or None."""
    directory = cache_dir()
    if directory is None:
        return None
    path = directory / f"k_{key}.py"
    data = text.encode("utf-8")
    if _same_bytes(path, data):
        return path
    try:
        _write_atomic(path, data)
    except OSError as exc:
        if directory != configured_dir():
            return None
        directory = _fall_back(directory, type(exc).__name__)
        if directory is None:
            return None
        path = directory / f"k_{key}.py"
        try:
            _write_atomic(path, data)
        except OSError:
            return None
    return path


def execute(key: str, text: str) -> ModuleType:
    """A new module run from ``text`` (the source generated in this process), memoised by key and text.

    The code's file name is ``<attncc kernel k_<key>>``, registered in :mod:`linecache` with no
    modification time, so tracebacks and Triton's source inspection read this exact text and never
    a file on disk.
    """
    done = _EXECUTED.get(key)
    if done is not None and done[0] == text:
        return done[1]
    filename = f"<attncc kernel k_{key}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    code = compile(text, filename, "exec", dont_inherit=True)
    module = ModuleType(f"attncc_kernels.k_{key}")
    module.__dict__["__attncc_key__"] = key
    sys.modules[module.__name__] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - text generated by attncc in this process
    except BaseException:
        del sys.modules[module.__name__]
        raise
    _EXECUTED[key] = (text, module)
    return module


def executed(key: str) -> ModuleType | None:
    """The module of ``key`` if one was generated and executed in this process."""
    done = _EXECUTED.get(key)
    return done[1] if done is not None else None
