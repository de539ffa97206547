"""``torch.nn`` modules on attncc kernels.

:class:`MultiheadAttention` is self-attention with q/k/v/o projections, optional grouped-query
heads and an optional rotary embedding; the attention itself is a spec (``"causal"`` by default)
or FlexAttention-style mods.  It works under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attncc.errors import InputError
from attncc.runtime.api import create_block_mask, flex_attention, load
from attncc.runtime.ops import spec_info

__all__ = ["MultiheadAttention", "apply_rotary"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding (the rotate-half form of GPT-NeoX and Llama) of x ``[B, H, L, D]`` at
    ``positions`` ``[L]`` or ``[B, L]``; D even.  Computed in fp32, returned in x's dtype."""
    D = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [(B,) L, D/2]
    angles = torch.cat([angles, angles], dim=-1)
    if angles.dim() == 3:
        angles = angles[:, None]  # [B, 1, L, D]
    xf = x.float()
    return (xf * angles.cos() + _rotate_half(xf) * angles.sin()).to(x.dtype)


class _Shared:
    """Holds the compiled spec; copies of a module share it (``copy.deepcopy`` of a model works)."""

    __slots__ = ("compiled",)

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class MultiheadAttention(nn.Module):
    """Self-attention: x ``[B, L, embed_dim]`` -> ``[B, L, embed_dim]``.

    * ``num_heads`` query heads of ``head_dim = embed_dim // num_heads`` (or ``head_dim=``);
      ``num_kv_heads`` key/value heads (default ``num_heads``; fewer is GQA, 1 is MQA) must divide it.
    * Attention: ``spec`` (a built-in name, a spec file path or a parsed spec; default
      ``"causal"``), or ``score_mod=`` / ``mask_mod=`` (FlexAttention style; then no spec).  Spec
      params and captures go to :meth:`forward` as keywords.
    * ``rotary``: rotary embedding of q and k at positions ``0 .. L-1`` (or ``positions=``), base
      ``rotary_base``; head_dim must be even.
    * ``bias``: biases in the four projections.

    Parameters: ``q_proj [H*D, E]``, ``k_proj`` and ``v_proj [HK*D, E]``, ``o_proj [E, H*D]``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: int | None = None,
                 spec: Any = None, score_mod: Callable[..., Any] | None = None,
                 mask_mod: Callable[..., Any] | None = None, bias: bool = False, rotary: bool = False,
                 rotary_base: float = 10000.0, head_dim: int | None = None, scale: float | None = None,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_sizes(embed_dim, num_heads, kv_heads, head_dim, rotary)
        if spec is not None and (score_mod is not None or mask_mod is not None):
            raise InputError("MultiheadAttention: give a spec or mods (score_mod=, mask_mod=), not both")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, kv_heads
        self.head_dim = head_dim if head_dim is not None else embed_dim // num_heads
        self.rotary, self.rotary_base, self.scale = rotary, float(rotary_base), scale
        self.score_mod, self.mask_mod = score_mod, mask_mod
        uses_mods = score_mod is not None or mask_mod is not None
        self._shared = _Shared(None if uses_mods else load(spec if spec is not None else "causal"))
        self._repeat_kv = self.compiled is not None and kv_heads != num_heads and not spec_info(self.compiled).gqa
        factory = {"device": device, "dtype": dtype}
        D = self.head_dim
        self.q_proj = nn.Linear(embed_dim, num_heads * D, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, kv_heads * D, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, kv_heads * D, bias=bias, **factory)
        self.o_proj = nn.Linear(num_heads * D, embed_dim, bias=bias, **factory)

    @property
    def compiled(self) -> Any:
        """The compiled spec (:class:`~attncc.CompiledAttention`), or None with mods."""
        return self._shared.compiled

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor | None = None, **spec_kwargs: Any) -> torch.Tensor:
        """x ``[B, L, embed_dim]``; ``positions`` ``[L]`` or ``[B, L]`` for the rotary embedding
        (default ``arange(L)``); ``spec_kwargs``: the spec's params and captured tensors."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise InputError(f"MultiheadAttention: x must be [B, L, {self.embed_dim}], got {tuple(x.shape)}")
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.rotary:
            pos = positions if positions is not None else torch.arange(L, device=x.device)
            q, k = apply_rotary(q, pos, self.rotary_base), apply_rotary(k, pos, self.rotary_base)
        o = self.attend(q, k, v, **spec_kwargs)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **spec_kwargs: Any) -> torch.Tensor:
        """The attention of projected heads: q ``[B, H, L, D]``, k and v ``[B, HK, L, D]`` ->
        ``[B, H, L, D]`` (after the rotary embedding; a subclass may override it)."""
        if self.compiled is None:
            if spec_kwargs:
                raise InputError(f"MultiheadAttention: keyword arguments {sorted(spec_kwargs)} are for a spec; "
                                 "this module uses mods")
            mask = None
            if self.mask_mod is not None:
                mask = create_block_mask(self.mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
            return flex_attention(q, k, v, score_mod=self.score_mod, block_mask=mask, scale=self.scale,
                                  enable_gqa=self.num_kv_heads != self.num_heads)
        if self._repeat_kv:  # a spec without GQA: every query head gets its key/value head
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return self.compiled(q, k, v, scale=self.scale, **spec_kwargs)

    def extra_repr(self) -> str:
        attention = self.compiled.spec.name if self.compiled is not None else "mods"
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, attention={attention}, rotary={self.rotary}")


def _check_sizes(embed_dim: int, num_heads: int, kv_heads: int, head_dim: int | None, rotary: bool) -> None:
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("num_kv_heads", kv_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"MultiheadAttention: {name} must be a positive int, got {value!r}")
    if num_heads % kv_heads:
        raise InputError(f"MultiheadAttention: num_kv_heads={kv_heads} must divide num_heads={num_heads}")
    if head_dim is None and embed_dim % num_heads:
        raise InputError(f"MultiheadAttention: embed_dim={embed_dim} is not a multiple of num_heads={num_heads}; "
                         "pass head_dim=")
    D = head_dim if head_dim is not None else embed_dim // num_heads
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise InputError(f"MultiheadAttention: head_dim must be a positive int, got {D!r}")
    if rotary and D % 2:
        raise InputError(f"MultiheadAttention: rotary needs an even head_dim, got {D}")
