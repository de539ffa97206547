"""Ahead-of-time compile + resource reports, on a machine without a GPU.

Every compile here is real (Triton -> PTX -> cubin with the ptxas shipped in Triton's wheel).
Triton cannot generate code in a process running its interpreter, and ``tests/conftest.py``
turns the interpreter on when there is no GPU; so the compiles run in one worker subprocess
started with ``TRITON_INTERPRET=0`` (fixture ``worker``), which imports this very file and runs
the ``scenario_*`` functions below on request.  Kernels are small and each test compiles about
once (~1 s).  Deliberately "huge" configs (BLOCK_M=BLOCK_N=256, head dim 256, 1-2 warps) take
ptxas 1.5-3 *minutes* each, so the spill tests use the smallest oversized configs that spill.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import triton
import triton.language as tl

from attncc.codegen import aot
from attncc.codegen.report import KernelReport
from attncc.errors import CompileError

# --------------------------------------------------------------------------- kernels


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr = 64,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], (acc * scale).to(tl.float16))


@triton.jit
def attn_fwd(
    Q, K, V, Out, sm_scale, seqlen,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    for start_n in range(0, seqlen, BLOCK_N):
        kv = (start_n + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K + kv)
        v = tl.load(V + kv)
        qk = tl.dot(q, tl.trans(k)) * sm_scale
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    tl.store(Out + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (acc / l_i[:, None]).to(tl.float16))


@triton.jit
def axpy_kernel(x_ptr, y_ptr, n, alpha, stride_x, BLOCK: tl.constexpr, ACT: tl.constexpr = "none"):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs * stride_x, mask=mask).to(tl.float32)
    if ACT == "relu":
        x = tl.maximum(x, 0.0)
    tl.store(y_ptr + offs, alpha * x + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def bad_asm_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs)
    r = tl.inline_asm_elementwise("not.an.instruction.b32 $0, $1;", "=r,r", [v], tl.int32, True, 1)
    tl.store(y_ptr + offs, r)


MM_SIG = {
    "a_ptr": "*fp16",
    "b_ptr": "*fp16",
    "c_ptr": "*fp16",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "scale": "fp32",
}
# What Triton's launcher specializes on for 16-byte aligned tensors and N, K multiples of 16.
MM_DIVISIBLE = ["a_ptr", "b_ptr", "c_ptr", "N", "K"]
ATTN_SIG = {"Q": "*fp16", "K": "*fp16", "V": "*fp16", "Out": "*fp16", "sm_scale": "fp32", "seqlen": "i32"}
AXPY_SIG = {"x_ptr": "*fp16", "y_ptr": "*fp32", "n": "i32", "alpha": "fp32", "stride_x": "i32"}

# --------------------------------------------------------------------------- worker side


def scenario_call(func: str, kernel: str, *args: Any, **kwargs: Any) -> Any:
    """``aot.<func>(<kernel>, *args, **kwargs)``; a compiled kernel comes back as its arch."""
    result = getattr(aot, func)(globals()[kernel], *args, **kwargs)
    return result.metadata.target.arch if func == "compile_kernel" else result


def scenario_mm_report(target: str, num_warps: int = 4, num_stages: int = 3, **blocks: int) -> KernelReport:
    constexprs = {"BLOCK_M": 128, "BLOCK_N": 128, **blocks}
    return aot.compile_report(
        matmul_kernel, MM_SIG, constexprs, target, num_warps, num_stages, divisible_by_16=MM_DIVISIBLE
    )


def scenario_cubin_resources(target: str) -> dict[str, int]:
    """Registers according to ``cuobjdump -res-usage`` of the cubin Triton itself built."""
    compiled = aot.compile_kernel(
        matmul_kernel, MM_SIG, {"BLOCK_M": 128, "BLOCK_N": 128}, target, 4, 3, divisible_by_16=MM_DIVISIBLE
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tool = triton.knobs.nvidia.cuobjdump.path
        usage = subprocess.run(
            [tool, "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)), "shared": compiled.metadata.shared}


def scenario_signature_forms() -> bool:
    """Constexprs listed as "constexpr" in the signature or left out, "sm_90a" or "sm_90": one kernel."""
    sig = {k: v for k, v in AXPY_SIG.items() if k != "stride_x"}
    plain = aot.compile_kernel(axpy_kernel, sig, {"BLOCK": 128, "stride_x": 1, "ACT": "relu"}, "sm_90", 4, 1)
    explicit = {**sig, "stride_x": "constexpr", "BLOCK": "constexpr", "ACT": "constexpr"}
    again = aot.compile_kernel(
        axpy_kernel, explicit, {"ACT": "relu", "stride_x": 1, "BLOCK": 128}, "sm_90a", 4, 1
    )
    return again is plain


def scenario_lru() -> dict[str, Any]:
    def report(**kwargs: Any) -> KernelReport:
        return aot.compile_report(
            axpy_kernel, AXPY_SIG, {"BLOCK": 512}, kwargs.pop("target", "sm_90"), 2, 1, **kwargs
        )

    first = report()
    renamed = report(kernel_name="axpy[fp16]")
    facts = {"same": report() is first, "same_90": report(target="90") is first, "renamed": renamed}
    aot.clear_caches()
    fresh = report()
    return {**facts, "fresh_is_new": fresh is not first, "fresh_equal": fresh == first, "first": first}


def scenario_divisible_iterator() -> bool:
    """``divisible_by_16`` may be any iterable, even a one-shot iterator."""
    listed = scenario_mm_report("sm_80")
    constexprs = {"BLOCK_M": 128, "BLOCK_N": 128}
    once = aot.compile_report(
        matmul_kernel, MM_SIG, constexprs, "sm_80", 4, 3, divisible_by_16=iter(MM_DIVISIBLE)
    )
    return once is listed


# --------------------------------------------------------------------------- test side


class AotWorker:
    """A subprocess with the interpreter off that runs this file's ``scenario_*`` functions."""

    BOOT = (
        "import base64, importlib.util, pickle, sys, traceback\n"
        "channel, sys.stdout = sys.stdout, sys.stderr\n"
        "spec = importlib.util.spec_from_file_location('aot_scenarios', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['aot_scenarios'] = module\n"
        "spec.loader.exec_module(module)\n"
        "for line in sys.stdin:\n"
        "    name, args, kwargs = pickle.loads(base64.b64decode(line))\n"
        "    try:\n"
        "        reply = ('ok', getattr(module, name)(*args, **kwargs))\n"
        "    except Exception as exc:\n"
        "        reply = ('err', type(exc).__name__, str(exc), traceback.format_exc())\n"
        "    channel.write(base64.b64encode(pickle.dumps(reply)).decode() + '\\n')\n"
        "    channel.flush()\n"
    )

    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", self.BOOT, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "TRITON_INTERPRET": "0"},
        )

    def __call__(self, scenario: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(
            base64.b64encode(pickle.dumps((scenario.__name__, args, kwargs))).decode() + "\n"
        )
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"AOT worker died:\n{self._log.read()[-4000:]}")
        reply = pickle.loads(base64.b64decode(line))
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, trace = reply
        if kind == "CompileError":
            raise CompileError(message)
        raise RuntimeError(f"{kind} in AOT worker: {message}\n{trace}")

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._log.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[AotWorker]:
    aot_worker = AotWorker()
    yield aot_worker
    aot_worker.close()


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("text", "arch"),
    [("sm_80", 80), ("sm_86", 86), ("sm_89", 89), ("sm_90", 90), ("sm_90a", 90), ("80", 80), ("90", 90)],
)
def test_parse_target_accepts(text: str, arch: int) -> None:
    target = aot.parse_target(text)
    assert (target.backend, target.arch, target.warp_size) == ("cuda", arch, 32)
    assert aot.target_name(text) == f"sm_{arch}"


@pytest.mark.parametrize("text", ["sm_75", "sm_80a", "gfx90a", "sm_", "", "9", "sm_90b", "cuda:90"])
def test_parse_target_rejects_with_one_line(text: str) -> None:
    with pytest.raises(CompileError, match="unsupported target") as info:
        aot.parse_target(text)
    assert "\n" not in str(info.value)


def test_shared_memory_limits() -> None:
    assert aot.SHARED_MEMORY_LIMIT == {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}


# --------------------------------------------------------------------------- ptxas log parsing

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'attn_fwd' for 'sm_90a'
ptxas info    : (C7511) Potential Performance Loss: wgmma.mma_async instructions are serialized due to \
insufficient register resources for the wgmma pipeline in the function 'attn_fwd' in line 1144
ptxas info    : Function properties for helper
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Function properties for attn_fwd
    96 bytes stack frame, 132 bytes spill stores, 112 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 96 bytes cumulative stack size, 1024 bytes smem
ptxas info    : Compile time = 367.283 ms
"""


def test_parse_ptxas_log() -> None:
    stats = aot.parse_ptxas_log(PTXAS_LOG)
    assert stats == aot.PtxasStats(
        registers=255,
        spill_store_bytes=136,
        spill_load_bytes=116,
        static_shared_bytes=1024,
        wgmma_serialized=True,
    )


def test_parse_ptxas_log_clean() -> None:
    log = (
        "ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    )
    assert aot.parse_ptxas_log(log) == aot.PtxasStats(40, 0, 0, 0, False)
    assert aot.parse_ptxas_log("nothing useful").registers is None


# --------------------------------------------------------------------------- real compiles


def test_sm90_fp16_dot_uses_wgmma(worker: AotWorker) -> None:
    report = worker(scenario_mm_report, "sm_90")
    assert report.kernel == "matmul_kernel" and report.target == "sm_90"
    assert report.uses_wgmma and not report.wgmma_serialized
    assert 0 < report.registers <= 255
    assert report.config == {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
    assert report.max_shared_bytes == 232448
    assert report.fits


def test_sm80_same_kernel_has_no_wgmma(worker: AotWorker) -> None:
    report = worker(scenario_mm_report, "sm_80")
    assert report.target == "sm_80"
    assert not report.uses_wgmma and not report.wgmma_serialized
    assert report.max_shared_bytes == 166912
    assert report.fits


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_report_agrees_with_tritons_own_cubin(worker: AotWorker, target: str) -> None:
    """Our ``ptxas -v`` re-run must describe the very cubin Triton built (same binary and flags)."""
    report = worker(scenario_mm_report, target)
    cubin = worker(scenario_cubin_resources, target)
    assert report.registers == cubin["registers"]
    assert report.shared_bytes == cubin["shared"] > 0


def test_flash_attention_sm90_spills_and_serializes_wgmma(worker: AotWorker) -> None:
    # 128x128 tiles with head dim 128 on one warpgroup: two fp32 accumulators do not fit.
    constexprs = {"HEAD_DIM": 128, "BLOCK_M": 128, "BLOCK_N": 128}
    report = worker(scenario_call, "compile_report", "attn_fwd", ATTN_SIG, constexprs, "sm_90", 4, 2)
    assert report.uses_wgmma and report.wgmma_serialized
    assert report.spill_store_bytes > 0 and report.spill_load_bytes > 0
    assert report.registers == 255
    assert report.shared_bytes <= report.max_shared_bytes
    assert not report.fits


def test_matmul_sm80_two_warps_spills(worker: AotWorker) -> None:
    report = worker(scenario_mm_report, "sm_80", num_warps=2, num_stages=2, BLOCK_K=32)
    assert report.spills > 0 and report.registers == 255
    assert report.shared_bytes <= report.max_shared_bytes
    assert not report.fits


def test_shared_memory_over_limit_compiles_but_does_not_fit(worker: AotWorker) -> None:
    """Triton does not check shared memory when compiling ahead of time (its launcher does, at
    load time), so an oversized pipeline compiles and the report says it does not fit."""
    report = worker(
        scenario_mm_report, "sm_80", num_warps=4, num_stages=4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=256
    )
    assert report.spills == 0
    assert report.shared_bytes > aot.SHARED_MEMORY_LIMIT["sm_80"]
    assert not report.fits


# --------------------------------------------------------------------------- signature conventions


@pytest.mark.parametrize("target", ["sm_80", "sm_86", "sm_89", "sm_90"])
def test_every_target_compiles(worker: AotWorker, target: str) -> None:
    report = worker(scenario_call, "compile_report", "axpy_kernel", AXPY_SIG, {"BLOCK": 1024}, target, 4, 1)
    assert report.target == target and report.max_shared_bytes == aot.SHARED_MEMORY_LIMIT[target]
    assert report.registers > 0 and report.fits and not report.uses_wgmma


def test_pointer_int_float_args_and_constexpr_defaults(worker: AotWorker) -> None:
    report = worker(scenario_call, "compile_report", "axpy_kernel", AXPY_SIG, {"BLOCK": 256}, "sm_80", 4, 1)
    assert report.config == {"BLOCK": 256, "ACT": "none", "num_warps": 4, "num_stages": 1}
    assert report.registers > 0 and report.fits and not report.uses_wgmma


def test_signature_forms_are_normalized(worker: AotWorker) -> None:
    """A runtime parameter may also be pinned to a constexpr value (stride_x=1), as Triton's
    launcher does for an int argument equal to 1."""
    assert worker(scenario_signature_forms) is True


def test_divisible_by_16_accepts_an_iterator(worker: AotWorker) -> None:
    assert worker(scenario_divisible_iterator) is True


def test_repeated_report_is_the_same_object(worker: AotWorker) -> None:
    facts = worker(scenario_lru)
    assert facts["same"] and facts["same_90"]
    assert facts["renamed"].kernel == "axpy[fp16]" and facts["first"].kernel == "axpy_kernel"
    assert facts["renamed"].registers == facts["first"].registers
    assert facts["fresh_is_new"] and facts["fresh_equal"]


def test_report_to_json_round_trips(worker: AotWorker) -> None:
    report = worker(scenario_mm_report, "sm_90")
    data = json.loads(json.dumps(report.to_json()))
    assert data["registers"] == report.registers and data["fits"] is True and data["uses_wgmma"] is True


# --------------------------------------------------------------------------- errors


def test_ptxas_error_is_one_line_compile_error(worker: AotWorker) -> None:
    sig = {"x_ptr": "*i32", "y_ptr": "*i32"}
    with pytest.raises(CompileError) as info:
        worker(scenario_call, "compile_kernel", "bad_asm_kernel", sig, {"BLOCK": 128}, "sm_80", 4, 1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("bad_asm_kernel for sm_80 [BLOCK=128, num_warps=4, num_stages=1]: ptxas: ")
    assert "error" in message and "Unknown modifier" in message


def test_frontend_error_is_one_line_compile_error(worker: AotWorker) -> None:
    with pytest.raises(CompileError, match=r"axpy_kernel for sm_90 \[BLOCK=100.*power of 2") as info:
        worker(scenario_call, "compile_kernel", "axpy_kernel", AXPY_SIG, {"BLOCK": 100}, "sm_90", 4, 1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("signature", "constexprs", "warps", "stages", "message"),
    [
        (AXPY_SIG, {}, 4, 1, "constexpr parameter 'BLOCK' needs a value"),
        ({**AXPY_SIG, "z": "i32"}, {"BLOCK": 64}, 4, 1, "no parameter named 'z'"),
        ({**AXPY_SIG, "n": "int"}, {"BLOCK": 64}, 4, 1, "unknown Triton type 'int'"),
        ({k: v for k, v in AXPY_SIG.items() if k != "n"}, {"BLOCK": 64}, 4, 1, "'n' is missing"),
        (AXPY_SIG, {"BLOCK": 64, "n": 3}, 4, 1, "'n' has type 'i32' but is given a constexpr"),
        (AXPY_SIG, {"BLOCK": 64}, 3, 1, "num_warps=3"),
        (AXPY_SIG, {"BLOCK": 64}, 64, 1, "num_warps=64"),
        (AXPY_SIG, {"BLOCK": 64}, 4, 0, "num_stages=0"),
    ],
)
def test_bad_inputs_fail_before_compiling(
    worker: AotWorker,
    signature: dict[str, str],
    constexprs: dict[str, object],
    warps: int,
    stages: int,
    message: str,
) -> None:
    with pytest.raises(CompileError, match=re.escape(message)) as info:
        worker(scenario_call, "compile_report", "axpy_kernel", signature, constexprs, "sm_80", warps, stages)
    assert "\n" not in str(info.value)


def test_divisible_by_16_must_name_pointer_or_int(worker: AotWorker) -> None:
    with pytest.raises(CompileError, match="divisible_by_16 names 'alpha'"):
        worker(scenario_call, "compile_kernel", "axpy_kernel", AXPY_SIG, {"BLOCK": 64}, "sm_80", 4, 1,
               divisible_by_16=["x_ptr", "alpha"])  # fmt: skip


def test_not_a_jit_function() -> None:
    with pytest.raises(CompileError, match="expected a @triton.jit function"):
        aot.compile_kernel(lambda x: x, {"x": "i32"}, {}, "sm_80", 4, 1)


def test_interpreted_kernel_gets_a_clear_error() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    with pytest.raises(
        CompileError, match="axpy_kernel: cannot compile ahead of time under TRITON_INTERPRET=1"
    ):
        aot.compile_report(InterpretedFunction(axpy_kernel.fn), AXPY_SIG, {"BLOCK": 64}, "sm_80", 4, 1)


# --------------------------------------------------------------------------- table


def _fake(kernel: str, **fields: object) -> KernelReport:
    base: dict[str, object] = dict(
        kernel=kernel, target="sm_90", config={"BLOCK_M": 128, "num_warps": 8, "num_stages": 3},
        registers=168, spill_store_bytes=0, spill_load_bytes=0, shared_bytes=98304,
        max_shared_bytes=232448, uses_wgmma=True,
    )  # fmt: skip
    return KernelReport(**{**base, **fields})


def test_format_reports_table() -> None:
    reports = [
        _fake("prefill.attn_fwd[fp16,d128]"),
        _fake("x", registers=255, spill_store_bytes=352, spill_load_bytes=344, wgmma_serialized=True),
        _fake("y", target="sm_80", uses_wgmma=False, shared_bytes=196608, max_shared_bytes=166912),
    ]
    lines = aot.format_reports(reports).splitlines()
    assert lines[0].split() == [
        "kernel",
        "target",
        "config",
        "regs",
        "spills",
        "st/ld",
        "smem/limit",
        "wgmma",
        "fits",
    ]
    assert len(lines) == 2 + len(reports) + 1
    assert "BLOCK_M=128 num_warps=8 num_stages=3" in lines[2]
    assert re.search(r"168\s+0/0\s+98304/232448\s+yes\s+yes$", lines[2])
    assert re.search(r"255\s+352/344\s+98304/232448\s+serialized\s+NO$", lines[3])
    assert re.search(r"196608/166912\s+no\s+NO$", lines[4])
    # the right-aligned smem/limit column ends at the same position on every row
    ends = {line.index("/232448") + 7 for line in lines[2:4]} | {lines[4].index("/166912") + 7}
    assert len(ends) == 1
    assert lines[-1] == "3 kernel(s), 2 not fitting (spills or shared memory over the limit)"


def test_format_reports_with_real_reports(worker: AotWorker) -> None:
    reports = [worker(scenario_mm_report, "sm_80"), worker(scenario_mm_report, "sm_90")]
    table = aot.format_reports(reports)
    for report in reports:
        assert f"{report.shared_bytes}/{report.max_shared_bytes}" in table
        assert f" {report.registers} " in table


def test_format_reports_empty() -> None:
    assert aot.format_reports([]).splitlines()[-1].startswith("0 kernel(s)")
