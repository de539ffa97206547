"""One (query chunk, key chunk) pair through the existing ``attncc::fwd`` / ``attncc::bwd`` ops, and
the host-side merge of partial results by the IR's merge rule.

The pair runs the module of the spec rewritten to global positions
(:func:`attncc.distributed.globalize.global_spec`), with the pair's offsets as params.  A spec whose
compile-time plan is inexact runs its block-table variant on tables built for the pair
(:func:`attncc.runtime.ops.auto_tables`), as single-device calls do.  Partial ``(o, lse)`` are
merged as softmax states ``(m, l, acc) = (lse, 1, o)`` with
:func:`attncc.codegen.merge.merge_states_torch`, which evaluates the rule table stored on the IR's
``online_softmax`` node (the same table the kernels' ``_merge_state`` is printed from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attncc.codegen.merge import finalize_state_torch, merge_states_torch
from attncc.distributed.globalize import pair_params
from attncc.runtime import host
from attncc.runtime.compiled import CompiledAttention
from attncc.runtime.ops import TABLE_SIZE_KEYS, SpecInfo, auto_tables

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class PairKernel:
    """The kernels of one context-parallel call: spec, captured tensors, params, scale."""

    compiled: CompiledAttention  # of the global-position spec
    info: SpecInfo
    captures: list[torch.Tensor]  # kernel order
    params: dict[str, Any]  # the user's params
    scale: float | None
    length: int  # global sequence length

    def _launch(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q0: int, k0: int,
                ) -> tuple[SpecInfo, list[torch.Tensor], list[float], list[str], list[int]]:
        params = pair_params(self.params, q0, k0, self.length)
        info, tables = auto_tables(self.info, q, k, v, self.captures, params, None)
        blocks, sizes = host.encode_tables(info, tables, q, k)
        keys = list(TABLE_SIZE_KEYS) if blocks else []
        return info, [*self.captures, *blocks], host.encode_params(info, params), keys, sizes

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q0: int, k0: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(o, lse)`` of query rows at global ``q0 ..`` against keys at global ``k0 ..``."""
        info, caps, params, keys, sizes = self._launch(q, k, v, q0, k0)
        return torch.ops.attncc.fwd(info.key, q.contiguous(), k.contiguous(), v.contiguous(), caps, self.scale,
                                    params, keys, sizes, False)

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 do: torch.Tensor, dlse: torch.Tensor | None, q0: int, k0: int, capture_grads: list[bool],
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The pair's share of dq, dk, dv and of the wanted captures' gradients, from the GLOBAL
        ``o`` and ``lse`` of the query rows (so that ``p = exp(s - lse)`` is the global probability)."""
        info, caps, params, keys, sizes = self._launch(q, k, v, q0, k0)
        wanted = capture_grads + [False] * (len(caps) - len(capture_grads))
        return torch.ops.attncc.bwd(info.key, q.contiguous(), k.contiguous(), v.contiguous(), o.contiguous(),
                                    lse.contiguous(), do.contiguous(), None if dlse is None else dlse.contiguous(),
                                    caps, wanted, self.scale, params, keys, sizes)

    # --- merging partial results ------------------------------------------------------------------
    def merge(self, state: State | None, o: torch.Tensor, lse: torch.Tensor) -> State:
        """``state`` (None: nothing yet) merged with the partial ``(o, lse)``, by the IR's merge rule."""
        part = (lse.float(), torch.ones_like(lse, dtype=torch.float32), o.float())
        if state is None:
            return part
        return merge_states_torch(self.compiled.generated.lowered.graph, *state, *part)

    def finalize(self, state: State | None, like: torch.Tensor, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(o, lse)`` of a merged state (o in ``like``'s dtype); rows without any key: 0 and -inf."""
        if state is None:
            B, H = like.shape[:2]
            return (like.new_zeros((B, H, rows, width)),
                    torch.full((B, H, rows), float("-inf"), dtype=torch.float32, device=like.device))
        o, lse = finalize_state_torch(self.compiled.generated.lowered.graph, *state)
        return o.to(like.dtype), lse.float()
