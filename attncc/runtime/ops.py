"""torch.library bindings: autograd and ``torch.compile`` for every compiled attention variant.

Two custom operators serve all specs::

    attncc::fwd(str key, Tensor q, Tensor k, Tensor v, Tensor[] captures, float? scale, float[] params,
                str[] config_keys, int[] config_values, bool lse_grad) -> (Tensor o, Tensor lse)
    attncc::bwd(str key, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor do, Tensor? dlse,
                Tensor[] captures, bool[] capture_grads, float? scale, float[] params,
                str[] config_keys, int[] config_values) -> (Tensor dq, Tensor dk, Tensor dv, Tensor[] dcaptures)

``key`` is the content key of a generated module (``CompiledAttention.generated.key``).  One
generic pair rather than one op per spec because

* the schema is registered once, at import, never while Dynamo is tracing (registering an op
  from inside a traced function is not something Dynamo can record);
* a spec is a string constant in the FX graph, so a graph names exactly the kernels it runs,
  and the implementation finds them again from the key alone, among the modules generated in
  this process (nothing is loaded from the on-disk kernel cache: its files are only for reading);
* the fake (meta) implementation is the same for every spec: o is q's shape with v's head dim,
  lse is fp32 ``[B, H, M]``, gradients are shaped like their inputs;
* ``torch.library.opcheck`` on one op checks the binding of every spec.

Captured tensors travel as ``Tensor[]`` in the order of the spec's captures; params as floats in
the order of the spec's params (integer params are restored from the module's defaults'
types); the launch config as parallel key/value lists.

**torch.compile without graph breaks.**  The Python front ends (tracing mods with sympy,
lowering, code generation) cannot be traced by Dynamo.  Two pieces make them invisible:

* :func:`spec_info` and :func:`_plan` are marked :func:`torch._dynamo.assume_constant_result`:
  Dynamo runs them once, at trace time, outside the graph, and bakes their (plain-data) result
  into the graph as a constant;
* captured tensors of a mod are found under Dynamo by *recording*: the mods are called with
  :class:`_Probe` tensors (empty tensors marking the mod's arguments) under :class:`_Recorder`,
  a ``TorchFunctionMode`` that writes each torch call involving a probe (function, probe slots,
  constants, and the other tensors it touches) to a tape instead of computing it.  Dynamo
  inlines the mode, so the touched tensors are ordinary graph values (parameters, inputs,
  closure cells, intermediate results: whatever the mod reads, including mods defined inside
  the compiled function) and are passed to ``attncc::fwd`` as inputs; gradients reach them
  through the op's autograd formula.  The tape itself (plain constants) goes to :func:`_plan`,
  which replays it through the same symbolic tracer as eager mode
  (:mod:`attncc.runtime.trace`) and compiles the spec.  The builtin ``abs(x)`` on a mod
  argument is not reported to modes by Dynamo: it is refused with a SpecError (``x.abs()`` and
  ``torch.abs(x)`` work).

The mods path (eager tracing, recording under Dynamo) is :mod:`attncc.runtime.mods`; in eager
mode the mods are traced directly by :func:`attncc.runtime.compiled.spec_from_mods`, and the
probes are only used while Dynamo traces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from attncc.codegen import cache, launch
from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.runtime import host

if TYPE_CHECKING:
    from attncc.runtime.compiled import CompiledAttention
    from attncc.spec.model import Spec


# --- the registry: key -> compiled variant ------------------------------------------------------

class SpecInfo(NamedTuple):
    """Plain-data description of a compiled spec (a constant under Dynamo).

    ``captures``: ``(name, dims, dtype)`` in kernel order; ``params``: ``(name, kind, default)``
    in kernel order; ``bare_indices``: ``(capture, dim, size)`` for every capture dimension that
    some load indexes by a bare ``b``, ``h``, ``q_idx`` or ``kv_idx``, whose length must then be
    at least ``size`` (``"B"``, ``"H"``, ``"M"`` or ``"N"``).
    """

    key: str
    name: str
    gqa: bool
    captures: tuple[tuple[str, tuple[str, ...], str], ...]
    params: tuple[tuple[str, str, float], ...]
    bare_indices: tuple[tuple[str, int, str], ...] = ()
    block_table: bool = False  # the variant whose kernels read block tables (see run(tables=...))
    prefers_tables: bool = False  # calls build tables at launch (auto_tables): the compile-time plan is inexact


_COMPILED: dict[str, CompiledAttention] = {}
_INFO: dict[str, SpecInfo] = {}


@torch._dynamo.assume_constant_result
def spec_info(compiled: CompiledAttention, block_table: bool = False) -> SpecInfo:
    """Register ``compiled`` under the key of its module (the block-table variant when
    ``block_table``) and describe it (run once at trace time under Dynamo)."""
    key = compiled.generated_for(block_table).key
    info = _INFO.get(key)
    if info is None:
        spec = compiled.spec
        info = SpecInfo(
            key=key, name=spec.name, gqa=bool(spec.is_gqa),
            captures=tuple((c.name, tuple(c.dims), c.dtype) for c in spec.captures.values()),
            params=tuple((p.name, p.kind, p.default) for p in spec.params.values()),
            bare_indices=_bare_indices(spec), block_table=block_table,
            prefers_tables=compiled.prefers_block_table(),
        )
        _COMPILED[key] = compiled
        _INFO[key] = info
    return info


def _bare_indices(spec: Spec) -> tuple[tuple[str, int, str], ...]:
    """``(capture, dim, size)`` of each capture dimension indexed by a bare index symbol."""
    sizes = {E.b: "B", E.h: "H", E.m: "M", E.n: "N"}
    found = set()
    for expr in (spec.modify, spec.mask, spec.kv_head):
        for ld in E.loads(expr):
            for dim, index in enumerate(ld.indices):
                if index in sizes:
                    found.add((ld.tensor_name, dim, sizes[index]))
    return tuple(sorted(found))


def kernel_module(key: str) -> ModuleType:
    """The generated module of ``key``, only if it was generated in this process (never read from disk)."""
    compiled = _COMPILED.get(key)
    if compiled is not None:
        return compiled.module_for(key)
    module = cache.executed(key)
    if module is None:
        raise InputError(f"attncc: no kernel with key {key} was compiled in this process; compile or load its "
                         "spec here first (attncc.load(...), or one call of the attention function)")
    return module


# A block-table variant's tables ride at the end of the ops' ``captures`` list, in this order, and
# their block sizes in the config lists (keys TABLE_SIZE_KEYS): the op schema is the same for every variant.
TABLE_ORDER: tuple[str, ...] = launch.TABLE_ORDER
TABLE_SIZE_KEYS = ("table_block_m", "table_block_n")


def _split_tables(module: ModuleType, captures: Sequence[torch.Tensor], config_keys: Sequence[str],
                  config_values: Sequence[int]) -> tuple[list[torch.Tensor], dict[str, Any] | None,
                                                          list[str], list[int]]:
    """(captures, block_tables or None, config keys, config values) of a call of ``module``."""
    keys, values = list(config_keys), list(config_values)
    if not module.BLOCK_TABLES:
        return list(captures), None, keys, values
    n = len(captures) - len(TABLE_ORDER)
    if n < 0 or any(k not in keys for k in TABLE_SIZE_KEYS):
        raise InputError("attncc: a block-table kernel takes its tables after the captured tensors and "
                         f"{'/'.join(TABLE_SIZE_KEYS)} in the config")
    tables: dict[str, Any] = dict(zip(TABLE_ORDER, captures[n:], strict=True))
    for name, attr in zip(TABLE_SIZE_KEYS, ("block_m", "block_n"), strict=True):
        i = keys.index(name)
        tables[attr] = int(values.pop(i))
        keys.pop(i)
    return list(captures[:n]), tables, keys, values


def _capture_dict(module: ModuleType, captures: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [name for name, _ in module.CAPTURES]
    if len(names) != len(captures):
        raise InputError(f"attncc: kernel takes {len(names)} captured tensor(s) {names}, got {len(captures)}")
    return dict(zip(names, captures, strict=True))


def _param_dict(module: ModuleType, values: Sequence[float]) -> dict[str, int | float]:
    defaults = module.PARAMS
    if len(defaults) != len(values):
        raise InputError(f"attncc: kernel takes {len(defaults)} param(s) {list(defaults)}, got {len(values)}")
    return {name: (int(v) if isinstance(d, int) and not isinstance(d, bool) else float(v))
            for (name, d), v in zip(defaults.items(), values, strict=True)}


def _launch_config(key: str, kind: str, keys: Sequence[str], values: Sequence[int], q: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor) -> dict[str, int] | None:
    """The caller's config for ``kind`` (validated by :func:`host.encode_config`); without one, the
    tuned config of ``kind`` when the variant offers a lookup (``CompiledAttention.config_for``),
    else None (the module's default).  Resolved here, at run time inside the op, so that compiled
    graphs pick up the tuning cache too."""
    config = host.config_for_kind(keys, values, kind)
    if config:
        return config
    config_for = getattr(_COMPILED.get(key), "config_for", None)
    return config_for(kind, q, k, v) if config_for is not None else None


# --- the operators ------------------------------------------------------------------------------

_FWD_SCHEMA = ("(str key, Tensor q, Tensor k, Tensor v, Tensor[] captures, float? scale, float[] params, "
               "str[] config_keys, int[] config_values, bool lse_grad) -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(str key, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor do, Tensor? dlse, "
               "Tensor[] captures, bool[] capture_grads, float? scale, float[] params, "
               "str[] config_keys, int[] config_values) -> (Tensor, Tensor, Tensor, Tensor[])")


@torch.library.custom_op("attncc::fwd", mutates_args=(), schema=_FWD_SCHEMA)
def attention_fwd(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, captures: list[torch.Tensor],
                  scale: float | None, params: list[float], config_keys: list[str], config_values: list[int],
                  lse_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kernel of spec ``key``: o ``[B, H, M, E]`` (q's dtype) and lse ``[B, H, M]`` (fp32).

    ``lse_grad`` only tells the autograd formula that lse was handed to the caller (so it may
    carry a gradient); it does not change the result.
    """
    if host.is_empty(q, k):  # nothing to launch: o = 0, lse = -inf (rows without keys)
        B, H, M = q.shape[:3]
        return q.new_zeros((B, H, M, v.shape[3])), q.new_full((B, H, M), float("-inf"), dtype=torch.float32)
    module = kernel_module(key)
    captures, tables, config_keys, config_values = _split_tables(module, captures, config_keys, config_values)
    config = _launch_config(key, "fwd", config_keys, config_values, q, k, v)
    o, lse = module.attention_forward(q, k, v, scale=scale, config=config, captures=_capture_dict(module, captures),
                                      block_tables=tables, **_param_dict(module, params))
    return o.contiguous(), lse.contiguous()


@attention_fwd.register_fake
def _attention_fwd_fake(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        captures: list[torch.Tensor], scale: float | None, params: list[float],
                        config_keys: list[str], config_values: list[int],
                        lse_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, M = q.shape[0], q.shape[1], q.shape[2]
    return q.new_empty((B, H, M, v.shape[3])), q.new_empty((B, H, M), dtype=torch.float32)


@torch.library.custom_op("attncc::bwd", mutates_args=(), schema=_BWD_SCHEMA)
def attention_bwd(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                  lse: torch.Tensor, do: torch.Tensor, dlse: torch.Tensor | None, captures: list[torch.Tensor],
                  capture_grads: list[bool], scale: float | None, params: list[float], config_keys: list[str],
                  config_values: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Backward kernels of spec ``key``: dq, dk, dv (input dtype) and, for each capture flagged in
    ``capture_grads``, its gradient (capture's dtype and shape).  Deterministic.

    A gradient ``dlse`` of the lse output goes to the kernels' per-row term,
    ``ds = p * (dp - (rowsum(do * o) - dlse))``, the exact gradient of both outputs; the kernels
    run at the value head dim either way.
    """
    if host.is_empty(q, k):  # o does not depend on anything: every gradient is 0
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                [torch.zeros_like(c) for c, want in zip(captures, capture_grads, strict=True) if want])
    module = kernel_module(key)
    real, tables, config_keys, config_values = _split_tables(module, captures, config_keys, config_values)
    caps = _capture_dict(module, real)
    wanted = [name for name, want in zip(caps, capture_grads, strict=False) if want]
    config = _launch_config(key, "bwd", config_keys, config_values, q, k, v)
    dq, dk, dv, grads = module.attention_backward(
        q, k, v, o, lse, do, dlse=dlse, scale=scale, config=config, captures=caps,
        capture_grads=tuple(wanted), block_tables=tables, **_param_dict(module, params))
    # A capture read only by the mask (or not at all) has a zero gradient: the mask is piecewise constant.
    dcaps = [(grads[name] if name in grads else torch.zeros(caps[name].shape, device=q.device))
             .to(caps[name].dtype).contiguous() for name in wanted]
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dcaps


@attention_bwd.register_fake
def _attention_bwd_fake(key: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                        lse: torch.Tensor, do: torch.Tensor, dlse: torch.Tensor | None,
                        captures: list[torch.Tensor], capture_grads: list[bool], scale: float | None,
                        params: list[float], config_keys: list[str], config_values: list[int],
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            [c.new_empty(c.shape) for c, want in zip(captures, capture_grads, strict=True) if want])


def _fwd_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    key, q, k, v, captures, scale, params, config_keys, config_values, lse_grad = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, *captures)
    ctx.attncc = (key, scale, params, config_keys, config_values, lse_grad)


def _fwd_backward(ctx: Any, do: torch.Tensor, dlse: torch.Tensor) -> tuple[Any, ...]:
    q, k, v, o, lse, *captures = ctx.saved_tensors
    key, scale, params, config_keys, config_values, lse_grad = ctx.attncc
    # Integer captures (indices, lengths, masks) never get gradients.
    wanted = [bool(need) and c.is_floating_point() for need, c in zip(ctx.needs_input_grad[4], captures, strict=True)]
    dq, dk, dv, dcaps = torch.ops.attncc.bwd(key, q, k, v, o, lse, do, dlse if lse_grad else None, captures,
                                             wanted, scale, params, config_keys, config_values)
    it = iter(dcaps)
    cap_grads = [next(it) if want else None for want in wanted]
    # An empty list argument is a (tensor-list) node of the input structure, not a leaf: mirror it.
    def none(x: Any) -> Any:
        return [] if isinstance(x, (list, tuple)) and len(x) == 0 else None

    return None, dq, dk, dv, cap_grads, None, none(params), none(config_keys), none(config_values), None


attention_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def run(info: SpecInfo, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, captures: Sequence[torch.Tensor],
        *, scale: float | None = None, return_lse: bool = False, config: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None, tables: Mapping[str, Any] | None = None,
        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Validate and call ``attncc::fwd`` (differentiable; traceable by Dynamo).  ``tables``: block
    tables (keys of :data:`TABLE_ORDER` plus ``block_m``, ``block_n``) of a block-table variant."""
    host.validate(info, q, k, v, captures)
    scale = host.check_scale(info.name, scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    config_keys, config_values = host.encode_config(info.name, config)
    blocks, sizes = host.encode_tables(info, tables, q, k)
    if blocks:
        config_keys, config_values = [*config_keys, *TABLE_SIZE_KEYS], [*config_values, *sizes]
    o, lse = torch.ops.attncc.fwd(info.key, q, k, v, [*captures, *blocks], scale,
                                  host.encode_params(info, params or {}), config_keys, config_values, bool(return_lse))
    return (o, lse) if return_lse else o


@torch._dynamo.assume_constant_result
def table_variant(key: str) -> SpecInfo:
    """The block-table variant of the compiled spec registered under ``key`` (a constant under Dynamo)."""
    return spec_info(_COMPILED[key], True)


@torch._dynamo.assume_constant_result
def default_tiles(key: str, head_dim: int) -> tuple[int, int]:
    """The forward kernel's default (BLOCK_M, BLOCK_N) at ``head_dim`` (a constant under Dynamo)."""
    low = _COMPILED[key].generated.lowered
    cfg = low.schedule.default_config(low.schedule.kernels[0].kind, head_dim)
    return int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"])


def auto_tables(info: SpecInfo, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, captures: Sequence[torch.Tensor],
                params: Mapping[str, Any], config: Mapping[str, Any] | None,
                ) -> tuple[SpecInfo, dict[str, Any] | None]:
    """A variant whose compile-time plan would visit empty tiles (``info.prefers_tables``) runs its
    block-table variant on tables built for the call by ``attncc::tables`` (eager and under
    torch.compile), at the forward tile sizes of ``config`` or the schedule's defaults; otherwise
    ``(info, None)``."""
    if not info.prefers_tables:
        return info, None
    host.validate(info, q, k, v, captures)
    if host.is_empty(q, k):
        return info, None
    cfg = host.config_for_kind(*host.encode_config(info.name, config), "fwd")
    bm, bn = default_tiles(info.key, max(q.shape[3], v.shape[3]))
    bm, bn = int(cfg.get("BLOCK_M", bm)), int(cfg.get("BLOCK_N", bn))
    blocks = torch.ops.attncc.tables(info.key, q, k, list(captures), host.encode_params(info, params or {}), bm, bn)
    tables: dict[str, Any] = dict(zip(TABLE_ORDER, blocks, strict=True))
    tables.update(block_m=bm, block_n=bn)
    return table_variant(info.key), tables


@torch.library.custom_op("attncc::tables", mutates_args=(), schema=(
    "(str key, Tensor q, Tensor k, Tensor[] captures, float[] params, int block_m, int block_n) -> Tensor[]"))
def block_tables_op(key: str, q: torch.Tensor, k: torch.Tensor, captures: list[torch.Tensor], params: list[float],
                    block_m: int, block_n: int) -> list[torch.Tensor]:
    """Block tables (:data:`TABLE_ORDER`, int32) of spec ``key``'s mask for q ``[B, H, M, D]`` and
    k ``[B, HK, N, D]`` at ``block_m x block_n`` (see :meth:`CompiledAttention.tables_for`)."""
    compiled = _COMPILED[key]
    names = [p.name for p in compiled.generated.lowered.variant.params]
    tables = compiled.tables_for(q, k, list(captures), dict(zip(names, params, strict=True)), block_m, block_n)
    return [tables[name].clone() for name in TABLE_ORDER]


@block_tables_op.register_fake
def _block_tables_fake(key: str, q: torch.Tensor, k: torch.Tensor, captures: list[torch.Tensor],
                       params: list[float], block_m: int, block_n: int) -> list[torch.Tensor]:
    free = _COMPILED[key].generated.lowered.mask.free_symbols
    B = q.shape[0] if E.b in free else 1
    H = q.shape[1] if E.h in free else 1
    tm, tn = -(-q.shape[2] // block_m), -(-k.shape[2] // block_n)
    shapes = [(B, H, tm), (B, H, tm, tn)] * 2 + [(B, H, tn), (B, H, tn, tm)] * 2
    return [q.new_empty(shape, dtype=torch.int32) for shape in shapes]


def call_compiled(compiled: CompiledAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  scale: float | None = None, return_lse: bool = False, config: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``CompiledAttention.__call__``: captured tensors and params by keyword."""
    info = spec_info(compiled)
    captures, params = host.split_kwargs(info, kwargs)
    info, tables = auto_tables(info, q, k, v, captures, params, config)
    return run(info, q, k, v, captures, scale=scale, return_lse=return_lse, config=config, params=params,
               tables=tables)
