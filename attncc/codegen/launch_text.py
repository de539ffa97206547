"""Host code emitted as text into generated modules: the launch layer (:mod:`attncc.codegen.launch`)
and any schedule's own host file written the same way (imports only torch/triton/math, a module
docstring first)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

LAUNCH_PATH = Path(__file__).with_name("launch.py")


def launch_file_text() -> str:
    """The whole of ``launch.py`` (for cache keys: a change anywhere in it changes them)."""
    return LAUNCH_PATH.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=8)
def emitted_source(path: Path) -> str:
    """The file at ``path`` without its module docstring: the text a template hook emits."""
    text = path.read_text(encoding="utf-8")
    body = ast.parse(text).body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        raise ValueError(f"{path}: expected a module docstring first")
    lines = text.splitlines(keepends=True)
    return "".join(lines[body[0].end_lineno:]).strip("\n") + "\n"


def launch_source() -> str:
    """``launch.py`` without its module docstring: the text the ``{{LAUNCH}}`` hook emits."""
    return emitted_source(LAUNCH_PATH)
