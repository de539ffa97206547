"""Global positions for sequence shards, at the spec level (no new kernel code).

A rank computes attention between one of its query chunks and one key chunk at a time.  The
kernels index rows and columns from 0, but masks and score mods must see the GLOBAL positions.
:func:`global_spec` rewrites a :class:`~attncc.spec.model.Spec` so that they do:

- ``m -> m + cp_q0`` and ``n -> n + cp_k0``: the first global position of the query chunk and of
  the key chunk are integer params (runtime scalars, one compiled module for every pair);
- ``M -> cp_M`` and ``N -> cp_N``: the full sequence lengths (a spec that reads ``N``, such as
  ``na2d``, sees the whole sequence, not the chunk).

The mask analysis then yields each pair's key segments as expressions of the offsets, so the
kernels' iteration plans skip empty tiles inside a pair as they do on one device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy as sp

from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.spec.model import ParamDecl, Spec

Q0, K0, GLOBAL_M, GLOBAL_N = "cp_q0", "cp_k0", "cp_M", "cp_N"
OFFSET_PARAMS: tuple[ParamDecl, ...] = (
    ParamDecl(Q0, "int", 0, "global position of the query chunk's first row"),
    ParamDecl(K0, "int", 0, "global position of the key chunk's first column"),
    ParamDecl(GLOBAL_M, "int", 1, "global query length"),
    ParamDecl(GLOBAL_N, "int", 1, "global key length"),
)


def substitution() -> dict[sp.Symbol, sp.Expr]:
    """The index and size substitution of :func:`global_spec`."""
    by = {p.name: p.symbol for p in OFFSET_PARAMS}
    return {E.m: E.m + by[Q0], E.n: E.n + by[K0],
            E.SIZE_SYMBOLS["M"]: by[GLOBAL_M], E.SIZE_SYMBOLS["N"]: by[GLOBAL_N]}


def global_spec(spec: Spec) -> Spec:
    """``spec`` with masks and score mods reading global positions (see the module docstring)."""
    taken = [p for p in OFFSET_PARAMS if p.name in spec.params]
    if taken:
        raise InputError(f"{spec.name}: parameter name '{taken[0].name}' is reserved for context parallelism")
    sub = substitution()
    return dataclasses.replace(
        spec, name=f"{spec.name}_cp", description=f"{spec.description} (sequence shard: global positions)",
        modify=spec.modify.xreplace(sub), mask=spec.mask.xreplace(sub),
        params={**spec.params, **{p.name: p for p in OFFSET_PARAMS}})


def pair_params(params: dict[str, Any], q0: int, k0: int, length: int) -> dict[str, Any]:
    """The user's params plus the offsets of one (query chunk, key chunk) pair."""
    return {**params, Q0: int(q0), K0: int(k0), GLOBAL_M: int(length), GLOBAL_N: int(length)}


def bare_position_captures(spec: Spec) -> tuple[tuple[str, int], ...]:
    """``(capture, dim)`` of each captured-tensor dimension the ORIGINAL spec indexes by a bare
    ``m`` or ``n``: those must cover the global length."""
    found = set()
    for expr in (spec.modify, spec.mask):
        for ld in E.loads(expr):
            for dim, index in enumerate(ld.indices):
                if index in (E.m, E.n):
                    found.add((ld.tensor_name, dim))
    return tuple(sorted(found))
