"""Choose Triton's interpreter on a machine without a GPU, before triton is first imported.

Triton binds its interpreter when ``triton.language`` is imported, and asking whether a GPU is
present means importing torch (seconds), which commands such as ``attncc specs`` never need.  So
``import attncc`` only :func:`install`\\ s a finder on :data:`sys.meta_path` that runs
:func:`select_interpreter` once, right before the first ``import triton`` of the process, and then
removes itself.  An explicit ``TRITON_INTERPRET`` (0 or 1) in the environment always wins.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec


def select_interpreter() -> None:
    """Set ``TRITON_INTERPRET=1`` when no CUDA device is available and triton is not yet imported."""
    if "TRITON_INTERPRET" in os.environ or "triton.language" in sys.modules:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


class _BeforeTriton:
    """A meta-path finder that finds nothing: it selects the interpreter when triton is looked up."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname == "triton":
            torch = sys.modules.get("torch")
            if torch is not None and not hasattr(torch, "cuda"):
                return None  # torch is importing itself: decide at the next lookup
            uninstall()
            select_interpreter()
        return None


_FINDER = _BeforeTriton()


def install() -> None:
    """Select the interpreter before triton's first import (now, if triton is already imported)."""
    if "triton" in sys.modules:
        select_interpreter()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
