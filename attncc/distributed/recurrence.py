"""Context parallelism for linear recurrences, LASP-2 style (see docs/distributed.md, "Linear recurrences").

    S_t = Diag(exp(g_t)) S_{t-1} + phi(k_t)^T v_t        o_t = scale * phi(q_t) S_t

The sequence is cut into global chunks (:mod:`attncc.distributed.layout`); a rank holds one
(``contiguous``) or two (``zigzag``).  The state after a chunk is affine in the state before it,
``S_out = A ⊙ S_in + M``, with ``M`` the chunk's state from a zero initial state and ``A`` its
total decay (the exponential of the summed log-gate: none, per head, per key dim).  So:

1. each rank runs the compiled kernel on each of its chunks from a zero state (the local
   output) and computes each chunk's ``(M, log A)`` in fp32 (plus the reverse state ``M'`` for a
   bidirectional spec);
2. one small agreement all-gather (int64, 11 values) checks that every rank got good input and the same
   layout, shapes, dtype, spec, scale and ``initial_state`` presence, so a bad rank makes every
   rank raise the same kind of one-line :class:`InputError` instead of hanging;
3. ONE all-gather of every rank's ``(M, [M'], [log A])`` — its size depends on B, H, K, V and the
   layout, never on T;
4. every rank composes the chunks in global order in fp32 (from the left for the causal
   direction, from the right for the reverse one), which gives each chunk's incoming state and,
   at the end, the global final state (the same on every rank);
5. each chunk's output is the local one plus ``scale * phi(q_t) Diag(exp(G_t)) S_in`` with
   ``G_t`` the chunk's cumulative log-gate up to t (for the reverse direction, from t to the end).

The backward is torch autograd through these steps; the all-gather's transpose sends each
rank the gradients every rank computed for its chunks' ``(M, M', log A)`` (an all-to-all) and
sums them in rank order, so results are deterministic.  Gradients follow the sum-of-ranks loss:
a replicated tensor (``initial_state``, the final state) gets on every rank the sum of what all
ranks' losses give it, i.e. the single-process gradient when the ranks together use it once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch
import torch.distributed as dist

from attncc.distributed.layout import LAYOUTS, check_layout, chunks, chunks_per_rank
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.runtime.recurrence import CompiledRecurrence, gate_values
from attncc.spec.recurrence import INDEX_NAMES, SIZE_NAMES
from attncc.spec.recurrence import x as feature_x

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FIELDS = ("layout", "shard length", "batch", "heads", "key dim", "value dim", "dtype", "initial_state presence",
           "spec", "scale", "need for k, v, g gradients", "need for an initial_state gradient")


def recurrence_attention(compiled: CompiledRecurrence, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                         g: torch.Tensor | None = None, group: Any = None, layout: str = "contiguous",
                         scale: float | None = None, initial_state: torch.Tensor | None = None,
                         output_final_state: bool = False, config: dict[str, int] | None = None,
                         **params_and_captures: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of ``o`` ``[B, H, T_local, V]`` (and the global final state ``[B, H, K, V]``
    fp32, the same on every rank, with ``output_final_state``).

    q, k ``[B, H, T_local, K]``, v ``[B, H, T_local, V]`` and g are this rank's shards in
    ``layout`` (see :func:`attncc.distributed.layout.shard_of`); ``initial_state`` is the global
    one, passed on every rank.  Params and captured tensors (not indexed by position) pass through."""
    name = f"{compiled.spec.name} (distributed)"
    world, rank = _group_info(name, group)
    failure: InputError | None = None
    segments: list[_Segment] = []
    payload = None
    try:
        _check_call(compiled, name, q, (k, v, g), layout, initial_state, output_final_state, params_and_captures)
        scale = q.shape[3] ** -0.5 if scale is None else float(scale)
        segments = _local_segments(compiled, name, (q, k, v, g), scale, chunks(layout, world, rank), config,
                                   params_and_captures)
        payload = _pack(segments)
    except InputError as exc:
        failure = exc
    needs = [int(payload is not None and payload.requires_grad),
             int(torch.is_grad_enabled() and isinstance(initial_state, torch.Tensor) and initial_state.requires_grad)]
    _agree(name, group, world, rank, failure, [*_meta(compiled, q, v, layout, initial_state, scale), *needs])
    assert payload is not None
    both = compiled.spec.direction == "bidirectional"
    h0 = payload.new_zeros(0) if initial_state is None else initial_state.float()
    gathered, h0 = _Exchange.apply(payload, h0, group)
    states = _unpack(gathered, segments, layout, world, both)
    count = chunks_per_rank(layout) * world
    last = count - 1 if output_final_state else max(s.chunk for s in segments)
    incoming, final = _compose(states, None if initial_state is None else h0, last)
    rincoming = _compose_reverse(states, count) if both else {}
    outs = [_finish(s, incoming.get(s.chunk), rincoming.get(s.chunk), q.dtype) for s in segments]
    if all(incoming.get(s.chunk) is None and rincoming.get(s.chunk) is None for s in segments):
        outs[0] = _Tie.apply(outs[0], gathered, h0)
    o = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    return (o, final) if output_final_state else o


# --- checks ------------------------------------------------------------------------------------
def _group_info(name: str, group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise InputError(f"{name}: torch.distributed is not initialized (call init_process_group first)")
    return dist.get_world_size(group), dist.get_rank(group)


def _check_call(compiled: CompiledRecurrence, name: str, q: Any, tensors: tuple[Any, ...], layout: Any,
                initial_state: Any, output_final_state: bool, kwargs: dict[str, Any]) -> None:
    if layout not in LAYOUTS:
        check_layout(layout)
    if "cu_seqlens" in kwargs:
        raise InputError(f"{name}: packed sequences (cu_seqlens) are not split across ranks; shard each sequence "
                         "on its own")
    if compiled.spec.direction == "bidirectional" and (initial_state is not None or output_final_state):
        raise InputError(f"{name}: a bidirectional recurrence takes no initial_state or output_final_state")
    reads = _position_reads(compiled.generated.lowered.gate)
    if reads:
        raise InputError(f"{name}: the gate reads {', '.join(reads)} beyond g[..., t, ...]; positions are local to a "
                         "shard, so this spec cannot be split across ranks")
    _check_shards(name, q, tensors, layout)
    if initial_state is not None:
        want = (q.shape[0], q.shape[1], q.shape[3], tensors[1].shape[3])
        if not isinstance(initial_state, torch.Tensor) or tuple(initial_state.shape) != want:
            raise InputError(f"{name}: initial_state must be [B, H, K, V] = {list(want)}, got "
                             f"{getattr(initial_state, 'shape', type(initial_state).__name__)}")


def _check_shards(name: str, q: Any, others: tuple[Any, ...], layout: str) -> None:
    """q, k, v (4-D) and g share this rank's shard length, a positive multiple of the layout's chunks."""
    for label, t in zip(("q", "k", "v"), (q, *others[:2]), strict=True):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InputError(f"{name}: {label} must be a 4-D tensor [B, H, T_local, .], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    T = q.shape[2]
    for label, t in zip(("k", "v", "g"), others, strict=True):
        if isinstance(t, torch.Tensor) and (t.dim() < 3 or t.shape[2] != T):
            raise InputError(f"{name}: {label} {tuple(t.shape)} must have q's shard length {T} in dim 2")
    parts = chunks_per_rank(layout)
    if T == 0 or T % parts:
        raise InputError(f"{name}: shard length {T} is not a positive multiple of {parts} ({layout} layout)")


def _position_reads(gate: sp.Expr) -> list[str]:
    """The position symbols (t, T) the gate reads other than as the index of the input g."""
    subs = {ld: sp.Dummy("g_load") for ld in E.loads(gate) if ld.tensor_name == "g"}
    free = gate.xreplace(subs).free_symbols if subs else gate.free_symbols
    return [label for label, sym in (("t", INDEX_NAMES["t"]), ("T", SIZE_NAMES["T"])) if sym in free]


def _meta(compiled: CompiledRecurrence, q: Any, v: Any, layout: Any, initial_state: Any,
          scale: Any) -> list[int]:
    """What every rank must agree on, as int64 values (zeros where this rank's input was unusable)."""
    ok = all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, v))
    shape = [*q.shape, v.shape[3]] if ok else [0] * 5
    dtype = _DTYPES.index(q.dtype) if ok and q.dtype in _DTYPES else -1
    try:
        scale_bits = struct.unpack("<q", struct.pack("<d", float(scale)))[0] if scale is not None else 0
    except (TypeError, ValueError):
        scale_bits = 0
    lay = LAYOUTS.index(layout) if layout in LAYOUTS else -1
    return [lay, shape[2], shape[0], shape[1], shape[3], shape[4], dtype, int(initial_state is not None),
            int(compiled.generated.key[:15], 16), scale_bits]


def _agree(name: str, group: Any, world: int, rank: int, failure: InputError | None, meta: list[int]) -> None:
    """One small all-gather: every rank raises if any rank failed its checks or the ranks disagree."""
    device = _device(group)
    mine = torch.tensor([int(failure is not None), *meta], dtype=torch.int64, device=device)
    every = mine.new_empty(world * mine.numel())
    _all_gather(every, mine, group)
    rows = every.view(world, -1).cpu().tolist()
    if failure is not None:
        raise failure
    bad = [r for r, row in enumerate(rows) if row[0]]
    if bad:
        raise InputError(f"{name}: rank {bad[0]} was given bad input (its own error says what); every rank stops")
    for i, field in enumerate(_FIELDS, start=1):
        values = [row[i] for row in rows]
        if len(set(values)) > 1:
            shown = [LAYOUTS[x] for x in values] if field == "layout" else values
            raise InputError(f"{name}: the {field} differs across ranks ({shown}); every rank must pass the same")


def _device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    if backend in ("nccl", "xccl") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- collectives -------------------------------------------------------------------------------
def _all_gather(out: torch.Tensor, x: torch.Tensor, group: Any) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x, group=group)


class _Exchange(torch.autograd.Function):
    """The one exchange: the all-gather of every rank's flat payload into ``[world, n]``, and the
    replicated ``initial_state`` passed through (or an empty tensor).

    Backward, one collective: an all-to-all sends rank j its slice's gradient (and, with an
    initial state, this rank's gradient of it), and the received parts are summed in rank order
    (deterministic): rank j gets every rank's gradient of its payload, and every rank the whole
    gradient of the replicated initial state."""

    @staticmethod
    def forward(ctx: Any, payload: torch.Tensor, h0: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.group, ctx.h0_shape = group, h0.shape
        world = dist.get_world_size(group)
        out = payload.new_empty(world * payload.numel())
        _all_gather(out, payload.contiguous(), group)
        return out.view(world, payload.numel()), h0.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, dh0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        world, n = grad.shape
        send = torch.cat([grad, dh0.reshape(1, -1).expand(world, -1)], 1).contiguous()
        received = torch.empty_like(send)
        dist.all_to_all_single(received, send, group=ctx.group)
        total = received[0].clone()
        for r in range(1, world):
            total += received[r]
        return total[:n], total[n:].view(ctx.h0_shape), None


class _Tie(torch.autograd.Function):
    """A copy of ``o`` made to depend on the exchange's outputs, so that every rank's backward
    reaches the exchange's collective (used where the output reads no incoming state: rank 0's
    causal output without an initial state)."""

    @staticmethod
    def forward(ctx: Any, o: torch.Tensor, *anchors: torch.Tensor) -> torch.Tensor:
        ctx.anchors = [(a.shape, a.dtype, a.device) for a in anchors]
        return o.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (grad, *(torch.zeros(s, dtype=d, device=dev) for s, d, dev in ctx.anchors))


# --- the local part ----------------------------------------------------------------------------
@dataclass
class _Segment:
    """One chunk of this rank's shard: the zero-state output and what the prefix needs (fp32)."""

    chunk: int
    o: torch.Tensor                   # the kernel's output from a zero state, input dtype
    phi_q: torch.Tensor               # scale * phi(q) [B, H, T, K]
    prefix: torch.Tensor | None       # log-gate summed over tokens <= t: [B, H, T, 1 or K]
    suffix: torch.Tensor | None       # log-gate summed over tokens >= t
    state: torch.Tensor               # M: the causal state after the chunk from zero [B, H, K, V]
    rstate: torch.Tensor | None       # M': the reverse state at the chunk's first token from zero
    log_decay: torch.Tensor | None    # log A [B, H, 1 or K]


def _local_segments(compiled: CompiledRecurrence, name: str, tensors: tuple[torch.Tensor | None, ...], scale: float,
                    ids: tuple[int, ...], config: dict[str, int] | None, kwargs: dict[str, Any]) -> list[_Segment]:
    """This rank's chunks ``ids`` (global chunk indices, in shard order) of q, k, v, g."""
    c = tensors[0].shape[2] // len(ids)
    out = []
    for j, chunk in enumerate(ids):
        part = [None if t is None else t.narrow(2, j * c, c) for t in tensors]
        out.append(_segment(compiled, name, chunk, *part, scale, config, kwargs))
    return out


def _segment(compiled: CompiledRecurrence, name: str, chunk: int, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, g: torch.Tensor | None, scale: float, config: dict[str, int] | None,
             kwargs: dict[str, Any]) -> _Segment:
    o = compiled(q, k, v, g=g, scale=scale, config=config, **kwargs)
    low = compiled.generated.lowered
    params = _param_values(compiled, kwargs)
    # captured tensors get no gradient, as in the single-process call (its op gives them none)
    captures = {c: kwargs[c].detach() for c in compiled.spec.captures}
    gate = gate_values(low.gate, low.gate_kind, low.decay, name, q, g, captures, params)
    phi_q = _feature(low.feature, q, params) * scale
    phi_k = _feature(low.feature, k, params)
    vf = v.float()
    both = low.direction == "bidirectional"
    if gate is None:
        state = torch.einsum("bhtk,bhtv->bhkv", phi_k, vf)
        return _Segment(chunk, o, phi_q, None, None, state, state if both else None, None)
    w = gate if gate.dim() == 4 else gate[..., None]
    prefix = torch.cumsum(w, 2)
    suffix = torch.cumsum(w.flip(2), 2).flip(2)
    # M = sum_t exp(sum_{s > t} g_s) phi(k_t)^T v_t; M' = sum_t exp(sum_{s < t} g_s) phi(k_t)^T v_t.
    # Sums from the near end, not differences of long prefix sums, keep the large weights accurate.
    state = torch.einsum("bhtk,bhtv->bhkv", phi_k * torch.exp(suffix - w), vf)
    rstate = torch.einsum("bhtk,bhtv->bhkv", phi_k * torch.exp(prefix - w), vf) if both else None
    return _Segment(chunk, o, phi_q, prefix, suffix, state, rstate, prefix[:, :, -1])


def _param_values(compiled: CompiledRecurrence, kwargs: dict[str, Any]) -> dict[sp.Symbol, Any]:
    out: dict[sp.Symbol, Any] = {}
    for p in compiled.spec.params.values():
        value = kwargs.get(p.name, p.default)
        out[p.symbol] = int(value) if p.kind == "int" else float(value)
    return out


def _feature(feature: sp.Expr, t: torch.Tensor, params: dict[sp.Symbol, Any]) -> torch.Tensor:
    """phi(t) in fp32, from the lowered IR's feature map."""
    tf = t.float()
    value = evaluate(feature, {feature_x: tf, **params}, {})
    return torch.as_tensor(value, dtype=torch.float32, device=t.device).expand_as(tf)


# --- the exchange and the prefix over chunks ---------------------------------------------------
def _pack(segments: list[_Segment]) -> torch.Tensor:
    parts = []
    for s in segments:
        parts += [s.state.reshape(-1)] + ([] if s.rstate is None else [s.rstate.reshape(-1)])
        parts += [] if s.log_decay is None else [s.log_decay.reshape(-1)]
    return torch.cat(parts)


@dataclass
class _Chunk:
    state: torch.Tensor
    rstate: torch.Tensor | None
    decay: torch.Tensor | None  # A, shaped to multiply a state: [B, H, 1 or K, 1]


def _unpack(gathered: torch.Tensor, segments: list[_Segment], layout: str, world: int,
            both: bool) -> dict[int, _Chunk]:
    """Every global chunk's (M, M', A) from the gathered rows (each rank packs like this one)."""
    s0 = segments[0]
    shape, n = s0.state.shape, s0.state.numel()
    dshape = None if s0.log_decay is None else s0.log_decay.shape
    out: dict[int, _Chunk] = {}
    for r in range(world):
        row, at = gathered[r], 0
        for chunk in chunks(layout, world, r):
            state, at = row[at:at + n].view(shape), at + n
            rstate = None
            if both:
                rstate, at = row[at:at + n].view(shape), at + n
            decay = None
            if dshape is not None:
                m = s0.log_decay.numel()
                decay, at = torch.exp(row[at:at + m].view(dshape))[..., None], at + m
            out[chunk] = _Chunk(state, rstate, decay)
    return out


def _compose(states: dict[int, _Chunk], h0: torch.Tensor | None,
             last: int) -> tuple[dict[int, torch.Tensor | None], torch.Tensor]:
    """The causal state entering each chunk 0..last (None: zero) and the state after ``last``."""
    incoming: dict[int, torch.Tensor | None] = {}
    cur = h0
    for c in range(last + 1):
        incoming[c] = cur
        ch = states[c]
        cur = ch.state if cur is None else (cur if ch.decay is None else ch.decay * cur) + ch.state
    return incoming, cur


def _compose_reverse(states: dict[int, _Chunk], count: int) -> dict[int, torch.Tensor | None]:
    """The reverse state entering each chunk from the right (None: zero)."""
    incoming: dict[int, torch.Tensor | None] = {}
    cur = None
    for c in range(count - 1, -1, -1):
        incoming[c] = cur
        ch = states[c]
        cur = ch.rstate if cur is None else (cur if ch.decay is None else ch.decay * cur) + ch.rstate
    return incoming


def _finish(s: _Segment, incoming: torch.Tensor | None, rincoming: torch.Tensor | None,
            dtype: torch.dtype) -> torch.Tensor:
    """The chunk's output: its zero-state output plus the incoming states' terms."""
    if incoming is None and rincoming is None:
        return s.o
    out = s.o.float()
    for state, cum in ((incoming, s.prefix), (rincoming, s.suffix)):
        if state is not None:
            weighted = s.phi_q if cum is None else s.phi_q * torch.exp(cum)
            out = out + torch.einsum("bhtk,bhkv->bhtv", weighted, state)
    return out.to(dtype)
