"""Hooks of the backward kernels: symbolic score derivatives and captured-tensor gradients.

The dQ kernel works on score tiles [BLOCK_M, BLOCK_N], the dK/dV kernel on their transposes
[BLOCK_N, BLOCK_M] (its accumulators' rows are keys); the score, mask and derivative hooks are
printed once per orientation.  Probabilities are recomputed in base 2: with the identity
modification the scale and log2(e) fold into one multiply of the raw dot product; otherwise the
modified score is multiplied by log2(e).

``d modify / d score`` chains dS through the score modification; for every load
``c[i(b,h,m,n)]`` of a float captured tensor in the modification,
``d modify / d c[i]`` times dS is the gradient contribution at ``(b,h,m,n)``.
Loads whose indices do not involve ``n`` are summed over ``n`` inside the dQ
kernel ("row" loads); the others are written per element ("full" loads).  The
launcher then scatters them into the tensor's shape with a deterministic
sort-based segment sum.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from attncc.codegen.literals import comment_text, doc_text, py_literal
from attncc.codegen.plans import Loop, emit_plan
from attncc.codegen.printer import TorchPrinter, TritonPrinter, tile_shaped
from attncc.ir import expr as E
from attncc.ir.variant import Variant
from attncc.passes.lowered import Lowered


def _index_lambda(ld: E.Load, variant: Variant) -> str:
    names = {E.b: 'env["b"]', E.h: 'env["h"]', E.m: 'env["m"]', E.n: 'env["n"]', E.scale: 'env["scale"]'}
    names.update({sym: f'env["{k}"]' for k, sym in E.SIZE_SYMBOLS.items()})
    names.update({p.symbol: f'env["{p.name}"]' for p in variant.params})
    pr = TorchPrinter(names, _host_load)
    return "[" + ", ".join(f"lambda env: {pr.doprint(i)}" for i in ld.indices) + "]"


def _host_load(ld: E.Load, pr: TorchPrinter) -> str:
    """A load inside an index (``bias[dist[b, m, n]]``): read on the host, as the kernel reads it."""
    idx = ", ".join(pr.p(i) for i in ld.indices)
    return f'_host_load(env["_captures"][{py_literal(ld.tensor_name)}], [{idx}])'


LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E)


def transposed_printer(ctx: Any) -> TritonPrinter:
    """The tile printer of a transposed score tile: queries along columns, keys along rows."""
    return TritonPrinter({**ctx.base, E.m: "offs_m[None, :]", E.n: "offs_n[:, None]", E.score: "s"}, ctx.print_load)


def score_lines(low: Lowered, mod_fn: str, call_args: str) -> str:
    """Kernel lines from the raw dot product ``qk`` to ``s`` (the scaled score, the input of the
    modification and of its derivatives) and ``sm`` (the modified score times log2(e))."""
    if low.modify == E.score:
        return ("    s = qk  # (the identity modification's derivatives read no score)\n"
                f"    sm = qk * (sm_scale * {LOG2E!r})  # scale and log2(e) folded into one multiply")
    return ("    s = qk * sm_scale\n"
            f"    sm = ({tile_shaped(mod_fn, low.modify, call_args)}) * {LOG2E!r}")


def _head_loop(kv_head: sp.Expr) -> tuple[str, str, bool]:
    """(first head, end head, needs a per-head check) of the query heads of key/value head off_hk."""
    H, HK = E.SIZE_SYMBOLS["H"], E.SIZE_SYMBOLS["HK"]
    if kv_head == E.h:
        return "off_hk", "off_hk + 1", False
    if E.cheap_simplify(kv_head - sp.floor(E.h / sp.floor(H / HK))) == 0:
        return "off_hk * (H // HK)", "(off_hk + 1) * (H // HK)", False
    return "0", "H", True


def backward_hooks(low: Lowered, ctx: Any, tile_pr: TritonPrinter, bound_pr: TritonPrinter,
                   call_args: str) -> dict[str, Any]:
    """Hooks of ``prefill_bwd``; the score derivative is the ``score_gradient`` pass's (``low.dscore``)."""
    identity = low.modify == E.score
    dmod = low.dscore
    t_pr = transposed_printer(ctx)
    loads = [ld for ld, _ in low.dloads]
    kinds = ["full" if E.n in sp.Add(*ld.indices).free_symbols else "row" for ld in loads]
    slots, counts = [], {"row": 0, "full": 0}
    for kind in kinds:
        slots.append(counts[kind])
        counts[kind] += 1
    dload_fns, cg_code, cg_init, cg_store, cg_params = [], [], [], [], ""
    for j, ((ld, dload), kind, slot) in enumerate(zip(low.dloads, kinds, slots, strict=True)):
        deriv = tile_pr.doprint(dload)
        dload_fns.append(f'@triton.jit\ndef dload_{j}({"s, " + call_args}):\n'
                         f'    """d score_mod / d {doc_text(str(ld))} (the {kind} gradient term of {ld.tensor_name})."""\n'
                         f"    return {deriv}\n")
        term = f"tl.where(p > 0.0, ds * dload_{j}(s, {call_args}), 0.0)"
        if kind == "row":
            cg_params += f", cg{j}"
            cg_init.append(f"    cg{j} = tl.zeros([BLOCK_M], tl.float32)  # sum over n of dS * d/d {comment_text(str(ld))}")
            cg_code.append(f"        cg{j} += tl.sum({term}, 1)")
            cg_store.append(f"    tl.store(CG_row + (({slot} * B + off_b) * H + off_h) * M + offs_m, cg{j}, mask=m_ok)")
        else:
            cg_code.append(f"        if WRITE_FULL:  # dS * d/d {comment_text(str(ld))}, per element\n"
                           f"            tl.store(CG_full + (({slot} * B + off_b) * H + off_h) * M * N + offs_m[:, None] * N"
                           f" + offs_n[None, :], {term}, mask=m_ok[:, None] & n_ok[None, :])")
    head_lo, head_hi, check = _head_loop(low.kv_head)
    kv_tile = ("dk, dv = _bwd_kv_tile(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, m0, offs_n, n_ok, "
               f"offs_d, offs_e, off_b, off_h, stride_qm, stride_dom, {ctx.all}, HEAD_D, HEAD_E, BLOCK_M, "
               "{masked}, DOT_PRECISION)")
    seg_t = emit_plan(low.plan("attn_bwd_dkdv"), bound_pr,
                      Loop(kv_tile, "m0", "BLOCK_M", "log_row", " " * (12 if check else 8)))
    if check:
        seg_t = f"        if {bound_pr.doprint(low.kv_head)} == off_hk:\n{seg_t}"
    q_tile = (f"dq{cg_params} = _bwd_q_tile(dq{cg_params}, q, do, lse2, delta, K_base, V_base, n0, offs_m, m_ok, "
              f"offs_d, offs_e, off_b, off_h, stride_kn, stride_vn, CG_full, {ctx.all}, HEAD_D, HEAD_E, "
              "BLOCK_N, {masked}, DOT_PRECISION, WRITE_FULL)")
    cap_loads = "[\n" + "".join(
        f'    ({py_literal(ld.tensor_name)}, "{kind}", {slot}, {_index_lambda(ld, low.variant)}),  # {comment_text(str(ld))}\n'
        for ld, kind, slot in zip(loads, kinds, slots, strict=True)) + "]"
    no_dmod = "# identity score modification: dS needs no chain rule"
    hooks = {
        "DMOD_DOC": str(dmod),
        "DMOD_EXPR": tile_pr.doprint(dmod),
        "MOD_EXPR_T": t_pr.doprint(low.modify),
        "MASK_EXPR_T": t_pr.doprint(low.mask),
        "DMOD_EXPR_T": t_pr.doprint(dmod),
        "DLOAD_FNS": "\n\n".join(dload_fns) if dload_fns else "# (no differentiable captured tensors)",
        "SCORES_BWD": score_lines(low, "score_mod", call_args),
        "SCORES_BWD_T": score_lines(low, "score_mod_t", call_args),
        "APPLY_DMOD": no_dmod if identity else
        f"ds = tl.where(p > 0.0, ds * {tile_shaped('dscore_mod', dmod, call_args)}, 0.0)",
        "APPLY_DMOD_T": no_dmod if identity else
        f"ds = tl.where(p > 0.0, ds * {tile_shaped('dscore_mod_t', dmod, call_args)}, 0.0)",
        "HEAD_LO": head_lo,
        "HEAD_HI": head_hi,
        "SEGMENTS_T": seg_t,
        "SEGMENTS_Q": emit_plan(low.plan("attn_bwd_dq"), bound_pr, Loop(q_tile, "n0", "BLOCK_N", "log_row")),
        "CAPTURE_GRADS": "\n".join(cg_code) if cg_code else "        # (no captured-tensor gradients)",
        "CG_PARAMS": cg_params,
        "CG_RETURN": cg_params,
        "CG_INIT": "\n".join(cg_init) if cg_init else "    # (no per-row captured-tensor gradients)",
        "CG_STORE": "\n".join(cg_store) if cg_store else "    # (nothing more to store)",
        "CAPTURE_LOADS": cap_loads,
    }
    return {"_helpers": set(t_pr.helpers), **hooks}
