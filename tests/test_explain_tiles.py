"""``attncc explain --json`` reports tiles_visited / tiles_nonempty; ``--plot`` draws the block map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attncc.cli import main


@pytest.mark.parametrize(("spec", "shape", "plan"), [
    pytest.param("causal", "1,2,1024,1024,64", "segments", id="causal-segments"),
    pytest.param("na2d", "1,1,512,512,64", "block_table (built at launch)", id="na2d-table"),
    pytest.param("power_attention", "1,1,2048,2048,64", "block_table (built at launch)", id="power-table"),
])
def test_json_reports_visited_and_nonempty(spec: str, shape: str, plan: str) -> None:
    result = CliRunner().invoke(main, ["explain", spec, "--shape", shape, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tiles = json.loads(result.stdout)["tiles"]
    assert tiles["plan"] == plan, tiles
    assert tiles["tiles_visited"] == tiles["tiles_nonempty"] <= tiles["total"], tiles


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    result = CliRunner().invoke(main, ["explain", "sliding_window", "--shape", "1,1,1024,1024,64", "--param",
                                       "window=200", "--plot", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"


def test_plot_without_shape_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["explain", "causal", "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--plot needs --shape" in result.stderr, result.output
