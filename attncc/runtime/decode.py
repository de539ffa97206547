"""Decode calls: a few new queries per sequence against a contiguous or paged KV cache.

``CompiledAttention.decode`` and :func:`attncc.decode` (FlexAttention-style mods, in
:mod:`attncc.runtime.api`) run the ``decode``
schedule's module (generated once per spec with ``CallFacts(decode=True)``); ``flex_attention``
sends calls with at most :data:`MAX_DECODE_QUERIES` queries here when no gradient is needed.
Shapes: q ``[B, Hq, Lq, D]``; caches ``[B, Hkv, Lmax, D]`` or ``[num_pages, Hkv, page_size, D]``
with ``block_table [B, pages_per_seq]`` int32; ``cache_seqlens [B]`` int32.  Returns o
``[B, Hq, Lq, E]`` (and lse ``[B, Hq, Lq]`` fp32, natural log, with ``return_lse``).
"""

from __future__ import annotations

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
                    programs: int | None = None, queries_at_end: bool = True, check_values: bool = True,
                    **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``CompiledAttention.decode``: captured tensors and params by keyword.  ``queries_at_end``
    False (``flex_attention``'s short queries): the queries are positions 0 .. Lq - 1 of a full
    cache, with FlexAttention's semantics (no implied causal order).  ``check_values`` False:
    no host synchronisation (lengths and page ids are not checked against the cache)."""
    info = spec_info(compiled)
    name = f"{info.name}.decode"
    captures, params = host.split_kwargs(info, kwargs)
    scale = host.check_scale(name, scale)
    if programs is not None and (isinstance(programs, bool) or not isinstance(programs, int) or programs < 1):
        raise InputError(f"{name}: programs must be a positive int, got {programs!r}")
    try:
        check_decode(q, k_cache, v_cache, cache_seqlens, block_table, check_values)
    except DecodeError as exc:
        raise InputError(f"{name}: {exc}") from None
    module = compiled.decode_module()
    caps = dict(zip([c[0] for c in info.captures], captures, strict=True))
    try:
        o, lse = module.decode_forward(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                                       scale=scale, config=config, captures=caps, programs=programs,
                                       queries_at_end=queries_at_end, check_values=False, **params)
    except (module.LaunchError, module.DecodeError) as exc:
        raise InputError(f"{name}: {exc}") from None
    return (o, lse) if return_lse else o
