"""Code generation: lowered IR -> Triton source, executed from the text generated in this process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import networkx as nx

from attncc.codegen import cache
from attncc.schedules.prefill.render import render, schedule_templates
from attncc.ir import expr as E
from attncc.passes import lower
from attncc.spec.model import Spec


@dataclass
class Generated:
    """A spec's lowered IR, its source key and text, and (once loaded) its module and readable copy."""

    spec: Spec
    graph: nx.DiGraph
    key: str
    source: str
    path: Path | None = None
    module: ModuleType | None = None


def generate(spec: Spec) -> Generated:
    """Lower ``spec`` and render its source (always: nothing is read back from the kernel cache)."""
    g = lower(spec)
    sched = g.graph["schedule"]
    # canonical() identifies a meaning (n <= m and m >= n alike); the key also covers the spelling,
    # which the printed module shows.
    spelling = [E.canonical(spec.kv_head), E.canonical(spec.modify), E.canonical(spec.mask)]
    key = cache.source_key({**spec.canonical(), "spelling": spelling}, schedule_templates(sched.template),
                           sched.name)
    return Generated(spec, g, key, render(g, key))


def load_module(gen: Generated) -> ModuleType:
    """Run the generated text as a module; a copy goes to the kernel cache for reading only."""
    if gen.module is None:
        gen.path = cache.write(gen.key, gen.source)
        gen.module = cache.execute(gen.key, gen.source)
    return gen.module
