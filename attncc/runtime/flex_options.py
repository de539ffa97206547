"""``flex_attention``'s ``kernel_options`` and ``return_aux``, read as torch 2.13 defines them.

:data:`FLEX_KEYS` lists every key of torch's ``FlexKernelOptions`` and what attncc does with it:

* ``honoured``: BLOCK_M, BLOCK_N, num_warps, num_stages become attncc's launch config (with a
  ``fwd_``/``bwd_`` prefix, for one pass only; values checked against ``launch.CONFIG_VALUES``);
* ``routing``: FORCE_USE_FLEX_ATTENTION and BACKEND choose between the prefill kernels and the
  decode schedule (``"FLASH"`` is not available in attncc);
* ``hint``: accepted, type-checked and ignored (torch's backward tiles BLOCK_M1/N1/M2/N2, the
  numerics and layout switches, and the ROCm knobs).

Keys torch sets itself (OUTPUT_LOGSUMEXP, OUTPUT_MAX) and unknown keys are one-line
:class:`InputError`\\ s naming the key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.nn.attention.flex_attention import AuxOutput, AuxRequest

from attncc.errors import InputError
from attncc.runtime import host

__all__ = ["BACKENDS", "FLEX_KEYS", "AuxOutput", "AuxRequest", "FlexOptions", "aux_wanted", "parse_kernel_options"]

BACKENDS = ("AUTO", "TRITON", "FLASH", "TRITON_DECODE")  # torch's _Backend values

# key -> (role, value kind): "tile" (launch.CONFIG_VALUES), "bool", "int" or "backend"
FLEX_KEYS: dict[str, tuple[str, str]] = {
    "BLOCK_M": ("honoured", "tile"), "BLOCK_N": ("honoured", "tile"),
    "num_warps": ("honoured", "tile"), "num_stages": ("honoured", "tile"),
    "FORCE_USE_FLEX_ATTENTION": ("routing", "bool"), "BACKEND": ("routing", "backend"),
    "BLOCK_M1": ("hint", "int"), "BLOCK_N1": ("hint", "int"), "BLOCK_M2": ("hint", "int"),
    "BLOCK_N2": ("hint", "int"),
    "PRESCALE_QK": ("hint", "bool"), "ROWS_GUARANTEED_SAFE": ("hint", "bool"),
    "BLOCKS_ARE_CONTIGUOUS": ("hint", "bool"), "WRITE_DQ": ("hint", "bool"), "USE_TMA": ("hint", "bool"),
    "kpack": ("hint", "int"), "matrix_instr_nonkdim": ("hint", "int"), "waves_per_eu": ("hint", "int"),
}
INTERNAL_KEYS = ("OUTPUT_LOGSUMEXP", "OUTPUT_MAX")  # torch sets these from return_aux / return_lse
_NAME = "flex_attention"


@dataclass(frozen=True)
class FlexOptions:
    """What ``kernel_options`` asks for: the launch config, the backend, the hints that were given."""

    config: dict[str, int] = field(default_factory=dict)
    backend: str = "AUTO"  # AUTO, TRITON (prefill kernels only) or TRITON_DECODE
    hints: tuple[str, ...] = ()


def parse_kernel_options(options: Mapping[str, Any] | None) -> FlexOptions:
    """Validated ``kernel_options`` (one-line :class:`InputError` naming the key on a bad one)."""
    if options is None:
        return FlexOptions()
    if not isinstance(options, Mapping):
        raise InputError(f"{_NAME}: kernel_options must be a dict, got {type(options).__name__}")
    tiles: dict[str, Any] = {}
    hints: list[str] = []
    for key in sorted(options, key=str):
        base = key[4:] if isinstance(key, str) and key.startswith(host.KIND_PREFIXES) else key
        role, kind = _role(key, base)
        if role == "honoured":
            tiles[key] = options[key]
        else:
            _check_value(key, options[key], kind)
            hints.append(key)
    keys, values = host.encode_config(_NAME, tiles, label="kernel_options")
    backend = options.get("BACKEND", "AUTO")
    if "BACKEND" in options and options.get("FORCE_USE_FLEX_ATTENTION", False):
        raise InputError(f"{_NAME}: kernel_options BACKEND cannot be combined with FORCE_USE_FLEX_ATTENTION "
                         "(BACKEND supersedes it, as in torch)")
    if backend == "FLASH":
        raise InputError(f"{_NAME}: kernel_options BACKEND='FLASH' (torch's cute-dsl kernel) is not available "
                         "in attncc; use 'AUTO', 'TRITON' or 'TRITON_DECODE'")
    if options.get("FORCE_USE_FLEX_ATTENTION", False):
        backend = "TRITON"
    return FlexOptions(dict(zip(keys, values, strict=True)), backend, tuple(hints))


def _role(key: Any, base: Any) -> tuple[str, str]:
    if base in INTERNAL_KEYS:
        raise InputError(f"{_NAME}: kernel_options key {key!r} is set internally; "
                         "request outputs with return_aux=AuxRequest(lse=..., max_scores=...)")
    if base not in FLEX_KEYS:
        close = difflib.get_close_matches(str(base), list(FLEX_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"{_NAME}: unknown kernel_options key {key!r}{hint}; torch's FlexKernelOptions keys "
                         f"are {sorted(FLEX_KEYS)}, optionally prefixed fwd_ or bwd_")
    if base in ("BACKEND", "FORCE_USE_FLEX_ATTENTION") and base != key:
        raise InputError(f"{_NAME}: kernel_options key {key!r}: {base} applies to the whole call, not one pass")
    return FLEX_KEYS[base]


def _check_value(key: str, value: Any, kind: str) -> None:
    if kind == "bool" and not (isinstance(value, bool) or (type(value) is int and value in (0, 1))):
        raise InputError(f"{_NAME}: kernel_options {key} must be a bool, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{_NAME}: kernel_options {key} must be an int, got {value!r}")
    if kind == "backend" and value not in BACKENDS:
        raise InputError(f"{_NAME}: kernel_options BACKEND must be one of {list(BACKENDS)}, got {value!r}")


def aux_wanted(return_lse: Any, return_aux: Any) -> tuple[bool, bool]:
    """``(lse, max_scores)`` requested, as torch reads ``return_lse`` and ``return_aux``."""
    if return_aux is None:
        return bool(return_lse), False
    if not isinstance(return_aux, AuxRequest):
        raise InputError(f"{_NAME}: return_aux must be an AuxRequest(lse=..., max_scores=...), "
                         f"got {type(return_aux).__name__}")
    if return_lse:
        raise InputError(f"{_NAME}: return_lse and return_aux cannot both be given; "
                         "use return_aux=AuxRequest(lse=True)")
    return bool(return_aux.lse), bool(return_aux.max_scores)
