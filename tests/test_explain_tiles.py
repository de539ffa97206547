"""``attncc explain --json`` reports tiles_visited / tiles_nonempty; ``--plot`` draws the block map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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


def _nonempty_document_tiles(lengths: list[int], L: int, bm: int, bn: int) -> int:
    """Brute force: non-empty tiles of the causal document mask over runs of ``lengths`` (cycled)."""
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths * (L // sum(lengths) + 1))])[:L]
    keep = (torch.arange(L).view(1, -1) <= torch.arange(L).view(-1, 1)) & (ids.view(-1, 1) == ids.view(1, -1))
    pad = torch.zeros(-(-L // bm) * bm, -(-L // bn) * bn, dtype=torch.bool)
    pad[:L, :L] = keep
    return int(pad.view(pad.shape[0] // bm, bm, pad.shape[1] // bn, bn).any(3).any(1).sum())


@pytest.mark.parametrize(("L", "runs"), [
    pytest.param(4096, [1024], id="4K-1024"),
    pytest.param(4096, [1000, 24, 77], id="4K-ragged"),
    pytest.param(501, [63, 1, 200], id="501-ragged"),
])
def test_document_tiles_from_runs_match_a_brute_force_count(L: int, runs: list[int]) -> None:
    args = ["explain", "document_causal", "--shape", f"1,2,{L},{L},64", "--json",
            "--capture", "doc=runs:" + ",".join(map(str, runs))]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tiles = json.loads(result.stdout)["tiles"]
    want = 2 * _nonempty_document_tiles(runs, L, tiles["block_m"], tiles["block_n"])
    assert tiles["tiles_visited"] == tiles["tiles_nonempty"] == want, tiles


def test_modality_runs_take_a_modulus(tmp_path: Path) -> None:
    out = tmp_path / "mm.png"
    args = ["explain", "modality_mutual", "--shape", "1,1,1024,1024,64", "--capture", "modality=runs:100,300%2",
            "--capture", "image_span=runs:100,300", "--json", "--plot", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tiles = json.loads(result.stdout)["tiles"]
    assert tiles["tiles_visited"] == tiles["tiles_nonempty"] < tiles["total"], tiles
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"


@pytest.mark.parametrize(("extra", "match"), [
    pytest.param([], "give doc with --capture", id="missing"),
    pytest.param(["--capture", "doc=runs:0"], "positive integers", id="zero-run"),
    pytest.param(["--capture", "doc=runs:a,b"], "with integers", id="not-integers"),
    pytest.param(["--capture", "docs=runs:8"], "one of the captures (doc)", id="unknown-name"),
    pytest.param(["--capture", "doc=8"], "runs:LEN", id="no-runs-prefix"),
])
def test_bad_captures_are_one_line_errors(extra: list[str], match: str, tmp_path: Path) -> None:
    args = ["explain", "document_causal", "--shape", "1,1,256,256,64", *extra]
    result = CliRunner().invoke(main, args)
    if not extra:  # without values the statistics say what they need; with --plot it is an error
        assert result.exit_code == 0 and match in result.stdout, result.output
        result = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and match in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.output
