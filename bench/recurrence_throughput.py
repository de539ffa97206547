"""GPU benchmark: attncc's chunkwise recurrence kernels against flash-linear-attention's chunk kernels.

For GLA (vector gate), RetNet / simple-GLA (a constant decay per head) and Mamba2-style scalar
gates, at T from 1K to 32K (``--lengths``), batch ``--batch``, ``--heads`` heads, K = V =
``--dim``, bf16: forward and forward+backward time (median of ``--repeat`` CUDA-event timings
after warm-up) and tokens per second.  fla (``pip install flash-linear-attention``) is optional:
without it only attncc is timed.  Needs a CUDA GPU; prints why and exits 2 without one.

    python bench/recurrence_throughput.py --lengths 1024,4096,16384,32768 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

GATES = ("gla", "retnet", "mamba2")


def _time(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _inputs(spec: str, B: int, H: int, T: int, D: int) -> dict[str, torch.Tensor]:
    dev, dt = "cuda", torch.bfloat16
    x = {n: torch.randn(B, H, T, D, device=dev, dtype=dt, requires_grad=True) for n in ("q", "k", "v")}
    if spec == "gla":
        x["g"] = (-torch.nn.functional.softplus(torch.randn(B, H, T, D, device=dev)) * 0.1).to(dt).requires_grad_()
    elif spec == "mamba2":
        x["g"] = (-torch.nn.functional.softplus(torch.randn(B, H, T, device=dev)) * 0.1).to(dt).requires_grad_()
    return x


def _attncc(spec: str, x: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    import attncc

    fn = attncc.load(spec)
    return lambda: fn(x["q"], x["k"], x["v"], g=x.get("g"))


def _fla(spec: str, x: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor] | None:
    """fla's chunk kernel for the same recurrence (inputs as [B, T, H, K]); None without fla."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    t = {n: v.transpose(1, 2) for n, v in x.items()}
    if spec == "gla":
        return lambda: chunk_gla(t["q"], t["k"], t["v"], t["g"])[0]
    if spec == "mamba2":
        return lambda: chunk_simple_gla(t["q"], t["k"], t["v"], g=t["g"])[0]
    H = x["q"].shape[1]
    gamma = torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, device="cuda", dtype=torch.float32)))
    return lambda: chunk_simple_gla(t["q"], t["k"], t["v"], g_gamma=gamma)[0]


def _measure(run: Callable[[], torch.Tensor], repeat: int) -> dict[str, float]:
    fwd = _time(run, repeat)
    out = run()
    do = torch.randn_like(out)

    def both() -> None:
        run().backward(do)

    return {"fwd_ms": fwd, "fwd_bwd_ms": _time(both, repeat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,4096,16384,32768")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--specs", default=",".join(GATES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
    except ValueError:
        print(f"--lengths {args.lengths!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("recurrence_throughput: no CUDA GPU here; nothing measured", file=sys.stderr)
        return 2
    rows = []
    print(f"{'spec':8} {'T':>6} {'impl':7} {'fwd ms':>9} {'fwd+bwd ms':>11} {'Mtok/s fwd':>11}")
    for spec in args.specs.split(","):
        for T in lengths:
            x = _inputs(spec, args.batch, args.heads, T, args.dim)
            for impl, make in (("attncc", _attncc), ("fla", _fla)):
                run = make(spec, x)
                if run is None:
                    print(f"{spec:8} {T:>6} {impl:7} skipped: fla is not installed")
                    continue
                try:
                    r = _measure(run, args.repeat)
                except torch.cuda.OutOfMemoryError:
                    print(f"{spec:8} {T:>6} {impl:7} skipped: out of memory")
                    torch.cuda.empty_cache()
                    continue
                tok = args.batch * T / (r["fwd_ms"] * 1e-3) / 1e6
                rows.append({"spec": spec, "T": T, "impl": impl, **r, "mtok_per_s_fwd": tok})
                print(f"{spec:8} {T:>6} {impl:7} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} {tok:11.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "batch": args.batch, "heads": args.heads,
                       "dim": args.dim, "rows": rows}, f, indent=2)
    return 0 if rows and not math.isnan(rows[0]["fwd_ms"]) else 1


if __name__ == "__main__":
    sys.exit(main())
