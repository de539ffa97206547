"""Render the ``prefill`` schedule: lowered IR -> one readable Triton module.

The templates (``templates/prefill_fwd.py.tmpl``, ``templates/prefill_bwd.py.tmpl``) hold the
fixed FA2-style kernels; this module prints their hooks from the :class:`Lowered` IR only: the
score modification, mask predicate and key/value head map read from IR nodes, the softmax update
and epilogue from the rule tables on the ``online_softmax`` node, and each kernel's tile loops
from its iteration plan.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

import sympy as sp

from attncc.codegen.launch_text import launch_source
from attncc.codegen.literals import doc_text, py_literal
from attncc.codegen.plans import Loop, emit_plan, plan_params
from attncc.codegen.printer import HELPERS, TritonPrinter, tile_shaped
from attncc.codegen.rules import print_rules
from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.ir.variant import Variant
from attncc.passes.lowered import Lowered
from attncc.passes.mask_analysis import m_first, m_last, n_first, n_last
from attncc.schedules.prefill.backward import backward_hooks as _backward_hooks
from attncc.version import __version__

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATES = ("prefill_fwd", "prefill_bwd")

# Rule names -> kernel variables (the softmax state lives in m_i, l_i, acc).
STATE_NAMES = {"m": "m_i", "l": "l_i", "O": "o", "LSE": "lse"}
UPDATE_RANKS = {"m": "row", "l": "row", "acc": "wide", "s": "tile", "v": "kv"}
FINALIZE_RANKS = {"m": "row", "l": "row", "acc": "wide"}
# The value tile is loaded right before the first rule entry that reads it.
V_LOAD = ["v = tl.load(V_base + offs_n[:, None] * stride_vn + offs_e[None, :],",
          "            mask=n_ok[:, None] & (offs_e[None, :] < HEAD_E), other=0.0)  # [BLOCK_N, BLOCK_E]"]


def template_text(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.py.tmpl").read_text()


def template_source() -> str:
    """The schedule's templates (forward + backward), the text the hooks are filled into."""
    return "".join(template_text(t) for t in TEMPLATES)


def module_text() -> str:
    """All text the module is made from (templates and the emitted host launch layer), for cache keys."""
    return template_source() + launch_source()


class _Context:
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


def _load_helper(name: str, ndim: int) -> str:
    idx = [f"i{i}" for i in range(ndim)]
    params = ", ".join(["ptr", *[f"stride{i}" for i in range(ndim)], *[f"size{i}" for i in range(ndim)], *idx])
    ok = " & ".join(f"({i} >= 0) & ({i} < size{k})" for k, i in enumerate(idx))
    off = " + ".join(f"tl.minimum(tl.maximum({i}, 0), size{k} - 1) * stride{k}" for k, i in enumerate(idx))
    return (f"@triton.jit\ndef _load_{name}({params}):\n"
            f'    """{name}[{", ".join(idx)}]; indices outside the tensor read 0 (loads are clamped in range)."""\n'
            f"    ok = {ok}\n    x = tl.load(ptr + {off})\n    return tl.where(ok, x, 0)\n")


def _header(low: Lowered, source_key: str) -> str:
    """The module docstring; every text in it is printed by :func:`doc_text` (it cannot end the string)."""
    v = low.variant
    passes = "\n".join(f"  {r.name}: {r.note}" for r in low.records)
    text = (f"attncc kernel for spec {v.name!r} (schedule: {low.schedule.name}).\n\n"
            f"{v.description}\n\n"
            f"score  = q . k{' * scale' if v.scaled else ''}\n"
            f"modify = {low.modify}\nmask   = {low.mask}\nkv head = {low.kv_head}\n"
            f"mask analysis: {low.mask_keys.note}\n\nPasses:\n{passes}\n\n"
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


def check_names(variant: Variant) -> None:
    """Param and capture names become parts of Python identifiers: refuse any that is not one."""
    for kind, decls in (("param", variant.params), ("captured tensor", variant.captures)):
        for decl in decls:
            name = decl.name
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise SpecError(f"{kind} name {name!r} is not a Python identifier", variant.source)


def _softmax_hooks(low: Lowered) -> dict[str, str]:
    """The tile update and the epilogue, printed from the online-softmax node's rule tables."""
    rules = low.softmax
    update, _ = print_rules(rules.update, UPDATE_RANKS, names=STATE_NAMES, before_use={"v": V_LOAD})
    final, _ = print_rules(rules.finalize, FINALIZE_RANKS, names=STATE_NAMES)
    return {"SOFTMAX_UPDATE": "\n".join(update), "SOFTMAX_FINALIZE": "\n".join(final)}


def _table_ints(low: Lowered) -> list[str]:
    """Block-table strides and widths change with the mask and the lengths: never specialised."""
    if not any(plan_params(p) for p in low.plans.values()):
        return []
    return ["tbl_num_sb", "tbl_num_sh", "tbl_idx_sb", "tbl_idx_sh", "tbl_cols"]


def _helper_source(names: set[str], variant: Variant) -> str:
    out = []
    for name in sorted(names):
        if name.startswith("_load_"):
            cap = variant.capture(name[len("_load_"):])
            out.append(_load_helper(cap.name, cap.ndim))
        else:
            out.append(HELPERS[name])
    return "\n\n".join(out) if out else "# (no helpers needed)"


def render(low: Lowered, source_key: str) -> str:
    """Source text of the standalone module of the lowered IR ``low``."""
    variant = low.variant
    check_names(variant)
    ctx = _Context(variant)
    tile_pr = ctx.printer(tile=True)
    bound_pr = ctx.printer(tile=False)
    identity = low.modify == E.score
    call_args = f"off_b, off_h, offs_m, offs_n, {ctx.hooks}"
    tile_call = ("acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K_base, V_base, n0, offs_m, offs_d, offs_e, "
                 f"off_b, off_h, stride_kn, stride_vn, {ctx.all}, HEAD_D, HEAD_E, BLOCK_N, {{masked}}, DOT_PRECISION)")
    hooks = {
        "HEADER": _header(low, source_key),
        "MOD_ARGS": f"s, {call_args}",
        "MOD_EXPR": tile_pr.doprint(low.modify),
        "APPLY_MOD": "# identity score modification" if identity else f"s = {tile_shaped('score_mod', low.modify, call_args)}",
        "MASK_ARGS": call_args,
        "MASK_EXPR": tile_pr.doprint(low.mask),
        "MASK_CALL": call_args,
        "KV_HEAD": bound_pr.doprint(low.kv_head),
        "CTX": "".join(f" {x}," for x in ctx.extra),
        "CTX_ALL": ctx.all,
        "SEGMENTS": emit_plan(low.plan("attn_fwd"), bound_pr, Loop(tile_call, "n0", "BLOCK_N", "log_row")),
        "DEFAULT_CONFIGS": py_literal({k: dict(v) for k, v in low.schedule.default_configs.items()}),
        "CAPTURE_LIST": py_literal([(c.name, c.ndim) for c in variant.captures]),
        "PARAM_DEFAULTS": py_literal({p.name: p.default for p in variant.params}),
        "GQA": py_literal(bool(low.is_gqa)),
        "BLOCK_TABLES": py_literal(bool(_table_ints(low))),
        "PLAN_PARAMS_FWD": plan_params(low.plan("attn_fwd")),
        "PLAN_PARAMS_DQ": plan_params(low.plan("attn_bwd_dq")),
        "PLAN_PARAMS_DKDV": plan_params(low.plan("attn_bwd_dkdv")),
        "LAUNCH": launch_source(),
        "NO_SPECIALIZE": py_literal(["B", "H", "HK", "M", "N", *ctx.scalar_ints, *_table_ints(low)]),
        **_softmax_hooks(low),
    }
    bwd = _backward_hooks(low, ctx, tile_pr, bound_pr, call_args)
    helpers = tile_pr.helpers | bound_pr.helpers | bwd.pop("_helpers")
    hooks.update(bwd)
    hooks["HELPERS"] = _helper_source(helpers, variant)
    hooks["DMOD_DOC"] = doc_text(bwd["DMOD_DOC"])
    return fill_hooks(template_source(), hooks)
