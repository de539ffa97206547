"""The mutation list of tools/mutate.py cannot rot: every anchor occurs exactly once in today's sources.

The mutations themselves are not run here (``python tools/mutate.py`` does that, see
docs/contributing.md); this only checks that each one still applies and names real tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("attncc_mutate_tool", ROOT / "tools" / "mutate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is created
    spec.loader.exec_module(module)
    return module


MUTATE = _load_tool()
# (the forward's lse and exponent bugs are mutations of the softmax rule tables since the kernel
# prints its update from them: lse_log_dropped, p_shifted_by_old_max)
REQUIRED = {"floordiv_no_floor_fix", "pymod_no_sign_fix", "lse_log_dropped", "acc_not_rescaled",
            "le_bound_off_by_one", "p_shifted_by_old_max", "dk_missing_scale", "plan_full_flag_inverted"}


def test_mutation_names_are_unique_and_cover_the_required_bugs() -> None:
    names = [m.name for m in MUTATE.MUTATIONS]
    assert len(names) == len(set(names)), f"duplicate mutation names in {names}"
    assert REQUIRED <= set(names), f"missing mutations: {sorted(REQUIRED - set(names))}"


@pytest.mark.parametrize("mutation", [pytest.param(m, id=m.name) for m in MUTATE.MUTATIONS])
def test_anchor_occurs_exactly_once(mutation) -> None:
    n = MUTATE.count_anchor(ROOT, mutation)
    assert n == 1, f"{mutation.name}: anchor {mutation.anchor!r} occurs {n} times in {mutation.file}"
    assert mutation.replacement != mutation.anchor, f"{mutation.name}: the replacement changes nothing"


@pytest.mark.parametrize("mutation", [pytest.param(m, id=m.name) for m in MUTATE.MUTATIONS])
def test_selected_test_files_exist(mutation) -> None:
    paths = [a.split("::")[0] for a in mutation.tests if a.startswith("tests/")]
    assert paths, f"{mutation.name}: no test file selected"
    for p in paths:
        assert (ROOT / p).is_file(), f"{mutation.name}: {p} does not exist"
        node = next((a for a in mutation.tests if a.startswith(p + "::")), None)
        if node is not None:  # a node id: its test function must be defined in that file
            func = node.split("::")[1].split("[")[0]
            assert f"def {func}(" in (ROOT / p).read_text(encoding="utf-8"), f"{mutation.name}: no {func} in {p}"
