"""torch.library bindings of the recurrence kernels: autograd and ``torch.compile``.

    attncc::scan_fwd(str key, Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? h0, Tensor? cu_seqlens,
                     Tensor[] captures, float scale, float[] params, bool both,
                     str[] config_keys, int[] config_values) -> (Tensor o, Tensor final_state)
    attncc::scan_bwd(... the same inputs ..., Tensor do, Tensor dfinal)
                     -> (Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dh0)

``key`` is the content key of a recurrence's chunkwise module (one generic pair of ops, as for
the softmax kernels: see :mod:`attncc.runtime.ops`).  The ops take the raw gate input ``g`` and
the captured tensors: the log-gate tensor the kernels read is computed inside
(:func:`attncc.runtime.recurrence.gate_values`), and the backward maps the kernels' gradient of
the log-gate back to ``g`` through the gate expression's symbolic derivative.  ``both`` runs the
causal and the reverse recurrence (last token to first) in one launch of each kernel, the
reversed copy stacked after the batch, and sums their outputs (a bidirectional spec).  The
backward recomputes the forward's chunk states instead of saving them.  ``dg`` / ``dh0`` are empty
tensors when ``g`` / ``h0`` are None; ``dfinal`` is zeros when the final state has no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from attncc.errors import InputError

if TYPE_CHECKING:
    from attncc.runtime.recurrence import CompiledRecurrence

_REGISTRY: dict[str, CompiledRecurrence] = {}


def register(compiled: CompiledRecurrence) -> str:
    key = compiled.generated.key
    _REGISTRY[key] = compiled
    return key


def _compiled(key: str) -> CompiledRecurrence:
    compiled = _REGISTRY.get(key)
    if compiled is None:
        raise InputError(f"attncc: no recurrence with key {key} was compiled in this process; load its spec first")
    return compiled


_ARGS = ("str key, Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? h0, Tensor? cu_seqlens, Tensor[] captures, "
         "float scale, float[] params, bool both, str[] config_keys, int[] config_values")


@torch.library.custom_op("attncc::scan_fwd", mutates_args=(), schema=f"({_ARGS}) -> (Tensor, Tensor)")
def scan_fwd(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
             h0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, captures: list[torch.Tensor], scale: float,
             params: list[float], both: bool, config_keys: list[str],
             config_values: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    compiled = _compiled(key)
    o, final, _ = compiled.forward_impl(q, k, v, g, h0, cu_seqlens, captures, scale, params, both,
                                        dict(zip(config_keys, config_values, strict=True)))
    return o, final


@scan_fwd.register_fake
def _scan_fwd_fake(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                   h0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, captures: list[torch.Tensor],
                   scale: float, params: list[float], both: bool, config_keys: list[str],
                   config_values: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (q.new_empty(B, H, T, v.shape[3]),
            q.new_empty(N, H, K, v.shape[3], dtype=torch.float32))


@torch.library.custom_op("attncc::scan_bwd", mutates_args=(),
                         schema=f"({_ARGS}, Tensor do, Tensor dfinal) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def scan_bwd(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
             h0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, captures: list[torch.Tensor], scale: float,
             params: list[float], both: bool, config_keys: list[str], config_values: list[int],
             do: torch.Tensor, dfinal: torch.Tensor) -> tuple[torch.Tensor, ...]:
    compiled = _compiled(key)
    dq, dk, dv, dg, dh0 = compiled.backward_impl(q, k, v, g, h0, cu_seqlens, captures, scale, params, both,
                                                 dict(zip(config_keys, config_values, strict=True)), do, dfinal)
    return (dq, dk, dv, dg if dg is not None else q.new_empty(0), dh0 if dh0 is not None else q.new_empty(0))


@scan_bwd.register_fake
def _scan_bwd_fake(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                   h0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, captures: list[torch.Tensor],
                   scale: float, params: list[float], both: bool, config_keys: list[str],
                   config_values: list[int], do: torch.Tensor, dfinal: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dg = torch.empty_like(g) if g is not None else q.new_empty(0)
    dh0 = torch.empty_like(h0) if h0 is not None else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dg, dh0


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    key, q, k, v, g, h0, cu, captures, scale, params, both, ck, cv = inputs
    ctx.save_for_backward(q, k, v, g, h0, cu, *captures)
    ctx.args = (key, scale, list(params), both, list(ck), list(cv))
    ctx.final_shape = output[1].shape
    ctx.structure = [_no_grad(x) for x in inputs]


def _no_grad(x: Any) -> Any:
    """The gradient placeholder torch expects for a non-differentiated input: None, [] for an empty
    list, a list of Nones for a tensor list."""
    if isinstance(x, list):
        return [None] * len(x) if (not x or isinstance(x[0], torch.Tensor)) else None
    return None


def _backward(ctx: Any, do: torch.Tensor, dfinal: torch.Tensor | None) -> tuple[Any, ...]:
    q, k, v, g, h0, cu, *captures = ctx.saved_tensors
    key, scale, params, both, ck, cv = ctx.args
    if dfinal is None:
        dfinal = q.new_zeros(ctx.final_shape, dtype=torch.float32)
    dq, dk, dv, dg, dh0 = torch.ops.attncc.scan_bwd(key, q, k, v, g, h0, cu, captures, scale, params, both, ck, cv,
                                                    do.contiguous(), dfinal.contiguous())
    grads = list(ctx.structure)
    grads[1:6] = [dq, dk, dv, dg if g is not None else None, dh0 if h0 is not None else None]
    return tuple(grads)


scan_fwd.register_autograd(_backward, setup_context=_setup)


def config_lists(config: dict[str, int] | None) -> tuple[list[str], list[int]]:
    """A launch config as the ops' parallel key/value lists."""
    items = sorted((config or {}).items())
    return [k for k, _ in items], [int(v) for _, v in items]


def call(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
         h0: torch.Tensor | None, cu_seqlens: torch.Tensor | None, captures: Sequence[torch.Tensor], scale: float,
         params: Sequence[float], both: bool, config: dict[str, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    ck, cv = config_lists(config)
    return torch.ops.attncc.scan_fwd(key, q, k, v, g, h0, cu_seqlens, list(captures), float(scale),
                                     [float(p) for p in params], both, ck, cv)
