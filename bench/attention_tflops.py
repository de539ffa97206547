"""GPU benchmark: attncc vs torch SDPA (flash backend) and FlexAttention, forward and fwd+bwd.

Causal and non-causal, head dims 64/128, lengths 1K..16K, fp16/bf16.  Reports TFLOP/s
(FLOPs counted as 4*B*H*M*N*D for the forward, halved for causal; backward 2.5x forward)
and writes JSON to bench/results/attention_<gpu>.json.  Needs a CUDA GPU; exits with a
message otherwise.  Usage: python bench/attention_tflops.py [--mode fwd|fwdbwd] [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def flops(B: int, H: int, L: int, D: int, causal: bool, mode: str) -> float:
    f = 4.0 * B * H * L * L * D * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwdbwd" else 1.0)


def bench(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def runners(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> dict[str, Callable[[], Any]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import attncc

    L = q.shape[2]
    spec = attncc.load("causal" if causal else "full")
    flex = torch.compile(flex_attention)
    mask = create_block_mask(lambda b, h, m, n: m >= n, None, None, L, L) if causal else None

    def sdpa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return {"attncc": lambda: spec(q, k, v), "sdpa_flash": sdpa, "flex": lambda: flex(q, k, v, block_mask=mask)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=("fwd", "fwdbwd"), default="fwd")
    ap.add_argument("--dtype", choices=("fp16", "bf16"), default="bf16")
    ap.add_argument("--quick", action="store_true", help="lengths 1K and 4K only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_tflops.py needs a CUDA GPU (none found); no numbers were produced")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    gpu = torch.cuda.get_device_name()
    lengths = (1024, 4096) if args.quick else (1024, 2048, 4096, 8192, 16384)
    rows = []
    for D in (64, 128):
        for causal in (False, True):
            for L in lengths:
                B, H = max(1, 16384 // L), 2048 // D
                q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=args.mode == "fwdbwd")
                           for _ in range(3))
                for name, fn in runners(q, k, v, causal).items():
                    run = fn
                    if args.mode == "fwdbwd":
                        do = torch.randn_like(q)
                        run = lambda fn=fn, do=do: fn().backward(do)  # noqa: E731
                    try:
                        ms = bench(run)
                        tf = flops(B, H, L, D, causal, args.mode) / ms / 1e9
                    except Exception as exc:  # noqa: BLE001 - a failing baseline is reported, not fatal
                        ms, tf = float("nan"), float("nan")
                        print(f"{name} failed: {str(exc).splitlines()[0]}", file=sys.stderr)
                    rows.append({"impl": name, "D": D, "causal": causal, "L": L, "B": B, "H": H, "ms": ms, "tflops": tf})
                    print(f"{name:11s} D={D:3d} causal={causal!s:5s} L={L:6d}: {ms:8.3f} ms {tf:7.1f} TFLOP/s")
    out = Path(__file__).parent / "results" / f"attention_{args.mode}_{args.dtype}_{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}.json"
    out.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "mode": args.mode, "dtype": args.dtype,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
