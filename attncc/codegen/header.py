"""The opening of every generated module: its docstring, then the interpreter choice.

A module written by ``attncc compile -o`` runs without attncc.  On a machine without a CUDA device
Triton has no active driver unless its interpreter is chosen before ``triton.language`` is
imported, so the module does that itself, right after its docstring (:data:`INTERPRETER_PRELUDE`),
unless ``TRITON_INTERPRET`` is set.  Triton's interpreter needs numpy.
"""

from __future__ import annotations

from attncc.codegen.literals import doc_text

REQUIREMENTS = ("Requires torch, triton and numpy (numpy for Triton's interpreter, which the module selects "
                "itself when no CUDA device is present; an explicit TRITON_INTERPRET=0 or 1 wins).")

INTERPRETER_PRELUDE = '''import os as _os
import sys as _sys

if "TRITON_INTERPRET" not in _os.environ and "triton.language" not in _sys.modules:
    import torch as _torch

    if not _torch.cuda.is_available():  # no GPU: run the kernels in Triton's interpreter
        _os.environ["TRITON_INTERPRET"] = "1"
'''


def module_header(text: str) -> str:
    """The module docstring (``text``, printed by :func:`doc_text`), then :data:`INTERPRETER_PRELUDE`."""
    return f'"""{doc_text(text)}"""\n{INTERPRETER_PRELUDE}'
