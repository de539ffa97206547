"""Check a built-in spec's backward kernels against float64 torch autograd of its dense reference.

Prints the max error of dq, dk, dv and of each learnable captured tensor's gradient.
    python examples/gradient_check.py relative_bias [M] [N]
"""

from __future__ import annotations

import sys

import torch

import attncc
from attncc.runtime.reference import reference_forward

PARAMS = {"window": 9, "prefix": 5, "sinks": 3, "max_distance": 6, "cap": 2.0}
CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def captures(spec_name: str, names: list[str], B: int, H: int, M: int, N: int) -> dict[str, torch.Tensor]:
    make = {
        "slopes": lambda: torch.rand(H, dtype=torch.float64),
        "bias": lambda: torch.randn(H, 2 * PARAMS["max_distance"] + 1, dtype=torch.float64),
        "temp": lambda: torch.rand(B, H, M, dtype=torch.float64) + 0.5,
        "kv_lens": lambda: torch.tensor([N // 2] + [0] * (B - 1), dtype=torch.int32),
    }
    return {n: make[n]() for n in names}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "relative_bias"
    M = int(sys.argv[2]) if len(sys.argv) > 2 else 37
    N = int(sys.argv[3]) if len(sys.argv) > 3 else M
    fn = attncc.load(name)
    spec = fn.spec
    torch.manual_seed(0)
    B, H, D = 2, 4, 16
    HK = 2 if spec.is_gqa else H
    q = torch.randn(B, H, M, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, HK, N, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, HK, N, D, dtype=torch.float64, requires_grad=True)
    caps = captures(name, list(spec.captures), B, H, M, N)
    for t in caps.values():
        if t.is_floating_point():
            t.requires_grad_(True)
    params = {k_: v_ for k_, v_ in PARAMS.items() if k_ in spec.params}
    o, _ = reference_forward(spec, q, k, v, caps, params)
    do = torch.randn_like(o)
    o.backward(do)

    f32 = {n: (c.detach().float() if c.is_floating_point() else c) for n, c in caps.items()}
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    o32, lse32 = fn.module.attention_forward(q32, k32, v32, config=CONFIG, captures=f32, **params)
    wanted = [n for n, c in caps.items() if c.is_floating_point()]
    dq, dk, dv, cg = fn.module.attention_backward(q32, k32, v32, o32, lse32, do.float(), config=CONFIG,
                                                  captures=f32, capture_grads=wanted, **params)
    print(f"{name} B{B} H{H} M{M} N{N} D{D} (fp32 kernels vs fp64 autograd)")
    print(f"  out: max err {(o32.double() - o).abs().max().item():.2e}")
    rows = [("dq", dq, q.grad), ("dk", dk, k.grad), ("dv", dv, v.grad)] + [(f"d{n}", cg[n], caps[n].grad) for n in cg]
    for label, got, ref in rows:
        print(f"  {label}: max err {(got.double() - ref).abs().max().item():.2e} "
              f"(max |ref| {ref.abs().max().item():.2e}), NaN: {bool(torch.isnan(got).any())}")


if __name__ == "__main__":
    main()
