"""Compiled variants: a spec lowered, rendered and loaded once per content hash.

:func:`compile_spec` memoises :class:`CompiledAttention` by the spec's content hash; calls go
through the ``attncc::fwd`` op (:mod:`attncc.runtime.ops`).  :func:`spec_from_mods` turns
FlexAttention-style Python mods into a :class:`Spec` (:mod:`attncc.runtime.trace`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
import torch

from attncc.compiler import Generated, generate, load_module
from attncc.ir import expr as E
from attncc.runtime import ops
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
