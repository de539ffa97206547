"""Public Python API: ``load``, the ``attention`` decorator, FlexAttention-compatible functions.

Every path builds a :class:`Spec`, which is lowered and compiled once per
content hash (:mod:`attncc.runtime.compiled`); tensors are validated in :mod:`attncc.runtime.host` with one-line :class:`InputError`s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from attncc.errors import InputError
from attncc.runtime import host
from attncc.runtime.blockmask import BlockMask, create_block_mask
from attncc.runtime.compiled import CompiledAttention, compile_spec, load, spec_from_mods
from attncc.runtime.decode import MAX_DECODE_QUERIES, decode_compiled
from attncc.runtime.mods import call_mods

__all__ = ["BlockMask", "CompiledAttention", "attention", "compile_spec", "create_block_mask", "decode",
           "flex_attention", "load", "spec_from_mods"]

def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable[..., Any] | None = None, block_mask: Any = None,
                   scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict[str, Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``torch.nn.attention.flex_attention.flex_attention`` (same arguments and results).

    query ``[B, H, M, D]``, key ``[B, HK, N, D]``, value ``[B, HK, N, E]``; returns
    out ``[B, H, M, E]`` and, with ``return_lse``, lse ``[B, H, M]`` (natural log, fp32).
    ``kernel_options`` may carry BLOCK_M, BLOCK_N, num_warps, num_stages (optionally prefixed
    ``fwd_``/``bwd_``); torch's other documented keys are accepted and ignored; anything else is an
    :class:`InputError`.  Short queries (at most 16, fewer than the keys) that need no gradient,
    outside ``torch.compile`` and without given block lists, run on the decode schedule
    (stream-K over the keys), with the same semantics.
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
    tables = getattr(block_mask, "given_tables", None) if block_mask is not None else None
    if tables is None and not config and _short_queries(query, key, value):
        spec, tensors = spec_from_mods(score_mod, mask_mod, gqa=enable_gqa, name="flex")
        return decode_compiled(compile_spec(spec), query, key, value, scale=host.check_scale("flex_attention", scale),
                               return_lse=return_lse, queries_at_end=False, **tensors)
    return call_mods(query, key, value, score_mod, mask_mod, gqa=enable_gqa, name="flex", scale=scale, tables=tables,
                         return_lse=return_lse, config=config or None)


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
           cache_seqlens: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
           score_mod: Callable[..., Any] | None = None, block_mask: Any = None, scale: float | None = None,
           return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode attention with FlexAttention-style mods (``q_idx``/``kv_idx`` are absolute positions).

    ``block_mask``: a :class:`~attncc.BlockMask` built from a ``mask_mod`` (its mask is applied
    elementwise; the decode schedule visits the mask's key segments).
    """
    mask_mod = None
    if block_mask is not None:
        mask_mod = getattr(block_mask, "mask_mod", None)
        if mask_mod is None:
            raise InputError("decode: block_mask must come from a mask_mod (create_block_mask); "
                             "a mask given only as block lists has no per-position predicate")
    gqa = isinstance(q, torch.Tensor) and isinstance(k_cache, torch.Tensor) and q.dim() == 4 and \
        k_cache.dim() == 4 and q.shape[1] != k_cache.shape[1]
    spec, tensors = spec_from_mods(score_mod, mask_mod, gqa=gqa, name="decode")
    compiled = compile_spec(spec)
    return decode_compiled(compiled, q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                           scale=scale, return_lse=return_lse, **tensors)


def _short_queries(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a flex_attention call goes to the decode schedule (see :func:`flex_attention`)."""
    M, N = query.shape[2], key.shape[2]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return 0 < M <= MAX_DECODE_QUERIES and M < N and not needs_grad and not torch.compiler.is_compiling()


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
