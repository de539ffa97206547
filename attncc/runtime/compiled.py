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
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.passes.lowered import CallFacts
from attncc.runtime import ops
from attncc.runtime.decode import decode_compiled
from attncc.runtime.trace import trace
from attncc.spec.loader import resolve
from attncc.spec.model import CaptureDecl, Spec
from attncc.spec.recurrence import RecurrenceSpec

_COMPILED: dict[str, CompiledAttention] = {}
# attncc.distributed.attention, set when attncc.distributed is imported: that package builds on the
# runtime, so the runtime may not import it (tests/test_layering.py forbids cycles, even deferred ones).
DISTRIBUTED: Callable[..., Any] | None = None


class CompiledAttention:
    """A compiled variant: ``fn(q, k, v, *, scale=None, return_lse=False, config=None, **captures_and_params)``.

    q ``[B, H, M, D]``, k ``[B, HK, N, D]``, v ``[B, HK, N, E]``.  Returns o ``[B, H, M, E]``
    (and lse ``[B, H, M]`` fp32, natural log, when ``return_lse``).
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.generated: Generated = generate(spec)
        self._table_variant: Generated | None = None
        self._decode_variant: Generated | None = None
        self._tables: dict[tuple, dict[str, Any]] = {}  # last block tables built, by what shaped them

    @property
    def source(self) -> str:
        return self.generated.source

    @property
    def module(self) -> Any:
        return load_module(self.generated)

    def generated_for(self, block_table: bool) -> Generated:
        """The module of the default plans, or of the block-table plans (generated on first use)."""
        if not block_table:
            return self.generated
        if self._table_variant is None:
            self._table_variant = generate(self.spec, CallFacts(block_table=True))
        return self._table_variant

    def generated_decode(self) -> Generated:
        """The module of the decode schedule (``CallFacts(decode=True)``, generated on first use)."""
        if self._decode_variant is None:
            self._decode_variant = generate(self.spec, CallFacts(decode=True))
        return self._decode_variant

    def kinds(self) -> tuple[str, ...]:
        """The config kinds of this spec's kernels, over all its modules."""
        return tuple(dict.fromkeys(k for gen in (self.generated, self.generated_decode()) for k in gen.lowered.schedule.kinds))

    def generated_of_kind(self, kind: str) -> Generated:
        """The generated module (default or decode) whose schedule has kernels of config ``kind``."""
        for gen in (self.generated, self.generated_decode()):
            if kind in gen.lowered.schedule.kinds:
                return gen
        raise KeyError(f"{self.spec.name}: no generated module has kernels of kind {kind!r}")

    def decode_module(self) -> Any:
        return load_module(self.generated_decode())

    def decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
               cache_seqlens: torch.Tensor | None = None, block_table: torch.Tensor | None = None,
               scale: float | None = None, return_lse: bool = False, config: dict[str, int] | None = None,
               programs: int | None = None, check_values: bool = True,
               **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Decode: q ``[B, H, Lq, D]``, the last Lq positions of each sequence, against a KV cache,
        contiguous ``[B, HK, Lmax, D]`` or paged ``[num_pages, HK, page_size, D]`` with
        ``block_table [B, pages_per_seq]`` (int32); ``cache_seqlens [B]`` int32 (None: full).
        Stream-K over ``programs`` persistent programs (default: 8 warps of programs per SM).  ``check_values``
        False skips the range checks of lengths and page ids, which read them on the host (for
        CUDA graphs and tight loops).  See :mod:`attncc.runtime.decode`."""
        return decode_compiled(self, q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                               scale=scale, return_lse=return_lse, config=config, programs=programs,
                               check_values=check_values, **kwargs)

    def module_for(self, key: str) -> Any:
        for gen in (self.generated, self._table_variant, self._decode_variant):
            if gen is not None and gen.key == key:
                return load_module(gen)
        raise KeyError(f"{self.spec.name}: no module with key {key}")

    def prefers_block_table(self) -> bool:
        """Whether calls build block tables at launch (the compile-time plan would visit empty tiles)."""
        low = self.generated.lowered
        return low.schedule.prefers_block_table(low)

    def tables_for(self, q: torch.Tensor, k: torch.Tensor, captures: list[torch.Tensor], params: dict[str, Any],
                   bm: int, bn: int) -> dict[str, Any]:
        """Block tables of this spec's mask for q ``[B, H, M, D]``, k ``[B, HK, N, D]`` at tiles
        ``bm x bn`` (interval reasoning on tile summaries, exact evaluation of undecided tiles:
        :mod:`attncc.passes.blocks`).  Rebuilt only when shapes, params or captured tensors change."""
        from attncc.passes.blocks import block_tables, classify_tiles

        B, H, M, D = q.shape
        HK, N = k.shape[1], k.shape[2]
        low = self.generated.lowered
        values = {p.name: params.get(p.name, p.default) for p in low.variant.params}
        caps = dict(zip([c.name for c in low.variant.captures], captures, strict=True))
        key = ((B, H, HK, M, N, bm, bn), tuple(sorted(values.items())),
               tuple((n, t.data_ptr(), t._version, tuple(t.shape)) for n, t in caps.items()))
        cached = self._tables.get(key)
        if cached is not None:
            return cached
        sizes = {"B": B, "H": H, "HK": HK, "M": M, "N": N, "D": D, "E": D}
        classes = classify_tiles(low.mask, sizes, {p.symbol: values[p.name] for p in low.variant.params},
                                 {n: t.cpu() for n, t in caps.items()}, bm, bn)
        bt = block_tables(classes, bm, bn)
        tables: dict[str, Any] = {name: getattr(bt, name).to(q.device) for name in ops.TABLE_ORDER}
        tables.update(block_m=bm, block_n=bn)
        self._tables = {key: tables}
        return tables

    def __repr__(self) -> str:
        return f"CompiledAttention({self.spec.name!r}, key={self.generated.key})"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False, config: dict[str, int] | None = None,
                 **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # Through the attncc::fwd op (autograd, torch.compile); without a config the op asks config_for.
        return ops.call_compiled(self, q, k, v, scale=scale, return_lse=return_lse, config=config, **kwargs)

    def distributed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group: Any = None,
                    layout: str = "zigzag", scale: float | None = None, return_lse: bool = False,
                    strategy: str = "auto", **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Context parallelism: q, k, v are this rank's sequence shards; see :func:`attncc.distributed.attention`
        (registered in :data:`DISTRIBUTED` when ``attncc`` is imported)."""
        if DISTRIBUTED is None:
            raise InputError("distributed: import attncc.distributed first")
        return DISTRIBUTED(self, q, k, v, group=group, layout=layout, scale=scale, return_lse=return_lse,
                           strategy=strategy, **kwargs)

    def config_for(self, kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, int]:
        """Tile config from the tuning cache: exact key, nearest shape bucket, then the default."""
        from attncc.autotune import lookup_config

        B, H, M, D = q.shape
        N, E = k.shape[2], v.shape[3]
        dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[q.dtype]
        default = self.module.default_config(max(D, E), kind)
        return lookup_config(self.spec.tuning_hash, kind, (B, H, max(M, 1), max(N, 1), D, E), dtype, default)


def compile_spec(spec: Spec | RecurrenceSpec) -> Any:
    """Compile (or fetch) the kernels of ``spec``, memoised by content hash: a
    :class:`CompiledAttention`, or a :class:`~attncc.runtime.recurrence.CompiledRecurrence` for a
    recurrence spec."""
    key = spec.content_hash
    if key not in _COMPILED:
        if isinstance(spec, RecurrenceSpec):
            from attncc.runtime.recurrence import CompiledRecurrence

            _COMPILED[key] = CompiledRecurrence(spec)  # type: ignore[assignment]
        else:
            _COMPILED[key] = CompiledAttention(spec)
    return _COMPILED[key]


def load(spec: str | Spec | RecurrenceSpec) -> Any:
    """The compiled callable of a spec file path, a built-in spec name, or a parsed spec."""
    return compile_spec(spec if isinstance(spec, (Spec, RecurrenceSpec)) else resolve(spec))


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
