"""Recurrence specs: linear attention and its gated descendants, as a cascade with a state.

    S_t = Diag(exp(g_t)) S_{t-1} + phi(k_t)^T v_t        o_t = scale * phi(q_t) S_t

A spec file with a ``[state]`` section (and ``normalize = "none"``) is a :class:`RecurrenceSpec`:

    [inputs]
    q = "b h t k"
    k = "b h t k"
    v = "b h t v"
    g = "b h t k"              # optional log-gate input: "b h t" (scalar) or "b h t k" (vector)

    [state]
    feature = "x"              # phi, an expression of x applied elementwise (default: x)
    gate = "g[b, h, t, k]"     # the log-space gate (default 0: no gate)
    decay = true               # the gate must be <= 0 (checked on the inputs; default true)
    direction = "causal"       # or "bidirectional"

    [cascade]
    normalize = "none"

The gate is an expression of the indices ``b, h, t, k``, params, captured tensors (a per-head slope
``slopes[h]``), sizes and the input ``g``.  Its kind follows from what it reads: ``none`` (0),
``constant`` (per head: no ``t``, no ``g``), ``scalar`` (``g[b, h, t]``), ``vector`` (the key index
``k``).  Every error is a one-line :class:`SpecError` with ``file:line:col``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.spec.model import CaptureDecl, ParamDecl, canonical_hash
from attncc.spec.parser import Scope, parse_expression

# The recurrence's own index symbols (t: the token, kd: the key dimension; b and h are shared).
t_index = sp.Symbol("t", integer=True, nonnegative=True)
k_index = sp.Symbol("kd", integer=True, nonnegative=True)
x = sp.Symbol("x", real=True)
INDEX_NAMES: dict[str, sp.Symbol] = {"b": E.b, "h": E.h, "t": t_index, "k": k_index}
SIZE_NAMES: dict[str, sp.Symbol] = {name: sp.Symbol(name, integer=True, positive=True) for name in ("B", "H", "T", "K", "V")}

INPUT_DIMS = {"q": ("b", "h", "t", "k"), "k": ("b", "h", "t", "k"), "v": ("b", "h", "t", "v")}
GATE_DIMS = {("b", "h", "t"): "scalar", ("b", "h", "t", "k"): "vector"}
STATE_KEYS = {"feature", "gate", "decay", "direction"}
DIRECTIONS = ("causal", "bidirectional")
GATE_KINDS = ("none", "constant", "scalar", "vector")


@dataclass(frozen=True)
class RecurrenceSpec:
    """One linear-recurrence variant (see the module docstring).

    ``feature``: phi as an expression of :data:`x`; ``gate``: the log-gate expression (indices
    ``b, h, t, kd``, params, captured loads, the input ``g`` as a load); ``gate_input``: the
    declared dims of the input ``g`` (or None); ``decay``: the gate must be <= 0.
    """

    name: str
    description: str
    source: str
    feature: sp.Expr = x
    gate: sp.Expr = sp.Integer(0)
    gate_input: tuple[str, ...] | None = None
    decay: bool = True
    direction: str = "causal"
    params: dict[str, ParamDecl] = field(default_factory=dict)
    captures: dict[str, CaptureDecl] = field(default_factory=dict)
    normalize: str = "none"
    scaled: bool = True  # o = scale * phi(q) S (scale defaults to K ** -0.5)

    def canonical(self) -> dict[str, Any]:
        """Everything that shapes generated code, as plain data."""
        return {
            "kind": "recurrence", "name": self.name, "description": self.description,
            "feature": E.canonical(self.feature), "gate": E.canonical(self.gate),
            "gate_input": list(self.gate_input) if self.gate_input else None, "decay": self.decay,
            "direction": self.direction, "normalize": self.normalize,
            "params": [[p.name, p.kind, p.default] for p in self.params.values()],
            "captures": [[c.name, list(c.dims), c.dtype] for c in self.captures.values()],
        }

    @property
    def content_hash(self) -> str:
        return canonical_hash(self.canonical())

    @property
    def tuning_hash(self) -> str:
        return canonical_hash({k: v for k, v in self.canonical().items() if k != "description"})

    @property
    def gate_kind(self) -> str:
        """``none``, ``constant`` (per head), ``scalar`` (per token and head) or ``vector`` (per key dim too)."""
        return gate_kind(self.gate)

    @property
    def is_gqa(self) -> bool:
        return False


def gate_kind(gate: sp.Expr) -> str:
    """The kind of a log-gate expression (see :data:`GATE_KINDS`)."""
    if gate == 0:
        return "none"
    loads = [ld for ld in E.loads(gate) if ld.tensor_name == "g"]
    if k_index in gate.free_symbols or any(len(ld.indices) == 4 for ld in loads):
        return "vector"
    if t_index in gate.free_symbols or loads:
        return "scalar"
    return "constant"


class RecurrenceBuilder:
    """Builds a :class:`RecurrenceSpec` from a parsed TOML document (``loader`` gives errors and names)."""

    def __init__(self, loader: Any, name: str, description: str) -> None:
        self.loader = loader
        self.name, self.description = name, description

    def err(self, section: str, key: str, message: str) -> SpecError:
        return self.loader.err(section, key, message)

    def build(self) -> RecurrenceSpec:
        gate_input = self.inputs()
        params = self.loader.params()
        captures = self.loader.captures(params)
        cascade = self.loader.table("cascade")
        for key in cascade:
            if key != "normalize":
                raise self.err("cascade", key, f"a recurrence's [cascade] has only 'normalize', not '{key}'")
        norm = cascade.get("normalize", "none")
        if norm != "none":
            raise self.err("cascade", "normalize", f"a recurrence has normalize = \"none\", not {norm!r:.40}")
        state = self.loader.table("state")
        for key in state:
            if key not in STATE_KEYS:
                raise self.err("state", key, f"unknown [state] key '{key}' (expected {sorted(STATE_KEYS)})")
        feature = self.feature(state.get("feature", "x"), params)
        gate = self.gate(state.get("gate", "0"), params, captures, gate_input)
        decay = state.get("decay", True)
        if not isinstance(decay, bool):
            raise self.err("state", "decay", "'decay' must be true or false")
        direction = state.get("direction", "causal")
        if direction not in DIRECTIONS:
            raise self.err("state", "direction", f"'direction' must be one of {', '.join(DIRECTIONS)}")
        return RecurrenceSpec(name=self.name, description=self.description, source=self.loader.loc.file,
                              feature=feature, gate=gate, gate_input=gate_input, decay=decay, direction=direction,
                              params=params, captures=captures)

    def inputs(self) -> tuple[str, ...] | None:
        inputs = self.loader.table("inputs")
        for role, dims in INPUT_DIMS.items():
            got = inputs.get(role)
            if got is None:
                raise self.err("inputs", role, f"[inputs] needs '{role}'")
            if not isinstance(got, str) or tuple(got.split()) != dims:
                raise self.err("inputs", role, f"'{role}' must be declared '{' '.join(dims)}' in a recurrence")
        for role in inputs:
            if role not in (*INPUT_DIMS, "g"):
                raise self.err("inputs", role, f"unknown input '{role}' (a recurrence takes q, k, v and g)")
        if "g" not in inputs:
            return None
        dims = tuple(str(inputs["g"]).split()) if isinstance(inputs["g"], str) else ()
        if dims not in GATE_DIMS:
            raise self.err("inputs", "g", "'g' must be declared 'b h t' (a scalar gate) or 'b h t k' (a vector gate)")
        return dims

    def feature(self, text: Any, params: dict[str, ParamDecl]) -> sp.Expr:
        if not isinstance(text, str):
            raise self.err("state", "feature", "'feature' must be an expression of x")
        names = {"x": x, **{p.name: p.symbol for p in params.values()}}
        expr = parse_expression(text, Scope(names), self.loader.loc.find("state", "feature"))
        if not isinstance(expr, sp.Expr) or expr.free_symbols - set(names.values()):
            raise self.err("state", "feature", "'feature' must be a number-valued expression of x and params")
        return expr

    def gate(self, text: Any, params: dict[str, ParamDecl], captures: dict[str, CaptureDecl],
             gate_input: tuple[str, ...] | None) -> sp.Expr:
        if not isinstance(text, str):
            raise self.err("state", "gate", "'gate' must be an expression string")
        names = {**INDEX_NAMES, **SIZE_NAMES, **{p.name: p.symbol for p in params.values()}}
        tensors = {c.name: c.ndim for c in captures.values()}
        if gate_input is not None:
            tensors["g"] = len(gate_input)
        ints = frozenset(c.name for c in captures.values() if c.dtype.startswith("int"))
        expr = parse_expression(text, Scope(names, tensors, ints), self.loader.loc.find("state", "gate"))
        if not isinstance(expr, sp.Expr):
            raise self.err("state", "gate", "the gate must be a number (a log-space decay), not a condition")
        reads_g = any(ld.tensor_name == "g" for ld in E.loads(expr))
        if gate_input is not None and not reads_g:
            raise self.err("state", "gate", "the input 'g' is declared but the gate does not read it")
        if gate_input == ("b", "h", "t") and k_index in expr.free_symbols:
            raise self.err("state", "gate", "a scalar gate input 'g[b, h, t]' cannot vary with the key index k")
        return expr
