"""Host-side checks and argument packing of every kernel call (plain Python: traceable by Dynamo).

Everything a caller passes goes through here once, before the ``attncc::fwd`` op: tensors
(:func:`validate`), captured tensors and params by keyword (:func:`split_kwargs`), param values
(:func:`encode_params`), the launch config and torch's ``kernel_options`` (:func:`encode_config`).
Each problem is a one-line :class:`InputError` naming the argument.  The checks a kernel launch
itself needs (tensors, captures, config values, the config table) are those of the host launch
layer, :mod:`attncc.codegen.launch`, whose text every generated module carries; here its
:class:`~attncc.codegen.launch.LaunchError` becomes an ``InputError`` prefixed with the caller's name.
The checks only this front end makes (argument types, capture lengths, param ranges, config
prefixes and torch's ``kernel_options``) live here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from attncc.codegen import launch
from attncc.errors import InputError

if TYPE_CHECKING:
    from attncc.runtime.ops import SpecInfo

SUPPORTED_DTYPES = launch.SUPPORTED_DTYPES

# Integer params enter the kernel's int32 index arithmetic (``m + window + 1`` and the like):
# within +-2**30 such sums of a param and an index stay inside int32.
INT_PARAM_LIMIT = 2**30
FP32_MAX = 3.4028234663852886e38  # float params and the scale are fp32 in the kernel

CONFIG_VALUES = launch.CONFIG_VALUES  # the launch config: key -> allowed values (one table)
KIND_PREFIXES = ("fwd_", "bwd_")  # ``fwd_BLOCK_M``: forward only, as in torch's kernel_options

# torch's FlexKernelOptions keys that have no meaning for attncc's kernels: accepted in
# kernel_options (also with a fwd_/bwd_ prefix) and ignored.
TORCH_IGNORED_OPTIONS = frozenset({
    "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2", "PRESCALE_QK", "ROWS_GUARANTEED_SAFE",
    "BLOCKS_ARE_CONTIGUOUS", "WRITE_DQ", "FORCE_USE_FLEX_ATTENTION", "USE_TMA", "BACKEND",
    "kpack", "matrix_instr_nonkdim", "waves_per_eu",
})


def check_tensor_args(name: str, q: Any, k: Any, v: Any) -> None:
    """query/key/value are 4-D tensors (checked before anything reads their shapes)."""
    with _as_input_error(name):
        launch.check_tensor_args(q, k, v)


@contextmanager
def _as_input_error(name: str) -> Iterator[None]:
    """A :class:`launch.LaunchError` raised inside becomes ``InputError("<name>: <message>")``."""
    try:
        yield
    except launch.LaunchError as exc:
        raise InputError(f"{name}: {exc}") from None


def validate(info: SpecInfo, q: Any, k: Any, v: Any, captures: Sequence[Any]) -> None:
    """One-line :class:`InputError` for tensors the kernel cannot take."""
    with _as_input_error(info.name):
        launch.check_qkv(q, k, v, info.gqa)
    B, H, M, _ = q.shape
    _check_captures(info, q, captures, {"B": B, "H": H, "M": M, "N": k.shape[2]})


def _check_captures(info: SpecInfo, q: torch.Tensor, captures: Sequence[Any], sizes: Mapping[str, int]) -> None:
    name = info.name
    by_name = dict(zip((c[0] for c in info.captures), captures, strict=True))
    with _as_input_error(name):
        launch.check_captures(q, by_name, [(cname, dims) for cname, dims, _ in info.captures])
    index_name = {"B": "b", "H": "h", "M": "q_idx", "N": "kv_idx"}
    for cname, dim, size in info.bare_indices:
        t = by_name[cname]
        if t.shape[dim] < sizes[size]:
            raise InputError(f"{name}: captured '{cname}' dimension {dim} has length {t.shape[dim]} but is indexed "
                             f"by {index_name[size]} up to {sizes[size] - 1} ({size}={sizes[size]})")


def split_kwargs(info: SpecInfo, kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """Keyword arguments -> (captured tensors in kernel order, params)."""
    cap_names = [c[0] for c in info.captures]
    param_names = [p[0] for p in info.params]
    for key in kwargs:
        if key not in cap_names and key not in param_names:
            raise InputError(f"{info.name}: unknown argument '{key}' (expected one of "
                             f"{sorted(cap_names + param_names)})")
    missing = [c for c in cap_names if c not in kwargs]
    if missing:
        raise InputError(f"{info.name}: missing captured tensor(s) {missing}")
    return [kwargs[c] for c in cap_names], {p: kwargs[p] for p in param_names if p in kwargs}


def check_scale(name: str, scale: Any) -> float | None:
    """``scale`` as a float (None: 1/sqrt(D)); inf and NaN pass, as in torch."""
    if scale is None:
        return None
    if isinstance(scale, (bool, torch.Tensor)) or not isinstance(scale, (int, float)):
        raise InputError(f"{name}: scale must be a Python number or None, got {type(scale).__name__}")
    if _beyond_fp32(scale):
        raise InputError(f"{name}: scale {_show(scale)} does not fit the kernel's fp32")
    return float(scale)


def _show(val: int | float) -> str:
    """A number for a message (huge ints by their size: their digits may be too many to print)."""
    if isinstance(val, int) and val.bit_length() > 64:
        return f"{'-' if val < 0 else ''}(an integer of {val.bit_length()} bits)"
    return repr(val)


def _beyond_fp32(val: int | float) -> bool:
    """A finite number that fp32 would turn into inf."""
    try:
        f = float(val)
    except OverflowError:
        return True
    return math.isfinite(f) and abs(f) > FP32_MAX


def encode_params(info: SpecInfo, params: Mapping[str, Any]) -> list[float]:
    """Param values in kernel order, as floats (exact: int params are bounded by INT_PARAM_LIMIT)."""
    values = []
    for pname, kind, default in info.params:
        val = params.get(pname, default)
        if isinstance(val, torch.Tensor) or not isinstance(val, (int, float)):
            raise InputError(f"{info.name}: parameter '{pname}' must be a Python number, got {type(val).__name__}")
        if kind == "int":
            if isinstance(val, float) and not val.is_integer():
                raise InputError(f"{info.name}: parameter '{pname}' must be an integer, got {val}")
            if abs(int(val)) > INT_PARAM_LIMIT:
                raise InputError(f"{info.name}: parameter '{pname}' = {_show(val)} is out of range: int params must "
                                 f"lie in [-2**30, 2**30] (the kernel's index arithmetic is int32)")
        elif _beyond_fp32(val):
            raise InputError(f"{info.name}: parameter '{pname}' = {_show(val)} does not fit the kernel's fp32")
        values.append(float(val))
    return values


def encode_config(name: str, config: Mapping[str, Any] | None, *, label: str = "config",
                  torch_options: bool = False) -> tuple[list[str], list[int]]:
    """Validated launch config as parallel key/value lists.

    Keys are BLOCK_M, BLOCK_N, num_warps and num_stages, optionally prefixed ``fwd_`` or ``bwd_``
    to apply to one pass only.  With ``torch_options`` (``flex_attention``'s ``kernel_options``),
    torch's keys in :data:`TORCH_IGNORED_OPTIONS` are accepted and dropped.
    """
    if config is not None and not isinstance(config, Mapping):
        raise InputError(f"{name}: {label} must be a dict, got {type(config).__name__}")
    keys, values = [], []
    for ckey in sorted(config or {}, key=str):
        val = config[ckey]  # type: ignore[index]
        base = ckey[4:] if isinstance(ckey, str) and ckey.startswith(KIND_PREFIXES) else ckey
        if torch_options and base in TORCH_IGNORED_OPTIONS:
            continue
        if base not in CONFIG_VALUES:
            known = sorted(CONFIG_VALUES) + (["(torch's other kernel_options)"] if torch_options else [])
            raise InputError(f"{name}: unknown {label} key {ckey!r} (expected one of {known}, "
                             f"optionally prefixed fwd_ or bwd_)")
        with _as_input_error(name):
            launch.check_config_value(ckey, val, CONFIG_VALUES[base], label)
        keys.append(ckey)
        values.append(val)
    return keys, values


def config_for_kind(keys: Sequence[str], values: Sequence[int], kind: str) -> dict[str, int]:
    """The caller's config for one pass (``fwd`` or ``bwd``): unprefixed keys, overridden by prefixed ones."""
    config = {key: val for key, val in zip(keys, values, strict=True) if not key.startswith(KIND_PREFIXES)}
    config.update({key[4:]: val for key, val in zip(keys, values, strict=True) if key.startswith(kind + "_")})
    return config


def is_empty(q: torch.Tensor, k: torch.Tensor) -> bool:
    """No query row or no key: the result is known without a launch (o = 0, lse = -inf)."""
    return launch.is_empty(q, k)


def encode_tables(info: SpecInfo, tables: Mapping[str, Any] | None, q: torch.Tensor,
                  k: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """The ops' ``blocks`` (:data:`launch.TABLE_ORDER`) and ``block_sizes`` arguments (empty
    without tables); absent ``full_*`` lists become empty ones.  One-line :class:`InputError`
    for tables that do not fit the call."""
    if tables is None:
        if info.block_table:
            raise InputError(f"{info.name}: this variant reads block tables; none were given")
        return [], []
    if not info.block_table:
        raise InputError(f"{info.name}: block tables given to a variant without a block-table plan")
    full = dict(tables)
    for num_key, idx_key, full_num, full_idx in (launch.TABLE_KEYS["keys"], launch.TABLE_KEYS["queries"]):
        if full.get(full_num) is None and isinstance(full.get(num_key), torch.Tensor) \
                and isinstance(full.get(idx_key), torch.Tensor):
            full[full_num], full[full_idx] = torch.zeros_like(full[num_key]), torch.zeros_like(full[idx_key][..., :1])
    with _as_input_error(info.name):
        launch.check_tables(full, q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return [full[name].to(q.device) for name in launch.TABLE_ORDER], [int(full["block_m"]), int(full["block_n"])]
