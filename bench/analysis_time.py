"""Time of the symbolic mask analysis for the sparse patterns of issue 9, in ms per pattern.

Each pattern is parsed from spec text, sympy's cache is cleared, and the ``analyse_mask`` work is
timed (wall clock, and process CPU time, which a busy machine disturbs less):
:func:`attncc.passes.mask_analysis.analyse` along keys (forward, dQ) and along queries (dK/dV).
``--lower`` also times the whole pass pipeline (``attncc.compiler.lower``).
Patterns named "stress" are not patterns of the issue: 32 conjuncts, and 64 (the DNF bound ``MAX_CONJUNCTS``).
Usage: python bench/analysis_time.py [--runs 3] [--lower] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from sympy.core.cache import clear_cache

from attncc.compiler import lower
from attncc.passes.mask_analysis import KEYS, QUERIES, analyse
from attncc.spec.loader import load_text

TARGET_MS = 1000.0


def _or_of_distances(ds: list[int]) -> str:
    return " | ".join(f"(m - n == {d})" for d in ds)


PATTERNS: dict[str, tuple[str, dict[str, int]]] = {
    "power: OR of 8 equalities": (_or_of_distances([0, 1, 2, 4, 8, 16, 32, 64]), {}),
    "power: OR of 18 equalities (64K)": (_or_of_distances([0] + [2**i for i in range(17)]), {}),
    "stress: OR of 32 equalities": (_or_of_distances([3 * i for i in range(32)]), {}),
    "sinks + window": ("(n <= m) & ((n < sinks) | (m - n < window))", {"sinks": 4, "window": 256}),
    "prefix-LM": ("(n <= m) | (n < prefix)", {"prefix": 64}),
    "dilated window": ("(n <= m) & (m - n < window) & ((m - n) % dilation == 0)", {"window": 256, "dilation": 4}),
    "strided + window": ("(n <= m) & ((m - n < window) | ((m - n) % stride == 0))", {"window": 64, "stride": 128}),
    "global tokens + window": ("((n <= m) & (m - n < window)) | (n < globals) | (m < globals)",
                               {"window": 256, "globals": 16}),
    "symmetric window + globals": ("(abs(m - n) <= window) | (n < globals)", {"window": 128, "globals": 8}),
    "blocked local + halo": ("(n >= (m // block) * block - halo) & (n < (m // block) * block + block + halo)",
                             {"block": 64, "halo": 8}),
    "shifted groups (LongLoRA)": ("((m + shift * h) // group) == ((n + shift * h) // group)",
                                  {"shift": 512, "group": 1024}),
    "2-D neighborhood 7x7": ("(abs(m // width - n // width) <= 3) & (abs(m % width - n % width) <= 3)",
                             {"width": 256}),
    "unordered ranges": ("(n < sinks) | ((n >= lo1) & (n < hi1)) | ((n >= lo2) & (n < hi2))",
                         {"sinks": 4, "lo1": 100, "hi1": 200, "lo2": 50, "hi2": 80}),
    "stress: AND of 6 two-way ORs (64 conjuncts)": (" & ".join(f"((n < window + {i}) | (m - n > sinks + {i}))"
                                                       for i in range(6)), {"window": 64, "sinks": 4}),
}


def spec_text(mask: str, params: dict[str, int]) -> str:
    decl = "".join(f'{k} = {{ type = "int", default = {v} }}\n' for k, v in params.items())
    return (f'name = "pattern"\n[inputs]\nq = "b h m d"\nk = "b h n d"\nv = "b h n e"\n[params]\n{decl}'
            f'[cascade]\nscore = "q[b,h,m,d] * k[b,h,n,d] * scale"\nmodify = "score"\nmask = "{mask}"\n'
            f'normalize = "softmax(n)"\noutput = "p[b,h,m,n] * v[b,h,n,e]"\n')


def measure(mask: str, params: dict[str, int], runs: int, with_lower: bool) -> dict[str, object]:
    """Median ms of the analysis (both directions) from a cleared sympy cache, and its result."""
    spec = load_text(spec_text(mask, params))
    times, cpu, lowers = [], [], []
    for _ in range(runs):
        clear_cache()
        t0, c0 = time.perf_counter(), time.process_time()
        keys, queries = analyse(spec.mask, KEYS), analyse(spec.mask, QUERIES)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        if with_lower:
            clear_cache()
            t0 = time.perf_counter()
            lower(load_text(spec_text(mask, params)))
            lowers.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "cpu_ms": statistics.median(cpu), "lower_ms": statistics.median(lowers) if lowers else None,
            "key_segments": len(keys.segments), "keys": keys.note, "queries": queries.note}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lower", action="store_true", help="also time the whole pass pipeline")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {name: measure(mask, params, args.runs, args.lower) for name, (mask, params) in PATTERNS.items()}
    if args.json:
        print(json.dumps({"target_ms": TARGET_MS, "patterns": rows}, indent=2))
        return
    print(f"{'pattern':46s} {'analysis':>9s} {'(cpu)':>9s} {'lower':>9s}  segs  key analysis")
    for name, r in rows.items():
        low = f"{r['lower_ms']:7.1f}ms" if r["lower_ms"] is not None else f"{'-':>9s}"
        flag = "" if r["ms"] < TARGET_MS else "  OVER TARGET"
        print(f"{name:46s} {r['ms']:7.1f}ms {r['cpu_ms']:7.1f}ms {low} {r['key_segments']:5d}  {r['keys']}{flag}")
    print(f"max {max(r['ms'] for r in rows.values()):.1f} ms (target {TARGET_MS:.0f} ms per pattern, both directions)")


if __name__ == "__main__":
    main()
