"""Print the softmax rule tables of the ``online_softmax`` node as Triton statements.

A rule table is an ordered ``{name: sympy expression}``; an entry may use the table's inputs and
the entries before it, by name (a later entry sees a redefined input's new value).  Every value
has a *rank* per query row: ``row`` ([R]), ``tile`` ([R, C]: a key tile's scores), ``wide``
([R, E]: the accumulator) or ``kv`` ([C, E]: a value tile, only as the right operand of ``dot``).
Ranks are inferred from the inputs' ranks; a ``row`` value used where a ``tile`` or ``wide`` value
is computed is broadcast (``x[:, None]``).  Tile reductions: ``rowmax(t)``/``rowsum(t)``
(``tile -> row``) and ``dot(t, v)`` (``tile x kv -> wide``).

The tables on the node are in natural-log units.  :func:`base2_update`, :func:`base2_finalize`
and :func:`base2_merge` derive their base-2 forms (scores and maxima in log2 units, ``exp(x)``
becoming ``2**x``, printed as ``tl.math.exp2``), which the forward kernels print when the
score modification lets the scale and log2(e) fold into one multiply
(:class:`~attncc.passes.lowered.ScoreFold`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sympy as sp

from attncc.codegen.printer import TritonPrinter, tile_shaped
from attncc.ir import expr as E
from attncc.passes.lowered import Lowered, SoftmaxRules

RANKS = ("scalar", "row", "tile", "wide", "kv")
_bcast = sp.Function("_bcast")


class RuleError(ValueError):
    """A rule table that cannot be printed (unknown name, mixed ranks): a bug in a pass."""


def _join(ranks: set[str], where: str) -> str:
    ranks = ranks - {"scalar"}
    if not ranks:
        return "scalar"
    if ranks <= {"row"}:
        return "row"
    wide = ranks - {"row"}
    if len(wide) == 1 and wide != {"kv"}:
        return wide.pop()
    raise RuleError(f"rule entry '{where}' mixes values of ranks {sorted(ranks)}")


def rank_of(expr: sp.Basic, ranks: Mapping[str, str], where: str) -> str:
    """The rank of ``expr`` given the ranks of the names it uses."""
    if isinstance(expr, sp.Symbol):
        if expr.name not in ranks:
            raise RuleError(f"rule entry '{where}' uses {expr.name!r}, which is neither an input nor an earlier entry")
        return ranks[expr.name]
    name = type(expr).__name__
    if name in ("rowmax", "rowsum"):
        if rank_of(expr.args[0], ranks, where) != "tile":
            raise RuleError(f"rule entry '{where}': {name} needs a tile")
        return "row"
    if name == "dot":
        a, b = (rank_of(arg, ranks, where) for arg in expr.args)
        if (a, b) != ("tile", "kv"):
            raise RuleError(f"rule entry '{where}': dot needs (tile, kv), got ({a}, {b})")
        return "wide"
    if not expr.args:
        return "scalar"
    return _join({rank_of(a, ranks, where) for a in expr.args}, where)


def _broadcast(expr: sp.Basic, ctx: str, ranks: Mapping[str, str]) -> sp.Basic:
    """``expr`` with every row-rank name inside a tile/wide context wrapped in ``_bcast``."""
    if isinstance(expr, sp.Symbol):
        return _bcast(expr) if ranks.get(expr.name) == "row" and ctx in ("tile", "wide") else expr
    name = type(expr).__name__
    if name in ("rowmax", "rowsum"):
        return expr.func(_broadcast(expr.args[0], "tile", ranks))
    if name == "dot":
        return expr.func(_broadcast(expr.args[0], "tile", ranks), expr.args[1])
    args = [_broadcast(a, ctx, ranks) for a in expr.args]
    if args == list(expr.args):
        return expr
    try:
        return expr.func(*args, evaluate=False)
    except TypeError:  # e.g. Piecewise's (expr, cond) pairs take no evaluate flag
        return expr.func(*args)


LOG2E = "1.4426950408889634"
LN2 = sp.Float(math.log(2), 17)
# The folded scale of a base-2 update on unscaled scores: scale * log2(e), made positive by the kernel.
QK_SCALE = sp.Symbol("qk_scale", positive=True)


def _exp2(expr: sp.Basic) -> sp.Basic:
    """``expr`` with every ``exp(x)`` written ``2**x`` (for arguments in log2 units)."""
    return expr.replace(sp.exp, lambda a: sp.Pow(2, a, evaluate=False))


def _by_name(expr: sp.Basic, name: str) -> sp.Symbol | None:
    return next((s for s in expr.free_symbols if s.name == name), None)


def _pull_scale(expr: sp.Basic, scale: sp.Symbol, s: sp.Symbol) -> sp.Basic:
    """``expr`` with ``rowmax(scale * s)`` written ``scale * rowmax(s)`` (``scale > 0``)."""
    return expr.replace(lambda x: type(x).__name__ == "rowmax" and x.args[0] == scale * s,
                        lambda x: scale * x.func(s))


def base2_update(rule: Mapping[str, sp.Basic], scale: sp.Symbol | None = None) -> dict[str, sp.Basic]:
    """The base-2 form of an update table: its score tile ``s`` and maxima in log2 units, ``exp``
    -> ``2**``.  With ``scale`` (a positive scalar), the tile ``s`` is the unscaled ``q . k`` and
    its log2 scores are ``scale * s``: ``rowmax(scale * s)`` is printed ``scale * rowmax(s)``
    (true for ``scale > 0``) and ``2**(scale * s - m)`` is one FFMA and one EX2 per score."""
    out: dict[str, sp.Basic] = {}
    for key, expr in rule.items():
        e = _exp2(sp.sympify(expr))
        s = _by_name(e, "s")
        if scale is not None and s is not None:
            e = _pull_scale(e.xreplace({s: scale * s}), scale, s)
        out[key] = e
    return out


def base2_finalize(rule: Mapping[str, sp.Basic]) -> dict[str, sp.Basic]:
    """The finalize table of a base-2 state: ``m`` in log2 units, ``LSE`` still natural (``m * ln 2``)."""
    out: dict[str, sp.Basic] = {}
    for key, expr in rule.items():
        e = sp.sympify(expr)
        m = _by_name(e, "m")
        out[key] = e.xreplace({m: LN2 * m}) if m is not None else e
    return out


def base2_merge(rule: Mapping[str, sp.Basic]) -> dict[str, sp.Basic]:
    """The merge table of two base-2 states (maxima in log2 units): ``exp`` -> ``2**``."""
    return {key: _exp2(sp.sympify(expr)) for key, expr in rule.items()}


class RulePrinter(TritonPrinter):
    """:class:`TritonPrinter` plus the tile reductions and broadcasts of rule tables.

    ``exp(a + b + ...)`` prints as ``tl.math.exp2(a * log2(e) + ...)`` with each broadcast row
    term scaled before it is broadcast (``(m * log2(e))[:, None]``): per element one FFMA and
    one MUFU.EX2, where ``tl.exp`` adds a multiply and range checks (see docs/architecture.md).
    """

    def _print_exp(self, e: sp.Basic) -> str:
        parts = []
        for term in sp.Add.make_args(e.args[0]):
            coeff, rest = term.as_coeff_Mul()
            if type(rest).__name__ == "_bcast":
                parts.append(f"({self.p(coeff * rest.args[0])} * {LOG2E})[:, None]")
            else:
                parts.append(f"{self.p(term)} * {LOG2E}")
        return f"tl.math.exp2({' + '.join(parts)})"

    def _print_Pow(self, e: sp.Pow) -> str:
        if e.base == 2:  # the base-2 tables' 2**x
            return f"tl.math.exp2({self.p(e.exp)})"
        return super()._print_Pow(e)

    def _print_Function(self, e: sp.Basic) -> str:
        name = type(e).__name__
        if name == "_bcast":
            return f"{self.p(e.args[0])}[:, None]"
        if name == "rowmax":
            return f"tl.max({self.p(e.args[0])}, 1)"
        if name == "rowsum":
            return f"tl.sum({self.p(e.args[0])}, 1)"
        if name == "dot":
            b = self.p(e.args[1])
            return f"tl.dot(({self.p(e.args[0])}).to({b}.dtype), {b}, input_precision=DOT_PRECISION)"
        return super()._print_Function(e)


def _no_load(ld: sp.Basic, _pr: TritonPrinter) -> str:
    raise RuleError(f"a softmax rule loads no tensor (found {ld})")


def print_rules(rule: Mapping[str, sp.Basic], inputs: Mapping[str, str], *,
                names: Mapping[str, str] | None = None, before_use: Mapping[str, list[str]] | None = None,
                indent: str = "    ") -> tuple[list[str], dict[str, str]]:
    """Statements computing ``rule`` in order, and the rank of every name afterwards.

    ``inputs``: rank of each input name; ``names``: kernel variable of a rule name (default: the
    name itself); ``before_use``: statements emitted just before the first entry that reads a name
    (e.g. a value tile's load, kept next to its use).
    """
    names = dict(names or {})
    pending = {k: list(v) for k, v in (before_use or {}).items()}
    ranks = dict(inputs)
    lines: list[str] = []
    for key, expr in rule.items():
        expr = sp.sympify(expr)
        rank = rank_of(expr, ranks, key)
        for sym in sorted(expr.free_symbols, key=str):
            lines += [indent + line for line in pending.pop(sym.name, [])]
        table = {s: names.get(s.name, s.name) for s in expr.free_symbols}
        text = RulePrinter(table, _no_load).doprint(_broadcast(expr, rank, ranks))
        lines.append(f"{indent}{names.get(key, key)} = {text}")
        ranks[key] = rank
    return lines, ranks


def softmax_tables(low: Lowered) -> tuple[dict[str, sp.Basic], dict[str, sp.Basic], dict[str, sp.Basic]]:
    """The (update, finalize, merge) tables a forward kernel prints for ``low``: the node's own
    (natural log) when the score modification does not fold (``low.fold.kind == "none"``), else
    their base-2 forms, on the unscaled ``q . k`` with :data:`QK_SCALE` for the identity."""
    rules: SoftmaxRules = low.softmax
    if not low.fold.base2:
        return dict(rules.update), dict(rules.finalize), dict(rules.merge)
    scale = QK_SCALE if low.fold.kind == "identity" else None
    return base2_update(rules.update, scale), base2_finalize(rules.finalize), base2_merge(rules.merge)


_DOT = "tl.dot(q, k, input_precision=DOT_PRECISION)"
_FOLD_TEXT = {
    "identity": [
        "    # scale * log2(e) folds into qk_scale > 0 (a negative scale's sign moves into q, a zero scale",
        "    # zeroes it): the softmax runs in base 2 on the scores s * qk_scale of the unscaled s = q . k",
        "    q = (q * tl.where(sm_scale > 0, 1.0, tl.where(sm_scale < 0, -1.0, 0.0))).to(q.dtype)",
        f"    qk_scale = tl.where(sm_scale == 0, 1.0, tl.abs(sm_scale)) * {LOG2E}"],
    "linear": [f"    qk_scale = sm_scale * {LOG2E}  # scale and log2(e) in one multiply: scores in log2 units"],
    "none": ["    qk_scale = sm_scale  # the score modification is not linear: natural-log softmax"],
}


def fold_hooks(low: Lowered, tile_pr: TritonPrinter, call_args: str, indent: str = "") -> dict[str, str]:
    """The forward kernels' score hooks for ``low.fold``: ``FOLD_SCALE`` (``qk_scale``, after ``q``
    is loaded), ``SCORE`` (the tile ``s`` the update table reads) and ``MOD_LOG2`` (for a linear
    modification ``slope * score + offset``, ``score_mod_log2`` = ``slope * s + offset * log2(e)``
    on scores in log2 units; else a comment).  ``indent``: extra indent of ``FOLD_SCALE``."""
    fold = low.fold
    mod_log2 = "# (no score_mod_log2: the score modification is not linear in the score)"
    if fold.kind == "identity":
        score = [f"    s = {_DOT}  # [BLOCK_M, BLOCK_N]; its scores in log2 units are s * qk_scale"]
    elif fold.kind == "linear":
        assert fold.slope is not None and fold.offset is not None
        expr = fold.slope * E.score + fold.offset * sp.Float(float(LOG2E), 17)
        score = [f"    s = {_DOT} * qk_scale  # [BLOCK_M, BLOCK_N], log2 units",
                 f"    s = {tile_shaped('score_mod_log2', expr, call_args)}"]
        mod_log2 = "\n".join([
            "@triton.jit",
            f"def score_mod_log2(s, {call_args}):",
            '    """score_mod in log2 units (it is linear in the score): s is the q.k tile times scale * log2(e)."""',
            f"    return {tile_pr.doprint(expr)}", ""])
    else:  # the natural-log softmax of the scaled, modified score
        score = [f"    s = {_DOT} * sm_scale  # [BLOCK_M, BLOCK_N]",
                 f"    s = {tile_shaped('score_mod', low.modify, call_args)}"]
    return {"FOLD_SCALE": "\n".join(indent + line for line in _FOLD_TEXT[fold.kind]), "SCORE": "\n".join(score), "MOD_LOG2": mod_log2}
