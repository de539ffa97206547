"""Ahead-of-time compilation of Triton kernels for a GPU target, without a GPU.

``triton.compile`` runs the whole pipeline (Triton IR -> PTX -> cubin) on the host as long as it
is given an explicit :class:`GPUTarget`; only *loading* a kernel needs a driver.  This module
wraps that, then re-runs the ``ptxas`` that ships in Triton's wheel with ``-v`` on the PTX to
learn what the kernel costs: registers per thread, spill bytes, shared memory, and whether
Hopper ``wgmma`` instructions were emitted (and serialized); ``cuobjdump -sass`` of the cubin
counts wgmma and mma.sync instructions.  See ``docs/aot.md``.

Conventions (Triton 3.9):

* ``signature`` maps parameter names to Triton type strings (``"*fp16"``, ``"i32"``, ``"fp32"``,
  ...) and may map constexpr parameters to ``"constexpr"`` (or leave them out).
* ``constexprs`` maps parameter *names* to values; ``tl.constexpr`` parameters with a default may
  be left out and get their default.  Internally names become ``(index,)`` tuples, the key form
  ``ASTSource`` stores.
* Pointer parameters are assumed 16-byte aligned (``tt.divisibility=16``), which is what Triton's
  launcher specializes on for freshly allocated torch tensors; pass ``divisible_by_16`` to say
  otherwise, or to also mark integer strides / lengths that will be multiples of 16 at run time
  (the launcher specializes those too, and it changes registers, spills and shared memory).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, CompiledKernel
from triton.runtime.jit import JITFunction, KernelInterface

from attncc.codegen.report import KernelReport, format_reports
from attncc.codegen.sass import cuobjdump_sass, parse_sass
from attncc.errors import CompileError

__all__ = [
    "SHARED_MEMORY_LIMIT",
    "PtxasStats",
    "clear_caches",
    "compile_kernel",
    "compile_report",
    "format_reports",
    "parse_ptxas_log",
    "parse_target",
    "report_from_compiled",
    "target_name",
]

#: Per-block opt-in maximum of shared memory in bytes (``cudaDevAttrMaxSharedMemoryPerBlockOptin``).
#: Sources: NVIDIA Ampere tuning guide (A100 / sm_80: up to 163 KB per thread block; compute
#: capability 8.6: up to 99 KB), Ada tuning guide (8.9: up to 99 KB), Hopper tuning guide
#: (H100 / sm_90: up to 227 KB per thread block); 1 KB = 1024 bytes.  These are the numbers
#: Triton's launcher compares ``metadata.shared`` against when it loads a kernel.
SHARED_MEMORY_LIMIT: dict[str, int] = {
    "sm_80": 163 * 1024,  # 166912
    "sm_86": 99 * 1024,  # 101376
    "sm_89": 99 * 1024,  # 101376
    "sm_90": 227 * 1024,  # 232448
}

_MAX_THREADS_PER_BLOCK = 1024
_TARGET_RE = re.compile(r"^(?:sm_)?(\d{2,3})(a?)$")
_WGMMA_INSTRUCTION = "wgmma.mma_async"


# --------------------------------------------------------------------------- targets


def parse_target(target: str) -> GPUTarget:
    """``"sm_80"`` -> ``GPUTarget("cuda", 80, 32)``; also ``"sm_90a"``, ``"80"``, ``"90"``.

    Only targets listed in :data:`SHARED_MEMORY_LIMIT` are accepted; anything else raises a
    one-line :class:`CompileError`.
    """
    match = _TARGET_RE.match(str(target).strip().lower())
    arch = int(match.group(1)) if match else -1
    arch_specific = bool(match and match.group(2))
    if f"sm_{arch}" not in SHARED_MEMORY_LIMIT or (arch_specific and arch < 90):
        supported = ", ".join(SHARED_MEMORY_LIMIT)
        raise CompileError(
            f"unsupported target {target!r}: expected one of {supported} (or e.g. 'sm_90a', '90')"
        )
    return GPUTarget("cuda", arch, 32)


def target_name(target: str | GPUTarget) -> str:
    """Canonical name of a target as used in reports: ``"sm_90a"`` / ``"90"`` -> ``"sm_90"``."""
    arch = target.arch if isinstance(target, GPUTarget) else parse_target(target).arch
    return f"sm_{arch}"


# --------------------------------------------------------------------------- in-process LRU


class _LRU:
    """A small thread-safe LRU map (no disk: Triton keeps its own on-disk cache)."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_KERNELS = _LRU(maxsize=64)  # CompiledKernel objects hold the cubin and every IR: keep few
_REPORTS = _LRU(maxsize=1024)


def clear_caches() -> None:
    """Forget every compiled kernel and report memoized in this process."""
    _KERNELS.clear()
    _REPORTS.clear()


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Resolved:
    """Validated compile inputs, in the form ``ASTSource`` wants plus a hashable key."""

    signature: dict[str, str]  # every parameter; constexpr ones map to "constexpr"
    constexprs: dict[str, Any]  # every constexpr parameter (defaults filled in), in parameter order
    divisible: tuple[str, ...]  # parameters specialized as divisible by 16
    key: Hashable


def _value_key(value: Any) -> str:
    """Hashable, type-aware stand-in for a constexpr value (as ``ASTSource.hash`` does)."""
    if isinstance(value, tuple):
        return "(" + ",".join(_value_key(v) for v in value) + ")"
    if hasattr(value, "cache_key"):
        return str(value.cache_key)
    return f"{type(value).__name__}:{value!r}"


_NO_VALUE = object()  # marks a runtime (non-constexpr) parameter


_INTERPRETER_HINT = (
    "cannot compile ahead of time under TRITON_INTERPRET=1; compile in a process where "
    "TRITON_INTERPRET=0 is set before triton is imported (e.g. a subprocess)"
)


def _interpreted(fn: Any) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def _check_fn(fn: Any) -> JITFunction:
    """``fn`` itself, or the ``@triton.jit`` function under ``@triton.autotune``/``heuristics``."""
    while isinstance(fn, KernelInterface) and not isinstance(fn, JITFunction) and not _interpreted(fn):
        fn = getattr(fn, "fn", None)
    if _interpreted(fn) or (isinstance(fn, JITFunction) and triton.knobs.runtime.interpret):
        raise CompileError(f"{getattr(fn.fn, '__name__', 'kernel')}: {_INTERPRETER_HINT}")
    if not isinstance(fn, JITFunction):
        raise CompileError(f"expected a @triton.jit function, got {type(fn).__name__}")
    return fn


def _check_type(kernel: str, name: str, ty: str) -> None:
    try:
        triton.language.str_to_ty(ty, None)
    except Exception:
        raise CompileError(f"{kernel}: parameter {name!r} has unknown Triton type {ty!r}") from None


def _resolve_param(
    fn: JITFunction, param: Any, signature: Mapping[str, str], constexprs: Mapping[str, Any]
) -> tuple[str, Any]:
    """(type string, constexpr value or ``_NO_VALUE``) of one kernel parameter."""
    name, kernel = param.name, fn.__name__
    ty = signature.get(name)
    if name in constexprs:
        if ty not in (None, "constexpr"):
            raise CompileError(f"{kernel}: parameter {name!r} has type {ty!r} but is given a constexpr value")
        return "constexpr", constexprs[name]
    if param.is_constexpr or ty == "constexpr":
        if not param.has_default:
            raise CompileError(f"{kernel}: constexpr parameter {name!r} needs a value in constexprs")
        return "constexpr", param.default
    if ty is None:
        raise CompileError(f"{kernel}: parameter {name!r} is missing from the signature")
    _check_type(kernel, name, ty)
    return ty, _NO_VALUE


def _resolve(
    fn: JITFunction,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    divisible_by_16: Iterable[str] | None,
) -> tuple[dict[str, str], dict[str, Any], tuple[str, ...]]:
    """Full signature, full constexpr values and the divisible-by-16 parameters of ``fn``."""
    names = set(fn.arg_names)
    for given in (*signature, *constexprs):
        if given not in names:
            raise CompileError(
                f"{fn.__name__}: no parameter named {given!r} (parameters: {', '.join(fn.arg_names)})"
            )
    sig: dict[str, str] = {}
    values: dict[str, Any] = {}
    for param in fn.params:
        sig[param.name], value = _resolve_param(fn, param, signature, constexprs)
        if value is not _NO_VALUE:
            values[param.name] = value
    if divisible_by_16 is None:
        divisible = tuple(n for n, t in sig.items() if t.startswith("*"))
    else:
        divisible = tuple(divisible_by_16)
        for name in divisible:
            if not sig.get(name, "constexpr").startswith(("*", "i", "u")):
                raise CompileError(
                    f"{fn.__name__}: divisible_by_16 names {name!r}, not a pointer or integer parameter"
                )
    return sig, values, divisible


def _resolve_inputs(
    fn: JITFunction,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    arch: int,
    num_warps: int,
    num_stages: int,
    divisible_by_16: Iterable[str] | None,
) -> _Resolved:
    sig, values, divisible = _resolve(fn, signature, constexprs, divisible_by_16)
    try:
        source_key = fn.cache_key  # hash of the kernel's source and of everything it calls
    except Exception as exc:
        raise CompileError(f"{fn.__name__}: {_first_error_line(exc)}") from exc
    key = (
        source_key,
        fn.__name__,
        tuple(sig.items()),
        tuple((k, _value_key(v)) for k, v in values.items()),
        tuple(sorted(divisible)),
        arch,
        num_warps,
        num_stages,
    )
    return _Resolved(sig, values, divisible, key)


def _check_launch(kernel: str, num_warps: int, num_stages: int) -> None:
    warps_ok = isinstance(num_warps, int) and num_warps > 0 and num_warps & (num_warps - 1) == 0
    if not warps_ok or num_warps * 32 > _MAX_THREADS_PER_BLOCK:
        raise CompileError(
            f"{kernel}: num_warps={num_warps!r} must be a power of two with at most "
            f"{_MAX_THREADS_PER_BLOCK} threads per block"
        )
    if not isinstance(num_stages, int) or num_stages < 1:
        raise CompileError(f"{kernel}: num_stages={num_stages!r} must be a positive integer")


def _config(values: Mapping[str, Any], num_warps: int, num_stages: int) -> dict[str, Any]:
    """Report config: constexpr values (JSON-friendly) then ``num_warps`` and ``num_stages``."""
    config = {
        k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v) for k, v in values.items()
    }
    config["num_warps"] = num_warps
    config["num_stages"] = num_stages
    return config


def _describe(kernel: str, target: str, config: Mapping[str, Any]) -> str:
    """``"attn_fwd for sm_90 [BLOCK_M=128, ..., num_warps=4, num_stages=3]"``."""
    return f"{kernel} for {target} [{', '.join(f'{k}={v}' for k, v in config.items())}]"


# --------------------------------------------------------------------------- compile


_COMPILE_LOCK = threading.Lock()
_PTXAS_FILE_PREFIX = re.compile(r"^ptxas\S*\s+\S+\.ptx,\s*")


def _ptxas_error_line(log: str) -> str | None:
    """First ``error``/``fatal`` line of a ptxas log, without the temp file name; None if none."""
    for line in log.splitlines():
        if re.search(r"\b(error|fatal)\b", line, re.IGNORECASE):
            return "ptxas: " + " ".join(_PTXAS_FILE_PREFIX.sub("", line.strip()).split())
    return None


def _first_error_line(exc: BaseException) -> str:
    """The most useful single line of a Triton / ptxas failure."""
    text = str(getattr(exc, "error_message", None) or exc)
    if type(exc).__name__ == "PTXASError" and "`ptxas` stderr:" in text:
        return _ptxas_error_line(text.split("`ptxas` stderr:", 1)[1]) or text.splitlines()[0]
    node = getattr(exc, "node", None)
    if hasattr(node, "lineno"):  # Triton front-end CompilationError; line 1 is the ``def`` line
        detail = getattr(exc, "error_message", None)
        if not detail and exc.__cause__ is not None:
            detail = _first_error_line(exc.__cause__)
        return f"kernel line {node.lineno}: {(detail or type(exc).__name__).strip().splitlines()[0]}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _triton_compile(source: ASTSource, target: GPUTarget, num_warps: int, num_stages: int) -> CompiledKernel:
    """``triton.compile`` with its stdout chatter (failing PTX dumps) kept off our stdout.

    Triton prints a full PTX reproducer to stdout when ptxas fails; that would corrupt
    ``attncc compile --json`` output.  Successful-run output (e.g. ``TRITON_DUMP_PTXAS_LOG``)
    is forwarded to stderr.  Swapping ``sys.stdout`` is process-wide, so compiles from several
    threads are serialized (the ``ptxas -v`` re-runs of :func:`report_from_compiled` are not);
    use processes to compile in parallel.
    """
    buffer = io.StringIO()
    with _COMPILE_LOCK, contextlib.redirect_stdout(buffer):
        compiled = triton.compile(
            source, target=target, options={"num_warps": num_warps, "num_stages": num_stages}
        )
    if buffer.getvalue():
        sys.stderr.write(buffer.getvalue())
    return compiled


def compile_kernel(
    fn: JITFunction,
    signature: dict[str, str],
    constexprs: dict[str, object],
    target: str,
    num_warps: int,
    num_stages: int,
    *,
    divisible_by_16: Iterable[str] | None = None,
) -> CompiledKernel:
    """Compile ``fn`` for ``target`` on the host (no GPU needed); memoized in-process.

    ``divisible_by_16``: parameters Triton may assume are multiples of 16 (pointers: 16-byte
    aligned).  ``None`` means every pointer parameter, as Triton's launcher specializes for torch
    tensors.  Raises :class:`CompileError` (one line: kernel, target, config, cause).
    """
    fn = _check_fn(fn)
    gpu = parse_target(target)
    _check_launch(fn.__name__, num_warps, num_stages)
    inputs = _resolve_inputs(fn, signature, constexprs, gpu.arch, num_warps, num_stages, divisible_by_16)
    cached = _KERNELS.get(inputs.key)
    if cached is not None:
        return cached
    index = {name: i for i, name in enumerate(fn.arg_names)}
    consts = {(index[k],): v for k, v in inputs.constexprs.items()}
    attrs = {(index[k],): [["tt.divisibility", 16]] for k in inputs.divisible}
    source = ASTSource(fn, inputs.signature, consts, attrs)
    try:
        compiled = _triton_compile(source, gpu, num_warps, num_stages)
    except Exception as exc:
        where = _describe(fn.__name__, target_name(gpu), _config(inputs.constexprs, num_warps, num_stages))
        raise CompileError(f"{where}: {_first_error_line(exc)}") from exc
    _KERNELS.put(inputs.key, compiled)
    return compiled


def compile_report(
    fn: JITFunction,
    signature: dict[str, str],
    constexprs: dict[str, object],
    target: str,
    num_warps: int,
    num_stages: int,
    *,
    kernel_name: str | None = None,
    divisible_by_16: Iterable[str] | None = None,
    tiles: tuple[str, str] | None = None,
) -> KernelReport:
    """Compile ``fn`` ahead of time and report its resources; memoized in-process.

    Repeated calls with the same inputs return the *same* :class:`KernelReport` object.
    ``kernel_name`` defaults to ``fn.__name__``.  ``tiles``: the config keys of the key loop's
    row tile and swept tile, for :attr:`KernelReport.loop_metric` (None: no tile loop).
    """
    fn = _check_fn(fn)
    gpu = parse_target(target)
    name = kernel_name or fn.__name__
    _check_launch(name, num_warps, num_stages)
    if divisible_by_16 is not None:
        divisible_by_16 = tuple(divisible_by_16)  # used twice: an iterator would be spent
    inputs = _resolve_inputs(fn, signature, constexprs, gpu.arch, num_warps, num_stages, divisible_by_16)
    key = (inputs.key, name, tiles)
    cached = _REPORTS.get(key)
    if cached is not None:
        return cached
    compiled = compile_kernel(
        fn, signature, constexprs, target, num_warps, num_stages, divisible_by_16=divisible_by_16
    )
    report = report_from_compiled(compiled, target, _config(inputs.constexprs, num_warps, num_stages), name,
                                  tiles=tiles)
    _REPORTS.put(key, report)
    return report


# --------------------------------------------------------------------------- ptxas


@dataclass(frozen=True)
class PtxasStats:
    """What ``ptxas -v`` says about one module (spills summed over all its functions)."""

    registers: int | None  # None when no "Used N registers" line was found
    spill_store_bytes: int
    spill_load_bytes: int
    static_shared_bytes: int
    wgmma_serialized: bool


_REGISTERS_RE = re.compile(r"Used (\d+) registers")
_SPILLS_RE = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM_RE = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> PtxasStats:
    """Parse the ``ptxas -v`` info output (registers, spills, static smem, wgmma serialization)."""
    registers = [int(n) for n in _REGISTERS_RE.findall(log)]
    spills = [(int(s), int(ld)) for s, ld in _SPILLS_RE.findall(log)]
    smem = [int(n) for n in _SMEM_RE.findall(log)]
    serialized = any("wgmma" in ln and "serializ" in ln.lower() for ln in log.splitlines())
    return PtxasStats(
        registers=max(registers) if registers else None,
        spill_store_bytes=sum(s for s, _ in spills),
        spill_load_bytes=sum(ld for _, ld in spills),
        static_shared_bytes=max(smem, default=0),
        wgmma_serialized=serialized,
    )


def _ptxas_candidates(arch: int) -> list[str]:
    """ptxas binaries to try: the one Triton itself picks for ``arch`` first, then the others."""
    paths: list[str] = []
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        paths.append(get_ptxas(arch).path)
    except Exception:  # older/newer Triton layouts: fall through to the knobs
        pass
    for tool in ("ptxas", "ptxas_blackwell"):
        try:
            paths.append(getattr(triton.knobs.nvidia, tool).path)
        except Exception:
            continue
    return list(dict.fromkeys(paths))


def _ptxas_args(arch: int, metadata: Any) -> list[str]:
    """Flags of Triton 3.9's ``make_cubin`` that change register allocation, plus ``-v``."""
    args = ["-lineinfo", "-v", "--regAllocOptLevel=2"]
    if not getattr(metadata, "enable_fp_fusion", True):
        args.append("--fmad=false")
    ptx_options = getattr(metadata, "ptx_options", None)
    if ptx_options:
        args += ptx_options.split()
    return [*args, f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}"]


def _run_ptxas(ptx: str, arch: int, metadata: Any) -> str:
    """Assemble ``ptx`` with ``-v`` and return the log; raise with the first error line if no ptxas can."""
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="attncc-aot-") as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        for tool in _ptxas_candidates(arch):
            cmd = [tool, *_ptxas_args(arch, metadata), str(src), "-o", str(Path(tmp) / "kernel.cubin")]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            log = proc.stdout + proc.stderr
            if proc.returncode == 0:
                return log
            failures.append(_ptxas_error_line(log) or f"ptxas exited with {proc.returncode}")
    raise CompileError(failures[0] if failures else "no ptxas binary found")


def report_from_compiled(
    compiled: CompiledKernel, target: str, config: dict, kernel_name: str, *, tiles: tuple[str, str] | None = None
) -> KernelReport:
    """Build a :class:`KernelReport` from a compiled kernel by re-running ``ptxas -v`` on its PTX.

    Registers come from ``compiled.n_regs`` when the kernel was loaded on a GPU, else from ptxas;
    spills always from ptxas.  Shared memory is Triton's dynamic request (``metadata.shared``)
    plus ptxas' static ``smem``.  wgmma (HGMMA) and mma.sync (HMMA) counts come from
    ``cuobjdump -sass`` of the cubin Triton built (:mod:`attncc.codegen.sass`), and so do the
    TMA / cp.async / plain load counts.  ``tiles`` as for :func:`compile_report`.
    """
    name = target_name(target)
    arch = parse_target(target).arch
    metadata = compiled.metadata
    compiled_arch = getattr(getattr(metadata, "target", None), "arch", arch)
    if compiled_arch != arch:
        raise CompileError(
            f"{_describe(kernel_name, name, config)}: kernel was compiled for sm_{compiled_arch}"
        )
    ptx = compiled.asm["ptx"]
    try:
        stats = parse_ptxas_log(_run_ptxas(ptx, arch, metadata))
    except CompileError as exc:
        raise CompileError(f"{_describe(kernel_name, name, config)}: {exc}") from exc
    registers = compiled.__dict__.get("n_regs") or stats.registers
    if registers is None:
        raise CompileError(f"{_describe(kernel_name, name, config)}: ptxas -v printed no register count")
    try:
        sass = parse_sass(cuobjdump_sass(compiled.asm["cubin"]))
    except CompileError as exc:
        raise CompileError(f"{_describe(kernel_name, name, config)}: {exc}") from exc
    return KernelReport(
        kernel=kernel_name,
        target=name,
        config=dict(config),
        registers=int(registers),
        spill_store_bytes=stats.spill_store_bytes,
        spill_load_bytes=stats.spill_load_bytes,
        shared_bytes=int(getattr(metadata, "shared", 0) or 0) + stats.static_shared_bytes,
        max_shared_bytes=SHARED_MEMORY_LIMIT[name],
        uses_wgmma=_WGMMA_INSTRUCTION in ptx,
        wgmma_serialized=stats.wgmma_serialized,
        sass_instructions=sass.instructions,
        hgmma=sass.hgmma,
        hmma=sass.hmma,
        loop_instructions=sass.loop_instructions,
        loop_hgmma=sass.loop_hgmma,
        loop_hmma=sass.loop_hmma,
        tma=sass.tma,
        cp_async=sass.cp_async,
        ldg=sass.ldg,
        loop_tma=sass.loop_tma,
        loop_cp_async=sass.loop_cp_async,
        loop_ldg=sass.loop_ldg,
        row_tile=None if tiles is None else tiles[0],
        swept_tile=None if tiles is None else tiles[1],
    )
