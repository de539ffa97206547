"""Context parallelism for linear recurrences (attncc.distributed.recurrence) over 2 and 4 gloo
ranks on CPU: outputs, the final state and every gradient equal the naive recurrence on the
full sequence within the 2x same-dtype rule; bad input is a one-line error on every rank; the
bytes exchanged do not depend on the sequence length.

One process group per world size runs every case (tests/distributed/lasp_workers.py); each
rank writes what it found as JSON, and the tests below read it.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import lasp_workers as W
import pytest
import torch.multiprocessing as tmp

WORLDS = (2, 4)
DEADLINE_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _run_group(world: int) -> list[dict[str, Any]] | str:
    """Run every case on ``world`` gloo ranks, once per world size: each rank's results, or why
    the group failed (kept, so that every test of the group reports it without rerunning it)."""
    out_dir = tempfile.mkdtemp(prefix=f"attncc-lasp-{world}-")
    # a forkserver imports torch and attncc once instead of once per rank
    multiprocessing.get_context("forkserver").set_forkserver_preload(["lasp_workers"])
    ctx = tmp.start_processes(W.run, args=(world, _free_port(), out_dir), nprocs=world, join=False,
                              start_method="forkserver")
    end = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > end:
                return f"{world} ranks did not finish within {DEADLINE_S} s"
    except Exception as exc:  # noqa: BLE001 - a rank's crash, reported by every test of the group
        return f"a rank failed: {exc}"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]


def group_results(world: int) -> list[dict[str, Any]]:
    found = _run_group(world)
    if isinstance(found, str):
        pytest.fail(found)
    return found


CASE_PARAMS = [pytest.param(world, case[0], id=f"world{world}-{case[0]}") for world in WORLDS
               for case in W.CASES[world]]


@pytest.mark.parametrize(("world", "case"), CASE_PARAMS)
def test_every_rank_matches_the_full_sequence(world: int, case: str) -> None:
    """o (this rank's shard), the final state and dq, dk, dv, dg (shards) and dh0 vs the golden."""
    for rank, res in enumerate(group_results(world)):
        assert res["cases"][case] is None, f"rank {rank}: {res['cases'][case]}"


BAD = {
    "odd-zigzag-shard": "shard length 15 is not a positive multiple of 2 (zigzag layout)",
    "mismatched-layouts": "the layout differs across ranks",
    "mismatched-lengths": "the shard length differs across ranks",
    "gradients-on-rank-0-only": "the need for k, v, g gradients differs across ranks",
    "unknown-layout": "layout: expected one of contiguous, zigzag",
    "packed": "packed sequences (cu_seqlens) are not split across ranks",
    "position-gate": "the gate reads t beyond g[..., t, ...]",
}


@pytest.mark.parametrize("world", [pytest.param(w, id=f"world{w}") for w in WORLDS])
@pytest.mark.parametrize("case", [pytest.param(c, id=c) for c in [*BAD, "bad-gate-on-rank-1"]])
def test_bad_input_is_a_one_line_error_on_every_rank(world: int, case: str) -> None:
    for rank, res in enumerate(group_results(world)):
        message = res["bad inputs"][case]
        if case == "bad-gate-on-rank-1":
            expected = "g must be [b h t k]" if rank == 1 else "rank 1 was given bad input"
        else:
            expected = BAD[case]
        assert expected in message, f"rank {rank}: {message!r}"
        assert "\n" not in message, f"rank {rank}: not one line: {message!r}"


@pytest.mark.parametrize("world", [pytest.param(w, id=f"world{w}") for w in WORLDS])
def test_bytes_exchanged_do_not_depend_on_the_length(world: int) -> None:
    """gla, contiguous, with an initial and a final state: forward = the agreement check (13 int64)
    and ONE all-gather of (M [B, H, K, V], log A [B, H, K]) fp32; backward = one all-to-all of
    their gradients and the initial state's; the same at T_local 8 and 16."""
    state = (1 * W.H * W.K * W.V + 1 * W.H * W.K) * 4
    h0 = 1 * W.H * W.K * W.V * 4
    want = [("all_gather_single", 13 * 8), ("all_gather_single", state), ("all_to_all_single", world * (state + h0))]
    for rank, res in enumerate(group_results(world)):
        sent = res["communication"]
        assert [tuple(x) for x in sent["8"]] == want, f"rank {rank} at T_local=8: {sent['8']}"
        assert sent["8"] == sent["16"], f"rank {rank}: bytes differ with the length: {sent['8']} vs {sent['16']}"


@pytest.mark.parametrize("world", [pytest.param(w, id=f"world{w}") for w in WORLDS])
def test_forward_and_backward_are_bitwise_repeatable(world: int) -> None:
    for rank, res in enumerate(group_results(world)):
        assert res["communication"]["bitwise repeatable"], f"rank {rank}: two identical calls differ"
