"""Printers for text and plain data placed in generated modules: each emits only what it means.

* :func:`doc_text`: the inside of a ``\"\"\"`` string literal whose value is exactly the given text;
* :func:`comment_text`: one line of printable ASCII for after a ``#``;
* :func:`py_literal`: a Python expression equal to a value made of None, bools, ints, floats,
  strings, lists, tuples and dicts.
"""

from __future__ import annotations

import math
from typing import Any

_PRINTABLE = frozenset(chr(c) for c in range(0x20, 0x7F))


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def doc_text(text: str) -> str:
    """``text`` escaped for a (non-raw) triple-quoted string: backslashes and quotes escaped, line
    feeds kept, every other character outside printable ASCII written as an escape."""
    out = []
    for c in text:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c == "\n" or c in _PRINTABLE:
            out.append(c)
        else:
            out.append(_escape(c))
    return "".join(out)


def comment_text(text: str) -> str:
    """``text`` as one comment line: backslashes doubled, anything outside printable ASCII escaped."""
    return "".join("\\\\" if c == "\\" else c if c in _PRINTABLE else _escape(c) for c in text)


def py_literal(value: Any) -> str:
    """Python source of ``value`` (plain data only); non-finite floats print as ``float('inf')`` etc."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({ascii(str(value))})"
    if isinstance(value, str):
        return ascii(value)
    if isinstance(value, tuple):
        items = [py_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(value, list):
        return f"[{', '.join(py_literal(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal form for {type(value).__name__}")
