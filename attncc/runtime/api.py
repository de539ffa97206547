"""Public Python API: ``load``, the ``attention`` decorator, FlexAttention-compatible functions.

Every path builds a :class:`Spec`, which is lowered and compiled once per
content hash (:mod:`attncc.runtime.compiled`); tensors are validated in :mod:`attncc.runtime.host` with one-line :class:`InputError`s.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask as TorchBlockMask
from torch.nn.attention.flex_attention import _sliced_mask_mod_error as _torch_sliced_error
from torch.nn.attention.flex_attention import noop_mask

from attncc.errors import InputError
from attncc.runtime import host
from attncc.runtime.blockmask import BlockMask, create_block_mask, sliced_mask_mod
from attncc.runtime.compiled import CompiledAttention, compile_spec, load, spec_from_mods
from attncc.runtime.decode import MAX_DECODE_QUERIES, decode_compiled
from attncc.runtime.flex_options import AuxOutput, AuxRequest, FlexOptions, aux_wanted, parse_kernel_options
from attncc.runtime.mods import call_mods

__all__ = ["AuxOutput", "AuxRequest", "BlockMask", "CompiledAttention", "attention", "compile_spec", "create_block_mask", "decode",
           "flex_attention", "load", "spec_from_mods"]

_WARNED: set[str] = set()  # deprecation warnings given in this process


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable[..., Any] | None = None, block_mask: Any = None,
                   scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict[str, Any] | None = None, *,
                   return_aux: AuxRequest | None = None) -> Any:
    """Drop-in for ``torch.nn.attention.flex_attention.flex_attention`` (same arguments and results).

    query ``[B, H, M, D]``, key ``[B, HK, N, D]``, value ``[B, HK, N, E]``; returns out
    ``[B, H, M, E]``; with ``return_aux=AuxRequest(lse=..., max_scores=...)``, ``(out, AuxOutput)``
    whose requested fields are ``[B, H, M]`` fp32 (lse: natural log; max_scores: the row max of
    the scaled, modified, masked scores, -inf for rows without keys) and the others ``None``;
    with the deprecated ``return_lse=True`` (a ``FutureWarning``), ``(out, lse)``.
    ``kernel_options``: torch's ``FlexKernelOptions`` (:mod:`attncc.runtime.flex_options`).
    ``block_mask``: attncc's :class:`BlockMask` or torch's (read through its block lists and mask_mod).
    Short queries (at most 16, fewer than the keys) that need no gradient, outside
    ``torch.compile``, without given block lists or tile options, run on the decode schedule
    (stream-K over the keys), with the same semantics.
    """
    host.check_tensor_args("flex_attention", query, key, value)
    want_lse, want_max = aux_wanted(return_lse, return_aux)
    if return_lse and "return_lse" not in _WARNED:  # once per process, as torch warns
        _WARNED.add("return_lse")
        warnings.warn("return_lse is deprecated (as in torch's flex_attention); "
                      "use return_aux=AuxRequest(lse=True)", FutureWarning, stacklevel=2)
    options = parse_kernel_options(kernel_options)
    block_mask = _as_block_mask(block_mask)
    mask_mod = block_mask.mask_mod if block_mask is not None else None
    if block_mask is not None and block_mask.seq_lengths != (query.shape[-2], key.shape[-2]):
        raise InputError(f"flex_attention: block_mask was made for lengths {block_mask.seq_lengths}, "
                         f"got query {query.shape[-2]} and key {key.shape[-2]}")
    if not enable_gqa and key.dim() == 4 and query.dim() == 4 and query.shape[1] != key.shape[1]:
        raise InputError(f"flex_attention: query has {query.shape[1]} heads, key {key.shape[1]}; "
                         "pass enable_gqa=True for grouped-query attention")
    tables = block_mask.given_tables if block_mask is not None else None
    config = options.config or None
    if _use_decode(options, tables, query, key, value):
        spec, tensors = spec_from_mods(score_mod, mask_mod, gqa=enable_gqa, name="flex")
        out, lse = decode_compiled(compile_spec(spec), query, key, value,
                                   scale=host.check_scale("flex_attention", scale), return_lse=True,
                                   queries_at_end=False, **tensors)
    else:
        out, lse = call_mods(query, key, value, score_mod, mask_mod, gqa=enable_gqa, name="flex", scale=scale,
                             tables=tables, return_lse=True, config=config)
    if return_aux is None:
        return (out, lse) if want_lse else out
    max_scores = (row_max_scores(query, key, value, score_mod, mask_mod, gqa=enable_gqa, scale=scale,
                                 tables=tables, config=config) if want_max else None)
    return out, AuxOutput(lse=lse if want_lse else None, max_scores=max_scores)


# The modified scores times 2**32 (exact in floating point) have
# lse = 2**32 * max + log(l), 1 <= l <= N: divided back, max + at most ln(N) / 2**32.
MAX_SCORES_TEMPERATURE = 2.0 ** 32


def row_max_scores(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable[..., Any] | None, mask_mod: Callable[..., Any] | None, *, gqa: bool,
                   scale: float | None, tables: Any = None, config: dict[str, int] | None = None) -> torch.Tensor:
    """Row max ``[B, H, M]`` fp32 of the scaled, modified, masked scores (-inf for rows without keys).

    A second forward launch of the same kernels, on the modified scores times
    :data:`MAX_SCORES_TEMPERATURE` and a one-column value: its lse divided by the temperature is
    the max, too high by at most ``ln(N) / 2**32`` (plus fp32 rounding).  Not differentiable (as in torch).
    """
    def tempered(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        s = score if score_mod is None else score_mod(score, b, h, q_idx, kv_idx)
        return s * MAX_SCORES_TEMPERATURE

    with torch.no_grad():
        one_column = value.new_zeros(*value.shape[:-1], 1) if value.dim() == 4 else value
        _, lse = call_mods(query.detach(), key.detach(), one_column, tempered, mask_mod, gqa=gqa,
                           name="flex_max_scores", scale=scale, tables=tables, return_lse=True, config=config)
    return lse / MAX_SCORES_TEMPERATURE


def _as_block_mask(block_mask: Any) -> BlockMask | None:
    """attncc's BlockMask for ``block_mask`` (torch's is read through its tables and mask_mod)."""
    if block_mask is None:
        return None
    if isinstance(block_mask, TorchBlockMask):
        mask_mod = None if block_mask.mask_mod is noop_mask else block_mask.mask_mod
        if mask_mod is _torch_sliced_error:
            mask_mod = sliced_mask_mod
        block_mask = BlockMask.from_kv_blocks(
            block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks,
            block_mask.full_kv_indices, BLOCK_SIZE=block_mask.BLOCK_SIZE, mask_mod=mask_mod,
            seq_lengths=block_mask.seq_lengths)
    if not isinstance(block_mask, BlockMask):
        raise InputError(f"flex_attention: block_mask must be a BlockMask (create_block_mask), "
                         f"got {type(block_mask).__name__}")
    if block_mask.mask_mod is sliced_mask_mod:
        raise InputError("flex_attention: block_mask was sliced (mask[b, h]), which drops its mask_mod; "
                         "set mask_mod from the original mask (as in torch)")
    return block_mask


def _use_decode(options: FlexOptions, tables: Any, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> bool:
    """Whether the call runs on the decode schedule: by the rule of :func:`flex_attention`
    (``BACKEND='AUTO'``), always (``'TRITON_DECODE'``, where it can) or never."""
    if options.backend == "TRITON":
        return False
    fits = tables is None and _short_queries(query, key, value)
    if options.backend == "TRITON_DECODE":
        if not fits or options.config:
            raise InputError(f"flex_attention: kernel_options BACKEND='TRITON_DECODE' needs at most "
                             f"{MAX_DECODE_QUERIES} queries, fewer than the keys, no gradient, no block lists, "
                             "no tile options and no torch.compile")
        return True
    return fits and not options.config


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
