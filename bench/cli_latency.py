"""Wall time of the quick ``attncc`` commands against ``python -c pass``, in one run.

Each command runs in a fresh interpreter (``python -m attncc.cli ...``, the attncc on ``sys.path``),
``--runs`` times, interleaved with the baseline so that machine load affects both alike; the table
shows the median and the minimum, and the median minus the baseline's median (what attncc adds).
``import sympy, networkx`` is timed too: ``explain`` needs both (the IR is sympy expressions in a
networkx graph), so their import is its floor.
Bytecode is cached as an installed package's would be, under a temporary PYTHONPYCACHEPREFIX (the
checkout gets no ``__pycache__``); ``--no-bytecode`` compiles every module on every run instead.
Usage: python bench/cli_latency.py [--runs 5] [--json] [--with-compile] [--no-bytecode]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_S = 1.0  # issue 13: --help, specs and explain under one second each
QUICK = (("--help",), ("specs",), ("explain", "causal"), ("tune", "--help"))
SLOW = (("compile", "causal"),)  # parses, lowers and renders (no torch) and prints the module


def _time(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(commands: tuple[tuple[str, ...], ...], runs: int, bytecode: bool = True) -> list[dict[str, object]]:
    """Rows of ``{command, median_s, min_s, over_baseline_s}``; the first row is the baseline."""
    env = {**os.environ, "ATTNCC_CACHE_DIR": tempfile.mkdtemp(prefix="attncc-bench-cli-")}
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="attncc-bench-pycache-")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    argvs = {"python -c pass": [sys.executable, "-c", "pass"],
             # what explain cannot avoid: the IR is sympy expressions in a networkx graph
             "import sympy, networkx": [sys.executable, "-c", "import sympy, networkx"]}
    argvs.update({f"attncc {' '.join(c)}": [sys.executable, "-m", "attncc.cli", *c] for c in commands})
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for argv in argvs.values():  # warm the file system cache and the bytecode
        _time(argv, env)
    for _ in range(runs):
        for name, argv in argvs.items():
            times[name].append(_time(argv, env))
    base = statistics.median(times["python -c pass"])
    return [{"command": name, "median_s": statistics.median(t), "min_s": min(t),
             "over_baseline_s": statistics.median(t) - base} for name, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--with-compile", action="store_true", help="also time `attncc compile causal`")
    ap.add_argument("--no-bytecode", action="store_true", help="no bytecode cache: every run compiles every module")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    rows = measure(QUICK + (SLOW if args.with_compile else ()), args.runs, bytecode=not args.no_bytecode)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'command':28s} {'median s':>9s} {'min s':>7s} {'+ over python':>14s}")
    for r in rows:
        print(f"{r['command']:28s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['over_baseline_s']:+14.3f}")
    mode = "no bytecode cache" if args.no_bytecode else "bytecode cached"
    print(f"({args.runs} runs each, interleaved, {mode}; target: quick commands under {TARGET_S:g} s)")


if __name__ == "__main__":
    main()
