"""Public Python API: ``load``, the ``attention`` decorator, FlexAttention-compatible functions.

Every path builds a :class:`Spec`, which is lowered and compiled once per
content hash (:mod:`attncc.runtime.compiled`); tensors are validated in :mod:`attncc.runtime.host` with one-line :class:`InputError`s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attncc.errors import InputError
from attncc.runtime import host
from attncc.runtime.compiled import CompiledAttention, compile_spec, load, spec_from_mods
from attncc.runtime.mods import call_mods

__all__ = ["BlockMask", "CompiledAttention", "attention", "compile_spec", "create_block_mask", "flex_attention",
           "load", "spec_from_mods"]

@dataclass
class BlockMask:
    """attncc's BlockMask: the mask_mod and the lengths it was made for.

    No block tables are materialised: the kernel derives key ranges symbolically
    from the traced predicate.  ``to_dense()`` gives the ``[B, H, Mb, Nb]`` block
    occupancy (1 where a block has any unmasked element), like torch's.
    """

    mask_mod: Callable[..., Any]
    B: int | None
    H: int | None
    Q_LEN: int
    KV_LEN: int
    BLOCK_SIZE: tuple[int, int] = (128, 128)
    device: Any = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.B or 1, self.H or 1, self.Q_LEN, self.KV_LEN)

    @property
    def seq_lengths(self) -> tuple[int, int]:
        return (self.Q_LEN, self.KV_LEN)

    def dense_mask(self) -> torch.Tensor:
        """Elementwise mask ``[B, H, Q_LEN, KV_LEN]`` (bool)."""
        from attncc.runtime.reference import dense_mask, index_env
        spec, caps = spec_from_mods(None, self.mask_mod)
        B, H = self.shape[:2]
        env = index_env(spec, B, H, H, self.Q_LEN, self.KV_LEN, 1, 1, {}, 1.0)
        return dense_mask(spec, env, caps, (B, H, self.Q_LEN, self.KV_LEN))

    def to_dense(self) -> torch.Tensor:
        mask = self.dense_mask()
        bq, bk = self.BLOCK_SIZE
        B, H, M, N = mask.shape
        pad = torch.zeros(B, H, -(-M // bq) * bq, -(-N // bk) * bk, dtype=torch.bool)
        pad[:, :, :M, :N] = mask
        return pad.view(B, H, pad.shape[2] // bq, bq, pad.shape[3] // bk, bk).any(5).any(3).int()

    def sparsity(self) -> float:
        """Percentage of blocks that are entirely masked."""
        dense = self.to_dense()
        return 100.0 * (1.0 - dense.float().mean().item())


def create_block_mask(mask_mod: Callable[..., Any], B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                      device: Any = None, BLOCK_SIZE: int | tuple[int, int] = 128, _compile: bool = False,
                      **_ignored: Any) -> BlockMask:
    """FlexAttention-compatible mask object; cheap (no O(L^2) set-up)."""
    bs = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    if not torch.compiler.is_compiling():  # under torch.compile the mask is recorded at attention time
        spec_from_mods(None, mask_mod)  # trace now so errors surface at creation
    return BlockMask(mask_mod, B, H, int(Q_LEN), int(KV_LEN), bs, device)  # type: ignore[arg-type]


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable[..., Any] | None = None, block_mask: Any = None,
                   scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict[str, Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``torch.nn.attention.flex_attention.flex_attention`` (same arguments and results).

    query ``[B, H, M, D]``, key ``[B, HK, N, D]``, value ``[B, HK, N, E]``; returns
    out ``[B, H, M, E]`` and, with ``return_lse``, lse ``[B, H, M]`` (natural log, fp32).
    ``kernel_options`` may carry BLOCK_M, BLOCK_N, num_warps, num_stages (optionally prefixed
    ``fwd_``/``bwd_``); torch's other documented keys are accepted and ignored; anything else is an
    :class:`InputError`.
    """
    host.check_tensor_args("flex_attention", query, key, value)
    keys, values = host.encode_config("flex_attention", kernel_options, label="kernel_options", torch_options=True)
    mask_mod = getattr(block_mask, "mask_mod", None) if block_mask is not None else None
    if block_mask is not None:
        lens = getattr(block_mask, "seq_lengths", None)
        if lens is not None and tuple(lens) != (query.shape[-2], key.shape[-2]):
            raise InputError(f"flex_attention: block_mask was made for lengths {tuple(lens)}, "
                             f"got query {query.shape[-2]} and key {key.shape[-2]}")
    if not enable_gqa and key.dim() == 4 and query.dim() == 4 and query.shape[1] != key.shape[1]:
        raise InputError(f"flex_attention: query has {query.shape[1]} heads, key {key.shape[1]}; "
                         "pass enable_gqa=True for grouped-query attention")
    config = dict(zip(keys, values, strict=True))
    return call_mods(query, key, value, score_mod, mask_mod, gqa=enable_gqa, name="flex", scale=scale,
                         return_lse=return_lse, config=config or None)


def attention(score_mod: Callable[..., Any] | None = None, *, mask_mod: Callable[..., Any] | None = None,
              enable_gqa: bool = False) -> Any:
    """Decorator: ``@attncc.attention(mask_mod=causal)`` on a score_mod-style function.

    Returns ``fn(q, k, v, *, scale=None, return_lse=False)``.  Captured tensors are
    re-read at each call, so learnable tables may change between calls.
    """
    def wrap(fn: Callable[..., Any] | None) -> Callable[..., Any]:
        @functools.wraps(fn or (lambda: None))
        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                return_lse: bool = False) -> Any:
            return call_mods(q, k, v, fn, mask_mod, gqa=enable_gqa, name=getattr(fn, "__name__", "attention"),
                                 scale=scale, return_lse=return_lse)
        return run
    if score_mod is not None and callable(score_mod):
        return wrap(score_mod)
    return wrap
