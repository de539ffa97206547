"""Context parallelism of softmax specs over gloo ranks (CPU, Triton interpreter).

One process group per world size (2 and 4) is spawned once per module and runs every case; each
rank writes its shards of o, lse and of the gradients (and its work log) to a temporary directory.
The parent assembles the shards and checks them against an independent dense reference in plain
torch: error against the fp64 golden within twice that of same-dtype torch (tests/reference.py).
"""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import tempfile
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference import assert_close_to_golden, masked_softmax_attention, reference

import attncc
from attncc.distributed import WorkLog, assemble, shard, shard_of

B, H, D = 1, 2, 16
WORLD_CASES: dict[int, tuple[str, ...]] = {
    2: ("causal-zigzag", "causal-contiguous", "window-contiguous", "document-flex", "prefix-alibi-flex",
        "neighbourhood-flex",
        "gqa", "causal-allgather"),
    4: ("causal-zigzag", "causal-contiguous", "window-contiguous"),
}
LENGTH = {2: 32, 4: 64}
WINDOW = 6
PREFIX = 5
COLS = 8  # the 2-D neighbourhood: a grid of COLS columns, keys within one row and one column of the query


def _doc_ids(L: int) -> torch.Tensor:
    """Documents of lengths 5, 11, 3, ... (boundaries inside chunks and across ranks)."""
    sizes = [5, 11, 3, 9, 14, 2, 20]
    ids = torch.cat([torch.full((s,), i, dtype=torch.int32) for i, s in enumerate(sizes * 4)])
    return ids[:L].contiguous()


def _inputs(world: int, case: str) -> dict[str, torch.Tensor]:
    """Full-sequence inputs of one case (every rank and the parent build the same ones)."""
    L = LENGTH[world]
    g = torch.Generator().manual_seed(zlib.crc32(f"{world}-{case}".encode()))
    hk = 1 if case == "gqa" else H
    t = {"q": torch.randn(B, H, L, D, generator=g), "k": torch.randn(B, hk, L, D, generator=g),
         "v": torch.randn(B, hk, L, D, generator=g), "wo": torch.randn(B, H, L, D, generator=g),
         "wl": torch.randn(B, H, L, generator=g)}
    if case == "prefix-alibi-flex":
        t["slopes"] = torch.tensor([2.0 ** -1, 2.0 ** -3])
    if case == "document-flex":
        t["doc"] = _doc_ids(L)
    return t


def _layout(case: str) -> str:
    return "contiguous" if "contiguous" in case or case == "prefix-alibi-flex" else "zigzag"


def _call(case: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, torch.Tensor],
          work: WorkLog) -> tuple[torch.Tensor, torch.Tensor]:
    """The distributed call of ``case`` on this rank's shards."""
    layout, L = _layout(case), q.shape[2] * dist.get_world_size()
    common: dict[str, Any] = {"layout": layout, "return_lse": True, "work": work}
    if case.startswith("causal"):
        strategy = "allgather" if case.endswith("allgather") else "ring"
        return attncc.load("causal").distributed(q, k, v, strategy=strategy, **common)
    if case == "window-contiguous":
        return attncc.load("sliding_window").distributed(q, k, v, window=WINDOW, strategy="ring", **common)
    if case == "neighbourhood-flex":
        def neighbours(b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return ((qi // COLS - ki // COLS).abs() <= 1) & ((qi % COLS - ki % COLS).abs() <= 1)

        mask = attncc.create_block_mask(neighbours, None, None, L, L)
        return attncc.distributed.flex_attention(q, k, v, block_mask=mask, **common)
    if case == "gqa":
        return attncc.load("gqa").distributed(q, k, v, **common)
    if case == "document-flex":
        doc = extra["doc"]

        def same_doc(b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return doc[qi] == doc[ki]

        mask = attncc.create_block_mask(same_doc, None, None, L, L)
        return attncc.distributed.flex_attention(q, k, v, block_mask=mask, **common)
    slopes = extra["slopes"]

    def alibi(s: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return s - slopes[h] * (qi - ki)

    def prefix_lm(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return (ki <= qi) | (ki < PREFIX)

    mask = attncc.create_block_mask(prefix_lm, None, None, L, L)
    return attncc.distributed.flex_attention(q, k, v, alibi, mask, **common)


def _worker(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)  # ranks share the machine's cores
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    results: dict[str, Any] = {}
    for case in WORLD_CASES[world]:
        full = _inputs(world, case)
        layout = _layout(case)
        q, k, v = (shard(full[n], layout=layout).requires_grad_() for n in "qkv")
        extra = {n: full[n].clone().requires_grad_(n == "slopes") for n in ("doc", "slopes") if n in full}
        work = WorkLog()
        o, lse = _call(case, q, k, v, extra, work)
        loss = (o * shard(full["wo"], layout=layout)).sum() + (lse * shard(full["wl"], layout=layout)).sum()
        loss.backward()
        out = {"o": o.detach(), "lse": lse.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
        if "slopes" in extra:
            out["dslopes"] = extra["slopes"].grad
        for phase, counts in work.phases.items():
            out.update({f"{phase}_{key}": torch.tensor(val) for key, val in counts.items()})
        results[case] = out
    results["cpu_seconds"] = {"user": torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_utime)}
    torch.save(results, os.path.join(root, f"rank{rank}.pt"))
    dist.destroy_process_group()


_SPAWNED: dict[int, list[dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def ranks(request: pytest.FixtureRequest) -> tuple[int, list[dict[str, Any]]]:
    """(world, per-rank results) of the gloo process group of ``world`` ranks, spawned once per module."""
    world = request.param
    if world not in _SPAWNED:
        with tempfile.TemporaryDirectory(prefix="attncc-ring-") as root:
            mp.spawn(_worker, args=(world, root), nprocs=world, join=True)
            _SPAWNED[world] = [torch.load(os.path.join(root, f"rank{r}.pt"), weights_only=True)
                               for r in range(world)]
    return world, _SPAWNED[world]


# --- independent dense references -----------------------------------------------------------------

def _flex_reference(case: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full: dict[str, torch.Tensor],
                    slopes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    L = q.shape[2]
    m, n = torch.arange(L).view(L, 1), torch.arange(L).view(1, L)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    if case == "document-flex":
        keep = full["doc"].view(L, 1) == full["doc"].view(1, L)
    elif case == "neighbourhood-flex":
        keep = ((m // COLS - n // COLS).abs() <= 1) & ((m % COLS - n % COLS).abs() <= 1)
    else:
        keep = (n <= m) | (n < PREFIX)
        s = s - slopes.view(1, H, 1, 1) * (m - n).to(s.dtype)
    return masked_softmax_attention(s, keep.expand_as(s), v)


def _reference(case: str, full: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """o, lse and the gradients of the test loss, in ``dtype``, by dense torch."""
    q, k, v = (full[n].to(dtype).requires_grad_() for n in "qkv")
    slopes = full["slopes"].to(dtype).requires_grad_() if "slopes" in full else None
    if case.endswith("-flex"):
        o, lse = _flex_reference(case, q, k, v, full, slopes)
    else:
        name = {"window-contiguous": "sliding_window", "gqa": "gqa"}.get(case, "causal")
        kwargs: dict[str, Any] = {"window": WINDOW} if name == "sliding_window" else {}
        o, lse = reference(name, q, k, v, compute_dtype=dtype, **kwargs)
    loss = (o * full["wo"].to(dtype)).sum() + (lse * full["wl"].to(dtype)).sum()
    loss.backward()
    out = {"o": o.detach(), "lse": lse.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if slopes is not None:
        out["dslopes"] = slopes.grad
    return out


def _assembled(results: list[dict[str, Any]], case: str, name: str) -> torch.Tensor:
    return assemble([r[case][name] for r in results], _layout(case), dim=2)


def _all_cases() -> list[Any]:
    return [pytest.param(w, c, id=f"world{w}-{c}") for w, cases in WORLD_CASES.items() for c in cases]


@pytest.mark.parametrize(("ranks", "case"), _all_cases(), indirect=["ranks"])
def test_outputs_and_gradients_match_single_device(ranks: tuple[int, list[dict[str, Any]]], case: str) -> None:
    world, results = ranks
    full = _inputs(world, case)
    golden, same = _reference(case, full, torch.float64), _reference(case, full, torch.float32)
    for name in ("o", "lse", "dq", "dk", "dv"):
        got = _assembled(results, case, name)
        # gradients: the floor scales with the gradient's magnitude, as in tests/runtime/test_autograd.py
        assert_close_to_golden(f"{case} world={world} {name}", got, golden[name], same[name],
                               relative_floor=name.startswith("d"))
    if "dslopes" in golden:
        for r, res in enumerate(results):  # all-reduced: every rank has the whole gradient
            assert_close_to_golden(f"{case} world={world} rank {r} dslopes", res[case]["dslopes"], golden["dslopes"],
                                   same["dslopes"], relative_floor=True)


def _per_rank(results: list[dict[str, Any]], case: str, key: str) -> list[int]:
    return [int(r[case][key]) for r in results]


@pytest.mark.parametrize("ranks", [pytest.param(4, id="world4")], indirect=True)
def test_work_balance_measured_from_the_run(ranks: tuple[int, list[dict[str, Any]]]) -> None:
    """Tiles and bytes counted as the ranks ran: zigzag balances causal work, contiguous does not;
    a window mask skips pairs and sends less.  Bytes agree with the plan's prediction."""
    world, results = ranks
    L = LENGTH[world]
    zig = _per_rank(results, "causal-zigzag", "forward_tiles")
    contiguous = _per_rank(results, "causal-contiguous", "forward_tiles")
    assert min(zig) == max(zig) > 0, f"zigzag causal tiles per rank are not balanced: {zig}"
    assert contiguous == sorted(contiguous) and max(contiguous) >= 3 * min(contiguous) > 0, \
        f"contiguous causal tiles per rank {contiguous}: expected the last rank to do several times the first's work"
    skipped = _per_rank(results, "window-contiguous", "forward_skipped")
    assert skipped == [3, 2, 2, 2], f"window {WINDOW} < chunk {L // world}: each rank needs its chunk and the " \
        f"previous one; skipped pairs per rank {skipped}"
    for case, spec, kwargs in (("causal-zigzag", "causal", {}), ("causal-contiguous", "causal", {}),
                               ("window-contiguous", "sliding_window", {"window": WINDOW})):
        plan = attncc.distributed.plan(spec, L, world, _layout(case), heads=H, head_dim=D, dtype=torch.float32,
                                       **kwargs)
        sent = _per_rank(results, case, "forward_bytes_sent")
        assert sent == [plan.ring_bytes(r) for r in range(world)], f"{case}: bytes sent {sent} != plan"
        assert _per_rank(results, case, "forward_skipped") == [plan.skipped_pairs(r) for r in range(world)], case
    window_bytes = sum(_per_rank(results, "window-contiguous", "forward_bytes_sent"))
    causal_bytes = sum(_per_rank(results, "causal-contiguous", "forward_bytes_sent"))
    chunk_kv = B * H * (L // world) * 2 * D * 4
    assert window_bytes == (world - 1) * chunk_kv < causal_bytes, (window_bytes, causal_bytes)


# --- one process: no group, so world = 1 ------------------------------------------------------------

@pytest.mark.parametrize(("length", "layout", "world"), [
    pytest.param(30, "zigzag", 4, id="30-zigzag-4"), pytest.param(63, "contiguous", 2, id="63-contiguous-2"),
    pytest.param(77, "zigzag", 2, id="77-zigzag-2")])
def test_lengths_that_do_not_divide_are_refused(length: int, layout: str, world: int) -> None:
    x = torch.randn(1, 1, length, 4)
    with pytest.raises(attncc.InputError) as err:
        shard_of(x, layout, world, 0)
    assert "\n" not in str(err.value) and "pad" in str(err.value), str(err.value)
    with pytest.raises(attncc.InputError) as err:
        attncc.distributed.plan("causal", length, world, layout)
    assert "\n" not in str(err.value), str(err.value)


def test_shard_length_not_a_multiple_of_the_layout_is_refused() -> None:
    q = torch.randn(1, 1, 7, 16)
    with pytest.raises(attncc.InputError) as err:
        attncc.load("causal").distributed(q, q, q, layout="zigzag")
    assert "\n" not in str(err.value) and "shard length 7" in str(err.value), str(err.value)


def test_bad_strategy_and_short_captured_ids_are_refused() -> None:
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(attncc.InputError, match="strategy"):
        attncc.load("causal").distributed(q, q, q, strategy="tree")
    with pytest.raises(attncc.InputError, match="global positions"):
        attncc.load("document").distributed(q, q, q, doc=torch.zeros(1, 4, dtype=torch.int32))


def test_plan_reports_balance_skips_and_strategy() -> None:
    zig = attncc.distributed.plan("causal", 4096, 4, "zigzag")
    contiguous = attncc.distributed.plan("causal", 4096, 4, "contiguous")
    assert len({zig.tiles(r) for r in range(4)}) == 1, zig.describe()
    assert contiguous.tiles(3) > 3 * contiguous.tiles(0), contiguous.describe()
    window = attncc.distributed.plan("sliding_window", 4096, 4, "contiguous", window=256)
    assert [window.skipped_pairs(r) for r in range(4)] == [3, 2, 2, 2], window.describe()
    assert window.ring_bytes(3) == 0 and window.ring_bytes(0) == window.chunk_bytes, window.describe()
    text = attncc.distributed.explain("causal", 4096, 4, "zigzag")
    assert "balance (min/max tiles): 1.00" in text and text.rstrip().endswith(zig.choose()), text
    assert zig.choose("allgather") == "allgather" and zig.choose() in ("ring", "allgather")


def test_one_rank_equals_the_single_device_call() -> None:
    """Without a process group the entry points run on one rank (every pair local)."""
    q, k, v = (torch.randn(1, 2, 16, 16) for _ in range(3))
    fn = attncc.load("sliding_window")
    o, lse = fn.distributed(q, k, v, window=5, return_lse=True, layout="contiguous")
    ref, ref_lse = fn(q, k, v, window=5, return_lse=True)
    torch.testing.assert_close(o, ref, msg="one-rank output")
    torch.testing.assert_close(lse, ref_lse, msg="one-rank lse")
    full = torch.randn(1, 2, 16, 4)
    assert torch.equal(attncc.distributed.unshard(shard(full)), full)


def test_bench_script_prints_the_balance_table(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[2] / "bench" / "context_parallel.py"
    spec = importlib.util.spec_from_file_location("context_parallel", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--length", "4096", "--worlds", "2,4", "--heads", "2", "--document", "512"])
    out = capsys.readouterr().out
    assert out.count("balance (min/max tiles)") == 2 * 2 * 4, out  # worlds x layouts x masks
    assert "zigzag layout, 4 ranks" in out and "documents of 512" in out, out
    with pytest.raises(SystemExit):
        bench.parse_args(["--worlds", "2,x"])
