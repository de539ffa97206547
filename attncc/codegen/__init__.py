"""Code generation: lowered IR -> Triton source, cached by content hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import networkx as nx

from attncc.codegen import cache
from attncc.codegen.prefill import render, schedule_templates
from attncc.passes import lower
from attncc.spec.model import Spec


@dataclass
class Generated:
    """A spec's lowered IR, its source key and (once written) its file and module."""

    spec: Spec
    graph: nx.DiGraph
    key: str
    source: str
    path: Path | None = None
    module: ModuleType | None = None


def generate(spec: Spec) -> Generated:
    """Lower ``spec`` and produce its source, from the disk cache when present."""
    g = lower(spec)
    sched = g.graph["schedule"]
    key = cache.source_key(spec.canonical(), schedule_templates(sched.template), sched.name)
    text = cache.read(key)
    if text is None:
        text = render(g, key)
    return Generated(spec, g, key, text)


def load_module(gen: Generated) -> ModuleType:
    """Write (if needed) and import the generated module."""
    if gen.module is None:
        if cache.read(gen.key) != gen.source:
            gen.path = cache.write(gen.key, gen.source)
        else:
            gen.path = cache.cache_dir() / f"k_{gen.key}.py"
        gen.module = cache.import_source(gen.key, gen.path)
    return gen.module
