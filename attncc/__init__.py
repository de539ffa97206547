"""attncc: a compiler and autotuner for attention kernels.

Declare an attention variant (a TOML spec or FlexAttention-style Python mods)
and get a fused Triton kernel::

    import attncc
    out = attncc.flex_attention(q, k, v, score_mod=my_mod, block_mask=mask)
    causal = attncc.load("causal"); out = causal(q, k, v)
"""

import os as _os
import sys as _sys


def _select_interpreter() -> None:
    """Without a GPU, run kernels in Triton's interpreter (``TRITON_INTERPRET=1``).

    Triton binds its interpreter when ``triton.language`` is imported, so this
    runs before attncc imports triton.  An explicit ``TRITON_INTERPRET`` (0 or 1)
    in the environment always wins.
    """
    if "TRITON_INTERPRET" in _os.environ or "triton.language" in _sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        _os.environ["TRITON_INTERPRET"] = "1"


_select_interpreter()

import attncc.distributed  # noqa: E402,F401,I001 - registers CompiledAttention.distributed
from attncc.errors import AttnccError, CompileError, InputError, SpecError  # noqa: E402
from attncc.runtime.api import (  # noqa: E402
    BlockMask,
    CompiledAttention,
    attention,
    create_block_mask,
    decode,
    flex_attention,
    load,
)
from attncc.runtime.blockmask import document_ids  # noqa: E402
from attncc.version import __version__  # noqa: E402

__all__ = [
    "AttnccError", "BlockMask", "CompileError", "CompiledAttention", "InputError", "SpecError",
    "__version__", "attention", "create_block_mask", "decode", "document_ids", "flex_attention", "load",
]
