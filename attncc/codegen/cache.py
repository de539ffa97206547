"""On-disk cache of generated sources, keyed by a hash of everything that shapes them.

The key is the sha256 of a canonical JSON serialisation of: the spec's canonical
form, the template text, the attncc and Triton versions.  Files are written
atomically (temp file + ``os.replace``); the first line of each file records the
sha256 of the rest, and a file whose content does not match is regenerated.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import triton

from attncc.version import __version__

_MARK = "# attncc-source-sha256: "


def cache_dir() -> Path:
    root = os.environ.get("ATTNCC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "attncc")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def source_key(spec_canonical: dict[str, Any], template: str, schedule: str) -> str:
    payload = {
        "spec": spec_canonical, "template": hashlib.sha256(template.encode()).hexdigest(),
        "schedule": schedule, "attncc": __version__, "triton": triton.__version__,
        "compiler": compiler_fingerprint(),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def read(key: str) -> str | None:
    """The cached source for ``key``, or None when absent or corrupt."""
    path = cache_dir() / f"k_{key}.py"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    first, _, body = text.partition("\n")
    if first != _MARK + _digest(body):
        return None
    return body


def write(key: str, body: str) -> Path:
    """Store ``body`` atomically; returns the file path."""
    path = cache_dir() / f"k_{key}.py"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_MARK + _digest(body) + "\n" + body)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def import_source(key: str, path: Path) -> ModuleType:
    """Import a generated module from its file (Triton needs real source files)."""
    name = f"attncc_kernels.k_{key}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import generated kernel {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
