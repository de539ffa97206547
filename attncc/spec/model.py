"""The parsed form of an attention spec, independent of where it came from.

A :class:`Spec` is produced either from a TOML file (:mod:`attncc.spec.loader`)
or from FlexAttention-style Python functions (:mod:`attncc.runtime.trace`).
Index roles are fixed: ``q[b, h, m, d]``, ``k[b, hk, n, d]``, ``v[b, hk, n, e]``,
where ``hk`` is the key/value head, defined by ``kv_head`` as an expression of
``h`` (``h`` itself, or ``h // (H // HK)`` for grouped-query attention).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from attncc.ir import expr as E

CAPTURE_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "bool")


def canonical_hash(data: dict[str, Any]) -> str:
    """sha256 (hex, 16 characters) of plain data, serialised canonically."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical_relations(expr: sp.Basic) -> sp.Basic:
    """``n <= m`` and ``m >= n`` serialise alike (one cache entry per meaning)."""
    return expr.replace(lambda e: isinstance(e, sp.core.relational.Relational), lambda r: r.canonical)


@dataclass(frozen=True)
class ParamDecl:
    """A runtime scalar of the spec (window size, softcap, ...), with its default."""

    name: str
    kind: str  # "int" | "float"
    default: int | float
    doc: str = ""

    @property
    def symbol(self) -> sp.Symbol:
        return E.param_symbol(self.name, self.kind)


@dataclass(frozen=True)
class CaptureDecl:
    """A captured tensor read by the score modification or the mask.

    ``dims`` names its dimensions (documentation and error messages only);
    ``dtype`` is the dtype the kernel expects (inputs are converted if needed).
    """

    name: str
    dims: tuple[str, ...]
    dtype: str = "float32"
    doc: str = ""

    @property
    def ndim(self) -> int:
        return len(self.dims)


@dataclass(frozen=True)
class Spec:
    """One softmax-attention variant as an Einsum cascade.

    * ``score``: ``S[b,h,m,n] = sum_d q[b,h,m,d] k[b,hk,n,d] * scale`` (``scaled``
      says whether ``scale`` multiplies it);
    * ``modify``: expression in ``score``, indices, params and captured loads;
    * ``mask``: boolean predicate over ``(b, h, m, n)``;
    * normalisation ``softmax`` over ``n``;
    * output: ``O[b,h,m,e] = sum_n P[b,h,m,n] v[b,hk,n,e]``.
    """

    name: str
    description: str
    source: str
    kv_head: sp.Expr = E.h
    scaled: bool = True
    modify: sp.Expr = E.score
    mask: sp.Basic = sp.true
    params: dict[str, ParamDecl] = field(default_factory=dict)
    captures: dict[str, CaptureDecl] = field(default_factory=dict)
    normalize: str = "softmax"

    def canonical(self) -> dict[str, Any]:
        """Everything that shapes generated code (the description too: it is shown in the module), as plain data."""
        return {
            "name": self.name,
            "description": self.description,
            "kv_head": E.canonical(self.kv_head),  # relationals below in canonical orientation
            "scaled": self.scaled,
            "modify": E.canonical(_canonical_relations(self.modify)),
            "mask": E.canonical(_canonical_relations(self.mask)),
            "normalize": self.normalize,
            "params": [[p.name, p.kind, p.default] for p in self.params.values()],
            "captures": [[c.name, list(c.dims), c.dtype] for c in self.captures.values()],
        }

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical serialisation (hex, 16 characters)."""
        return canonical_hash(self.canonical())

    @property
    def tuning_hash(self) -> str:
        """sha256 of what shapes the kernels' speed: the canonical form without the description
        (which is only printed into the module), so tuned configs are shared across descriptions."""
        return canonical_hash({k: v for k, v in self.canonical().items() if k != "description"})

    @property
    def is_gqa(self) -> bool:
        return self.kv_head != E.h
