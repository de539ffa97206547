"""The built-in spec library: where its files are, and their descriptions read without parsing.

Imports only the standard library, so ``attncc specs`` lists the library without loading sympy;
:mod:`attncc.spec.loader` parses and checks the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _library_dir() -> Path:
    """The built-in specs: ``attncc/specs`` in an installed package, else ``<repo>/specs`` of a checkout."""
    packaged = Path(__file__).resolve().parents[1] / "specs"
    return packaged if any(packaged.glob("*.toml")) else packaged.parents[1] / "specs"


LIBRARY_DIR = _library_dir()


def library() -> dict[str, Path]:
    """Built-in specs: name -> file."""
    return {p.stem: p for p in sorted(LIBRARY_DIR.glob("*.toml"))}


def description(path: Path) -> str:
    """The ``description`` field of a built-in spec file (TOML only: its expressions are not parsed)."""
    with path.open("rb") as f:
        text = tomllib.load(f).get("description", "")
    return text if isinstance(text, str) else ""
