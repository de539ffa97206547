"""Render the ``prefill`` schedule: lowered IR -> one readable Triton module.

The template (``templates/prefill_fwd.py.tmpl``) holds the fixed FA2-style
online-softmax forward; this module prints the hooks: the score modification,
the mask predicate, the key/value head map, and one block of tile loops per
key segment derived by the mask analysis.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

import networkx as nx
import sympy as sp

from attncc.schedules.prefill.backward import backward_hooks as _backward_hooks
from attncc.codegen.launch_text import launch_source
from attncc.codegen.literals import doc_text, py_literal
from attncc.codegen.loops import segments_code as _segments
from attncc.codegen.loops import tile_shaped
from attncc.codegen.printer import HELPERS, TritonPrinter
from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.passes.mask_analysis import MaskAnalysis, m_first, m_last, n_first, n_last
from attncc.spec.model import Spec
from attncc.version import __version__

TEMPLATE_DIR = Path(__file__).parent / "templates"

# Kernel kind -> head dim bound -> default config.  Chosen from an ahead-of-time sweep so that
# head dims 64 and 128 (fp16, bf16) have zero spills on sm_90 for every spec tested by
# tests/codegen/test_aot_specs.py; 256 is a conservative guess (not part of that guarantee).
DEFAULT_CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {
        64: {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
        128: {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 3},
        256: {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
    },
    "bwd": {
        64: {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1},
        128: {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8, "num_stages": 1},
        256: {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1},
    },
}


def template_text(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.py.tmpl").read_text()


def schedule_templates(name: str) -> str:
    """All template text a schedule renders (forward + backward), for cache keys."""
    return template_text(name) + template_text("prefill_bwd") + launch_source()


class _Context:
    """Kernel-side names of everything an expression may reference."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.extra: list[str] = []
        for cap in spec.captures.values():
            self.extra += [f"{cap.name}_ptr"]
            self.extra += [f"{cap.name}_stride{i}" for i in range(cap.ndim)]
            self.extra += [f"{cap.name}_size{i}" for i in range(cap.ndim)]
        self.extra += [f"p_{p.name}" for p in spec.params.values()]
        # Scalars Triton must not turn into constants when they equal 1 (lengths, params, capture sizes).
        self.scalar_ints = [f"p_{p.name}" for p in spec.params.values() if p.kind == "int"]
        self.scalar_ints += [f"{c.name}_size{i}" for c in spec.captures.values() for i in range(c.ndim)]
        self.all = ", ".join(["sm_scale", "B", "H", "HK", "M", "N", *self.extra])
        self.hooks = f"{self.all}, HEAD_D, HEAD_E"  # what score_mod / mask_mod receive
        base: dict[sp.Symbol, str] = {E.b: "off_b", E.h: "off_h", E.scale: "sm_scale"}
        base.update({sym: name for name, sym in E.SIZE_SYMBOLS.items() if name not in ("D", "E")})
        base[E.SIZE_SYMBOLS["D"]] = "HEAD_D"
        base[E.SIZE_SYMBOLS["E"]] = "HEAD_E"
        base.update({p.symbol: f"p_{p.name}" for p in spec.params.values()})
        self.base = base

    def printer(self, tile: bool) -> TritonPrinter:
        names = dict(self.base)
        if tile:
            names.update({E.m: "offs_m[:, None]", E.n: "offs_n[None, :]", E.score: "s"})
        else:
            names.update({m_first: "m_first", m_last: "m_last", n_first: "n_first", n_last: "n_last"})
        return TritonPrinter(names, self.print_load)

    def print_load(self, ld: E.Load, pr: TritonPrinter) -> str:
        cap = self.spec.captures[ld.tensor_name]
        pr.helpers.add(f"_load_{cap.name}")
        args = [f"{cap.name}_ptr"]
        args += [f"{cap.name}_stride{i}" for i in range(cap.ndim)]
        args += [f"{cap.name}_size{i}" for i in range(cap.ndim)]
        args += [pr.p(i) for i in ld.indices]
        call = f"_load_{cap.name}({', '.join(args)})"
        return call if cap.dtype.startswith("int") or cap.dtype == "bool" else f"{call}.to(tl.float32)"


def _load_helper(name: str, ndim: int) -> str:
    idx = [f"i{i}" for i in range(ndim)]
    params = ", ".join(["ptr", *[f"stride{i}" for i in range(ndim)], *[f"size{i}" for i in range(ndim)], *idx])
    ok = " & ".join(f"({i} >= 0) & ({i} < size{k})" for k, i in enumerate(idx))
    off = " + ".join(f"tl.minimum(tl.maximum({i}, 0), size{k} - 1) * stride{k}" for k, i in enumerate(idx))
    return (f"@triton.jit\ndef _load_{name}({params}):\n"
            f'    """{name}[{", ".join(idx)}]; indices outside the tensor read 0 (loads are clamped in range)."""\n'
            f"    ok = {ok}\n    x = tl.load(ptr + {off})\n    return tl.where(ok, x, 0)\n")


def _header(g: nx.DiGraph, source_key: str) -> str:
    """The module docstring; every text in it is printed by :func:`doc_text` (it cannot end the string)."""
    spec: Spec = g.graph["spec"]
    mask: MaskAnalysis = g.graph["mask"]
    passes = "\n".join(f"  {r.name}: {r.note}" for r in g.graph["applied"])
    text = (f"attncc kernel for spec {spec.name!r} (schedule: {g.graph['schedule'].name}).\n\n"
            f"{spec.description}\n\n"
            f"score  = q . k{' * scale' if spec.scaled else ''}\n"
            f"modify = {spec.modify}\nmask   = {spec.mask}\nkv head = {spec.kv_head}\n"
            f"mask analysis: {mask.note}\n\nPasses:\n{passes}\n\n"
            f"Generated by attncc {__version__} (source key {source_key}).  Needs only torch and triton.\n"
            "Entry point: attention_forward(q, k, v, *, scale=None, config=None, captures=None, **params).\n")
    return f'"""{doc_text(text)}"""'


_HOOK = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


def fill_hooks(template: str, hooks: dict[str, str]) -> str:
    """Replace each ``{{NAME}}`` of ``template`` by ``hooks[NAME]`` in one pass (values are never re-scanned)."""
    missing = sorted({m.group(1) for m in _HOOK.finditer(template)} - set(hooks))
    if missing or "{{" in _HOOK.sub("", template):
        raise ValueError(f"unfilled hook(s) in template: {missing or 'malformed {{'}")
    return _HOOK.sub(lambda m: hooks[m.group(1)], template)


def check_names(spec: Spec) -> None:
    """Param and capture names become parts of Python identifiers: refuse any that is not one."""
    for kind, names in (("param", spec.params), ("captured tensor", spec.captures)):
        for name in names:
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise SpecError(f"{kind} name {name!r} is not a Python identifier", spec.source)


def render(g: nx.DiGraph, source_key: str) -> str:
    """Source text of the standalone module for the lowered cascade ``g``."""
    spec: Spec = g.graph["spec"]
    check_names(spec)
    ctx = _Context(spec)
    tile_pr = ctx.printer(tile=True)
    bound_pr = ctx.printer(tile=False)
    mod_expr = tile_pr.doprint(spec.modify)
    mask_expr = tile_pr.doprint(spec.mask)
    identity = spec.modify == E.score
    call_args = f"off_b, off_h, offs_m, offs_n, {ctx.hooks}"
    tile_call = ("acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K_base, V_base, n0, offs_m, offs_d, offs_e, "
                 f"off_b, off_h, stride_kn, stride_vn, {ctx.all}, HEAD_D, HEAD_E, BLOCK_N, {{masked}}, DOT_PRECISION)")
    seg_code = _segments(g.graph["mask"], bound_pr, tile_call)
    kv_head = bound_pr.doprint(spec.kv_head)
    bwd = _backward_hooks(g, ctx, tile_pr, call_args)
    helpers = sorted(tile_pr.helpers | bound_pr.helpers | bwd.pop("_helpers"))
    helper_src = []
    for name in helpers:
        if name.startswith("_load_"):
            cap = spec.captures[name[len("_load_"):]]
            helper_src.append(_load_helper(cap.name, cap.ndim))
        else:
            helper_src.append(HELPERS[name])
    gqa = ("    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:\n        raise ValueError(f\"GQA needs H ({q.shape[1]}) divisible by HK ({k.shape[1]})\")"
           if spec.is_gqa else
           "    if q.shape[1] != k.shape[1]:\n        raise ValueError(f\"q has {q.shape[1]} heads but k/v have {k.shape[1]}; "
           "this spec has no grouped-query head map\")")
    hooks = {
        "HEADER": _header(g, source_key),
        "HELPERS": "\n\n".join(helper_src) if helper_src else "# (no helpers needed)",
        "MOD_ARGS": f"s, {call_args}",
        "MOD_EXPR": mod_expr,
        "APPLY_MOD": "# identity score modification" if identity else f"s = {tile_shaped('score_mod', spec.modify, call_args)}",
        "MASK_ARGS": call_args,
        "MASK_EXPR": mask_expr,
        "MASK_CALL": call_args,
        "KV_HEAD": kv_head,
        "CTX": "".join(f" {x}," for x in ctx.extra),
        "CTX_ALL": ctx.all,
        "SEGMENTS": seg_code,
        "DEFAULT_CONFIGS": py_literal(DEFAULT_CONFIGS),
        "CAPTURE_LIST": py_literal([(c.name, c.ndim) for c in spec.captures.values()]),
        "PARAM_DEFAULTS": py_literal({p.name: p.default for p in spec.params.values()}),
        "GQA_CHECK": gqa,
        "GQA": py_literal(bool(spec.is_gqa)),
        "LAUNCH": launch_source(),
        "NO_SPECIALIZE": py_literal(["B", "H", "HK", "M", "N", *ctx.scalar_ints]),
    }
    hooks.update(bwd)
    hooks["DMOD_DOC"] = doc_text(bwd["DMOD_DOC"])
    return fill_hooks(template_text(g.graph["schedule"].template) + template_text("prefill_bwd"), hooks)
