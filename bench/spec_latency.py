"""Spec-to-source latency of every built-in spec, in a warm process (no disk cache).

Measures parse + lower (all passes) + render, median of N runs after one warm-up.
Usage: python bench/spec_latency.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from attncc.compiler import lower
from attncc.spec.loader import library, load_file

TARGET_MS = 50.0


def _render(spec: object) -> str:
    low = lower(spec)  # type: ignore[arg-type]
    return low.schedule.render(low, "bench")


def measure(name: str, runs: int) -> tuple[float, float]:
    """(first call in this process, median of the warm calls) in ms."""
    path = library()[name]
    t0 = time.perf_counter()
    _render(load_file(path))  # warm-up: sympy caches fill here
    first = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _render(load_file(path))
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {name: measure(name, args.runs) for name in library()}
    if args.json:
        print(json.dumps({"target_ms": TARGET_MS, "ms": {k: {"first": f, "warm_median": w}
                                                          for k, (f, w) in rows.items()}}, indent=2))
        return
    print(f"{'spec':26s} {'first':>9s} {'warm':>9s}")
    for name, (first, warm) in rows.items():
        print(f"{name:26s} {first:7.1f}ms {warm:7.1f}ms {'ok' if warm < TARGET_MS else 'OVER TARGET'}")
    print(f"max warm {max(w for _, w in rows.values()):.1f} ms (target {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
