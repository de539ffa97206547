#!/usr/bin/env python3
"""Mutation check: plausible one-line kernel and printer bugs must each make some test fail.

Every entry of :data:`MUTATIONS` names a file, an exact anchor text that occurs exactly
once in it, the text that replaces it, and the pytest selection that must catch it.  For
each mutation the repository's working tree is copied to a temporary directory (the
working tree itself is never modified), the anchor is replaced in the copy, and the
selected tests run there with ``python -m pytest -x -q`` (``PYTHONPATH`` and the working
directory point at the copy, ``ATTNCC_CACHE_DIR`` at a fresh temporary directory).  A
mutation is *killed* when pytest reports failing tests (exit code 1); it *survives* when the
tests pass.  Any other outcome (anchor missing or repeated, no test collected, an internal
pytest error) is an *error*.

    python tools/mutate.py            # all mutations; exit 1 if any survives or errs
    python tools/mutate.py --list     # the list, nothing run
    python tools/mutate.py --only ln2_truncated --only pymod_no_sign_fix
    python tools/mutate.py --jobs 2   # two mutations at a time
    python tools/mutate.py --baseline # first check the selected tests pass unmutated

Only the standard library is used; pytest runs in subprocesses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "*.egg-info",
                                 ".venv", "venv", "results")

PRINTER = "attncc/codegen/printer.py"
BWD = "attncc/schedules/prefill/templates/prefill_bwd.py.tmpl"
SOFTMAX = "attncc/passes/online_softmax.py"  # the rule tables the kernels print their update from
LOOPS = "attncc/codegen/plans.py"
PLANS = "attncc/passes/plans.py"
TILE_PLAN = "tests/codegen/test_tile_plan.py"
ANALYSIS = "attncc/passes/mask_analysis.py"
BACKWARD = "attncc/schedules/prefill/backward.py"

FLEX = "tests/runtime/test_flex.py"
EDGE = "tests/runtime/test_edge_cases.py"
SPECS = "tests/runtime/test_specs.py"
GRAD = "tests/runtime/test_autograd.py::test_gradients_match_fp64_reference"


@dataclass(frozen=True)
class Mutation:
    """One plausible bug: replace ``anchor`` (exactly once in ``file``) by ``replacement``."""

    name: str
    file: str
    anchor: str
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: node ids, files, "-k", expressions
    what: str


MUTATIONS: tuple[Mutation, ...] = (
    Mutation("floordiv_no_floor_fix", PRINTER,
             "    return q - (((a % b) != 0) & ((a < 0) != (b < 0))).to(q.dtype)\n", "    return q\n",
             (FLEX, "-k", "negative_floordiv"),
             "_floordiv truncates like Triton's // (no rounding toward -inf)"),
    Mutation("pymod_no_sign_fix", PRINTER,
             "    return r + (((r != 0) & ((r < 0) != (b < 0))).to(r.dtype) * b)\n", "    return r\n",
             (FLEX, "-k", "negative_mod"),
             "_pymod keeps the sign of the dividend (C's %, not Python's)"),
    Mutation("lse_log_dropped", SOFTMAX, "(m_ + sp.log(l_safe), True)", "(m_, True)",
             (FLEX, "-k", "test_flex_matches_torch_fp32 and (causal or alibi)"),
             "finalize rule: lse is the row max, without log(l)"),
    Mutation("acc_not_rescaled", SOFTMAX, '"acc": alpha * acc + dot(p_tile, v_tile)', '"acc": acc + dot(p_tile, v_tile)',
             (SPECS, "-k", "causal and fp32"),
             "update rule: the accumulator is not rescaled when the row max grows"),
    Mutation("l_not_rescaled", SOFTMAX, '"l": alpha * l_ + rowsum(p_tile)', '"l": l_ + rowsum(p_tile)',
             (SPECS, "-k", "causal and fp32"),
             "update rule: the row sum is not rescaled"),
    Mutation("p_shifted_by_old_max", SOFTMAX, '"p": sp.exp(s_tile - m_shift)', '"p": sp.exp(s_tile - m_)',
             (SPECS, "-k", "causal and fp32"),
             "update rule: tile probabilities use the previous row max"),
    Mutation("empty_row_max_not_guarded", SOFTMAX,
             '"m_shift": sp.Piecewise((0, sp.Eq(m_new, -sp.oo)), (m_new, True))', '"m_shift": m_new',
             (EDGE, "-k", "rows_without_keys or rows_masked_by_score_mod"),
             "update rule: rows with nothing unmasked yet compute exp(-inf - -inf) = NaN"),
    Mutation("plan_full_flag_inverted", PLANS, "TileVisit(t, not (f0 <= t < f1))", "TileVisit(t, f0 <= t < f1)",
             (TILE_PLAN, "-k", "causal-M77"),
             "host-side plan evaluation swaps full and masked tiles (explain, tile statistics)"),
    Mutation("le_bound_off_by_one", ANALYSIS, "        return None, sp.floor(t) + 1\n",
             "        return None, sp.floor(t)\n",
             (EDGE, "-k", "single_query_decode"),
             "mask analysis: the key range of 'n <= t' ends one key early"),
    Mutation("lt_printed_as_le", PRINTER, 'return self._rel(e, "<")', 'return self._rel(e, "<=")',
             (FLEX, "-k", "test_flex_matches_torch_fp32 and sliding_window"),
             "printer: a strict comparison printed as <= (off-by-one mask bound)"),
    Mutation("segment_end_floor", LOOPS, "seg_end = tl.maximum(tl.cdiv({pr.p(seg.hi)}, {block}) * {block}, seg_lo)",
             "seg_end = tl.maximum(({pr.p(seg.hi)}) // {block} * {block}, seg_lo)",
             (EDGE, "-k", "lopsided_lengths"),
             "tile loop: the last, partial key tile of a segment is skipped"),
    Mutation("full_tiles_overreach", LOOPS,
             "full_hi = tl.maximum(tl.minimum(tl.minimum(({pr.p(seg.full_hi)}) // {block} * {block}, seg_end)",
             "full_hi = tl.maximum(tl.minimum(tl.minimum(tl.cdiv({pr.p(seg.full_hi)}, {block}) * {block}, seg_end)",
             (SPECS, "-k", "causal and fp32"),
             "tile loop: a partially masked tile is run without the mask"),
    Mutation("segments_overlap", LOOPS, "{block} * {block}, visited_end)", "{block} * {block}, 0)",
             (SPECS, "-k", "prefix_lm and fp32"),
             "tile loop: a later segment re-visits tiles of an earlier one"),
    Mutation("tanh_sign_lost", PRINTER, "    return tl.where(x < 0, -y, y)\n", "    return y\n",
             (FLEX, "-k", "test_flex_matches_torch_fp32 and softcap"),
             "tanh helper returns |tanh(x)|"),
    Mutation("dk_missing_scale", BWD, "(dk * sm_scale).to(DK.dtype.element_ty)", "dk.to(DK.dtype.element_ty)",
             (f"{GRAD}[causal-fp32-M40]",),
             "dK is stored without the softmax scale"),
    Mutation("dq_missing_scale", BWD, "(dq * sm_scale).to(DQ.dtype.element_ty)", "dq.to(DQ.dtype.element_ty)",
             (f"{GRAD}[causal-fp32-M40]",),
             "dQ is stored without the softmax scale"),
    Mutation("dv_p_without_mod", BWD, "dv += tl.dot(p.to(do.dtype)",
             "dv += tl.dot(tl.where(p > 0.0, tl.exp2(s * 1.4426950408889634 - lse2[None, :]), 0.0).to(do.dtype)",
             (f"{GRAD}[softcap-fp32-M40]", f"{GRAD}[alibi-fp32-M40]"),
             "dV uses probabilities of the unmodified score"),
    Mutation("dq_delta_dropped", BWD, "ds = p * (dp - delta[:, None])\n{{CAPTURE_GRADS}}",
             "ds = p * dp\n{{CAPTURE_GRADS}}",
             (f"{GRAD}[causal-fp32-M40]",),
             "dQ tile forgets the rowsum(dO * O) term of dS"),
    Mutation("transposed_hooks_swapped", BACKWARD, 'E.m: "offs_m[None, :]", E.n: "offs_n[:, None]"',
             'E.m: "offs_n[:, None]", E.n: "offs_m[None, :]"',
             ("tests/codegen/test_backward_hopper.py", "-k", "two_steps"),
             "dK/dV's transposed score hooks read the query offsets as key offsets"),
    Mutation("gqa_head_loop_short", BACKWARD, '"(off_hk + 1) * (H // HK)"', '"(off_hk + 1) * (H // HK) - 1"',
             (f"{GRAD}[gqa-fp32-M40-H4-HK2]", f"{GRAD}[gqa-fp32-M40-H4-HK1]"),
             "dK/dV of a key/value head skip the last query head of its group"),
)


@dataclass
class Outcome:
    name: str
    status: str  # "killed", "survived", "error"
    seconds: float
    detail: str


def count_anchor(root: Path, m: Mutation) -> int:
    """How many times ``m.anchor`` occurs in ``m.file`` under ``root``."""
    path = root / m.file
    return path.read_text(encoding="utf-8").count(m.anchor) if path.is_file() else 0


def _copy_tree(dest: Path) -> Path:
    tree = dest / "repo"
    shutil.copytree(ROOT, tree, ignore=IGNORED, symlinks=True)
    return tree


def _env(tree: Path, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(tree), ATTNCC_CACHE_DIR=str(scratch / "attncc-cache"),
               TRITON_CACHE_DIR=str(scratch / "triton-cache"), PYTHONDONTWRITEBYTECODE="1", CI="true")
    return env


def _pytest(tree: Path, scratch: Path, args: tuple[str, ...]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(cmd, cwd=tree, env=_env(tree, scratch), capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    summary = failed[0] if failed else (lines[-1] if lines else "(no output)")
    return proc.returncode, summary[:200]


def run_mutation(m: Mutation) -> Outcome:
    """Apply ``m`` to a fresh copy of the working tree and run its tests there."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"attncc-mut-{m.name}-") as tmp:
        scratch = Path(tmp)
        tree = _copy_tree(scratch)
        n = count_anchor(tree, m)
        if n != 1:
            return Outcome(m.name, "error", time.monotonic() - start, f"anchor found {n} times in {m.file}")
        path = tree / m.file
        path.write_text(path.read_text(encoding="utf-8").replace(m.anchor, m.replacement), encoding="utf-8")
        rc, summary = _pytest(tree, scratch, m.tests)
    status = {0: "survived", 1: "killed"}.get(rc, "error")
    detail = summary if rc in (0, 1) else f"pytest exit {rc}: {summary}"
    return Outcome(m.name, status, time.monotonic() - start, detail)


def run_baseline(selected: list[Mutation]) -> Outcome:
    """The selected tests on an unmutated copy: they must pass, or a 'kill' means nothing."""
    start = time.monotonic()
    failures = []
    with tempfile.TemporaryDirectory(prefix="attncc-mut-baseline-") as tmp:
        scratch = Path(tmp)
        tree = _copy_tree(scratch)
        for args in dict.fromkeys(m.tests for m in selected):
            rc, summary = _pytest(tree, scratch, args)
            if rc != 0:
                failures.append(f"{' '.join(args)}: exit {rc}: {summary}")
    return Outcome("(baseline)", "error" if failures else "passed", time.monotonic() - start,
                   "; ".join(failures) or "selected tests pass on the unmutated tree")


def _table(rows: list[Outcome]) -> str:
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name:<{width}}  {r.status:<8}  {r.seconds:6.1f}s  {r.detail}" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, metavar="N", help="mutations run at a time (default 1)")
    ap.add_argument("--baseline", action="store_true", help="first run the selected tests unmutated")
    args = ap.parse_args(argv)
    names = {m.name for m in MUTATIONS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        print(f"mutate.py: unknown mutation(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in selected:
            print(f"{m.name}: {m.file}: {m.what}\n    tests: {' '.join(m.tests)}")
        return 0
    start = time.monotonic()
    rows: list[Outcome] = []
    if args.baseline:
        rows.append(run_baseline(selected))
        print(_table(rows[-1:]), flush=True)
        if rows[-1].status != "passed":
            return 1
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for outcome in pool.map(run_mutation, selected):
            rows.append(outcome)
            print(_table([outcome]), flush=True)
    results = [r for r in rows if r.name != "(baseline)"]
    survived = [r.name for r in results if r.status == "survived"]
    errors = [r.name for r in results if r.status == "error"]
    killed = len(results) - len(survived) - len(errors)
    print(f"\n{_table(rows)}\n\n{killed} killed, {len(survived)} survived, {len(errors)} error(s) "
          f"of {len(results)} mutation(s) in {time.monotonic() - start:.0f}s (--jobs {args.jobs})")
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
