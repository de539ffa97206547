"""attncc: a compiler and autotuner for attention kernels.

Declare an attention variant (a TOML spec or FlexAttention-style Python mods)
and get a fused Triton kernel::

    import attncc
    out = attncc.flex_attention(q, k, v, score_mod=my_mod, block_mask=mask)
    causal = attncc.load("causal"); out = causal(q, k, v)
"""

from attncc.errors import AttnccError, CompileError, InputError, SpecError
from attncc.runtime.api import (
    BlockMask,
    CompiledAttention,
    attention,
    create_block_mask,
    flex_attention,
    load,
)
from attncc.version import __version__

__all__ = [
    "AttnccError", "BlockMask", "CompileError", "CompiledAttention", "InputError", "SpecError",
    "__version__", "attention", "create_block_mask", "flex_attention", "load",
]
