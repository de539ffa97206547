"""Entry points of context parallelism: ``attention`` on a compiled spec, ``flex_attention`` on mods,
and ``plan`` (the per-rank work and communication, without running anything).

The arguments are this rank's shards (``attncc.distributed.shard``); masks and score mods see
global positions; the result is this rank's shard of the single-device output (and lse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from attncc.distributed.comm import Group, WorkLog, group_of
from attncc.distributed.globalize import bare_position_captures, global_spec
from attncc.distributed.layout import chunk_length, chunks_per_rank
from attncc.distributed.pairs import PairKernel
from attncc.distributed.planning import ContextPlan, Machine, build_plan
from attncc.distributed.ring import ContextAttention, Run
from attncc.errors import InputError
from attncc.runtime import host
from attncc.runtime.compiled import CompiledAttention, compile_spec, load, spec_from_mods
from attncc.runtime.ops import default_tiles, spec_info
from attncc.spec.model import Spec

_PLANS: dict[tuple, ContextPlan] = {}  # the last plan built, by what shaped it


def attention(compiled: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group: Any = None,
              layout: str = "zigzag", scale: float | None = None, return_lse: bool = False, strategy: str = "auto",
              work: WorkLog | None = None, **kwargs: Any) -> Any:
    """Context-parallel attention of ``compiled`` (``attncc.load(...)``) on this rank's shards.

    q ``[B, H, M, D]``, k ``[B, HK, M, D]``, v ``[B, HK, M, E]``: this rank's shards (dim 2) of a
    sequence of ``M * world`` positions in ``layout``.  ``kwargs``: the spec's params and captured
    tensors (captured tensors indexed by positions cover the whole sequence).  ``strategy``:
    ``"ring"``, ``"allgather"`` or ``"auto"`` (the cost model of the plan); ``work``: a
    :class:`WorkLog` that the call fills in.  Returns o (and lse) of this rank's rows.  A recurrence
    spec goes to :func:`attncc.distributed.recurrence.recurrence_attention`.
    """
    if not isinstance(compiled, CompiledAttention):
        from attncc.distributed.recurrence import recurrence_attention

        return recurrence_attention(compiled, q, k, v, group=group, layout=layout, scale=scale, **kwargs)
    grp = group_of(group)
    host.check_tensor_args(f"{compiled.spec.name} (distributed)", q, k, v)
    length = _global_length(q, k, grp, layout)
    user = spec_info(compiled)
    captures, params = host.split_kwargs(user, kwargs)
    kernel = _kernel(compiled, captures, params, host.check_scale(user.name, scale), length, q, k, v)
    plan = _plan_for(compiled, kernel, grp, layout, q, k, v)
    run = Run(kernel, plan, grp, plan.choose(strategy), work)
    if work is not None:
        work.strategy = run.strategy
    o, lse = ContextAttention.apply(run, q, k, v, *captures)
    return (o, lse) if return_lse else o


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   score_mod: Callable[..., Any] | None = None, block_mask: Any = None, *, group: Any = None,
                   layout: str = "zigzag", scale: float | None = None, enable_gqa: bool = False,
                   return_lse: bool = False, strategy: str = "auto", work: WorkLog | None = None) -> Any:
    """``attncc.flex_attention`` on this rank's shards: ``score_mod`` and the ``block_mask``'s
    ``mask_mod`` see global positions; ``block_mask`` is made for the global lengths
    (``create_block_mask(mask_mod, B, H, L, L)``).  See :func:`attention`."""
    fn = "distributed.flex_attention"
    host.check_tensor_args(fn, query, key, value)
    mask_mod = None
    if block_mask is not None:
        mask_mod = getattr(block_mask, "mask_mod", None)
        if mask_mod is None:
            raise InputError(f"{fn}: block_mask must come from a mask_mod (create_block_mask); block lists alone "
                             "do not say which positions of a shard they cover")
        lens = getattr(block_mask, "seq_lengths", None)
        total = query.shape[-2] * group_of(group).world
        if lens is not None and tuple(lens) != (total, total):
            raise InputError(f"{fn}: block_mask was made for lengths {tuple(lens)}, the global sequence has {total}")
    if not enable_gqa and query.shape[1] != key.shape[1]:
        raise InputError(f"{fn}: query has {query.shape[1]} heads, key {key.shape[1]}; "
                         "pass enable_gqa=True for grouped-query attention")
    spec, tensors = spec_from_mods(score_mod, mask_mod, gqa=enable_gqa, name="flex")
    return attention(compile_spec(spec), query, key, value, group=group, layout=layout, scale=scale,
                     return_lse=return_lse, strategy=strategy, work=work, **tensors)


def _global_length(q: torch.Tensor, k: torch.Tensor, grp: Group, layout: str) -> int:
    """The global sequence length of the shards; one-line errors for shards that cannot be one."""
    M = q.shape[2]
    if k.shape[2] != M:
        raise InputError(f"distributed attention: query shard has {M} positions, key shard {k.shape[2]}; queries "
                         "and keys must be shards of the same sequence")
    parts = chunks_per_rank(layout)
    if M == 0 or M % parts:
        raise InputError(f"distributed attention: shard length {M} is not a positive multiple of {parts} "
                         f"({layout} layout): pad the sequence to a multiple of {parts * grp.world}")
    return M * grp.world


def _kernel(compiled: CompiledAttention, captures: list[torch.Tensor], params: dict[str, Any], scale: float | None,
            length: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> PairKernel:
    spec = compiled.spec
    glob = compile_spec(global_spec(spec))
    info = spec_info(glob)
    names = [c[0] for c in info.captures]
    for cname, dim in bare_position_captures(spec):
        t = captures[names.index(cname)]
        if t.dim() > dim and t.shape[dim] < length:
            raise InputError(f"{spec.name}: captured '{cname}' dimension {dim} has length {t.shape[dim]} but is "
                             f"indexed by global positions up to {length - 1}: pass it for the whole sequence")
    host.validate(info, q, k, v, captures)
    return PairKernel(glob, info, list(captures), dict(params), scale, length)


def _mask_inputs(compiled: CompiledAttention, kernel: PairKernel) -> tuple[Any, dict[Any, Any], dict[str, torch.Tensor]]:
    """The ORIGINAL spec's mask, params and captures: at offsets 0 and lengths L it is the global mask,
    and its captured tensors are indexed by bare positions (which tile classification bounds cheaply)."""
    low = compiled.generated.lowered
    env = {p.symbol: kernel.params.get(p.name, p.default) for p in low.variant.params}
    caps = dict(zip([c.name for c in low.variant.captures], kernel.captures, strict=True))
    return low.mask, env, caps


def _plan_for(compiled: CompiledAttention, kernel: PairKernel, grp: Group, layout: str, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> ContextPlan:
    """The plan of this call (rebuilt only when what shapes it changes)."""
    B, H, c = q.shape[0], q.shape[1], q.shape[2] // chunks_per_rank(layout)
    block = default_tiles(kernel.info.key, max(q.shape[3], v.shape[3]))
    chunk_bytes = B * k.shape[1] * c * (k.shape[3] * k.element_size() + v.shape[3] * v.element_size())
    key = (kernel.info.key, kernel.length, grp.world, layout, B, H, block, chunk_bytes, q.shape[3],
           tuple(sorted(kernel.params.items())),
           tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in kernel.captures))
    if key not in _PLANS:
        mask, env, caps = _mask_inputs(compiled, kernel)
        _PLANS.clear()
        _PLANS[key] = build_plan(mask, env, caps, length=kernel.length, world=grp.world, layout=layout, batch=B,
                                 heads=H, block=block, chunk_bytes=chunk_bytes, head_dim=q.shape[3])
    return _PLANS[key]


def plan(spec_or_mods: Any, length: int, world: int, layout: str = "zigzag", *, batch: int = 1, heads: int = 1,
         kv_heads: int | None = None, head_dim: int = 64, dtype: torch.dtype = torch.bfloat16,
         block: tuple[int, int] = (128, 64), machine: Machine | None = None,
         **kwargs: Any) -> ContextPlan:
    """The context-parallel plan of a sequence of ``length`` over ``world`` ranks, without running it:
    tiles per rank, bytes per rank, skipped pairs and the strategy of the cost model
    (``plan(...).describe()`` prints them).

    ``spec_or_mods``: a spec name or path, a :class:`Spec`, a compiled spec, a ``mask_mod`` or a
    ``(score_mod, mask_mod)`` pair; ``kwargs``: the spec's params and captured tensors.  ``block``:
    the kernels' (BLOCK_M, BLOCK_N).
    """
    compiled, tensors = _compiled_of(spec_or_mods)
    user = spec_info(compiled)
    captures, params = host.split_kwargs(user, {**tensors, **kwargs})
    chunk_length(length, layout, world)
    glob = compile_spec(global_spec(compiled.spec))
    kernel = PairKernel(glob, spec_info(glob), list(captures), dict(params), None, length)
    mask, env, caps = _mask_inputs(compiled, kernel)
    c = length // (chunks_per_rank(layout) * world)
    hk = heads if kv_heads is None else kv_heads
    chunk_bytes = batch * hk * c * 2 * head_dim * torch.empty((), dtype=dtype).element_size()
    return build_plan(mask, env, caps, length=length, world=world, layout=layout, batch=batch, heads=heads,
                      block=block, chunk_bytes=chunk_bytes, head_dim=head_dim, machine=machine)


def _compiled_of(x: Any) -> tuple[CompiledAttention, dict[str, torch.Tensor]]:
    if isinstance(x, CompiledAttention):
        return x, {}
    if isinstance(x, (str, Spec)):
        compiled = load(x)
        if not isinstance(compiled, CompiledAttention):
            raise InputError(f"plan: '{compiled.spec.name}' is a recurrence spec; its context-parallel cost "
                             "does not depend on a mask")
        return compiled, {}
    score_mod, mask_mod = x if isinstance(x, tuple) else (None, x)
    if (score_mod is not None and not callable(score_mod)) or (mask_mod is not None and not callable(mask_mod)):
        raise InputError("plan: expected a spec, a mask_mod or a (score_mod, mask_mod) pair")
    spec, tensors = spec_from_mods(score_mod, mask_mod)
    return compile_spec(spec), tensors


def explain(spec_or_mods: Any, length: int, world: int, layout: str = "zigzag",
            **kwargs: Mapping[str, Any]) -> str:
    """The table of :func:`plan` as text."""
    return plan(spec_or_mods, length, world, layout, **kwargs).describe()
