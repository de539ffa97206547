"""Load spec files (TOML) into :class:`attncc.spec.model.Spec`.

The file format is documented in ``docs/spec-format.md``.  Every error a user
can cause is a one-line :class:`SpecError` with ``file:line:col``.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path
from typing import Any

import sympy as sp

from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.spec import names as N
from attncc.spec.library import LIBRARY_DIR, library  # noqa: F401 - LIBRARY_DIR is re-exported
from attncc.spec.model import CAPTURE_DTYPES, CaptureDecl, ParamDecl, Spec
from attncc.spec.parser import Location, Scope, parse_expression, parse_tree
from attncc.spec.recurrence import RecurrenceBuilder, RecurrenceSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"name", "description", "inputs", "indices", "params", "captures", "cascade", "state"}
CASCADE_KEYS = {"score", "modify", "mask", "normalize", "output"}
INPUT_ROLES = {"q": ("b", "h", "m", "d"), "k": ("b", "hk", "n", "d"), "v": ("b", "hk", "n", "e")}
KNOWN_INDICES = ("b", "h", "hk", "m", "n", "d", "e")
MAX_SPEC_BYTES = 256 * 1024  # a spec file larger than this is refused before parsing
MAX_CAPTURE_DIMS = 8
MAX_NAMES = 64  # params, and captures, per spec
INT_PARAM_RANGE = (-(2**63), 2**63 - 1)


def softmax_library() -> dict[str, Path]:
    """The built-in softmax-attention specs (those without a ``[state]`` section)."""
    return {name: path for name, path in library().items() if not isinstance(load_file(path), RecurrenceSpec)}


def recurrence_library() -> dict[str, Path]:
    """The built-in linear-recurrence specs."""
    return {name: path for name, path in library().items() if isinstance(load_file(path), RecurrenceSpec)}


def resolve(ref: str | Path) -> Spec | RecurrenceSpec:
    """Load ``ref``: a path to a spec file, or the name of a built-in spec."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"spec file not found: {ref}")
        return load_file(path)
    lib = library()
    if str(ref) in lib:
        return load_file(lib[str(ref)])
    raise SpecError(f"unknown spec '{ref}': not a file and not a built-in ({', '.join(lib)})")


def load_file(path: Path) -> Spec | RecurrenceSpec:
    """Load one spec file; unreadable or non-UTF-8 files are one-line errors."""
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"spec file larger than {MAX_SPEC_BYTES} bytes", str(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file is not UTF-8 text (byte {exc.start})", str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror or exc}", str(path)) from None
    return load_text(text, str(path))


class _Locator:
    """Finds the line and column of ``key = "..."`` inside ``[section]`` of TOML text."""

    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.lines = text.splitlines()

    def find(self, section: str, key: str) -> Location:
        current = ""
        key_re = re.compile(rf"^\s*{re.escape(key)}\s*=\s*")
        for i, line in enumerate(self.lines, start=1):
            head = re.match(r"^\s*\[([^\]]+)\]", line)
            if head:
                current = head.group(1).strip()
                continue
            if current == section and (mo := key_re.match(line)):
                rest = line[mo.end():]
                quote = 1 if rest[:1] in "\"'" else 0
                return Location(self.file, i, mo.end() + quote)
        # Sub-tables ([params.window]), top-level tables ([extras]), then the section itself.
        for header in (f"{section}.{key}" if section else key, section):
            for i, line in enumerate(self.lines, start=1):
                head = re.match(r"^\s*\[([^\]]+)\]", line)
                if header and head and head.group(1).strip() == header:
                    return Location(self.file, i, line.index("[") + 1)
        return Location(self.file, 1, 0)


def load_text(text: str, file: str = "<spec>") -> Spec | RecurrenceSpec:
    """Parse TOML text of a spec."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"spec text longer than {MAX_SPEC_BYTES} characters", f"{file}:1:1")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+), column (\d+)", str(exc))
        where = f"{file}:{m.group(1)}:{m.group(2)}" if m else f"{file}:1:1"
        raise SpecError(f"invalid TOML: {str(exc).split(' (at')[0]}", where) from None
    except (RecursionError, MemoryError):
        raise SpecError("invalid TOML: nested too deeply", f"{file}:1:1") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise SpecError(f"invalid TOML: {str(exc).splitlines()[0][:120]}", f"{file}:1:1") from None
    return _SpecBuilder(doc, _Locator(text, file)).build()


class _SpecBuilder:
    def __init__(self, doc: dict[str, Any], loc: _Locator) -> None:
        self.doc = doc
        self.loc = loc

    def err(self, section: str, key: str, message: str) -> SpecError:
        return SpecError(message, self.loc.find(section, key).at(None))

    def table(self, key: str) -> dict[str, Any]:
        val = self.doc.get(key, {})
        if not isinstance(val, dict):
            raise self.err("", key, f"'{key}' must be a table")
        return val

    def text(self, section: str, key: str, val: Any, what: str) -> str:
        """A string field, or a one-line error naming it."""
        if not isinstance(val, str):
            raise self.err(section, key, f"'{key}' must be {what}")
        return val

    def build(self) -> Spec | RecurrenceSpec:
        unknown = set(self.doc) - TOP_KEYS
        if unknown:
            raise self.err("", sorted(unknown)[0], f"unknown key '{sorted(unknown)[0]}'")
        name = self.doc.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,99}", name):
            raise self.err("", "name", "'name' must be an identifier-like ASCII string (at most 100 characters)")
        description = self.doc.get("description", "")
        if not isinstance(description, str):
            raise self.err("", "description", "'description' must be a string")
        if "state" in self.doc:  # a linear recurrence (attncc.spec.recurrence)
            if "indices" in self.doc:
                raise self.err("", "indices", "a recurrence has no [indices] section")
            return RecurrenceBuilder(self, name, description).build()
        kv_head = self.inputs()
        params = self.params()
        captures = self.captures(params)
        self.captures_ = list(captures.values())
        cascade = self.table("cascade")
        for key in cascade:
            if key not in CASCADE_KEYS:
                raise self.err("cascade", key, f"unknown cascade key '{key}' (expected {sorted(CASCADE_KEYS)})")
        for key in ("score", "output"):
            if key not in cascade:
                raise self.err("cascade", key, f"[cascade] needs '{key}'")
        scaled = self.score_einsum(cascade["score"])
        self.output_einsum(cascade["output"])
        norm = self.text("cascade", "normalize", cascade.get("normalize", "softmax(n)"), "a string, softmax(n)")
        if norm.replace(" ", "") != "softmax(n)":
            raise self.err("cascade", "normalize", f"unsupported normalisation '{norm}' (only softmax(n))")
        names = self.names(params)
        tensors = {c.name: c.ndim for c in captures.values()}
        modify = self.expr("modify", cascade.get("modify", "score"), {**names, "score": E.score}, tensors)
        mask = self.expr("mask", cascade.get("mask", "True"), names, tensors)
        if not isinstance(mask, sp.logic.boolalg.Boolean) or isinstance(mask, sp.Expr):
            raise self.err("cascade", "mask", "the mask must be a condition (comparison or boolean)")
        if isinstance(modify, sp.logic.boolalg.Boolean) and not isinstance(modify, sp.Expr):
            raise self.err("cascade", "modify", "the score modification must be a number, not a condition")
        self.check_used(captures, modify, mask)
        return Spec(
            name=name, description=description, source=self.loc.file,
            kv_head=kv_head, scaled=scaled, modify=modify, mask=mask, params=params, captures=captures,
        )

    def inputs(self) -> sp.Expr:
        inputs = self.table("inputs")
        for role in INPUT_ROLES:
            if role not in inputs:
                raise self.err("inputs", role, f"[inputs] needs '{role}'")
        for role, decl in inputs.items():
            if role not in INPUT_ROLES:
                raise self.err("inputs", role, f"unknown input '{role}' (inputs are q, k, v)")
            got = tuple(self.text("inputs", role, decl, "a string of indices like 'b h m d'").split())
            for ix in got:
                if ix not in KNOWN_INDICES:
                    raise self.err("inputs", role, f"unknown index '{ix}' (indices: {' '.join(KNOWN_INDICES)})")
            want = INPUT_ROLES[role]
            alt = tuple("h" if i == "hk" else i for i in want)
            if got not in (want, alt):
                raise self.err("inputs", role, f"'{role}' must be declared '{' '.join(want)}' or "
                               f"'{' '.join(alt)}', got '{decl}'")
        uses_hk = "hk" in str(inputs["k"]).split() or "hk" in str(inputs["v"]).split()
        if str(inputs["k"]).split()[1] != str(inputs["v"]).split()[1]:
            raise self.err("inputs", "v", "k and v must use the same head index")
        indices = self.table("indices")
        for key in indices:
            if key != "hk":
                raise self.err("indices", key, f"only 'hk' (the key/value head) can be defined, not '{key}'")
        if not uses_hk:
            if indices:
                raise self.err("indices", "hk", "'hk' is defined but k and v are indexed by h")
            return E.h
        if "hk" not in indices:
            raise self.err("inputs", "k", "k and v use 'hk': define it under [indices], e.g. hk = \"h // (H // HK)\"")
        scope = {"h": E.h, **E.SIZE_SYMBOLS}
        expr = parse_expression(indices["hk"], Scope(scope), self.loc.find("indices", "hk"))
        if (not isinstance(expr, sp.Expr) or expr.free_symbols - {E.h, *E.SIZE_SYMBOLS.values()}
                or not E.integer_valued(expr)):
            raise self.err("indices", "hk", "'hk' must be an integer expression of h and sizes")
        return expr

    def params(self) -> dict[str, ParamDecl]:
        out: dict[str, ParamDecl] = {}
        table = self.table("params")
        if len(table) > MAX_NAMES:
            raise self.err("", "params", f"at most {MAX_NAMES} parameters")
        for name, decl in table.items():
            self.check_name("params", name, "parameter")
            if isinstance(decl, bool) or not isinstance(decl, (int, float, dict)):
                raise self.err("params", name, "a parameter is a number or {type, default, doc}")
            if isinstance(decl, dict):
                kind, default, doc = decl.get("type"), decl.get("default"), decl.get("doc", "")
            else:
                kind, default, doc = ("int" if isinstance(decl, int) else "float"), decl, ""
            if kind not in ("int", "float") or not isinstance(default, (int, float)) or isinstance(default, bool):
                raise self.err("params", name, "parameter needs type 'int' or 'float' and a numeric default")
            if not isinstance(doc, str):
                raise self.err("params", name, "a parameter's 'doc' must be a string")
            if kind == "int" and not isinstance(default, int):
                raise self.err("params", name, f"int parameter '{name}' has non-integer default {default}")
            if kind == "int" and not INT_PARAM_RANGE[0] <= default <= INT_PARAM_RANGE[1]:
                raise self.err("params", name, f"int parameter '{name}': default out of the int64 range")
            if kind == "float" and not math.isfinite(float(default)):
                raise self.err("params", name, f"float parameter '{name}': default must be finite")
            out[name] = ParamDecl(name, kind, default if kind == "int" else float(default), doc)
        return out

    def check_name(self, section: str, name: str, kind: str) -> None:
        problem = N.name_problem(name, kind if kind == "parameter" else "capture")
        if problem:
            raise self.err(section, name, problem)

    def captures(self, params: dict[str, ParamDecl]) -> dict[str, CaptureDecl]:
        out: dict[str, CaptureDecl] = {}
        table = self.table("captures")
        if len(table) > MAX_NAMES:
            raise self.err("", "captures", f"at most {MAX_NAMES} captured tensors")
        for name, decl in table.items():
            self.check_name("captures", name, "capture")
            if name in params:
                raise self.err("captures", name, f"capture name '{name}' is also a parameter")
            if not isinstance(decl, dict) or "dims" not in decl:
                raise self.err("captures", name, "a capture is a table {dims = \"...\", dtype = \"...\"}")
            dims_text, dtype, doc = decl["dims"], decl.get("dtype", "float32"), decl.get("doc", "")
            if not all(isinstance(x, str) for x in (dims_text, dtype, doc)):
                raise self.err("captures", name, "a capture's dims, dtype and doc are strings")
            dims = tuple(dims_text.split())
            if not dims or len(dims) > MAX_CAPTURE_DIMS:
                raise self.err("captures", name, f"a capture has 1 to {MAX_CAPTURE_DIMS} dimensions")
            if not all(N.NAME_RE.fullmatch(d) for d in dims):
                raise self.err("captures", name, "capture dimensions are names like 'h r'")
            if dtype not in CAPTURE_DTYPES:
                raise self.err("captures", name, f"unsupported dtype {dtype!r:.40} ({', '.join(CAPTURE_DTYPES)})")
            out[name] = CaptureDecl(name, dims, dtype, doc)
        clash = N.collisions(list(params), [(c.name, c.ndim) for c in out.values()])
        if clash:
            section = "captures" if clash[0] in out else "params"
            raise self.err(section, clash[0], f"name '{clash[0]}' would define '{clash[1]}', "
                           "which the generated code already uses")
        return out

    def names(self, params: dict[str, ParamDecl]) -> dict[str, sp.Basic]:
        names: dict[str, sp.Basic] = {**E.INDEX_SYMBOLS, **E.SIZE_SYMBOLS, "scale": E.scale}
        names.update({p.name: p.symbol for p in params.values()})
        return names

    def expr(self, key: str, text: Any, names: dict[str, sp.Basic], tensors: dict[str, int]) -> sp.Basic:
        if not isinstance(text, str):
            raise self.err("cascade", key, f"'{key}' must be an expression string")
        ints = frozenset(c.name for c in self.captures_ if c.dtype.startswith("int"))
        return parse_expression(text, Scope(names, tensors, ints), self.loc.find("cascade", key))

    def einsum_terms(self, key: str, text: Any) -> list[ast.expr]:
        loc = self.loc.find("cascade", key)
        if not isinstance(text, str):
            raise self.err("cascade", key, f"'{key}' must be an einsum string")
        tree = parse_tree(text, loc).body
        terms: list[ast.expr] = []

        def flatten(node: ast.expr) -> None:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                flatten(node.left)
                flatten(node.right)
            else:
                terms.append(node)

        flatten(tree)
        return terms

    def access(self, key: str, node: ast.expr) -> tuple[str, tuple[str, ...]]:
        loc = self.loc.find("cascade", key)
        if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)):
            raise SpecError(f"expected a tensor access like q[b,h,m,d], got '{ast.unparse(node)}'", loc.at(node))
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        idx = []
        for e in elts:
            if not isinstance(e, ast.Name):
                raise SpecError(f"einsum subscripts are plain indices, got '{ast.unparse(e)}'", loc.at(e))
            if e.id not in KNOWN_INDICES:
                raise SpecError(f"unknown index '{e.id}' (indices: {' '.join(KNOWN_INDICES)})", loc.at(e))
            idx.append(e.id)
        return node.value.id, tuple(idx)

    def check_access(self, key: str, node: ast.expr, name: str, idx: tuple[str, ...]) -> None:
        declared = tuple(str(self.table("inputs")[name]).split())
        if idx != declared:
            raise SpecError(f"'{name}' is declared [{','.join(declared)}] but indexed [{','.join(idx)}]",
                            self.loc.find("cascade", key).at(node))

    def score_einsum(self, text: Any) -> bool:
        """Validate ``q[b,h,m,d] * k[b,hk,n,d] [* scale]``; return whether it is scaled."""
        terms = self.einsum_terms("score", text)
        loc = self.loc.find("cascade", "score")
        tensors = [t for t in terms if isinstance(t, ast.Subscript)]
        scalars = [t for t in terms if not isinstance(t, ast.Subscript)]
        if [self.access("score", t)[0] for t in tensors] != ["q", "k"]:
            raise SpecError("the score einsum must be q[...] * k[...] (optionally * scale)", loc.at(None))
        for t in tensors:
            name, idx = self.access("score", t)
            self.check_access("score", t, name, idx)
        for s in scalars:
            if not (isinstance(s, ast.Name) and s.id == "scale"):
                raise SpecError(f"only 'scale' may multiply the score einsum, got '{ast.unparse(s)}'", loc.at(s))
        return bool(scalars)

    def output_einsum(self, text: Any) -> None:
        """Validate ``p[b,h,m,n] * v[b,hk,n,e]``."""
        terms = self.einsum_terms("output", text)
        loc = self.loc.find("cascade", "output")
        accesses = [self.access("output", t) for t in terms]
        if [a[0] for a in accesses] != ["p", "v"]:
            raise SpecError("the output einsum must be p[b,h,m,n] * v[...]", loc.at(None))
        if accesses[0][1] != ("b", "h", "m", "n"):
            raise SpecError(f"'p' is indexed [b,h,m,n], got [{','.join(accesses[0][1])}]", loc.at(terms[0]))
        self.check_access("output", terms[1], "v", accesses[1][1])

    def check_used(self, captures: dict[str, CaptureDecl], modify: sp.Basic, mask: sp.Basic) -> None:
        used = {ld.tensor_name for ld in E.loads(modify) + E.loads(mask)}
        for name in captures:
            if name not in used:
                raise self.err("captures", name, f"capture '{name}' is declared but never used")
