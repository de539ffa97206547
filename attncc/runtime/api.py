"""Public Python API: ``load``, the ``attention`` decorator, FlexAttention-compatible functions.

Every path builds a :class:`Spec`, which is lowered and compiled once per
content hash; tensors are validated in :mod:`attncc.runtime.ops` with one-line :class:`InputError`s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch

from attncc.codegen import Generated, generate, load_module
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.runtime import host, ops
from attncc.runtime.trace import trace
from attncc.spec.loader import resolve
from attncc.spec.model import CaptureDecl, Spec

_COMPILED: dict[str, CompiledAttention] = {}


class CompiledAttention:
    """A compiled variant: ``fn(q, k, v, *, scale=None, return_lse=False, config=None, **captures_and_params)``.

    q ``[B, H, M, D]``, k ``[B, HK, N, D]``, v ``[B, HK, N, E]``.  Returns o ``[B, H, M, E]``
    (and lse ``[B, H, M]`` fp32, natural log, when ``return_lse``).
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.generated: Generated = generate(spec)

    @property
    def source(self) -> str:
        return self.generated.source

    @property
    def module(self) -> Any:
        return load_module(self.generated)

    def __repr__(self) -> str:
        return f"CompiledAttention({self.spec.name!r}, key={self.generated.key})"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False, config: dict[str, int] | None = None,
                 **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # Through the attncc::fwd op (autograd, torch.compile); without a config the op asks config_for.
        return ops.call_compiled(self, q, k, v, scale=scale, return_lse=return_lse, config=config, **kwargs)

    def config_for(self, kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, int]:
        """Tile config from the tuning cache: exact key, nearest shape bucket, then the default."""
        from attncc.autotune import lookup_config

        B, H, M, D = q.shape
        N, E = k.shape[2], v.shape[3]
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[q.dtype]
        default = self.module.default_config(max(D, E), kind)
        return lookup_config(self.spec.tuning_hash, kind, (B, H, max(M, 1), max(N, 1), D, E), dtype, default)


def compile_spec(spec: Spec) -> CompiledAttention:
    """Compile (or fetch) the kernel of ``spec``, memoised by content hash."""
    key = spec.content_hash
    if key not in _COMPILED:
        _COMPILED[key] = CompiledAttention(spec)
    return _COMPILED[key]


def load(spec: str | Spec) -> CompiledAttention:
    """The compiled callable of a spec file path, a built-in spec name, or a :class:`Spec`."""
    return compile_spec(spec if isinstance(spec, Spec) else resolve(spec))


# --- FlexAttention-compatible front end -----------------------------------------------------------

def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def spec_from_mods(score_mod: Callable[..., Any] | None, mask_mod: Callable[..., Any] | None,
                   gqa: bool = False, name: str = "flex") -> tuple[Spec, dict[str, torch.Tensor]]:
    """Trace Python mods into a :class:`Spec` and the tensors it captured."""
    traced = trace(score_mod, mask_mod)
    caps = {n: CaptureDecl(n, tuple(f"i{k}" for k in range(t.dim())) or ("i0",), _dtype_name(t))
            for n, t in traced.captures.items()}
    tensors = {n: (t.reshape(1) if t.dim() == 0 else t) for n, t in traced.captures.items()}
    kv_head = sp.floor(E.h / sp.floor(E.SIZE_SYMBOLS["H"] / E.SIZE_SYMBOLS["HK"])) if gqa else E.h
    label = "+".join(getattr(f, "__name__", "mod") for f in (score_mod, mask_mod) if f is not None) or "plain"
    spec = Spec(name=name, description=f"traced from Python: {label}", source="<python>", kv_head=kv_head,
                modify=traced.modify, mask=traced.mask, captures=caps)
    return spec, tensors


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
    return ops.call_mods(query, key, value, score_mod, mask_mod, gqa=enable_gqa, name="flex", scale=scale,
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
            return ops.call_mods(q, k, v, fn, mask_mod, gqa=enable_gqa, name=getattr(fn, "__name__", "attention"),
                                 scale=scale, return_lse=return_lse)
        return run
    if score_mod is not None and callable(score_mod):
        return wrap(score_mod)
    return wrap
