"""Decode calls: a few new queries per sequence against a contiguous or paged KV cache.

``CompiledAttention.decode`` and :func:`decode` (FlexAttention-style mods) run the ``decode``
schedule's module (generated once per spec with ``CallFacts(decode=True)``); ``flex_attention``
sends calls with at most :data:`MAX_DECODE_QUERIES` queries here when no gradient is needed.
Shapes: q ``[B, Hq, Lq, D]``; caches ``[B, Hkv, Lmax, D]`` or ``[num_pages, Hkv, page_size, D]``
with ``block_table [B, pages_per_seq]`` int32; ``cache_seqlens [B]`` int32.  Returns o
``[B, Hq, Lq, E]`` (and lse ``[B, Hq, Lq]`` fp32, natural log, with ``return_lse``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from attncc.errors import InputError
from attncc.runtime import host
from attncc.runtime.ops import spec_info
from attncc.schedules.decode.partition import DecodeError, check_decode

if TYPE_CHECKING:
    from attncc.runtime.compiled import CompiledAttention

MAX_DECODE_QUERIES = 16  # flex_attention routes shorter query blocks to the decode schedule


def decode_compiled(compiled: CompiledAttention, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                    cache_seqlens: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
                    scale: float | None = None, return_lse: bool = False, config: dict[str, int] | None = None,
                    programs: int | None = None, queries_at_end: bool = True,
                    **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``CompiledAttention.decode``: captured tensors and params by keyword.  ``queries_at_end``
    False (``flex_attention``'s short queries): the queries are positions 0 .. Lq - 1 of a full
    cache, with FlexAttention's semantics (no implied causal order)."""
    info = spec_info(compiled)
    name = f"{info.name}.decode"
    captures, params = host.split_kwargs(info, kwargs)
    scale = host.check_scale(name, scale)
    if programs is not None and (isinstance(programs, bool) or not isinstance(programs, int) or programs < 1):
        raise InputError(f"{name}: programs must be a positive int, got {programs!r}")
    try:
        check_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    except DecodeError as exc:
        raise InputError(f"{name}: {exc}") from None
    module = compiled.decode_module()
    caps = dict(zip([c[0] for c in info.captures], captures, strict=True))
    try:
        o, lse = module.decode_forward(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                                       scale=scale, config=config, captures=caps, programs=programs,
                                       queries_at_end=queries_at_end, **params)
    except (module.LaunchError, module.DecodeError) as exc:
        raise InputError(f"{name}: {exc}") from None
    return (o, lse) if return_lse else o


def decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
           cache_seqlens: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
           score_mod: Callable[..., Any] | None = None, block_mask: Any = None, scale: float | None = None,
           return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode attention with FlexAttention-style mods (``q_idx``/``kv_idx`` are absolute positions).

    ``block_mask``: a :class:`~attncc.BlockMask` built from a ``mask_mod`` (its mask is applied
    elementwise; the decode schedule visits the mask's key segments).
    """
    from attncc.runtime.compiled import compile_spec, spec_from_mods

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
