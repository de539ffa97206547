"""Gradients of a loss that uses both outputs, o and lse, at value head dims E = 32, 64, 256.

The lse gradient enters the backward kernels through the per-row term only
(``ds = p * (dp - (rowsum(do * o) - dlse))``), so the kernels run at the value head dim E:
these tests check the gradients against a dense fp64 torch reference (FlashAttention's rule:
at most twice the error of the same dense computation in fp32, plus a floor) and that the
backward kernels are launched with ``HEAD_E == E``, both through the op path
(``attncc.load``) and through the standalone module written by ``attncc compile -o``.
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import DEVICE, SMALL_TILES

import attncc
from attncc.cli import main

SPEC = "causal"
B, H, D = 1, 2, 16
FLOOR = 2e-5  # fp32, scaled by the gradient's magnitude (as in test_autograd.py)
CASES = [pytest.param(32, 63, id="E32-L63"), pytest.param(64, 77, id="E64-L77"),
         pytest.param(256, 33, id="E256-L33")]


# --- the dense reference ---------------------------------------------------------------------------

def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D), keys n <= m) @ v and the natural-log lse, in q's dtype."""
    M, N = q.shape[2], k.shape[2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[3])
    keep = torch.arange(N).view(1, N) <= torch.arange(M).view(M, 1)
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def make_inputs(E: int, L: int) -> dict[str, torch.Tensor]:
    """q, k, v and the loss weights w (of o) and u (of lse), fp32."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"lse-grad-{E}-{L}".encode()))
    return {"q": torch.randn(B, H, L, D, generator=gen), "k": torch.randn(B, H, L, D, generator=gen),
            "v": torch.randn(B, H, L, E, generator=gen), "w": torch.randn(B, H, L, E, generator=gen),
            "u": torch.randn(B, H, L, generator=gen)}


def loss_of(o: torch.Tensor, lse: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    return (o.double() * t["w"].double()).sum() + (lse.double() * t["u"].double()).sum()


def grads(run: Callable[..., tuple[torch.Tensor, torch.Tensor]], t: dict[str, torch.Tensor],
          dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """dq, dk, dv of loss_of(run(q, k, v)) computed in ``dtype`` on ``device``."""
    leaves = {n: t[n].to(device, dtype, copy=True).requires_grad_() for n in ("q", "k", "v")}
    o, lse = run(leaves["q"], leaves["k"], leaves["v"])
    loss_of(o, lse, {n: x.to(device) for n, x in t.items()}).backward()
    return {f"d{n}": x.grad.cpu() for n, x in leaves.items() if x.grad is not None}


def assert_grad_close(label: str, got: torch.Tensor, golden: torch.Tensor, same: torch.Tensor) -> None:
    """Max |got - golden| <= 2 x max |same - golden| + floor; NaN (unwritten elements) fails."""
    assert got.shape == golden.shape, f"{label}: shape {tuple(got.shape)} != {tuple(golden.shape)}"
    nan = torch.isnan(got)
    assert not nan.any(), f"{label}: {int(nan.sum())} NaN value(s), first at {tuple(nan.nonzero()[0].tolist())}"
    err = (got.double() - golden).abs()
    torch_err = (same.double() - golden).abs().max().item()
    floor = FLOOR * max(1.0, golden.abs().max().item())
    bound = 2.0 * torch_err + floor
    if not err.max().item() <= bound:
        idx = tuple((err == err.max()).nonzero()[0].tolist())
        raise AssertionError(f"{label}: max err {err.max().item():.3g} > 2 x torch {torch_err:.3g} + {floor:.1e} "
                             f"(worst at {idx}: got {got[idx].item():.6g}, expected {golden[idx].item():.6g})")


# --- observing the backward launches ---------------------------------------------------------------

class LaunchRecorder:
    """Stands in for a Triton kernel ``kernel[grid](...)``: records the constexprs, then launches."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.launches: list[dict[str, Any]] = []

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


def record_backward(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> dict[str, LaunchRecorder]:
    recorders = {name: LaunchRecorder(getattr(module, name)) for name in ("attn_bwd_dkdv", "attn_bwd_dq")}
    for name, rec in recorders.items():
        monkeypatch.setattr(module, name, rec)
    return recorders


def assert_head_e(label: str, recorders: dict[str, LaunchRecorder], E: int) -> None:
    for name, rec in recorders.items():
        assert rec.launches, f"{label}: {name} was not launched"
        for kw in rec.launches:
            assert kw["HEAD_E"] == E, f"{label}: {name} ran with HEAD_E={kw['HEAD_E']}, expected {E}"
            assert kw["BLOCK_E"] == max(16, 1 << (E - 1).bit_length()), \
                f"{label}: {name} ran with BLOCK_E={kw['BLOCK_E']} for E={E}"


def check_all(label: str, got: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> None:
    golden = grads(dense_causal, t, torch.float64)
    same = grads(dense_causal, t, torch.float32)
    assert set(got) == {"dq", "dk", "dv"}, f"{label}: gradients {sorted(got)}"
    for name in ("dq", "dk", "dv"):
        assert got[name].dtype == torch.float32, f"{label}: {name} dtype {got[name].dtype}"
        assert_grad_close(f"{label}: {name}", got[name], golden[name], same[name])


# --- the two paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("E", "L"), CASES)
def test_op_path_lse_gradient(E: int, L: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fn = attncc.load(SPEC)
    recorders = record_backward(fn.module, monkeypatch)
    t = make_inputs(E, L)
    got = grads(lambda q, k, v: fn(q, k, v, return_lse=True, config=SMALL_TILES), t, torch.float32, DEVICE)
    label = f"{SPEC} op path E={E} L={L}"
    check_all(label, got, t)
    assert_head_e(label, recorders, E)


def _standalone(tmp_path: Path) -> ModuleType:
    out = tmp_path / "standalone_kernel.py"
    result = CliRunner().invoke(main, ["compile", SPEC, "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = importlib.util.spec_from_file_location(f"standalone_{tmp_path.name}", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("E", "L"), CASES)
def test_standalone_module_lse_gradient(E: int, L: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _standalone(tmp_path)
    recorders = record_backward(module, monkeypatch)
    t = make_inputs(E, L)
    got = grads(lambda q, k, v: module.attention(q, k, v, config=SMALL_TILES), t, torch.float32, DEVICE)
    label = f"{SPEC} standalone module E={E} L={L}"
    check_all(label, got, t)
    assert_head_e(label, recorders, E)


def test_standalone_backward_rejects_misshapen_dlse(tmp_path: Path) -> None:
    module = _standalone(tmp_path)
    t = make_inputs(32, 5)
    o, lse = module.attention_forward(t["q"], t["k"], t["v"], config=SMALL_TILES)
    with pytest.raises(ValueError, match=r"dlse must be \[B, H, M\]"):
        module.attention_backward(t["q"], t["k"], t["v"], o, lse, t["w"], dlse=t["u"][..., :-1],
                                  config=SMALL_TILES)
