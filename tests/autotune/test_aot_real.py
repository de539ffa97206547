"""Offline ranking with a Tunable whose ahead-of-time reports come from really compiling a Triton kernel.

No GPU is needed: ``attncc.codegen.aot.compile_report`` runs Triton's whole pipeline and the
bundled ``ptxas -v`` on the host and reads registers, spills and shared memory.  Triton cannot
compile ahead of time in a process that runs its interpreter (as this test process does without a
GPU), so the Tunable compiles all candidates in one clean subprocess through ``aot_reports``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from attncc.autotune import tune
from attncc.autotune.space import ConfigSpace
from attncc.autotune.tunable import Shape
from attncc.codegen.report import KernelReport
from attncc.errors import CompileError

from .fakes import subspace

HEAD_DIM = 64
TESTS_DIR = Path(__file__).resolve().parents[1]


class ScoresTunable:
    """A real kernel behind the Tunable protocol (only the ahead-of-time half is used offline)."""

    kind = "fwd"
    spec_hash = "aot-real-scores"
    spec_name = "scores"

    def __init__(self, space: ConfigSpace) -> None:
        self._space = space
        self.reports: list[KernelReport] = []

    def space(self) -> ConfigSpace:
        return self._space

    def flops(self, shape: Shape) -> float:
        return 2.0 * shape.B * shape.H * shape.M * shape.N * shape.D

    def bytes_moved(self, shape: Shape, dtype: str, config: dict) -> float:
        reloads = math.ceil(shape.M / config["BLOCK_M"])
        return 2.0 * shape.B * shape.H * (shape.M * shape.D + reloads * shape.N * shape.D)

    def aot_reports(self, configs: list[dict], shape: Shape, dtype: str, target: str) -> list[object]:
        """Compile every config in one subprocess with the interpreter off."""
        env = {**os.environ, "TRITON_INTERPRET": "0",
               "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
        job = json.dumps({"configs": configs, "head_dim": shape.D, "target": target})
        proc = subprocess.run([sys.executable, "-m", "autotune.aot_worker"], input=job, capture_output=True,
                              text=True, env=env, cwd=TESTS_DIR, timeout=600, check=False)
        if proc.returncode != 0:
            raise CompileError(f"aot worker failed: {proc.stderr.strip().splitlines()[-1:]}")
        outcomes: list[object] = []
        for item in json.loads(proc.stdout):
            if "error" in item:
                outcomes.append(CompileError(item["error"]))
            else:
                outcomes.append(KernelReport.from_json(item["report"]))
        self.reports.extend(o for o in outcomes if isinstance(o, KernelReport))
        return outcomes

    def aot_report(self, config: dict, shape: Shape, dtype: str, target: str) -> KernelReport:
        [outcome] = self.aot_reports([config], shape, dtype, target)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, KernelReport)
        return outcome

    def make_runner(self, config: dict, shape: Shape, dtype: str) -> Callable[[], object]:
        raise AssertionError("offline ranking must not launch kernels")


def test_offline_ranking_with_real_ahead_of_time_compilation(sqlite_url: str) -> None:
    space = subspace("fwd", BLOCK_M=(64, 128), BLOCK_N=(64, 128), num_warps=(2, 4), num_stages=(2,))
    tunable = ScoresTunable(space)
    shape = Shape.of(4, 16, 4096, 4096, HEAD_DIM)
    result = tune(tunable, shape, "fp16", trials=1, storage_url=sqlite_url, offline_target="sm_90", progress=False)

    assert result.candidates == len(space) == len(tunable.reports) == 8
    assert all(r.target == "sm_90" and 0 < r.registers <= 255 and r.shared_bytes > 0 for r in tunable.reports)
    by_config = {space.key(r.config): r for r in tunable.reports}
    assert len(by_config) == 8
    # a 128x128 fp32 accumulator over 64 threads needs 256 registers per thread: it must spill
    spilling = by_config[space.key({"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 2, "num_stages": 2})]
    assert spilling.spills > 0 and not spilling.fits
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert result.pruned == len(pruned) >= 1
    assert all(t.reason and t.reason.startswith("spills") for t in pruned)
    assert {space.key(t.config) for t in pruned} == {k for k, r in by_config.items() if r.spills}
    ranked = [t for t in result.trials if t.state == "ranked"]
    assert len(ranked) == 8 - len(pruned)
    assert [t.value for t in ranked] == sorted(t.value for t in ranked if t.value is not None)
    assert all(by_config[space.key(t.config)].fits for t in ranked)
    assert result.best_config == ranked[0].config and result.stored
