"""Hugging Face transformers backend: ``attn_implementation="attncc"``.

Importing this module calls :func:`register`, which adds ``"attncc"`` to transformers'
``AttentionInterface`` (the attention function, :func:`attention_forward`) and to its
``AttentionMaskInterface`` (:func:`mask_interface`).  The mask function does not build a dense
mask: it keeps the mask function transformers composed for the layer (causal, sliding window,
chunks, padding, packed sequences found from ``position_ids``) with the query/key offsets of the
cache, as an :class:`HFMask`; :func:`attention_forward` traces it into an attncc mask.

What a model passes and where it goes:

* causal, ``sliding_window``, padding, packed sequences: the :class:`HFMask` (transformers finds
  packing from ``position_ids`` only without a cache, ``use_cache=False``); packed sequences given
  as ``cu_seq_lens_q``/``cu_seq_lens_k`` (a flattened batch of one row) add a document mask;
* ``softcap``: ``softcap * tanh(score / softcap)`` as a score mod;
* ``s_aux`` (attention sinks, one logit per head): the output is renormalised with the lse,
  ``o * sigmoid(lse - s_aux[h])``;
* GQA (fewer key/value heads): ``enable_gqa``; ``scaling``: the softmax scale;
* a short query block (at most 16 tokens, fewer than the keys) with no gradient needed, as in
  generation from a KV cache: :func:`attncc.decode` (the decode schedule).

Refused with one-line :class:`~attncc.InputError`: ``dropout > 0``, ``output_attentions=True``,
``position_bias``, and with an attached spec, a padded or packed batch.

:func:`use` attaches mods or a spec to every layer of a model without editing its code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    AttentionMaskInterface,
    and_masks,
    find_packed_sequence_indices,
    padding_mask_function,
    prepare_padding_mask,
)

import attncc
from attncc.errors import AttnccError, InputError
from attncc.runtime.decode import MAX_DECODE_QUERIES
from attncc.runtime.ops import spec_info

NAME = "attncc"
_ATTR = "_attncc_attachment"
# No GPU, and Triton was imported (by a transformers model class) before attncc could select its interpreter.
_NO_BACKEND = "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available()
Mod = Callable[..., Any]

__all__ = ["NAME", "Attachment", "HFMask", "attention_forward", "mask_interface", "register", "use"]


@dataclass(frozen=True)
class HFMask:
    """The mask of one layer kind for one forward call, as transformers composed it.

    ``mask_mod(b, h, q_pos, kv_pos)`` takes absolute positions: query ``i`` of the call is at
    ``q_offset + i``, key ``j`` at ``kv_offset + j``.  ``padded``: the 2D attention mask had a 0.
    """

    mask_mod: Mod
    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int | torch.Tensor = 0
    kv_offset: int | torch.Tensor = 0
    padded: bool = False


@dataclass(frozen=True)
class Attachment:
    """What :func:`use` attached to a model: mods combined with the model's attention, or a spec."""

    score_mod: Mod | None = None
    mask_mod: Mod | None = None
    spec: Any = None  # a CompiledAttention
    spec_kwargs: dict[str, Any] = field(default_factory=dict)


def mask_interface(batch_size: int, q_length: int, kv_length: int, q_offset: int | torch.Tensor = 0,
                   kv_offset: int | torch.Tensor = 0, mask_function: Mod | None = None,
                   attention_mask: torch.Tensor | None = None, **kwargs: Any) -> HFMask:
    """transformers' mask-interface signature; returns an :class:`HFMask` (no dense mask)."""
    if mask_function is None:
        raise InputError("attncc mask interface: transformers passed no mask_function")
    padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        mask_function = and_masks(mask_function, padding_mask_function(padding))
    return HFMask(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset, padded)


def register() -> None:
    """Register ``"attncc"`` in transformers' attention and attention-mask interfaces (idempotent)."""
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask_interface)


def use(model: torch.nn.Module, *, spec: str | Any = None, score_mod: Mod | None = None,
        mask_mod: Mod | None = None, **spec_kwargs: Any) -> torch.nn.Module:
    """Run ``model`` on attncc, with mods or a spec attached to every attention layer; returns ``model``.

    * ``score_mod(score, b, h, q_idx, kv_idx)`` gets the model's score (after its soft-capping);
      ``mask_mod(b, h, q_idx, kv_idx)`` is AND-ed with the model's mask (causal, window, padding).
      Indices are absolute positions (the cache's offset included).
    * ``spec``: a built-in spec name, a spec file path or a parsed spec, called with ``spec_kwargs``
      (its params and captures); its mask and score replace the model's (causal, window and
      soft-capping), sinks still apply.  Padded or packed batches are refused.
    * nothing: detach what was attached (the model stays on ``"attncc"``).
    """
    if spec is not None and (score_mod is not None or mask_mod is not None):
        raise InputError("use: give a spec or mods (score_mod=, mask_mod=), not both")
    if spec_kwargs and spec is None:
        raise InputError(f"use: keyword arguments {sorted(spec_kwargs)} are for a spec; no spec given")
    for name, fn in (("score_mod", score_mod), ("mask_mod", mask_mod)):
        if fn is not None and not callable(fn):
            raise InputError(f"use: {name} must be callable, got {type(fn).__name__}")
    compiled = attncc.load(spec) if spec is not None else None
    attachment = Attachment(score_mod, mask_mod, compiled, dict(spec_kwargs)) if (
        compiled is not None or score_mod is not None or mask_mod is not None) else None
    for module in model.modules():
        module.__dict__[_ATTR] = attachment
    set_impl = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    if callable(set_impl) and getattr(config, "_attn_implementation", None) != NAME:
        set_impl(NAME)
    return model


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: HFMask | torch.Tensor | None, dropout: float = 0.0,
                      scaling: float | None = None, softcap: float | None = None,
                      s_aux: torch.Tensor | None = None, sliding_window: int | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query ``[B, H, L, D]``, key and value
    ``[B, HK, S, D]``; returns ``(attn_output [B, L, H, D], None)``."""
    if _NO_BACKEND:
        raise AttnccError("attncc attention: no GPU, and Triton was imported before attncc could choose its "
                          "interpreter; import attncc first or set TRITON_INTERPRET=1")
    _refuse_unsupported(dropout, kwargs)
    attachment: Attachment | None = module.__dict__.get(_ATTR)
    B, H, M, _ = query.shape
    N = key.shape[2]
    if attachment is not None and attachment.spec is not None:
        out = _run_spec(attachment, query, key, value, attention_mask, scaling, s_aux is not None, kwargs)
    else:
        score_mod = _score_mod(softcap, attention_mask, attachment)
        mask_mod, offsets = _mask_mod(module, attention_mask, sliding_window, query, N, kwargs, attachment)
        out = _run_mods(query, key, value, score_mod, mask_mod, offsets, scaling, s_aux is not None)
    if s_aux is not None:
        o, lse = out
        keep = torch.sigmoid(lse.float() - s_aux.float().view(1, H, 1))  # exp(lse) / (exp(lse) + exp(sink))
        out = (o.float() * keep[..., None]).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _refuse_unsupported(dropout: float, kwargs: dict[str, Any]) -> None:
    if dropout:
        raise InputError(f"attncc attention: dropout={dropout} is not supported; set the config's "
                         "attention_dropout to 0 (or call model.eval())")
    if kwargs.get("output_attentions"):
        raise InputError("attncc attention: output_attentions=True is not supported (no attention weights "
                         "are formed); use attn_implementation='eager' to inspect them")
    if kwargs.get("position_bias") is not None:
        raise InputError("attncc attention: position_bias is not supported; attach it with "
                         "attncc.integrations.transformers.use(model, score_mod=...)")


def _score_mod(softcap: float | None, mask: HFMask | torch.Tensor | None, attachment: Attachment | None) -> Mod | None:
    """The model's soft-capping, an additive float 4D mask, then the attached score_mod."""
    extra = attachment.score_mod if attachment is not None else None
    additive = mask if isinstance(mask, torch.Tensor) and mask.dtype.is_floating_point else None
    if softcap is None and additive is None and extra is None:
        return None
    cap = float(softcap) if softcap is not None else None

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if additive is not None:
            score = score + additive[b, 0, q_idx, kv_idx]
        if extra is not None:
            score = extra(score, b, h, q_idx, kv_idx)
        return score

    return score_mod


def _mask_mod(module: torch.nn.Module, mask: HFMask | torch.Tensor | None, sliding_window: int | None,
              query: torch.Tensor, N: int, kwargs: dict[str, Any],
              attachment: Attachment | None) -> tuple[Mod | None, tuple[Any, Any]]:
    """The mask in absolute positions and the (query, key) offsets of the call's first positions."""
    query_batch, M = query.shape[0], query.shape[2]
    offsets: tuple[Any, Any] = (0, 0)
    if isinstance(mask, HFMask):
        fn: Mod | None = mask.mask_mod
        offsets = (mask.q_offset, mask.kv_offset)
    elif isinstance(mask, torch.Tensor):
        if mask.dim() != 4:
            raise InputError(f"attncc attention: attention_mask must be 4D here, got shape {tuple(mask.shape)}")
        fn = _dense_mask(mask) if mask.dtype == torch.bool else None  # float masks add to the score
    else:
        fn = _default_mask(module, sliding_window)
        if fn is not None:
            offsets = (N - M, 0)  # queries are the last M positions (bottom-right causal)
    fn = _and(fn, _cu_seqlens_mask(kwargs, query_batch))
    if attachment is not None:
        fn = _and(fn, attachment.mask_mod)
    return fn, offsets


def _and(a: Mod | None, b: Mod | None) -> Mod | None:
    if a is None or b is None:
        return a if b is None else b

    def both(bi: Any, h: Any, q: Any, kv: Any) -> Any:
        return a(bi, h, q, kv) & b(bi, h, q, kv)

    return both


def _dense_mask(mask: torch.Tensor) -> Mod:
    def dense(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return mask[b, 0, q, kv]

    return dense


def _default_mask(module: torch.nn.Module, sliding_window: int | None) -> Mod | None:
    """Without a mask from transformers: the layer's causality and window (None: full attention)."""
    if not getattr(module, "is_causal", True):
        return None
    window = int(sliding_window) if sliding_window is not None else None

    def causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
        keep = kv <= q
        return keep & (kv > q - window) if window is not None else keep

    return causal


def _cu_seqlens_mask(kwargs: dict[str, Any], batch: int) -> Mod | None:
    """Flash-attention style packing (``cu_seq_lens_q == cu_seq_lens_k``, one row): a document mask."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    if cu_q is None or cu_k is None or not torch.equal(cu_q, cu_k):
        raise InputError("attncc attention: cu_seq_lens_q and cu_seq_lens_k must be given together and be equal")
    if batch != 1:
        raise InputError(f"attncc attention: cu_seq_lens_q describes a flattened batch of one row, got batch {batch}")
    total = int(cu_q[-1])
    doc = (torch.searchsorted(cu_q.to(torch.int64), torch.arange(total, device=cu_q.device), right=True) - 1)
    doc = doc.to(torch.int32).view(1, total)

    def same_document(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return doc[b, q] == doc[b, kv]

    return same_document


def _shifted(score_mod: Mod | None, mask_mod: Mod | None, offsets: tuple[Any, Any],
             device: torch.device) -> tuple[Mod | None, Mod | None]:
    """The mods over the kernel's indices: both get ``index + offset`` (absolute positions); the
    offsets are read from a captured tensor, so a new offset compiles nothing new."""
    q_off, kv_off = offsets
    if isinstance(q_off, int) and isinstance(kv_off, int) and q_off == 0 and kv_off == 0:
        return score_mod, mask_mod
    offs = torch.stack([torch.as_tensor(q_off), torch.as_tensor(kv_off)]).to(device=device, dtype=torch.int32)
    shifted_score = shifted_mask = None
    if score_mod is not None:
        def shifted_score(score: Any, b: Any, h: Any, q: Any, kv: Any) -> Any:
            return score_mod(score, b, h, q + offs[0], kv + offs[1])
    if mask_mod is not None:
        def shifted_mask(b: Any, h: Any, q: Any, kv: Any) -> Any:
            return mask_mod(b, h, q + offs[0], kv + offs[1])
    return shifted_score, shifted_mask


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _run_mods(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Mod | None, mask_mod: Mod | None,
              offsets: tuple[Any, Any], scale: float | None, lse: bool) -> Any:
    """Decode schedule for a short query block with no gradient, else ``flex_attention``.  The mods
    take absolute positions: the call's query i is at ``offsets[0] + i``, key j at ``offsets[1] + j``."""
    B, H, M, _ = q.shape
    N = k.shape[2]
    if (mask_mod is not None and 0 < M <= MAX_DECODE_QUERIES and M < N and not _needs_grad(q, k, v)
            and not torch.compiler.is_compiling()):
        # attncc.decode's query i is at index N - M + i, so the shift to absolute positions is smaller by N - M
        score_mod, mask_mod = _shifted(score_mod, mask_mod, (offsets[0] - (N - M), offsets[1]), q.device)
        block_mask = attncc.create_block_mask(mask_mod, B, None, M, N, device=q.device)
        return attncc.decode(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, return_lse=lse)
    score_mod, mask_mod = _shifted(score_mod, mask_mod, offsets, q.device)
    block_mask = None if mask_mod is None else attncc.create_block_mask(mask_mod, B, None, M, N, device=q.device)
    if not lse:
        return attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                     enable_gqa=H != k.shape[1])
    out, aux = attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                     enable_gqa=H != k.shape[1], return_aux=attncc.AuxRequest(lse=True))
    return out, aux.lse


def _run_spec(attachment: Attachment, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: HFMask | torch.Tensor | None, scale: float | None, lse: bool, kwargs: dict[str, Any]) -> Any:
    """An attached spec: prefill (queries and keys from position 0) or decode (queries at the end)."""
    if isinstance(mask, torch.Tensor) or (isinstance(mask, HFMask) and mask.padded):
        raise InputError("attncc attention: an attached spec cannot take a padded batch or a given 4D mask; "
                         "attach mods (use(model, mask_mod=...)) to combine with padding")
    if kwargs.get("cu_seq_lens_q") is not None or _packed(kwargs.get("position_ids"), q.shape[0]):
        raise InputError("attncc attention: an attached spec cannot take packed sequences; "
                         "use the document_causal spec with its doc capture")
    M, N = q.shape[2], k.shape[2]
    fn, params = attachment.spec, attachment.spec_kwargs
    if q.shape[1] != k.shape[1] and not spec_info(fn).gqa:  # a spec without GQA sees every query head's keys
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if M == N:
        return fn(q, k, v, scale=scale, return_lse=lse, **params)
    if M < N and M <= MAX_DECODE_QUERIES and not _needs_grad(q, k, v):
        return fn.decode(q, k, v, scale=scale, return_lse=lse, **params)
    raise InputError(f"attncc attention: an attached spec runs prefill (queries = keys) or decode "
                     f"(at most {MAX_DECODE_QUERIES} queries without gradient); got {M} queries, {N} keys")


def _packed(position_ids: torch.Tensor | None, batch: int) -> bool:
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return False
    return find_packed_sequence_indices(position_ids.expand(batch, -1)) is not None


register()
