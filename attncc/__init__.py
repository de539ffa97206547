"""attncc: a compiler and autotuner for attention kernels.

Declare an attention variant (a TOML spec or FlexAttention-style Python mods)
and get a fused Triton kernel::

    import attncc
    out = attncc.flex_attention(q, k, v, score_mod=my_mod, block_mask=mask)
    causal = attncc.load("causal"); out = causal(q, k, v)

``import attncc`` is cheap: each name below is imported from its module on first use (the runtime
imports torch and triton then; without a GPU, Triton's interpreter is selected right before triton
is first imported, see :mod:`attncc.interpreter`).
"""

from __future__ import annotations

import importlib
from typing import Any

from attncc import interpreter as _interpreter

_interpreter.install()

# Public name -> the module it is imported from on first access.
_EXPORTS: dict[str, str] = {
    "AttnccError": "attncc.errors",
    "CompileError": "attncc.errors",
    "InputError": "attncc.errors",
    "SpecError": "attncc.errors",
    "AuxOutput": "attncc.runtime.api",
    "AuxRequest": "attncc.runtime.api",
    "BlockMask": "attncc.runtime.api",
    "CompiledAttention": "attncc.runtime.api",
    "attention": "attncc.runtime.api",
    "create_block_mask": "attncc.runtime.api",
    "decode": "attncc.runtime.api",
    "flex_attention": "attncc.runtime.api",
    "load": "attncc.runtime.api",
    "document_ids": "attncc.runtime.blockmask",
    "__version__": "attncc.version",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is used (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attncc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if module.startswith("attncc.runtime"):
        importlib.import_module("attncc.distributed")  # registers CompiledAttention.distributed
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

