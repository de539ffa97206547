"""Generated sources: cache keys, atomic cache, readability, shape-generic kernels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

import attncc
from attncc.codegen import cache
from attncc.compiler import generate
from attncc.spec.loader import load_text, resolve


def test_key_depends_on_spec_content_not_on_its_file() -> None:
    a = resolve("causal")
    text = Path(a.source).read_text()
    same = load_text(text, "elsewhere.toml")
    assert generate(a).key == generate(same).key
    other = load_text(text.replace('mask = "n <= m"', 'mask = "n < m"'), "x.toml")
    assert generate(other).key != generate(a).key


def test_cache_copy_is_rewritten_when_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNCC_CACHE_DIR", str(tmp_path))
    path = cache.write("abc", "x = 1\n")
    assert path is not None and path.read_text() == "x = 1\n"
    path.write_text("x = 2\n")
    assert cache.write("abc", "x = 1\n") == path and path.read_text() == "x = 1\n"
    assert not list(path.parent.glob(".tmp_*")), "temporary files left behind"


def test_source_is_readable() -> None:
    src = generate(resolve("sinks_window")).source
    assert "segment 1 of 2" in src and "segment 2 of 2" in src
    assert "def score_mod(" in src and "def mask_mod(" in src
    assert "full (mask-free) tiles" in src



# --- real compilations: Triton's own JIT dispatch for an sm_90 target ------------------------------------

KERNELS = ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")
TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


class _Sm90Driver:
    """What ``JITFunction.run`` asks the active driver for: a device, a stream and the target (sm_90)."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)


class _CachedStandIn:
    """Sits in Triton's kernel cache where the compiled binary would; counts the launches it serves."""

    function = None
    packed_metadata = None

    def __init__(self, launches: dict[str, int], name: str) -> None:
        self.launches, self.name = launches, name

    def launch_metadata(self, *args: Any) -> None:
        return None

    def run(self, *args: Any) -> None:
        self.launches[self.name] += 1


def _as_jit(kernel: Any, specialize: tuple[str, ...]) -> JITFunction:
    """A ``JITFunction`` of ``kernel``'s function with the generated decorator's arguments, except that
    the parameters in ``specialize`` are dropped from its ``do_not_specialize`` list."""
    if isinstance(kernel, JITFunction):
        kwargs = {"do_not_specialize": kernel.do_not_specialize,
                  "do_not_specialize_on_alignment": kernel.do_not_specialize_on_alignment}
    else:  # triton.runtime.interpreter.InterpretedFunction keeps the decorator's arguments
        kwargs = dict(kernel.kwargs)
    kwargs["do_not_specialize"] = [p for p in kwargs["do_not_specialize"] or () if p not in specialize]
    return JITFunction(kernel.fn, **kwargs)


class _CompileProbe:
    """Sends a generated module's launches through Triton's JIT dispatch (``JITFunction.run``) for sm_90.

    Triton binds the real launch arguments, derives the NVIDIA backend's specialization key and
    looks it up in its kernel cache; on a miss it calls ``knobs.runtime.jit_cache_hook`` just before
    it would compile.  The hook records the key and caches a stand-in for the binary, so a later
    launch with the same key is a cache hit.  ``compiles[kernel]`` are thus the binaries Triton would
    build; nothing is compiled or run (no GPU needed).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, specialize: tuple[str, ...] = (),
                 kernels: tuple[str, ...] = KERNELS) -> None:
        self.compiles: dict[str, list[str]] = {k: [] for k in kernels}
        self.launches = dict.fromkeys(kernels, 0)
        for name in kernels:
            monkeypatch.setattr(module, name, _as_jit(getattr(module, name), specialize))
        monkeypatch.setattr(driver, "_active", _Sm90Driver())
        monkeypatch.setattr(triton.knobs.runtime, "jit_cache_hook", self._before_compile)

    def _before_compile(self, *, key: str, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        self.compiles[fn.name].append(key)
        kernel_cache = fn.jit_function.device_caches[compile["device"]][0]
        kernel_cache[key] = _CachedStandIn(self.launches, fn.name)
        return True  # skip the compile


def _fwd_bwd(fn: Any, batch: int, m: int, n: int, **params: Any) -> None:
    q = torch.randn(batch, 1, m, 16, requires_grad=True)
    k, v = (torch.randn(batch, 1, n, 16, requires_grad=True) for _ in range(2))
    fn(q, k, v, config=TILES, **params).sum().backward()


def _lengths(fn: Any) -> int:
    shapes = [(L, L) for L in (1, 63, 77, 501, 1024)] + [(1, 1024), (501, 63)]
    for m, n in shapes:
        _fwd_bwd(fn, 1, m, n)
    return len(shapes)


def _batches(fn: Any) -> int:
    for batch in (1, 3):
        _fwd_bwd(fn, batch, 77, 77)
    return 2


def _windows(fn: Any) -> int:
    windows = (1, 16, 77, 256)
    for window in windows:
        _fwd_bwd(fn, 1, 77, 77, window=window)
    return len(windows)


def _documents(fn: Any) -> int:
    """Packed documents that change between calls (new block tables, built at launch, every call),
    at two total lengths (77, and 64 which Triton would specialize on)."""
    splits = ([77], [30, 47], [10, 20, 47], [1, 1, 75], [63, 1])
    for lengths in splits:
        n = sum(lengths)
        doc = torch.cat([torch.full((x,), i, dtype=torch.int32) for i, x in enumerate(lengths)]).view(1, n)
        _fwd_bwd(fn, 1, n, n, doc=doc)
    return len(splits)


# workload -> (spec, launcher returning the number of fwd+bwd calls, the kernel parameters it varies)
WORKLOADS: dict[str, tuple[str, Callable[[Any], int], tuple[str, ...]]] = {
    "lengths": ("causal", _lengths, ("M", "N")),
    "batch": ("causal", _batches, ("B",)),
    "params": ("sliding_window", _windows, ("p_window",)),
    "tables": ("document_causal", _documents, ("M", "N")),
}


def _probed_module(fn: Any) -> Any:
    """The module a call of ``fn`` launches: the block-table variant for masks that take tables."""
    return fn.module_for(fn.generated_for(True).key) if fn.prefers_block_table() else fn.module


@pytest.mark.parametrize("workload", [pytest.param(w, id=w) for w in WORKLOADS])
def test_new_lengths_do_not_recompile(monkeypatch: pytest.MonkeyPatch, workload: str) -> None:
    """Lengths 1..1024 (also M != N), batch 1 vs 3, int param values and new block tables (documents
    that change between calls) reuse one binary per kernel."""
    spec, run, _ = WORKLOADS[workload]
    fn = attncc.load(spec)
    probe = _CompileProbe(monkeypatch, _probed_module(fn))
    calls = run(fn)
    for kernel, keys in probe.compiles.items():
        assert len(keys) == 1, f"{spec}.{kernel}: {len(keys)} compilations over {calls} {workload}:\n" + "\n".join(keys)
        assert probe.launches[kernel] == calls - 1, f"{spec}.{kernel}: {probe.launches[kernel]} cached launches"


@pytest.mark.parametrize("workload", [pytest.param(w, id=w) for w in WORKLOADS])
def test_compile_probe_sees_specialized_arguments(monkeypatch: pytest.MonkeyPatch, workload: str) -> None:
    """Negative control: with the varied parameters removed from ``do_not_specialize`` (as if the
    generated source did not list them), the same launches make Triton compile more than once."""
    spec, run, varied = WORKLOADS[workload]
    fn = attncc.load(spec)
    probe = _CompileProbe(monkeypatch, _probed_module(fn), specialize=varied)
    calls = run(fn)
    for kernel, keys in probe.compiles.items():
        assert 1 < len(keys) <= calls, f"{spec}.{kernel}: {len(keys)} compilations with {varied} specialized"
        assert len(set(keys)) == len(keys), f"{spec}.{kernel}: a cached key was compiled again"


DECODE_KERNELS = ("attn_decode_units", "attn_decode", "attn_decode_merge")


def _decode_calls(module: Any) -> int:
    """Paged decode calls with new lengths (1 .. 300, ragged), new block tables (pages shuffled
    differently), batch 1 and 3, query length 1 and 4, on one page pool."""
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(60, 2, 16, 16, generator=gen)
    calls = [([1], 1), ([300], 1), ([17, 64, 5], 1), ([33, 4, 250], 4), ([96], 4)]
    for lengths, lq in calls:
        pages = torch.randperm(60, generator=gen)[:len(lengths) * 19].view(len(lengths), 19).to(torch.int32)
        q = torch.randn(len(lengths), 4, lq, 16, generator=gen)
        module.decode_forward(q, k, k, cache_seqlens=torch.tensor(lengths, dtype=torch.int32), block_table=pages)
    return len(calls)


def test_decode_lengths_and_block_tables_do_not_recompile(monkeypatch: pytest.MonkeyPatch) -> None:
    """New cache_seqlens, block tables, batch sizes and query lengths reuse one binary per decode kernel."""
    fn = attncc.load("sliding_window")
    probe = _CompileProbe(monkeypatch, fn.decode_module(), kernels=DECODE_KERNELS)
    calls = _decode_calls(fn.decode_module())
    for kernel, keys in probe.compiles.items():
        assert len(keys) == 1, f"decode.{kernel}: {len(keys)} compilations over {calls} calls:\n" + "\n".join(keys)
        assert probe.launches[kernel] == calls - 1, f"decode.{kernel}: {probe.launches[kernel]} cached launches"


def test_decode_probe_sees_specialized_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with the lengths and batch specialised, the same calls compile again."""
    fn = attncc.load("sliding_window")
    probe = _CompileProbe(monkeypatch, fn.decode_module(), specialize=("B", "LQ", "stride_qb"), kernels=DECODE_KERNELS)
    _decode_calls(fn.decode_module())
    assert len(probe.compiles["attn_decode"]) > 1, "specialised arguments did not recompile"
