"""Compiled linear recurrences: ``attncc.load(NAME)(q, k, v, ...)`` and ``.step(...)``.

q, k ``[B, H, T, K]``, v ``[B, H, T, V]``, g ``[B, H, T]`` (a scalar gate input) or
``[B, H, T, K]`` (a vector gate input), states ``[B, H, K, V]`` (``[N, H, K, V]`` for N packed
sequences with ``cu_seqlens``).  Calls go through the ``attncc::scan_fwd`` op
(:mod:`attncc.runtime.scan_ops`): autograd for q, k, v, g and the initial state, and
``torch.compile``.  ``.step`` runs the fused recurrent kernel for decode (no autograd).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import sympy as sp
import torch

from attncc.compiler import Generated, generate, load_module
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.passes.lowered import CallFacts
from attncc.runtime import scan_ops
from attncc.schedules.scan_render import KERNEL_GATES as KERNEL_GATE  # noqa: E402
from attncc.spec.recurrence import INDEX_NAMES, SIZE_NAMES, RecurrenceSpec

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# attncc.distributed.recurrence.recurrence_attention, set when attncc.distributed is imported (that
# package builds on the runtime, which may not import it: tests/test_layering.py).
DISTRIBUTED: Any = None


class ScanInfo(NamedTuple):
    """Plain-data description of a compiled recurrence (a constant under Dynamo)."""

    key: str
    name: str
    gate_input: tuple[str, ...] | None
    direction: str
    captures: tuple[tuple[str, int], ...]
    params: tuple[tuple[str, str, float], ...]


@torch._dynamo.assume_constant_result
def scan_info(compiled: CompiledRecurrence) -> ScanInfo:
    spec = compiled.spec
    return ScanInfo(scan_ops.register(compiled), spec.name, spec.gate_input, spec.direction,
                    tuple((c.name, c.ndim) for c in spec.captures.values()),
                    tuple((p.name, p.kind, p.default) for p in spec.params.values()))


class CompiledRecurrence:
    """A compiled recurrence spec: ``fn(q, k, v, *, g=None, initial_state=None,
    output_final_state=False, scale=None, cu_seqlens=None, config=None, **params_and_captures)``
    returns o ``[B, H, T, V]`` (and the final state ``[B|N, H, K, V]`` fp32 when asked)."""

    def __init__(self, spec: RecurrenceSpec) -> None:
        self.spec = spec
        self.generated: Generated = generate(spec)
        self._step: Generated | None = None

    def __repr__(self) -> str:
        return f"CompiledRecurrence({self.spec.name!r}, key={self.generated.key})"

    @property
    def source(self) -> str:
        return self.generated.source

    @property
    def module(self) -> Any:
        return load_module(self.generated)

    def generated_step(self) -> Generated:
        """The module of the recurrent (decode step) schedule, generated on first use."""
        if self._step is None:
            self._step = generate(self.spec, CallFacts(decode=True))
        return self._step

    def kinds(self) -> tuple[str, ...]:
        """The config kinds of this spec's kernels, over all its modules."""
        return tuple(dict.fromkeys(k for gen in (self.generated, self.generated_step()) for k in gen.lowered.schedule.kinds))

    def generated_of_kind(self, kind: str) -> Generated:
        for gen in (self.generated, self.generated_step()):
            if kind in gen.lowered.schedule.kinds:
                return gen
        raise KeyError(f"{self.spec.name}: no generated module has kernels of kind {kind!r}")

    def module_for(self, key: str) -> Any:
        for gen in (self.generated, self._step):
            if gen is not None and gen.key == key:
                return load_module(gen)
        raise KeyError(f"{self.spec.name}: no module with key {key}")

    # --- calls ---------------------------------------------------------------------------------
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, g: torch.Tensor | None = None,
                 initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                 scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
                 config: dict[str, int] | None = None,
                 **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        info = scan_info(self)
        name = info.name
        _check_qkv(name, q, k, v)
        _check_gate(name, info, q, g)
        B, H, T, K = q.shape
        N = B if cu_seqlens is None else _check_cu(name, cu_seqlens, q)
        if initial_state is not None:
            _check_state(name, "initial_state", initial_state, (N, H, K, v.shape[3]))
        captures, params = _split_kwargs(name, info, kwargs)
        scale = K ** -0.5 if scale is None else float(scale)
        if info.direction == "bidirectional":
            if initial_state is not None or output_final_state or cu_seqlens is not None:
                raise InputError(f"{name}: a bidirectional recurrence takes no initial_state, output_final_state "
                                 "or cu_seqlens")
            o, _ = scan_ops.call(info.key, q, k, v, g, None, None, captures, scale, params, True, config)
            return o
        o, final = scan_ops.call(info.key, q, k, v, g, initial_state, cu_seqlens, captures, scale, params, False,
                                 config)
        return (o, final) if output_final_state else o

    def distributed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
                    group: Any = None, layout: str = "contiguous", **kwargs: Any) -> Any:
        """Context parallelism (LASP-2): q, k, v, g are this rank's sequence shards; returns this
        rank's shard of o (and the global final state); see docs/distributed.md."""
        if DISTRIBUTED is None:
            raise InputError("distributed: import attncc.distributed first")
        return DISTRIBUTED(self, q, k, v, g=g, group=group, layout=layout, **kwargs)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
             state: torch.Tensor | None = None, scale: float | None = None, config: dict[str, int] | None = None,
             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode: run the recurrent kernel over q, k, v ``[B, H, T, .]`` (T small, usually 1) from
        ``state`` ``[B, H, K, V]`` (None: zeros); returns ``(o [B, H, T, V], new_state fp32)``."""
        info = scan_info(self)
        name = f"{info.name}.step"
        _check_qkv(name, q, k, v)
        _check_gate(name, info, q, g)
        B, H, T, K = q.shape
        if state is not None:
            _check_state(name, "state", state, (B, H, K, v.shape[3]))
        if info.direction == "bidirectional":
            raise InputError(f"{name}: a bidirectional recurrence has no decode step (it reads future tokens)")
        captures, params = _split_kwargs(name, info, kwargs)
        scale = K ** -0.5 if scale is None else float(scale)
        low = self.generated.lowered
        gate = gate_values(low.gate, low.gate_kind, low.decay, name, q, g, dict(zip([c[0] for c in info.captures],
                           captures, strict=True)), self._param_values(params))
        module = load_module(self.generated_step())
        try:
            return module.recurrent_step(q, k, v, gate, state, scale=scale, gate=KERNEL_GATE[low.gate_kind],
                                         config=config)
        except module.StepError as exc:
            raise InputError(f"{name}: {exc}") from None

    # --- the ops' implementations (eager) ------------------------------------------------------
    def _param_values(self, params: list[float]) -> dict[sp.Symbol, Any]:
        out = {}
        for p, value in zip(self.spec.params.values(), params, strict=True):
            out[p.symbol] = int(value) if p.kind == "int" else float(value)
        return out

    def _gate(self, q: torch.Tensor, g: torch.Tensor | None, captures: list[torch.Tensor],
              params: list[float]) -> torch.Tensor | None:
        low = self.generated.lowered
        caps = dict(zip(self.spec.captures, captures, strict=True))
        return gate_values(low.gate, low.gate_kind, low.decay, self.spec.name, q, g, caps, self._param_values(params))

    def forward_impl(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                     h0: torch.Tensor | None, cu: torch.Tensor | None, captures: list[torch.Tensor], scale: float,
                     params: list[float], both: bool, config: dict[str, int]) -> tuple[Any, ...]:
        """``(o, final_state, saved)`` of ``attncc::scan_fwd`` (``both``: the two directions stacked
        along the batch, one launch, outputs summed)."""
        gate = self._gate(q, g, captures, params)
        B = q.shape[0]
        q, k, v, gate = _stack(both, q, k, v, gate)
        o, final, saved = self._chunk_forward(q, k, v, gate, h0, cu, scale, config)
        if final is None:
            final = q.new_zeros(q.shape[0], q.shape[1], q.shape[3], v.shape[3], dtype=torch.float32)
        if both:
            o, final = _unstack(o, B), final[:B]
        return o, final, saved

    def _chunk_forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None,
                       h0: torch.Tensor | None, cu: torch.Tensor | None, scale: float,
                       config: dict[str, int]) -> tuple[Any, ...]:
        module = self.module
        kind = KERNEL_GATE[self.generated.lowered.gate_kind]
        try:
            return module.chunk_forward(q, k, v, gate, scale=scale, gate=kind, initial_state=h0,
                                        output_final_state=True, config=config or None, cu_seqlens=cu)
        except ValueError as exc:
            raise InputError(f"{self.spec.name}: {str(exc).splitlines()[0]}") from None

    def backward_impl(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                      h0: torch.Tensor | None, cu: torch.Tensor | None, captures: list[torch.Tensor], scale: float,
                      params: list[float], both: bool, config: dict[str, int], do: torch.Tensor,
                      dfinal: torch.Tensor) -> tuple[Any, ...]:
        """``(dq, dk, dv, dg, dh0)`` of ``attncc::scan_bwd`` (the chunk states recomputed)."""
        low = self.generated.lowered
        gate = self._gate(q, g, captures, params)
        B = q.shape[0]
        sq, sk, sv, sgate, sdo = _stack(both, q, k, v, gate, do)
        if both:
            dfinal = torch.cat([dfinal, torch.zeros_like(dfinal)], 0)
        _, _, saved = self._chunk_forward(sq, sk, sv, sgate, h0, cu, scale, config)
        dq, dk, dv, dgate, dh0 = self.module.chunk_backward(
            sq, sk, sv, sgate, sdo, dfinal, saved, scale=scale, gate=KERNEL_GATE[low.gate_kind], initial_state=h0,
            config=config or None, cu_seqlens=cu)
        if both:
            dq, dk, dv = _unstack(dq, B), _unstack(dk, B), _unstack(dv, B)
            dgate = _unstack(dgate, B) if dgate is not None else None
        dg = None
        if g is not None and dgate is not None:
            caps = dict(zip(self.spec.captures, captures, strict=True))
            dg = gate_input_grad(low.gate, dgate, q, g, caps, self._param_values(params))
        return dq, dk, dv, dg, dh0


def _stack(both: bool, *tensors: torch.Tensor | None) -> tuple[Any, ...]:
    """With ``both``, each tensor followed along the batch by its copy reversed in time."""
    return tuple(torch.cat([t, t.flip(2)], 0) if (both and t is not None) else t for t in tensors)


def _unstack(t: torch.Tensor, B: int) -> torch.Tensor:
    """The causal half plus the reverse half put back in time order."""
    return t[:B] + t[B:].flip(2)


# --- the log-gate ------------------------------------------------------------------------------
def _gate_env(q: torch.Tensor, vector: bool, params: Mapping[sp.Symbol, Any]) -> dict[sp.Symbol, Any]:
    B, H, T, K = q.shape
    dev = q.device
    shape = (lambda *s: (*s, 1)) if vector else (lambda *s: s)
    env: dict[sp.Symbol, Any] = {
        INDEX_NAMES["b"]: torch.arange(B, device=dev).view(*shape(B, 1, 1)),
        INDEX_NAMES["h"]: torch.arange(H, device=dev).view(*shape(1, H, 1)),
        INDEX_NAMES["t"]: torch.arange(T, device=dev).view(*shape(1, 1, T)),
        INDEX_NAMES["k"]: torch.arange(K, device=dev).view(1, 1, 1, K),
        SIZE_NAMES["B"]: B, SIZE_NAMES["H"]: H, SIZE_NAMES["T"]: T, SIZE_NAMES["K"]: K,
    }
    env.update(params)
    return env


def gate_values(gate: sp.Expr, kind: str, decay: bool, name: str, q: torch.Tensor, g: torch.Tensor | None,
                captures: Mapping[str, torch.Tensor], params: Mapping[sp.Symbol, Any]) -> torch.Tensor | None:
    """The log-gate tensor the kernels read: None (no gate), ``[B, H, T]`` (constant per head or a
    scalar gate) or ``[B, H, T, K]`` (vector), fp32; checked to be <= 0 when the spec requires decay."""
    if kind == "none":
        return None
    B, H, T, K = q.shape
    vector = kind == "vector"
    caps = dict(captures)
    if g is not None:
        caps["g"] = g.float()
    value = torch.as_tensor(evaluate(gate, _gate_env(q, vector, params), caps), dtype=torch.float32,
                            device=q.device)
    value = value.expand(*((B, H, T, K) if vector else (B, H, T))).contiguous()
    if decay and value.numel():
        worst = int(torch.argmax(value))
        if float(value.detach().view(-1)[worst]) > 0:
            at = list(torch.unravel_index(torch.tensor(worst), value.shape))
            raise InputError(f"{name}: the log-gate is {float(value.detach().view(-1)[worst]):.4g} > 0 at "
                             f"{[int(i) for i in at]}; the spec requires decay (log-gate <= 0)")
    if not torch.isfinite(value).all():
        raise InputError(f"{name}: the log-gate has non-finite values")
    return value


def gate_input_grad(gate: sp.Expr, dgate: torch.Tensor, q: torch.Tensor, g: torch.Tensor,
                    captures: Mapping[str, torch.Tensor], params: Mapping[sp.Symbol, Any]) -> torch.Tensor:
    """The gradient of the gate input ``g`` from the kernels' gradient of the log-gate: the chain
    rule through the gate expression (each load of ``g`` differentiated symbolically)."""
    vector = dgate.dim() == 4
    env = _gate_env(q, vector, params)
    caps = {**captures, "g": g.float()}
    total = torch.zeros_like(dgate, dtype=torch.float32)
    for ld in {ld for ld in E.loads(gate) if ld.tensor_name == "g"}:
        sym = sp.Dummy("g_load", real=True)
        deriv = E.derivative(gate.subs(ld, sym), sym).subs(sym, ld)
        total = total + dgate.float() * torch.as_tensor(evaluate(deriv, env, caps), dtype=torch.float32,
                                                         device=q.device)
    if g.dim() < total.dim():  # a scalar input broadcast over the key dim
        total = total.sum(-1)
    return total.to(g.dtype)


# --- checks ------------------------------------------------------------------------------------
def _check_qkv(name: str, q: Any, k: Any, v: Any) -> None:
    for label, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{name}: {label} must be a 4-D tensor [B, H, T, .], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in DTYPES:
            raise InputError(f"{name}: {label} dtype {t.dtype} not supported (fp16, bf16, fp32)")
    if q.shape != k.shape:
        raise InputError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape [B, H, T, K]")
    if v.shape[:3] != q.shape[:3]:
        raise InputError(f"{name}: v {tuple(v.shape)} must be [B, H, T, V] with q's B, H, T {tuple(q.shape[:3])}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise InputError(f"{name}: q, k, v must share one dtype and device")


def _check_gate(name: str, info: ScanInfo, q: torch.Tensor, g: Any) -> None:
    if info.gate_input is None:
        if g is not None:
            raise InputError(f"{name}: this spec takes no gate input g")
        return
    want = tuple(q.shape) if len(info.gate_input) == 4 else tuple(q.shape[:3])
    dims = " ".join(info.gate_input)
    if g is None:
        raise InputError(f"{name}: the gate input g [{dims}] is required")
    if not isinstance(g, torch.Tensor) or tuple(g.shape) != want:
        raise InputError(f"{name}: g must be [{dims}] = {list(want)}, got {getattr(g, 'shape', type(g).__name__)} "
                         f"(a gate of the wrong rank?)")


def _check_state(name: str, label: str, state: Any, want: tuple[int, ...]) -> None:
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != want:
        raise InputError(f"{name}: {label} must be [B, H, K, V] = {list(want)}, got "
                         f"{getattr(state, 'shape', type(state).__name__)}")


def _check_cu(name: str, cu: Any, q: torch.Tensor) -> int:
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 2:
        raise InputError(f"{name}: cu_seqlens must be an int32 tensor [N + 1]")
    if q.shape[0] != 1:
        raise InputError(f"{name}: with cu_seqlens the sequences are packed along T of a batch of 1, got B={q.shape[0]}")
    return cu.numel() - 1


def _split_kwargs(name: str, info: ScanInfo, kwargs: Mapping[str, Any]) -> tuple[list[torch.Tensor], list[float]]:
    caps = [c[0] for c in info.captures]
    params = {p[0]: p for p in info.params}
    for key in kwargs:
        if key not in caps and key not in params:
            raise InputError(f"{name}: unknown argument '{key}' (expected one of {sorted([*caps, *params])})")
    missing = [c for c in caps if c not in kwargs]
    if missing:
        raise InputError(f"{name}: missing captured tensor(s) {missing}")
    values = [float(kwargs.get(p[0], p[2])) for p in info.params]
    return [kwargs[c] for c in caps], values


def dense_recurrence(low: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                     captures: Mapping[str, torch.Tensor], params: Mapping[sp.Symbol, Any],
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's recurrence evaluated token by token in the inputs' dtype (``attncc check``'s
    reference, from the lowered IR's feature map and gate): ``(o, final_state)``."""
    from attncc.spec.recurrence import x as feature_x

    phi_q = torch.as_tensor(evaluate(low.feature, {feature_x: q}, {}), dtype=q.dtype) * scale
    phi_k = torch.as_tensor(evaluate(low.feature, {feature_x: k}, {}), dtype=q.dtype).expand_as(k)
    phi_q = phi_q.expand_as(q)
    gate = gate_values(low.gate, low.gate_kind, False, "check", q, g, captures, params)
    B, H, T, K = q.shape
    state = torch.zeros(B, H, K, v.shape[3], dtype=q.dtype)
    outs = []
    for t in range(T):
        if gate is not None:
            decay = torch.exp(gate[:, :, t].to(q.dtype))
            state = state * (decay[..., None] if gate.dim() == 4 else decay[..., None, None])
        state = state + phi_k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", phi_q[:, :, t], state))
    o = torch.stack(outs, 2) if outs else v.new_zeros(B, H, 0, v.shape[3])
    if low.direction == "bidirectional":
        rev_o, _ = dense_recurrence(_Causal(low), q.flip(2), k.flip(2), v.flip(2),
                                    None if g is None else g.flip(2), captures, params, scale)
        o = o + rev_o.flip(2)
    return o, state


class _Causal:
    """``low`` seen as causal (the reverse half of a bidirectional check)."""

    def __init__(self, low: Any) -> None:
        self.feature, self.gate, self.gate_kind, self.direction = low.feature, low.gate, low.gate_kind, "causal"
