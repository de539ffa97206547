"""Mask set-up: attncc's tile classification + block tables against torch's ``create_block_mask``.

Three masks at one length (default 32K tokens), tiles 128x128 (torch's default):
document (32 packed documents of random lengths), causal sliding window 1024, and a 2-D
neighborhood on a 128x256 grid with a 7x7 window (a plain predicate with ``m // W``,
``m % W`` and ``Abs``).  Each measurement runs in a fresh process:

* attncc: ``classify_tiles`` + ``block_tables``; the first call, then the median of the
  warm calls;
* torch eager: ``create_block_mask(..., _compile=False)``, one call after a warm-up at a small
  length.  It materialises the dense mask, so it starts at 4K and doubles while the next
  length is predicted (x4 time and memory) to fit the time and memory budgets; rows below
  the full length say so, and the ratio is then taken at that length;
* torch compiled: ``torch.compile(create_block_mask)``, the median of the calls after a
  warm-up call (which compiles).

Peak memory is the process's peak resident set (``VmHWM``, reset via ``/proc/self/clear_refs``)
during the timed calls (for attncc: and its first call) minus its resident set before them.  Every torch result is also
converted with ``tables_from_flex`` and compared with attncc's classes at the same length.

Usage: python bench/mask_setup.py [--length 32768] [--repeats 5] [--eager-budget-s 60] [--eager-budget-gib 8]
       [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sympy as sp
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attncc.ir import expr as E  # noqa: E402
from attncc.passes.blocks import block_tables, classify_tiles, tables_from_flex  # noqa: E402

BLOCK = 128
MASKS = ("document", "sliding_window", "neighborhood_2d")
WINDOW = 1024
GRID_W, RADIUS = 256, 3  # 128 x 256 grid at 32K tokens, 7 x 7 window
DOCUMENTS = 32


def document_ids(L: int) -> torch.Tensor:
    """32 documents of random lengths (fixed seed) packed into ``L`` tokens."""
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(L - 1, generator=g)[:DOCUMENTS - 1] + 1).values
    ids = torch.zeros(L, dtype=torch.int64)
    ids[cuts] = 1
    return torch.cumsum(ids, 0)


def attncc_mask(name: str, L: int) -> tuple[sp.Basic, dict, dict]:
    """(predicate, params, captures) in the IR vocabulary."""
    m, n = E.m, E.n
    if name == "document":
        return sp.Eq(E.load("doc", m, integer=True), E.load("doc", n, integer=True)), {}, {"doc": document_ids(L)}
    if name == "sliding_window":
        w = E.param_symbol("window", "int")
        return sp.And(n <= m, m - n < w), {w: WINDOW}, {}
    rows = sp.Abs(sp.floor(m / GRID_W) - sp.floor(n / GRID_W)) <= RADIUS
    cols = sp.Abs(sp.Mod(m, GRID_W) - sp.Mod(n, GRID_W)) <= RADIUS
    return sp.And(rows, cols), {}, {}


def torch_mask_mod(name: str, L: int) -> Any:
    if name == "document":
        doc = document_ids(L)
        return lambda b, h, q, kv: doc[q] == doc[kv]
    if name == "sliding_window":
        return lambda b, h, q, kv: (kv <= q) & (q - kv < WINDOW)
    return lambda b, h, q, kv: (((q // GRID_W - kv // GRID_W).abs() <= RADIUS)
                                & ((q % GRID_W - kv % GRID_W).abs() <= RADIUS))


# --- measurement in a child process ----------------------------------------------------------
def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _rss()


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _digest(classes: torch.Tensor) -> str:
    return hashlib.sha256(classes.to(torch.int8).contiguous().numpy().tobytes()).hexdigest()[:16]


def _attncc(name: str, L: int, repeats: int) -> dict:
    pred, params, caps = attncc_mask(name, L)

    def once() -> torch.Tensor:
        classes = classify_tiles(pred, {"M": L, "N": L}, params, caps, BLOCK, BLOCK)
        return block_tables(classes, BLOCK, BLOCK).classes

    base = _reset_peak()  # the first call included: it grows the allocator's pools
    t0 = time.perf_counter()
    classes = once()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "first": f"first call {first * 1e3:.1f} ms", "peak": _peak() - base,
            "classes": _digest(classes), "nonempty": int((classes > 0).sum())}


def _torch(name: str, L: int, repeats: int, compiled: bool) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask
    make = torch.compile(create_block_mask) if compiled else create_block_mask
    mod = torch_mask_mod(name, L)
    t0 = time.perf_counter()
    if compiled:
        make(mod, None, None, L, L, device="cpu")  # compiles
    else:
        small = min(L, 1024)
        make(torch_mask_mod(name, small), None, None, small, small, device="cpu")
    warm = time.perf_counter() - t0
    base = _reset_peak()
    times = []
    for _ in range(repeats if compiled else 1):
        t0 = time.perf_counter()
        bm = make(mod, None, None, L, L, device="cpu")
        times.append(time.perf_counter() - t0)
    peak = _peak() - base
    t = tables_from_flex(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                         BLOCK, BLOCK, L, L)
    first = f"compiling call {warm * 1e3:.0f} ms" if compiled else f"warm-up at {min(L, 1024)}"
    return {"seconds": statistics.median(times), "first": first, "peak": peak, "classes": _digest(t.classes),
            "nonempty": t.tiles_nonempty()}


def child(kind: str, name: str, L: int, repeats: int) -> dict:
    if kind == "attncc":
        return _attncc(name, L, repeats)
    return _torch(name, L, repeats, compiled=kind == "torch-compiled")


THREADS: list[str] = []  # "--threads N" passed on to the children


def run_child(kind: str, name: str, L: int, repeats: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *THREADS, "--child", kind, name, str(L), str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


# --- report -----------------------------------------------------------------------------------
def _mib(x: int) -> str:
    return f"{x / 2**20:9.1f} MiB"


def eager_series(name: str, L: int, budget_s: float, budget_bytes: float, timeout: float) -> list[tuple[int, dict]]:
    """torch eager at 4K, 8K, ... while the next length is predicted to fit the budgets."""
    out: list[tuple[int, dict]] = []
    length = min(4096, L)
    while True:
        r = run_child("torch-eager", name, length, 1, timeout)
        out.append((length, r))
        if "error" in r or length >= L:
            return out
        if r["seconds"] * 4 > budget_s or r["peak"] * 4 > budget_bytes:
            return out
        length = min(2 * length, L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eager-budget-s", type=float, default=60.0)
    ap.add_argument("--eager-budget-gib", type=float, default=8.0)
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per child process")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every child (0: torch's default)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "MASK", "L", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        kind, name, L, repeats = args.child
        print(json.dumps(child(kind, name, int(L), int(repeats))))
        return
    L = args.length
    THREADS[:] = ["--threads", str(args.threads)] if args.threads else []
    print(f"mask set-up, tiles {BLOCK}x{BLOCK}, torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; "
          "peak = peak resident set above the resident set before the calls")
    for name in MASKS:
        print(f"\n== {name} ==")
        ours = run_child("attncc", name, L, args.repeats, args.timeout_s)
        print(_row("attncc", L, ours))
        comp = run_child("torch-compiled", name, L, args.repeats, args.timeout_s)
        print(_row("torch compiled", L, comp, ours))
        series = eager_series(name, L, args.eager_budget_s, args.eager_budget_gib * 2**30, args.timeout_s)
        for length, r in series:
            ref = ours if length == L else run_child("attncc", name, length, args.repeats, args.timeout_s)
            if length != L:
                print(_row("attncc", length, ref))
            print(_row("torch eager", length, r, ref))
        last_len, last = series[-1]
        if last_len < L and "error" not in last:
            print(f"  torch eager not run at {L}: the next length was predicted to exceed "
                  f"{args.eager_budget_s:.0f} s or {args.eager_budget_gib:.0f} GiB "
                  f"(x4 per doubling: {last['seconds'] * (L / last_len) ** 2:.0f} s, "
                  f"{last['peak'] * (L / last_len) ** 2 / 2**30:.1f} GiB at {L})")


def _row(label: str, L: int, r: dict, ref: dict | None = None) -> str:
    if "error" in r:
        return f"  {label:15s} L={L:6d}  failed: {r['error']}"
    text = (f"  {label:15s} L={L:6d}  {r['seconds'] * 1e3:10.1f} ms  peak {_mib(r['peak'])}  "
            f"non-empty tiles {r['nonempty']:6d}  ({r['first']})")
    if ref is not None and "error" not in ref:
        same = "same tiles" if r["classes"] == ref["classes"] else "TILES DIFFER"
        text += f"  attncc {r['seconds'] / ref['seconds']:7.1f}x faster, {same}"
    return text


if __name__ == "__main__":
    main()
