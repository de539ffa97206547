"""Ahead-of-time compile of a spec's generated kernels for a GPU target (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import triton

from attncc.codegen.report import KernelReport
from attncc.runtime.api import CompiledAttention, compile_spec
from attncc.spec.model import Spec

TRITON_DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                 "float32": "fp32", "int32": "i32", "int64": "i64", "bool": "i8"}


def fwd_signature(fn: CompiledAttention, dtype: str, head_dim: int, head_dim_v: int,
                  config: dict[str, int]) -> tuple[dict[str, str], dict[str, Any]]:
    """Triton signature and constexprs of ``attn_fwd`` for one dtype, head dims and tile config."""
    kernel = fn.module.attn_fwd
    spec = fn.spec
    elem = TRITON_DTYPES[dtype]
    constexprs: dict[str, Any] = {
        "HEAD_D": head_dim, "HEAD_E": head_dim_v,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)), "BLOCK_E": max(16, triton.next_power_of_2(head_dim_v)),
        "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
        "DOT_PRECISION": "ieee" if elem == "fp32" else "tf32",
    }
    sig: dict[str, str] = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("Q", "K", "V", "O"):
            sig[name] = f"*{elem}"
        elif name == "LSE":
            sig[name] = "*fp32"
        elif name == "sm_scale":
            sig[name] = "fp32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{TRITON_DTYPES[spec.captures[name[:-4]].dtype]}"
        elif name.startswith("p_"):
            sig[name] = "i32" if spec.params[name[2:]].kind == "int" else "fp32"
        else:
            sig[name] = "i32"
    return sig, constexprs


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def report_fwd(fn: CompiledAttention, target: str, dtype: str, head_dim: int, head_dim_v: int | None = None,
               config: dict[str, int] | None = None) -> KernelReport:
    """Compile ``attn_fwd`` for ``target`` and report registers, spills, shared memory.

    Triton cannot compile ahead of time in a process that runs its interpreter,
    so in that case the compile runs in a subprocess with the interpreter off.
    """
    if interpreting():
        return report_many([(fn.spec, target, dtype, head_dim, head_dim_v, config)])[0]
    from attncc.codegen.aot import compile_report

    head_dim_v = head_dim_v or head_dim
    cfg = {**fn.module.default_config(max(head_dim, head_dim_v)), **(config or {})}
    sig, constexprs = fwd_signature(fn, dtype, head_dim, head_dim_v, cfg)
    report = compile_report(fn.module.attn_fwd, sig, constexprs, target, cfg["num_warps"], cfg["num_stages"],
                            kernel_name=f"{fn.spec.name}.attn_fwd[{dtype},d{head_dim}]")
    return report


Job = tuple[Spec, str, str, int, "int | None", "dict[str, int] | None"]


def report_many(jobs: list[Job]) -> list[KernelReport]:
    """Run :func:`report_fwd` for each job in one clean subprocess (no interpreter)."""
    payload = [{"spec": spec.source if spec.source.endswith(".toml") else None, "name": spec.name,
                "target": t, "dtype": dt, "head_dim": hd, "head_dim_v": hv, "config": cfg}
               for spec, t, dt, hd, hv, cfg in jobs]
    if any(p["spec"] is None for p in payload):
        raise ValueError("subprocess AOT needs specs loaded from files")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-m", "attncc.runtime.aot_spec"], input=json.dumps(payload),
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        from attncc.errors import CompileError

        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise CompileError(f"ahead-of-time compile failed: {last}")
    return [KernelReport(**{k: v for k, v in r.items() if k not in ("spills", "fits")})
            for r in json.loads(proc.stdout)]


def _worker() -> None:
    from attncc.spec.loader import resolve

    out = []
    for job in json.loads(sys.stdin.read()):
        fn = compile_spec(resolve(job["spec"]))
        rep = report_fwd(fn, job["target"], job["dtype"], job["head_dim"], job["head_dim_v"], job["config"])
        out.append(rep.to_json())
    print(json.dumps(out))


if __name__ == "__main__":
    _worker()
