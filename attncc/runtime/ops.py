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

In eager mode the mods are traced directly by :func:`attncc.runtime.api.spec_from_mods`, as
before; the probes are only used while Dynamo traces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from attncc.errors import InputError, SpecError
from attncc.runtime import host

if TYPE_CHECKING:
    from attncc.runtime.api import CompiledAttention
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


_COMPILED: dict[str, CompiledAttention] = {}
_INFO: dict[str, SpecInfo] = {}


@torch._dynamo.assume_constant_result
def spec_info(compiled: CompiledAttention) -> SpecInfo:
    """Register ``compiled`` under its key and describe it (run once at trace time under Dynamo)."""
    key = compiled.generated.key
    info = _INFO.get(key)
    if info is None:
        spec = compiled.spec
        info = SpecInfo(
            key=key, name=spec.name, gqa=bool(spec.is_gqa),
            captures=tuple((c.name, tuple(c.dims), c.dtype) for c in spec.captures.values()),
            params=tuple((p.name, p.kind, p.default) for p in spec.params.values()),
            bare_indices=_bare_indices(spec),
        )
        _COMPILED[key] = compiled
        _INFO[key] = info
    return info


def _bare_indices(spec: Spec) -> tuple[tuple[str, int, str], ...]:
    """``(capture, dim, size)`` of each capture dimension indexed by a bare index symbol."""
    from attncc.ir import expr as E

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
        return compiled.module
    from attncc.codegen import cache

    module = cache.executed(key)
    if module is None:
        raise InputError(f"attncc: no kernel with key {key} was compiled in this process; compile or load its "
                         "spec here first (attncc.load(...), or one call of the attention function)")
    return module


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
    config = _launch_config(key, "fwd", config_keys, config_values, q, k, v)
    o, lse = module.attention_forward(q, k, v, scale=scale, config=config,
                                      captures=_capture_dict(module, captures), **_param_dict(module, params))
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
    caps = _capture_dict(module, captures)
    wanted = [name for name, want in zip(caps, capture_grads, strict=True) if want]
    config = _launch_config(key, "bwd", config_keys, config_values, q, k, v)
    dq, dk, dv, grads = module.attention_backward(
        q, k, v, o, lse, do, dlse=dlse, scale=scale, config=config, captures=caps,
        capture_grads=tuple(wanted), **_param_dict(module, params))
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
        params: Mapping[str, Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Validate and call ``attncc::fwd`` (differentiable; traceable by Dynamo)."""
    host.validate(info, q, k, v, captures)
    scale = host.check_scale(info.name, scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    config_keys, config_values = host.encode_config(info.name, config)
    o, lse = torch.ops.attncc.fwd(info.key, q, k, v, list(captures), scale,
                                  host.encode_params(info, params or {}), config_keys, config_values, bool(return_lse))
    return (o, lse) if return_lse else o


def call_compiled(compiled: CompiledAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  scale: float | None = None, return_lse: bool = False, config: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``CompiledAttention.__call__``: captured tensors and params by keyword."""
    info = spec_info(compiled)
    captures, params = host.split_kwargs(info, kwargs)
    return run(info, q, k, v, captures, scale=scale, return_lse=return_lse, config=config, params=params)


# --- mods: eager tracing, or recording under Dynamo ---------------------------------------------

def call_mods(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable[..., Any] | None,
              mask_mod: Callable[..., Any] | None, *, gqa: bool = False, name: str = "flex",
              scale: float | None = None, return_lse: bool = False, config: Mapping[str, Any] | None = None,
              ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of FlexAttention-style mods (``flex_attention`` and ``@attncc.attention``)."""
    if torch.compiler.is_compiling():
        info, captures = _recorded_spec(score_mod, mask_mod, gqa, name)
    else:
        from attncc.runtime import api

        spec, tensors = api.spec_from_mods(score_mod, mask_mod, gqa=gqa, name=name)
        info = spec_info(api.compile_spec(spec))
        captures = [tensors[c[0]] for c in info.captures]
    return run(info, q, k, v, captures, scale=scale, return_lse=return_lse, config=config)


_FIRST_RESULT_SLOT = 5  # slots 0..4: the mod's arguments


class _Probe(torch.Tensor):
    """Stand-in for a mod argument while recording: an empty tensor of shape ``[0, slot + 1]``
    (shape is static metadata, which Dynamo reads as a constant).  Being empty, anything
    computed from a probe by an operation that bypasses the recorder is empty too, and is
    refused (by :func:`_plan`) instead of being taken for a captured tensor."""

    __torch_function__ = torch._C._disabled_torch_function_impl


def _has_probe(x: Any) -> bool:
    if isinstance(x, _Probe):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_probe(y) for y in x)
    return False


class _Recorder(TorchFunctionMode):
    """Writes every torch call that involves a probe to ``tape`` and returns a fresh probe;
    calls without probes (``table * 2`` on a captured table, ...) run normally, so their
    results are captured tensors like any other.  Dynamo inlines this mode, so the tensors it
    meets are graph values.  (A mode, not the probes' own ``__torch_function__``: Dynamo does not
    look for overrides inside index tuples such as ``table[h, m - n]``.)"""

    def __init__(self, tape: dict[str, Any]) -> None:
        super().__init__()
        self.tape = tape

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        fname = getattr(func, "__name__", "")
        if fname == "__get__" or not (_has_probe(args) or _has_probe(tuple(kwargs.values()))):
            return func(*args, **kwargs)  # attribute reads (dtype, ...) and probe-free calls
        tape = self.tape
        enc_args = tuple(_encode(a, tape, as_value=fname != "__getitem__") for a in args)
        enc_kwargs = tuple((kw, _encode(val, tape, True)) for kw, val in sorted(kwargs.items()))
        slot = _FIRST_RESULT_SLOT + len(tape["ops"])
        tape["ops"].append((func, enc_args, enc_kwargs))
        return torch.empty(0, slot + 1).as_subclass(_Probe)


def _encode(x: Any, tape: dict[str, Any], as_value: bool) -> Any:
    """Tape form of an argument: ("p", slot), ("c", capture index, used as value), ("t"/"l", items), ("k", const)."""
    if isinstance(x, _Probe):
        return ("p", x.shape[1] - 1)
    if isinstance(x, torch.Tensor):
        for i, t in enumerate(tape["tensors"]):
            if t is x:
                return ("c", i, as_value)
        tape["tensors"].append(x)
        return ("c", len(tape["tensors"]) - 1, as_value)
    if isinstance(x, tuple):
        return ("t", tuple(_encode(y, tape, as_value) for y in x))
    if isinstance(x, list):
        return ("l", tuple(_encode(y, tape, as_value) for y in x))
    return ("k", x)


def _record_one(fn: Callable[..., Any] | None, nargs: int, tape: dict[str, Any]) -> tuple[Any, ...] | None:
    if fn is None:
        return None
    tape["ops"] = []
    # score: float; indices: int64 (only their dtype is ever looked at)
    probes = [torch.empty(0, i + 1, dtype=torch.float32 if i == 0 and nargs == 5 else torch.int64)
              .as_subclass(_Probe) for i in range(nargs)]
    with _Recorder(tape):
        out = fn(*probes)
    return (tuple(tape["ops"]), _encode(out, tape, True))


def _loc(fn: Callable[..., Any] | None) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "<mod>"


def _recorded_spec(score_mod: Callable[..., Any] | None, mask_mod: Callable[..., Any] | None, gqa: bool,
                   name: str) -> tuple[SpecInfo, list[torch.Tensor]]:
    """Under Dynamo: record the mods on probes, plan the spec from the tape (a constant), and
    return the captured tensors as graph values in the kernel's order."""
    tape: dict[str, Any] = {"ops": [], "tensors": []}
    score_tape = _record_one(score_mod, 5, tape)
    mask_tape = _record_one(mask_mod, 4, tape)
    tensors = tape["tensors"]
    # (ndim, dtype, empty, one element) of each recorded tensor, from its static sizes only (a
    # dynamic size is never 0 or 1 under Dynamo, and comparing it would not give a constant)
    metas = tuple((t.dim(), t.dtype, any(type(d) is int and d == 0 for d in t.shape),
                   all(type(d) is int and d == 1 for d in t.shape)) for t in tensors)
    labels = (getattr(score_mod, "__name__", "mod") if score_mod is not None else None,
              getattr(mask_mod, "__name__", "mod") if mask_mod is not None else None,
              _loc(score_mod), _loc(mask_mod))
    info, order = _plan(score_tape, mask_tape, metas, labels, gqa, name)
    return info, [tensors[i].reshape(1) if tensors[i].dim() == 0 else tensors[i] for i in order]


@torch._dynamo.assume_constant_result
def _plan(score_tape: tuple[Any, ...] | None, mask_tape: tuple[Any, ...] | None,
          metas: tuple[tuple[int, torch.dtype, bool, bool], ...], labels: tuple[Any, ...], gqa: bool,
          name: str) -> tuple[SpecInfo, tuple[int, ...]]:
    """Replay the tapes through the eager tracer and compile the spec; return its info and the
    recorded tensor feeding each capture (kernel order).  Errors are raised here, in plain Python
    (Dynamo cannot build :class:`SpecError` inside a graph)."""
    from attncc.runtime import api

    loc = labels[2] if score_tape is not None else labels[3]
    if any(empty for _, _, empty, _ in metas):  # computed from a probe behind the recorder's back (see _Probe)
        raise SpecError("under torch.compile, a mod argument went through an operation that is not a torch call "
                        "(e.g. the builtin abs(x)); use the torch spelling (torch.abs(x) or x.abs())", loc)
    standins = [torch.empty((1,) * dim, dtype=dtype, device="meta") for dim, dtype, _, _ in metas]
    scalar: set[int] = set()

    def decode(x: Any, vals: dict[int, Any]) -> Any:
        kind = x[0]
        if kind == "p":
            return vals[x[1]]
        if kind == "c":
            if x[2]:
                scalar.add(x[1])
            return standins[x[1]]
        if kind == "t":
            return tuple(decode(y, vals) for y in x[1])
        if kind == "l":
            return [decode(y, vals) for y in x[1]]
        return x[1]

    def replayer(recorded: tuple[Any, ...] | None, label: str | None) -> Callable[..., Any] | None:
        if recorded is None:
            return None
        ops, out = recorded

        def replay(*args: Any) -> Any:
            vals: dict[int, Any] = dict(enumerate(args))
            for i, (func, enc_args, enc_kwargs) in enumerate(ops):
                fargs = [decode(a, vals) for a in enc_args]
                fkwargs = {kw: decode(val, vals) for kw, val in enc_kwargs}
                vals[_FIRST_RESULT_SLOT + i] = _replay_call(func, fargs, fkwargs)
            return decode(out, vals)

        replay.__name__ = label or "mod"
        return replay

    score_fn = replayer(score_tape, labels[0])
    mask_fn = replayer(mask_tape, labels[1])
    try:
        spec, captured = api.spec_from_mods(score_fn, mask_fn, gqa=gqa, name=name)
    except SpecError as err:
        raise SpecError(err.message, labels[2] if score_fn is not None else labels[3]) from None
    for i in sorted(scalar):
        if not metas[i][3]:
            raise SpecError(f"captured {metas[i][0]}-D tensor used without indexing", loc)
    info = spec_info(api.compile_spec(spec))
    by_id = {id(t): i for i, t in enumerate(standins)}
    order = []
    for cname, _, _ in info.captures:
        t = captured[cname]
        order.append(by_id[id(t)] if id(t) in by_id else by_id[id(t._base)])  # 0-d stand-ins are reshaped views
    return info, tuple(order)


def _replay_call(func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Apply one recorded torch call to traced values (:class:`attncc.runtime.trace.Sym`)."""
    from attncc.runtime.trace import Sym, _clamp

    fname = getattr(func, "__name__", str(func))
    if fname in ("clamp", "clip", "clamp_min", "clamp_max"):
        rest = list(args[1:])
        lo = kwargs.get("min", rest.pop(0) if rest and fname != "clamp_max" else None)
        hi = kwargs.get("max", rest.pop(0) if rest else None)
        return _clamp(args[0], lo, hi)
    alias = _ALIASES.get(fname)
    if isinstance(alias, str):
        func = _Named(alias)
    elif alias is not None:
        return alias(*args, **kwargs)
    return Sym.__torch_function__(func, (), tuple(args), kwargs)


class _Named:
    """A stand-in callable whose ``__name__`` selects a handler of the eager tracer."""

    def __init__(self, name: str) -> None:
        self.__name__ = name


def _sym_binary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def run_(a: Any, b: Any, *rest: Any, **kw: Any) -> Any:
        from attncc.runtime.trace import Sym, _ex
        return fn(Sym(_ex(a)), Sym(_ex(b)))
    return run_


# Names Dynamo may hand to __torch_function__ that the eager tracer spells differently.
_ALIASES: dict[str, str | Callable[..., Any]] = {
    "__abs__": "abs", "absolute": "abs", "__neg__": "neg", "negative": "neg",
    "__invert__": "bitwise_not", "bitwise_and": "__and__", "bitwise_or": "__or__",
    "true_divide": "div", "floor_divide": "__floordiv__", "remainder": "__mod__",
    "greater": "gt", "greater_equal": "ge", "less": "lt", "less_equal": "le", "not_equal": "ne",
    "rsub": _sym_binary(lambda a, b: b - a),
    "pow": _sym_binary(lambda a, b: a ** b), "__pow__": _sym_binary(lambda a, b: a ** b),
    "__rpow__": _sym_binary(lambda a, b: b ** a),  # Sym.__pow__: torch's integer-power rule
    "__rfloordiv__": _sym_binary(lambda a, b: b // a), "__rmod__": _sym_binary(lambda a, b: b % a),
    "__rdiv__": _sym_binary(lambda a, b: b / a),
    "__rand__": _sym_binary(lambda a, b: b & a), "__ror__": _sym_binary(lambda a, b: b | a),
    "__pos__": lambda a: a, "positive": lambda a: a,
    "logical_and": _sym_binary(lambda a, b: a & b), "logical_or": _sym_binary(lambda a, b: a | b),
}

