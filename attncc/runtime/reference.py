"""Dense float64 evaluation of a spec: what ``attncc check`` compares kernels against."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.spec.model import Spec


def index_env(spec: Spec, B: int, H: int, HK: int, M: int, N: int, D: int, Ev: int,
              params: Mapping[str, float | int], scale: float, device: torch.device | str = "cpu") -> dict:
    """Symbol values as broadcastable grids ``[B, H, M, N]`` plus sizes, params and scale."""
    def grid(n: int, dim: int) -> torch.Tensor:
        shape = [1, 1, 1, 1]
        shape[dim] = n
        return torch.arange(n, device=device).view(shape)

    env = {E.b: grid(B, 0), E.h: grid(H, 1), E.m: grid(M, 2), E.n: grid(N, 3), E.scale: scale}
    sizes = {"B": B, "H": H, "HK": HK, "M": M, "N": N, "D": D, "E": Ev}
    env.update({E.SIZE_SYMBOLS[k]: v for k, v in sizes.items()})
    env.update({p.symbol: params.get(p.name, p.default) for p in spec.params.values()})
    return env


def dense_mask(spec: Spec, env: dict, captures: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The mask predicate on every (b, h, m, n): bool ``[B, H, M, N]``."""
    val = evaluate(spec.mask, env, captures)
    if not isinstance(val, torch.Tensor):
        val = torch.tensor(bool(val))
    return val.bool().expand(shape)


def reference_forward(spec: Spec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      captures: Mapping[str, torch.Tensor], params: Mapping[str, float | int],
                      scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``[B, H, M, E]`` and lse ``[B, H, M]`` in float64, from the spec's expressions."""
    B, H, M, D = q.shape
    HK, N, Ev = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    env = index_env(spec, B, H, HK, M, N, D, Ev, params, scale, q.device)
    kv = torch.as_tensor(evaluate(spec.kv_head, env, captures)).reshape(-1).expand(H).long()
    kd, vd = k.double()[:, kv], v.double()[:, kv]
    s = q.double() @ kd.transpose(-1, -2) * (scale if spec.scaled else 1.0)
    env[E.score] = s
    s = torch.as_tensor(evaluate(spec.modify, env, captures)).double().expand(B, H, M, N)
    keep = dense_mask(spec, env, captures, (B, H, M, N))
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return p @ vd, lse
