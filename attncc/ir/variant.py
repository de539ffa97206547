"""What the IR records about a variant besides its expressions.

A :class:`Variant` is the part of a :class:`~attncc.spec.model.Spec` that names things: the
variant's name and description (printed into the module), whether the score is scaled, its
runtime params and captured tensors.  The expressions themselves (score modification, mask,
key/value head map) live only on IR nodes, so everything after lowering reads them from the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from attncc.spec.model import CaptureDecl, ParamDecl, Spec


@dataclass(frozen=True)
class Variant:
    """Names and declarations of one variant (no expressions)."""

    name: str
    description: str
    source: str
    scaled: bool
    params: tuple[ParamDecl, ...]
    captures: tuple[CaptureDecl, ...]

    @classmethod
    def of(cls, spec: Spec) -> Variant:
        return cls(spec.name, spec.description, spec.source, spec.scaled,
                   tuple(spec.params.values()), tuple(spec.captures.values()))

    def capture(self, name: str) -> CaptureDecl:
        for c in self.captures:
            if c.name == name:
                return c
        raise KeyError(f"variant {self.name!r} has no captured tensor {name!r}")

    def param(self, name: str) -> ParamDecl:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"variant {self.name!r} has no param {name!r}")


def variant_of(g: nx.DiGraph) -> Variant:
    """The :class:`Variant` a cascade was built for (set once by ``build_cascade``)."""
    v = g.graph.get("variant")
    if not isinstance(v, Variant):
        raise TypeError("IR graph carries no Variant (built outside build_cascade?)")
    return v
