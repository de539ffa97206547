"""Render a recurrence template with test hooks and import the module (kernel-level tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from attncc.codegen.context import fill_hooks
from attncc.codegen.literals import py_literal


def render(template: Path, header: str, feature: str, configs: dict) -> str:
    """Module text of ``template`` with ``feature`` as the ``{{FEATURE}}`` text and a vector gate."""
    return fill_hooks(template.read_text(), {"HEADER": f'"""{header}"""', "FEATURE": feature,
                                             "DEFAULT_CONFIGS": py_literal(configs),
                                             "GATE_KIND": py_literal("vector")})


def import_rendered(text: str, path: Path) -> ModuleType:
    """Write ``text`` to ``path`` (a temporary directory) and import it."""
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
