"""Ahead-of-time compile of a spec's generated kernels for a GPU target (no GPU needed)."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
from typing import Any

from attncc.codegen import launch
from attncc.codegen.report import KernelReport
from attncc.compiler import load_module
from attncc.errors import CompileError
from attncc.runtime.api import CompiledAttention, compile_spec
from attncc.schedules.base import KernelDecl
from attncc.spec.model import Spec

TRITON_DTYPES = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "float16": "fp16", "bfloat16": "bf16",
                 "float32": "fp32", "int32": "i32", "int64": "i64", "bool": "i8"}


def kernel_signature(fn: CompiledAttention, decl: KernelDecl, dtype: str, head_dim: int, head_dim_v: int,
                     config: dict[str, int], module: Any = None,
                     own: dict[str, Any] | None = None, use_tma: bool = False) -> tuple[dict[str, str], dict[str, Any]]:
    """Triton signature and constexprs of one generated kernel of ``module`` (default: the spec's
    main module) for a dtype, head dims and tiles (pointer types from the schedule's
    :class:`KernelDecl`, ``own`` constexprs from its schedule; the tile log compiled out;
    ``USE_TMA`` for a kernel that has it)."""
    kernel = getattr(module or fn.module, decl.name)
    spec = fn.spec
    elem = TRITON_DTYPES[dtype]
    constexprs: dict[str, Any] = {**launch.kernel_constexprs(head_dim, head_dim_v, config, elem),
                                  "WRITE_FULL": bool(spec.captures), "LOG_TILES": False,
                                  "TBL_ROW": config["BLOCK_M"] if decl.sweeps == "keys" else config["BLOCK_N"],
                                  "TBL_COL": config["BLOCK_N"] if decl.sweeps == "keys" else config["BLOCK_M"],
                                  "USE_TMA": bool(use_tma), **(own or {})}
    constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
    sig: dict[str, str] = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in decl.elem_tensors:
            sig[name] = f"*{elem}"
        elif name in decl.fp32_tensors:
            sig[name] = "*fp32"
        elif name in decl.int_tensors:
            sig[name] = "*i32"
        elif name == "sm_scale":
            sig[name] = "fp32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{TRITON_DTYPES[spec.captures[name[:-4]].dtype]}"
        elif name.startswith("p_"):
            sig[name] = "i32" if spec.params[name[2:]].kind == "int" else "fp32"
        else:
            sig[name] = "i32"
    return sig, constexprs


def launch_divisibility(sig: dict[str, str], head_dim: int, head_dim_v: int) -> list[str]:
    """Arguments Triton will see as multiples of 16 at launch: tensor pointers (16-byte aligned
    allocations) and the q/k/v/o strides when both head dims are multiples of 16 (strides are
    products of the trailing dims).  Lengths and params are never specialised
    (``do_not_specialize``) and capture strides are left unknown."""
    ptrs = [n for n, t in sig.items() if t.startswith("*")]
    if head_dim % 16 or head_dim_v % 16:
        return ptrs
    return ptrs + [n for n in sig if n.startswith("stride_")]


def _module_default(module: Any, schedule: Any, kind: str, head_dim: int, target: str) -> dict[str, int]:
    """The default config of ``kind`` the module uses on ``target``: its own table (a kind may have
    a ``<kind>_pre_sm90`` entry for targets below sm_90), else the schedule's default."""
    from attncc.codegen.aot import parse_target

    table = getattr(module, "DEFAULT_CONFIGS", None)
    if not isinstance(table, dict) or kind not in table:
        return schedule.default_config(kind, head_dim)
    older = f"{kind}_pre_sm90"
    entry = older if older in table and parse_target(target).arch < 90 else kind
    return launch.table_config(table, head_dim, entry)


def target_use_tma(config: dict[str, int], target: str) -> bool:
    """USE_TMA of an ahead-of-time compile: the config's (default 1) on sm_90 and newer, never
    below (the launch layer's choice on such a device, :func:`attncc.codegen.launch.use_tma`)."""
    from attncc.codegen.aot import parse_target

    return bool(config.get("USE_TMA", 1)) and parse_target(target).arch >= 90


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def report_kernels(fn: CompiledAttention, target: str, dtype: str, head_dim: int, head_dim_v: int | None = None,
                   config: dict[str, int] | None = None, kinds: tuple[str, ...] | None = None) -> list[KernelReport]:
    """Compile the spec's kernels of ``kinds`` (default: every kind of its schedule) for ``target``;
    report registers, spills, shared memory, SASS counts and (with the schedule's
    :meth:`~attncc.schedules.base.Schedule.loop_tiles`) the key loop's metric.

    Triton cannot compile ahead of time in a process that runs its interpreter,
    so in that case the compile runs in a subprocess with the interpreter off.
    """
    kinds = kinds or fn.generated.lowered.schedule.kinds
    for kind in kinds:
        fn.generated_of_kind(kind)  # an unknown kind fails here, in this process
    if interpreting():
        return report_many([(fn.spec, target, dtype, head_dim, head_dim_v, config, kinds)])
    from attncc.codegen.aot import compile_report

    head_dim_v = head_dim_v or head_dim
    out = []
    for kind in kinds:
        gen = fn.generated_of_kind(kind)
        schedule, module = gen.lowered.schedule, load_module(gen)
        cfg = {**_module_default(module, schedule, kind, max(head_dim, head_dim_v), target), **(config or {})}
        tma = target_use_tma(cfg, target)
        for decl in schedule.kernels_of(kind):
            own = schedule.aot_signature(module, decl, dtype, head_dim, head_dim_v, cfg)
            sig, constexprs = own if own is not None else kernel_signature(
                fn, decl, dtype, head_dim, head_dim_v, cfg, module, schedule.aot_constexprs(decl), tma)
            out.append(compile_report(getattr(module, decl.name), sig, constexprs, target, cfg["num_warps"],
                                      cfg["num_stages"], kernel_name=f"{fn.spec.name}.{decl.name}[{dtype},d{head_dim}]",
                                      divisible_by_16=launch_divisibility(sig, head_dim, head_dim_v),
                                      tiles=schedule.loop_tiles(decl)))
    return out


Job = tuple[Spec, str, str, int, "int | None", "dict[str, int] | None", tuple[str, ...]]


class _Worker:
    """One long-lived subprocess (interpreter off) that answers AOT jobs, one JSON line each."""

    proc: subprocess.Popen | None = None

    @classmethod
    def ask(cls, payload: list[dict[str, Any]]) -> dict[str, Any]:
        if cls.proc is None or cls.proc.poll() is not None:
            env = {**os.environ, "TRITON_INTERPRET": "0"}
            cls.proc = subprocess.Popen([sys.executable, "-m", "attncc.runtime.aot_spec"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            atexit.register(cls.close)
        assert cls.proc.stdin is not None and cls.proc.stdout is not None
        cls.proc.stdin.write(json.dumps(payload) + "\n")
        cls.proc.stdin.flush()
        line = cls.proc.stdout.readline()
        if not line:
            cls.proc = None
            raise CompileError("ahead-of-time compile worker died")
        return json.loads(line)

    @classmethod
    def close(cls) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.stdin.close()  # type: ignore[union-attr]
            cls.proc.wait(timeout=10)
        cls.proc = None


def report_many(jobs: list[Job]) -> list[KernelReport]:
    """Run :func:`report_kernels` for each job in the AOT worker process (no interpreter)."""
    payload = [{"spec": spec.source if spec.source.endswith(".toml") else None, "name": spec.name,
                "target": t, "dtype": dt, "head_dim": hd, "head_dim_v": hv, "config": cfg, "kinds": list(kinds)}
               for spec, t, dt, hd, hv, cfg, kinds in jobs]
    if any(p["spec"] is None for p in payload):
        raise CompileError("ahead-of-time reports in an interpreter process need specs loaded from files")
    answer = _Worker.ask(payload)
    if "error" in answer:
        raise CompileError(answer["error"])
    return [KernelReport.from_json(r) for r in answer["reports"]]


def _serve() -> None:
    """Worker loop: one JSON list of jobs per input line, one JSON answer per output line."""
    from attncc.errors import AttnccError
    from attncc.spec.loader import resolve

    for line in sys.stdin:
        try:
            out = []
            for job in json.loads(line):
                fn = compile_spec(resolve(job["spec"]))
                reps = report_kernels(fn, job["target"], job["dtype"], job["head_dim"], job["head_dim_v"],
                                      job["config"], tuple(job["kinds"]))
                out += [r.to_json() for r in reps]
            answer: dict[str, Any] = {"reports": out}
        except (AttnccError, ValueError, KeyError) as exc:
            answer = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _serve()
