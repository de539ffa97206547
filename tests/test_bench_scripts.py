"""The GPU benchmark scripts import, parse their options and count bytes on a machine without a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_bandwidth_help_exits_0() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "decode_bandwidth.py"), "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--contexts" in proc.stdout and "--peak-gbps" in proc.stdout, proc.stdout


@pytest.mark.parametrize("value", [pytest.param("4096,x", id="not-int"), pytest.param("0", id="zero")])
def test_decode_bandwidth_rejects_bad_contexts(value: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "decode_bandwidth.py"), "--contexts", value],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--contexts" in proc.stderr, proc.stderr


def test_decode_bandwidth_defaults_and_byte_count() -> None:
    mod = _load("decode_bandwidth")
    args = mod.parse_args([])
    assert args.contexts == [4096, 32768, 131072, 524288] and args.batches == [1, 16], args
    assert (args.hq, args.hkv, args.head_dim, args.query_len, args.peak_gbps) == (32, 4, 128, 1, 4800.0), args
    # the skewed batch: every cached position of K and V once, bf16
    assert mod.kv_bytes([128, 128, 128, 32768], 4, 128) == (3 * 128 + 32768) * 4 * 128 * 2 * 2


def test_recurrence_throughput_parses_and_refuses_without_a_gpu() -> None:
    script = str(BENCH / "recurrence_throughput.py")
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "--lengths" in proc.stdout, proc.stderr
    bad = subprocess.run([sys.executable, script, "--lengths", "1k"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "comma-separated integers" in bad.stderr, bad.stderr
