"""Compile ``scores_kernel`` ahead of time for a list of configs, in a process without the interpreter.

Run as ``python -m autotune.aot_worker`` with ``TRITON_INTERPRET=0``; reads a JSON job on stdin and
prints one JSON outcome per config: ``{"report": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import sys

import triton
import triton.language as tl


@triton.jit
def scores_kernel(q, k, out, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One BLOCK_M x BLOCK_N tile of q @ k^T, looping over key blocks (an attention-like GEMM)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    qt = tl.load(q + rows[:, None] * D + dims[None, :])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kt = tl.load(k + cols[None, :] * D + dims[:, None])
        acc += tl.dot(qt, kt)
    tl.store(out + rows[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :], acc.to(tl.float16))


def main() -> None:
    from attncc.codegen.aot import compile_report
    from attncc.errors import CompileError

    job = json.loads(sys.stdin.read())
    signature = {"q": "*fp16", "k": "*fp16", "out": "*fp16", "N": "i32"}
    outcomes = []
    for config in job["configs"]:
        constexprs = {"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"], "D": job["head_dim"]}
        try:
            report = compile_report(scores_kernel, signature, constexprs, job["target"], config["num_warps"],
                                    config["num_stages"])
            outcomes.append({"report": report.to_json()})
        except CompileError as exc:
            outcomes.append({"error": str(exc)})
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
