"""examples/train_tiny_lm.py: a two-step smoke run of a tiny model writes the PNG and reports both losses."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_tiny_lm.py"


def test_two_steps_write_the_plot_and_both_losses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_tiny_lm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "curves" / "loss.png"
    results = module.main(["--steps", "2", "--batch", "2", "--seq", "16", "--dim", "32", "--heads", "2",
                           "--kv-heads", "1", "--layers", "1", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{out} is not a PNG"
    (ours, (ours_losses, ours_val)), (base, (base_losses, base_val)) = results.items()
    assert ours == "attncc causal" and base == "torch SDPA causal", list(results)
    for name, losses, val in ((ours, ours_losses, ours_val), (base, base_losses, base_val)):
        assert len(losses) == 2 and all(math.isfinite(x) for x in [*losses, val]), f"{name}: {losses}, {val}"
    # the same weights and batches: the first (pre-update) loss agrees to fp32 rounding
    assert abs(ours_losses[0] - base_losses[0]) < 1e-4, f"first losses {ours_losses[0]} vs {base_losses[0]}"
    printed = capsys.readouterr().out
    assert f"{ours}: final training loss" in printed and f"{base}: final training loss" in printed, printed
