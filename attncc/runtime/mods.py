"""Attention of FlexAttention-style mods: eager tracing, or recording under Dynamo.

See :mod:`attncc.runtime.ops` (the operators and how ``torch.compile`` sees them) for the recording
design: :class:`_Probe` tensors, the :class:`_Recorder` mode, and :func:`_plan`, which replays a
tape through the eager tracer at trace time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from attncc.errors import SpecError
from attncc.runtime.compiled import compile_spec, spec_from_mods
from attncc.runtime.ops import SpecInfo, auto_tables, run, spec_info
from attncc.runtime.trace import Sym, _clamp, _ex


def call_mods(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable[..., Any] | None,
              mask_mod: Callable[..., Any] | None, *, gqa: bool = False, name: str = "flex",
              scale: float | None = None, return_lse: bool = False, config: Mapping[str, Any] | None = None,
              tables: Mapping[str, Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of FlexAttention-style mods (``flex_attention`` and ``@attncc.attention``).

    ``tables``: the block tables of a BlockMask (the block-table variant runs); without them, eager
    calls build tables when the mask's compile-time plan is inexact (``auto_tables``)."""
    if torch.compiler.is_compiling():
        info, captures = _recorded_spec(score_mod, mask_mod, gqa, name, tables is not None)
    else:
        spec, tensors = spec_from_mods(score_mod, mask_mod, gqa=gqa, name=name)
        compiled = compile_spec(spec)
        info = spec_info(compiled, tables is not None)
        captures = [tensors[c[0]] for c in info.captures]
    if tables is None:
        info, tables = auto_tables(info, q, k, v, captures, {}, config)
    return run(info, q, k, v, captures, scale=scale, return_lse=return_lse, config=config, tables=tables)


_FIRST_RESULT_SLOT = 5  # slots 0..4: the mod's arguments


class _Probe(torch.Tensor):
    """Stand-in for a mod argument while recording: an empty tensor of shape ``[0, slot + 1]``
    (shape is static metadata, which Dynamo reads as a constant).  Being empty, anything
    computed from a probe by an operation that bypasses the recorder is empty too, and is
    refused (by :func:`_plan`) instead of being taken for a captured tensor."""

    __torch_function__ = torch._C._disabled_torch_function_impl


class _ScoreProbe(_Probe):
    """The ``score`` argument.  ``dtype`` and ``device`` are properties with constant values: Dynamo
    traces a property of a subclass, but refuses to read a tensor attribute through the subclass's
    disabled ``__torch_function__`` (``score.dtype`` in ``x.to(score.dtype)``)."""

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return torch.float32

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cpu")  # where the recorded values live (tensors a mod creates are captured)


class _IndexProbe(_ScoreProbe):
    """An index argument (``b``, ``h``, ``q_idx``, ``kv_idx``): int64, as torch gives them."""

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return torch.int64


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
    # score: float; indices: int64
    probes = [torch.empty(0, i + 1, dtype=torch.float32 if i == 0 and nargs == 5 else torch.int64)
              .as_subclass(_ScoreProbe if i == 0 and nargs == 5 else _IndexProbe) for i in range(nargs)]
    with _Recorder(tape):
        out = fn(*probes)
    return (tuple(tape["ops"]), _encode(out, tape, True))


def _loc(fn: Callable[..., Any] | None) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else "<mod>"


def _recorded_spec(score_mod: Callable[..., Any] | None, mask_mod: Callable[..., Any] | None, gqa: bool,
                   name: str, block_table: bool = False) -> tuple[SpecInfo, list[torch.Tensor]]:
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
    info, order = _plan(score_tape, mask_tape, metas, labels, gqa, name, block_table)
    return info, [tensors[i].reshape(1) if tensors[i].dim() == 0 else tensors[i] for i in order]


@torch._dynamo.assume_constant_result
def _plan(score_tape: tuple[Any, ...] | None, mask_tape: tuple[Any, ...] | None,
          metas: tuple[tuple[int, torch.dtype, bool, bool], ...], labels: tuple[Any, ...], gqa: bool,
          name: str, block_table: bool = False) -> tuple[SpecInfo, tuple[int, ...]]:
    """Replay the tapes through the eager tracer and compile the spec; return its info and the
    recorded tensor feeding each capture (kernel order).  Errors are raised here, in plain Python
    (Dynamo cannot build :class:`SpecError` inside a graph)."""
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
        spec, captured = spec_from_mods(score_fn, mask_fn, gqa=gqa, name=name)
    except SpecError as err:
        raise SpecError(err.message, labels[2] if score_fn is not None else labels[3]) from None
    for i in sorted(scalar):
        if not metas[i][3]:
            raise SpecError(f"captured {metas[i][0]}-D tensor used without indexing", loc)
    info = spec_info(compile_spec(spec), block_table)
    by_id = {id(t): i for i, t in enumerate(standins)}
    order = []
    for cname, _, _ in info.captures:
        t = captured[cname]
        order.append(by_id[id(t)] if id(t) in by_id else by_id[id(t._base)])  # 0-d stand-ins are reshaped views
    return info, tuple(order)


def _replay_call(func: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Apply one recorded torch call to traced values (:class:`attncc.runtime.trace.Sym`)."""
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

