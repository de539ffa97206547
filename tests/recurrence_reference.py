"""Naive step-by-step linear recurrences in plain torch: the independent reference of the
recurrence kernels (nothing here uses attncc).

    S_t = Diag(exp(g_t)) S_{t-1} + phi(k_t)^T v_t        o_t = scale * phi(q_t) S_t

q, k ``[B, H, T, K]``, v ``[B, H, T, V]``; ``g``: None, ``[B, H, T]`` (a scalar log-gate per
token and head) or ``[B, H, T, K]`` (a vector gate on the key dim); state ``[B, H, K, V]``.
Differentiable with torch autograd, so gradients of the reference come from ``backward()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Feature = Callable[[torch.Tensor], torch.Tensor]

FEATURES: dict[str, Feature] = {
    "identity": lambda x: x,
    "elu1": lambda x: torch.nn.functional.elu(x) + 1,
    "relu": torch.relu,
    "exp": torch.exp,
}


def naive_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None, *,
                     scale: float | None = None, feature: Feature = FEATURES["identity"],
                     initial_state: torch.Tensor | None = None,
                     reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(o ``[B, H, T, V]``, final state ``[B, H, K, V]``) of the recurrence, one token at a time
    (``reverse``: from the last token to the first)."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    state = (torch.zeros(B, H, K, V, dtype=q.dtype, device=q.device) if initial_state is None
             else initial_state.to(q.dtype))
    fq, fk = feature(q) * scale, feature(k)
    outs = [None] * T
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        if g is not None:
            decay = torch.exp(g[:, :, t])
            state = state * (decay[..., None, None] if g.dim() == 3 else decay[..., :, None])
        state = state + fk[:, :, t, :, None] * v[:, :, t, None, :]
        outs[t] = torch.einsum("bhk,bhkv->bhv", fq[:, :, t], state)
    o = torch.stack(outs, 2) if T else v.new_zeros(B, H, 0, V)
    return o, state


# A bidirectional GLA spec (ViG-style), shared by the single-process and the distributed tests.
BIDIRECTIONAL = '''
name = "gla_bidirectional"
description = "GLA over both directions (ViG-style)."
[inputs]
q = "b h t k"
k = "b h t k"
v = "b h t v"
g = "b h t k"
[state]
gate = "g[b, h, t, k]"
direction = "bidirectional"
[cascade]
normalize = "none"
'''
