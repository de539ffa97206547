"""Print the softmax rule tables of the ``online_softmax`` node as Triton statements.

A rule table is an ordered ``{name: sympy expression}``; an entry may use the table's inputs and
the entries before it, by name (a later entry sees a redefined input's new value).  Every value
has a *rank* per query row: ``row`` ([R]), ``tile`` ([R, C]: a key tile's scores), ``wide``
([R, E]: the accumulator) or ``kv`` ([C, E]: a value tile, only as the right operand of ``dot``).
Ranks are inferred from the inputs' ranks; a ``row`` value used where a ``tile`` or ``wide`` value
is computed is broadcast (``x[:, None]``).  Tile reductions: ``rowmax(t)``/``rowsum(t)``
(``tile -> row``) and ``dot(t, v)`` (``tile x kv -> wide``).
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp

from attncc.codegen.printer import TritonPrinter

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
