"""Names a user may choose (params, captures) checked against what the generated code needs.

A parameter ``w`` becomes the kernel argument ``p_w``; a captured tensor ``c``
becomes ``c_ptr``, ``c_stride0..``, ``c_size0..`` and the helper ``_load_c``; a
capture is also a node of the IR graph and a keyword argument of the compiled
callable.  :func:`check_user_names` rejects every name whose derived identifiers
collide with an identifier of the kernel templates, of the printer's helpers,
of the code the hooks emit, with each other, with a name of the spec language,
with an IR node or with a keyword argument of the generated entry points.
Names are plain ASCII identifiers, so that Python's NFKC normalisation of
identifiers (``ｗ`` -> ``w``) can never merge two of them.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import tokenize
from functools import cache
from pathlib import Path

SCHEDULES_DIR = Path(__file__).resolve().parents[1] / "schedules"  # every schedule's templates/*.tmpl

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

# Nodes of the IR graph (attncc.ir.build, attncc.passes.online_softmax); captures are nodes too.
IR_NODES = frozenset({"q", "k", "v", "S", "S_mod", "S_mask", "MX", "P_num", "L", "P", "O", "LSE", "OS"})

# Keyword arguments of the compiled callable and of the generated entry points, which
# receive params and captures as **kwargs.
CALL_KEYWORDS = frozenset({
    "q", "k", "v", "o", "lse", "do", "scale", "config", "captures", "capture_grads", "return_lse",
    "kernel_options", "block_mask", "score_mod", "mask_mod", "enable_gqa", "params", "tile_log",
})

# Identifiers the hooks emit into generated code (attncc.codegen.plans / rules, the schedules' renderers)
# and the names of the softmax rule tables (attncc.passes.online_softmax).
HOOK_IDENTIFIERS = frozenset({
    "seg_lo", "seg_end", "full_lo", "full_hi", "visited_end", "n0", "m0", "score_mod", "mask_mod",
    "dscore_mod", "off_hk", "env", "lambda", "WRITE_FULL", "CG_row", "CG_full", "LOG_TILES", "log_row",
    "m_new", "m_shift", "alpha", "l_safe", "m", "l", "acc", "p", "s", "v",
})
HOOK_PATTERNS = (re.compile(r"cg\d+"), re.compile(r"dload_\d+"), re.compile(r"_load_.*"))


@cache
def template_identifiers() -> frozenset[str]:
    """Every identifier in the kernel templates and the printer's helper functions."""
    from attncc.codegen.printer import HELPERS

    texts = [p.read_text() for p in sorted(SCHEDULES_DIR.glob("*/templates/*.tmpl"))] + list(HELPERS.values())
    found: set[str] = set()
    for text in texts:
        clean = re.sub(r"\{\{\w+\}\}", " ", text)
        for tok in tokenize.generate_tokens(io.StringIO(clean).readline):
            if tok.type == tokenize.NAME:
                found.add(tok.string)
    return frozenset(found)


def taken_identifiers() -> frozenset[str]:
    """Identifiers no derived name may equal."""
    return template_identifiers() | HOOK_IDENTIFIERS | frozenset(keyword.kwlist) | frozenset(dir(builtins))


def param_identifiers(name: str) -> list[str]:
    return [f"p_{name}"]


def capture_identifiers(name: str, ndim: int) -> list[str]:
    return ([f"{name}_ptr"] + [f"{name}_stride{i}" for i in range(ndim)]
            + [f"{name}_size{i}" for i in range(ndim)])


@cache
def language_words() -> frozenset[str]:
    """Names an expression already gives a meaning to: indices, sizes, functions, constants, ..."""
    from attncc.ir import expr as E
    from attncc.spec.parser import CONSTANTS, FUNCTIONS

    words = {*E.INDEX_SYMBOLS, *E.SIZE_SYMBOLS, "hk", "d", "e", "score", "scale", "p", "nan"}
    return frozenset(words | set(FUNCTIONS) | set(CONSTANTS))


def name_problem(name: str, kind: str) -> str | None:
    """Why ``name`` cannot name a ``kind`` ("parameter" or "capture"), or None when it can."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return (f"{kind} name {name!r} must be an ASCII identifier (a letter, then letters, digits or _, "
                "at most 64 characters)")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{kind} name '{name}' is a Python keyword"
    if name in language_words():
        return f"{kind} name '{name}' is a name of the spec language"
    if name in CALL_KEYWORDS:
        return f"{kind} name '{name}' is a keyword argument of the compiled function"
    if kind == "capture" and name in IR_NODES:
        return f"capture name '{name}' is the name of an IR node ({', '.join(sorted(IR_NODES))})"
    return None


def collisions(params: list[str], captures: list[tuple[str, int]]) -> tuple[str, str] | None:
    """``(user name, identifier)`` of the first derived identifier that is taken, else None."""
    taken = taken_identifiers()
    seen: dict[str, str] = {}
    derived = [(p, x) for p in params for x in param_identifiers(p)]
    derived += [(c, x) for c, nd in captures for x in capture_identifiers(c, nd)]
    for owner, ident in derived:
        if ident in taken or any(p.fullmatch(ident) for p in HOOK_PATTERNS):
            return owner, ident
        if ident in seen and seen[ident] != owner:
            return owner, ident
        seen[ident] = owner
    return None
