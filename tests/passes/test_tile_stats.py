"""Tile statistics of masks that differ per head or per batch: summed exactly over (b, h).

The expected counts are brute force: the mask written as plain Python, evaluated at every
(b, h, m, n) of a small shape and reduced to [BLOCK_M, BLOCK_N] tiles in the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_analysis_cost import spec_text

from attncc.cli import main
from attncc.compiler import lower
from attncc.schedules.prefill.stats import tile_stats
from attncc.spec.loader import load_file

Pred = Callable[[int, int, int, int], bool]


def _brute_non_empty(pred: Pred, B: int, H: int, M: int, N: int, bm: int, bn: int) -> int:
    count = 0
    for b in range(B):
        for h in range(H):
            for m0 in range(0, M, bm):
                for n0 in range(0, N, bn):
                    count += any(pred(b, h, m, n) for m in range(m0, min(m0 + bm, M))
                                 for n in range(n0, min(n0 + bn, N)))
    return count


CASES = [
    # the window grows with the head: the analysis bounds it exactly, so visited == non-empty
    pytest.param("(n <= m) & (m - n < window * (h + 1))", {"window": 9},
                 lambda b, h, m, n: n <= m and m - n < 9 * (h + 1), True, id="per-head-window"),
    # LongLoRA's S2-attention: head 1 shifted by half a group; the analysis visits every tile
    pytest.param("((m + shift * h) // group) == ((n + shift * h) // group)", {"shift": 8, "group": 16},
                 lambda b, h, m, n: (m + 8 * h) // 16 == (n + 8 * h) // 16, False, id="shifted-heads"),
    pytest.param("(n <= m) & (m - n < window + 20 * b)", {"window": 5},
                 lambda b, h, m, n: n <= m and m - n < 5 + 20 * b, True, id="per-batch-window"),
]


@pytest.mark.parametrize(("mask", "params", "pred", "tight"), CASES)
@pytest.mark.parametrize(("B", "H", "M", "N", "bm", "bn"), [
    pytest.param(2, 2, 77, 77, 16, 16, id="2x2-77"), pytest.param(1, 2, 63, 90, 32, 16, id="1x2-63x90"),
    pytest.param(2, 1, 1, 501, 16, 32, id="2x1-M1")])
def test_stats_sum_over_heads_and_batches(tmp_path: Path, mask: str, params: dict, pred: Pred, tight: bool,
                                          B: int, H: int, M: int, N: int, bm: int, bn: int) -> None:
    path = tmp_path / "per_head.toml"
    path.write_text(spec_text(mask, params, "per_head"))
    low = lower(load_file(path))
    st = tile_stats(low, low.plan("attn_fwd"), (B, H, M, N, 16), bm, bn, params)
    assert st is not None, "statistics not computed"
    want = _brute_non_empty(pred, B, H, M, N, bm, bn)
    assert st.non_empty == want, f"non_empty {st.non_empty}, brute force {want}"
    assert st.total == B * H * -(-M // bm) * -(-N // bn), f"total {st.total}"
    assert st.visited == st.full + st.partial, f"visited {st.visited} != full + partial"
    if tight:
        assert st.visited == want, f"visited {st.visited}, non-empty tiles {want}"
    else:
        assert want <= st.visited <= st.total, f"visited {st.visited} outside [{want}, {st.total}]"


def test_explain_counts_every_head(tmp_path: Path) -> None:
    """``attncc explain`` of a shifted-heads spec reports the non-empty tiles of both heads."""
    path = tmp_path / "shifted.toml"
    path.write_text(spec_text("((m + shift * h) // group) == ((n + shift * h) // group)",
                              {"shift": 32, "group": 64}, "shifted"))
    res = CliRunner().invoke(main, ["explain", str(path), "--shape", "1,2,256,256,64", "--json"])
    assert res.exit_code == 0, res.output
    tiles = json.loads(res.stdout)["tiles"]
    bm, bn = tiles["block_m"], tiles["block_n"]
    per_head = [_brute_non_empty(lambda b, h, m, n, s=s: (m + s) // 64 == (n + s) // 64, 1, 1, 256, 256, bm, bn)
                for s in (0, 32)]
    assert per_head[0] != per_head[1], f"the heads should differ at tiles {bm}x{bn}: {per_head}"
    assert tiles["non_empty"] == sum(per_head), f"explain non_empty {tiles['non_empty']}, brute force {per_head}"


def test_head_independent_masks_keep_the_fast_path() -> None:
    """A causal mask is evaluated once and scaled: the counts equal B * H times one head's."""
    from attncc.spec.loader import resolve

    low = lower(resolve("causal"))
    one = tile_stats(low, low.plan("attn_fwd"), (1, 1, 77, 77, 16), 16, 16)
    many = tile_stats(low, low.plan("attn_fwd"), (3, 4, 77, 77, 16), 16, 16)
    assert one is not None and many is not None
    assert (many.visited, many.full, many.non_empty) == (12 * one.visited, 12 * one.full, 12 * one.non_empty), \
        f"causal B3 H4 {many}, one head {one}"
    assert one.non_empty == _brute_non_empty(lambda b, h, m, n: n <= m, 1, 1, 77, 77, 16, 16)
