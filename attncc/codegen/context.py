"""What every schedule's renderer shares: kernel-side names of an expression's symbols, the
captured-tensor load helpers, identifier checks and hook filling."""

from __future__ import annotations

import keyword
import re

import sympy as sp

from attncc.codegen.literals import doc_text, py_literal
from attncc.codegen.printer import HELPERS, TritonPrinter, tile_shaped
from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.ir.variant import Variant
from attncc.passes.lowered import Lowered
from attncc.passes.mask_analysis import m_first, m_last, n_first, n_last


class Context:
    """Kernel-side names of everything an expression may reference."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.extra: list[str] = []
        for cap in variant.captures:
            self.extra += [f"{cap.name}_ptr"]
            self.extra += [f"{cap.name}_stride{i}" for i in range(cap.ndim)]
            self.extra += [f"{cap.name}_size{i}" for i in range(cap.ndim)]
        self.extra += [f"p_{p.name}" for p in variant.params]
        # Scalars Triton must not specialise (on == 1 or on divisibility by 16), since they change with
        # the lengths: int params, capture sizes and a capture's outer strides (a contiguous capture's
        # last stride is 1 and stays specialised).
        self.scalar_ints = [f"p_{p.name}" for p in variant.params if p.kind == "int"]
        self.scalar_ints += [f"{c.name}_size{i}" for c in variant.captures for i in range(c.ndim)]
        self.scalar_ints += [f"{c.name}_stride{i}" for c in variant.captures for i in range(c.ndim - 1)]
        self.all = ", ".join(["sm_scale", "B", "H", "HK", "M", "N", *self.extra])
        self.hooks = f"{self.all}, HEAD_D, HEAD_E"  # what score_mod / mask_mod receive
        base: dict[sp.Symbol, str] = {E.b: "off_b", E.h: "off_h", E.scale: "sm_scale"}
        base.update({sym: name for name, sym in E.SIZE_SYMBOLS.items() if name not in ("D", "E")})
        base[E.SIZE_SYMBOLS["D"]] = "HEAD_D"
        base[E.SIZE_SYMBOLS["E"]] = "HEAD_E"
        base.update({p.symbol: f"p_{p.name}" for p in variant.params})
        self.base = base

    def printer(self, tile: bool) -> TritonPrinter:
        names = dict(self.base)
        if tile:
            names.update({E.m: "offs_m[:, None]", E.n: "offs_n[None, :]", E.score: "s"})
        else:
            names.update({m_first: "m_first", m_last: "m_last", n_first: "n_first", n_last: "n_last"})
        return TritonPrinter(names, self.print_load)

    def print_load(self, ld: E.Load, pr: TritonPrinter) -> str:
        cap = self.variant.capture(ld.tensor_name)
        pr.helpers.add(f"_load_{cap.name}")
        args = [f"{cap.name}_ptr"]
        args += [f"{cap.name}_stride{i}" for i in range(cap.ndim)]
        args += [f"{cap.name}_size{i}" for i in range(cap.ndim)]
        args += [pr.p(i) for i in ld.indices]
        call = f"_load_{cap.name}({', '.join(args)})"
        return call if cap.dtype.startswith("int") or cap.dtype == "bool" else f"{call}.to(tl.float32)"


def load_helper(name: str, ndim: int) -> str:
    idx = [f"i{i}" for i in range(ndim)]
    params = ", ".join(["ptr", *[f"stride{i}" for i in range(ndim)], *[f"size{i}" for i in range(ndim)], *idx])
    ok = " & ".join(f"({i} >= 0) & ({i} < size{k})" for k, i in enumerate(idx))
    off = " + ".join(f"tl.minimum(tl.maximum({i}, 0), size{k} - 1) * stride{k}" for k, i in enumerate(idx))
    return (f"@triton.jit\ndef _load_{name}({params}):\n"
            f'    """{name}[{", ".join(idx)}]; indices outside the tensor read 0 (loads are clamped in range)."""\n'
            f"    ok = {ok}\n    x = tl.load(ptr + {off})\n    return tl.where(ok, x, 0)\n")




def helper_source(names: set[str], variant: Variant) -> str:
    """The ``@triton.jit`` helpers a printed expression called (``_load_<capture>`` or :data:`HELPERS`)."""
    out = []
    for name in sorted(names):
        if name.startswith("_load_"):
            cap = variant.capture(name[len("_load_"):])
            out.append(load_helper(cap.name, cap.ndim))
        else:
            out.append(HELPERS[name])
    return "\n\n".join(out) if out else "# (no helpers needed)"


_HOOK = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


def fill_hooks(template: str, hooks: dict[str, str]) -> str:
    """Replace each ``{{NAME}}`` of ``template`` by ``hooks[NAME]`` in one pass (values are never re-scanned)."""
    missing = sorted({m.group(1) for m in _HOOK.finditer(template)} - set(hooks))
    if missing or "{{" in _HOOK.sub("", template):
        raise ValueError(f"unfilled hook(s) in template: {missing or 'malformed {{'}")
    return _HOOK.sub(lambda m: hooks[m.group(1)], template)


def check_names(variant: Variant) -> None:
    """Param and capture names become parts of Python identifiers: refuse any that is not one."""
    for kind, decls in (("param", variant.params), ("captured tensor", variant.captures)):
        for decl in decls:
            name = decl.name
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise SpecError(f"{kind} name {name!r} is not a Python identifier", variant.source)




def spec_hooks(low: Lowered, ctx: Context, tile_pr: TritonPrinter) -> dict[str, str]:
    """The hooks every schedule's template shares: the score modification and mask functions
    (``score_mod``/``mask_mod`` called with ``off_b, off_h, offs_m, offs_n`` and the context), the
    context arguments, and the module constants (default configs, captures, params, GQA)."""
    call_args = f"off_b, off_h, offs_m, offs_n, {ctx.hooks}"
    identity = low.modify == E.score
    return {
        "MOD_ARGS": f"s, {call_args}",
        "MOD_EXPR": tile_pr.doprint(low.modify),
        "APPLY_MOD": "# identity score modification" if identity else f"s = {tile_shaped('score_mod', low.modify, call_args)}",
        "MASK_ARGS": call_args,
        "MASK_EXPR": tile_pr.doprint(low.mask),
        "MASK_CALL": call_args,
        "CTX": "".join(f" {x}," for x in ctx.extra),
        "CTX_ALL": ctx.all,
        "DEFAULT_CONFIGS": py_literal({k: dict(v) for k, v in low.schedule.default_configs.items()}),
        "CAPTURE_LIST": py_literal([(c.name, c.ndim) for c in ctx.variant.captures]),
        "PARAM_DEFAULTS": py_literal({p.name: p.default for p in ctx.variant.params}),
        "GQA": py_literal(bool(low.is_gqa)),
    }


def _no_load(ld: E.Load, pr: TritonPrinter) -> str:
    raise ValueError(f"a feature map reads no tensor (got {ld.tensor_name})")


def feature_hooks(feature: sp.Expr, feature_grad: sp.Expr, x: sp.Symbol) -> dict[str, str]:
    """``{{FEATURE}}`` of the recurrence templates: ``feature(x)`` (phi) and ``feature_grad(x)``
    (phi'), printed from the IR's feature map and its symbolic derivative; each returns a tensor
    shaped like ``x`` (a constant is broadcast)."""
    pr = TritonPrinter({x: "x"}, _no_load)

    def body(expr: sp.Expr) -> str:
        text = pr.doprint(expr)
        return text if x in expr.free_symbols else f"{text} + tl.zeros_like(x)"

    return {"FEATURE": "\n".join([
        "@triton.jit",
        "def feature(x):",
        f'    """phi(x) = {doc_text(str(feature))}"""',
        f"    return {body(feature)}",
        "",
        "",
        "@triton.jit",
        "def feature_grad(x):",
        f'    """d phi / d x = {doc_text(str(feature_grad))}"""',
        f"    return {body(feature_grad)}",
        "",
    ])}
