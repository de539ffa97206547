"""The kernels' softmax update and epilogue are printed from the online_softmax node's rule tables."""

from __future__ import annotations

import pytest
import sympy as sp

import attncc
from attncc.codegen.rules import RuleError, print_rules, softmax_tables
from attncc.compiler import lower
from attncc.passes.lowered import softmax_rules
from attncc.schedules.prefill.render import FINALIZE_RANKS, STATE_NAMES, UPDATE_RANKS, V_LOAD, render
from attncc.spec.loader import resolve


@pytest.mark.parametrize("spec", [pytest.param(s, id=s) for s in ("causal", "softcap", "relative_bias")])
def test_kernel_update_is_the_printed_rule(spec: str) -> None:
    low = attncc.load(spec).generated.lowered
    source = attncc.load(spec).source
    update_rule, finalize_rule, _ = softmax_tables(low)  # the node's tables, in base 2 where the scale folds
    update, _ = print_rules(update_rule, UPDATE_RANKS, names=STATE_NAMES, before_use={"v": V_LOAD})
    final, _ = print_rules(finalize_rule, FINALIZE_RANKS, names=STATE_NAMES)
    for label, lines in (("update", update), ("finalize", final)):
        assert "\n".join(lines) in source, f"{spec}: the module's {label} is not the node's printed rule"


def test_changing_the_rule_on_the_node_changes_the_kernel() -> None:
    """One source: edit the update table stored on the IR node and the printed loop follows."""
    before = render(lower(resolve("causal")), "k")
    changed = lower(resolve("causal"))
    node = changed.graph.nodes[changed.softmax.node]
    node["update"] = {**node["update"], "alpha": sp.exp(sp.Symbol("m", extended_real=True)
                                                        - sp.Symbol("m_new", extended_real=True))}
    object.__setattr__(changed, "softmax", softmax_rules(changed.graph))
    after = render(changed, "k")
    want = "alpha = tl.math.exp2((m_i - m_new))"  # causal folds the scale: the base-2 form of the rule
    assert want in after, "the kernel's alpha does not follow the node's rule"
    assert want not in before, "control: the original rule shifts by m_shift"


@pytest.mark.parametrize(("rule", "inputs", "match"), [
    pytest.param({"x": sp.Symbol("y")}, {"s": "tile"}, "neither an input", id="unknown-name"),
    pytest.param({"x": sp.Symbol("s") + sp.Symbol("acc")}, {"s": "tile", "acc": "wide"}, "mixes", id="tile+wide"),
    pytest.param({"x": sp.Function("rowsum")(sp.Symbol("m"))}, {"m": "row"}, "needs a tile", id="rowsum-of-row"),
    pytest.param({"x": sp.Function("dot")(sp.Symbol("s"), sp.Symbol("s"))}, {"s": "tile"}, "dot needs",
                 id="dot-tile-tile"),
])
def test_unprintable_rules_are_refused(rule: dict, inputs: dict, match: str) -> None:
    with pytest.raises(RuleError, match=match):
        print_rules(rule, inputs)


def test_row_values_broadcast_in_tile_expressions() -> None:
    m, s = sp.symbols("m s", extended_real=True)
    lines, ranks = print_rules({"p": sp.exp(s - m), "r": sp.Function("rowsum")(sp.Symbol("p"))},
                               {"m": "row", "s": "tile"})
    assert lines == ["    p = tl.math.exp2(s * 1.4426950408889634 + ((-m) * 1.4426950408889634)[:, None])",
                     "    r = tl.sum(p, 1)"], lines
    assert ranks["p"] == "tile" and ranks["r"] == "row", ranks
