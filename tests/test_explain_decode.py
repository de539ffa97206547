"""``attncc explain SPEC --decode LENGTHS``: the stream-K partition against split-K, counted by hand here."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from attncc.cli import main


def _decode(*args: str, spec: str = "causal") -> dict:
    result = CliRunner().invoke(main, ["explain", spec, "--json", "--decode", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_skewed_batch_stream_k_balances_where_split_k_does_not() -> None:
    info = _decode("128,128,128,32768", "--heads", "8,1", "--block-n", "64", "--programs", "132")
    d = info["decode"]
    unit_tiles = [math.ceil(n / 64) for n in (128, 128, 128, 32768)]  # one kv head: one unit per sequence
    total = sum(unit_tiles)
    assert (d["units"], d["total_tiles"]) == (4, total) == (4, 518), d
    sk, sp = d["stream_k"], d["split_k"]
    assert sk["max_tiles"] == math.ceil(total / 132) == 4 and sk["min_tiles"] == total // 132, sk
    splits = 132 // 4
    assert sp["splits_per_unit"] == splits and sp["programs"] == 4 * splits, sp
    assert sp["max_tiles"] == math.ceil(max(unit_tiles) / splits) == 16 > sk["max_tiles"], sp
    assert sk["waves"] == sp["waves"] == 1
    assert sk["last_wave_idle"] == pytest.approx(1 - total / (132 * 4)), sk
    assert sp["last_wave_idle"] == pytest.approx(1 - total / (132 * 16)), sp
    assert sk["first_programs"][0]["units"] == [{"b": 0, "hkv": 0, "segment": 0, "tiles": [0, 2]},
                                                {"b": 1, "hkv": 0, "segment": 0, "tiles": [0, 2]}], sk["first_programs"][0]
    assert sk["max_units_per_program"] == 2, sk
    assert "not a timing" in d["note"]
    assert info["passes_over_n"]["after"] == 1, "the rest of explain's output is kept"


def test_awkward_lengths_with_gqa_and_several_split_k_waves() -> None:
    d = _decode("1,63,77,501", "--heads", "4,2", "--block-n", "16", "--programs", "4", "--query-len", "1")["decode"]
    per_seq = [1, 4, 5, 32]  # ceil(n / 16)
    unit_tiles = [t for t in per_seq for _ in range(2)]
    assert d["total_tiles"] == sum(unit_tiles) == 84 and d["units"] == 8 and d["group_rows"] == 2, d
    sk, sp = d["stream_k"], d["split_k"]
    assert (sk["min_tiles"], sk["max_tiles"], sk["last_wave_idle"]) == (21, 21, 0.0), sk
    # program 0: units 0..5 (20 tiles) and the first tile of unit 6 (sequence 3, kv head 0)
    assert sk["max_units_per_program"] == 7 and len(sk["first_programs"][0]["units"]) == 7, sk
    assert sk["first_programs"][0]["units"][-1] == {"b": 3, "hkv": 0, "segment": 0, "tiles": [0, 1]}, sk["first_programs"][0]
    assert [p["tiles"] for p in sk["first_programs"]] == [21, 21, 21, 21], sk
    # one split per unit: 8 programs on 4 SMs, the last wave runs units 4..7 (5, 5, 32, 32 tiles)
    assert (sp["splits_per_unit"], sp["programs"], sp["waves"], sp["max_tiles"]) == (1, 8, 2, 32), sp
    assert sp["last_wave_idle"] == pytest.approx(1 - 74 / (4 * 32)), sp


def test_text_output_names_both_partitions() -> None:
    result = CliRunner().invoke(main, ["explain", "causal", "--decode", "128,128,128,32768"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Lowered cascade:" in out and "Decode partition" in out, out
    assert "stream-K: 132 programs, tiles per program 3..4" in out, out
    assert "max tiles per program stream-K 4 vs split-K 16" in out, out
    assert "program 0: 4 tiles (b0,h0)[0:2] (b1,h0)[0:2]" in out, out


@pytest.mark.parametrize(("args", "needle"), [
    pytest.param(["--decode", "128,x"], "--decode '128,x': expected comma-separated integers", id="not-int"),
    pytest.param(["--decode", "128,0"], "--decode '128,0': every value must be between 1", id="zero-length"),
    pytest.param(["--decode", ""], "--decode '': expected comma-separated integers", id="empty"),
    pytest.param(["--decode", "64", "--heads", "8"], "--heads '8': expected 2 integers", id="heads-one"),
    pytest.param(["--decode", "64", "--heads", "6,4"], "multiple of key/value heads", id="heads-not-grouped"),
    pytest.param(["--decode", "64", "--programs", "0"], "--programs must be a positive integer", id="programs-0"),
    pytest.param(["--decode", "64", "--block-n", "-16"], "--block-n must be a positive integer", id="block-n-neg"),
    pytest.param(["--decode", "63,1", "--query-len", "4"], "--query-len 4 is larger than sequence 1", id="lq-long"),
    pytest.param(["--decode", "64", "--programs", "many"], "'many' is not a valid integer", id="programs-text"),
    pytest.param(["--programs", "64"], "--programs needs --decode LENGTHS", id="programs-without-decode"),
])
def test_bad_decode_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["explain", "causal", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_units_follow_the_mask_key_segments() -> None:
    """A sliding window's decode units hold only the window's key tiles; sinks add a unit each."""
    d = _decode("32768,1000", "--param", "window=1024", spec="sliding_window")["decode"]
    # keys (L - 1 - 1024, L - 1] of the last position: 16 tiles of 64 at L = 32768; all 1000 keys (16 tiles)
    assert d["total_tiles"] == 16 + 16 and d["units"] == 2, d
    s = _decode("32768", "--param", "window=1024", "--param", "sinks=4", spec="sinks_window")["decode"]
    assert s["segments_per_unit_pair"] == 2 and s["units"] == 2 and s["total_tiles"] == 1 + 16, s
