"""Tile classification and block tables against brute force written here in plain torch.

The brute force builds each mask densely as a ``[B, H, M, N]`` bool tensor from torch
operations (never the IR or its evaluator) and classifies every tile: empty when no element
inside the lengths is unmasked, full when every element of the whole tile is (a tile cut by
the lengths is never full), else partial.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sympy as sp
import torch

from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.passes import refine as refine_mod
from attncc.passes.blocks import (
    ClassifyStats,
    block_tables,
    classify_tiles,
    mass_tables,
    tables_from_flex,
    topk_tables,
)

m, n, b, h = E.m, E.n, E.b, E.h
WINDOW = E.param_symbol("window", "int")
SINKS = E.param_symbol("sinks", "int")
GRID_W = 9  # grid width that divides no tile


def brute_classes(dense: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """Classes ``[B, H, Tm, Tn]`` of a dense ``[B, H, M, N]`` mask."""
    B, H, M, N = dense.shape
    tm, tn = -(-M // bm), -(-N // bn)
    pad = torch.zeros(B, H, tm * bm, tn * bn, dtype=torch.bool)
    pad[:, :, :M, :N] = dense
    tiles = pad.view(B, H, tm, bm, tn, bn)
    anyv, allv = tiles.any(5).any(3), tiles.all(5).all(3)
    return torch.where(allv, 2, torch.where(anyv, 1, 0)).to(torch.int8)


def _ar(L: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.arange(L)
    return a.view(1, 1, -1, 1), a.view(1, 1, 1, -1)


def _doc_ids(L: int, sorted_: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(L)
    ids = torch.randint(0, max(1, L // 20) + 1, (L,), generator=g)
    return torch.sort(ids).values if sorted_ else ids


def _modality(L: int) -> torch.Tensor:
    """Image id per token (-1 for text): text 0..9, image 0 on 10..29, text, image 1, ..."""
    ids = torch.full((L,), -1)
    for k, start in enumerate(range(10, L, 37)):
        ids[start:start + 20] = k
    return ids


def _doc_mask(L: int, sorted_: bool, causal: bool):
    doc = _doc_ids(L, sorted_)
    pred = sp.Eq(E.load("doc", m, integer=True), E.load("doc", n, integer=True))
    qi, ki = _ar(L)
    dense = doc[qi] == doc[ki]
    if causal:
        pred, dense = sp.And(pred, n <= m), dense & (ki <= qi)
    return pred, {}, {"doc": doc}, dense, {}


def _case(name: str, L: int):
    """(predicate, params, captures, dense [B?, H?, L, L], extra sizes) of one named mask."""
    qi, ki = _ar(L)
    if name == "causal":
        return n <= m, {}, {}, ki <= qi, {}
    if name == "sliding-window":
        w = 20
        return sp.And(n <= m, m - n < WINDOW), {WINDOW: w}, {}, (ki <= qi) & (qi - ki < w), {}
    if name == "sinks-window":
        return (sp.Or(n < SINKS, sp.And(n <= m, m - n < WINDOW)), {SINKS: 4, WINDOW: 9}, {},
                (ki < 4) | ((ki <= qi) & (qi - ki < 9)), {})
    if name == "document-sorted":
        return _doc_mask(L, True, False)
    if name == "document-unsorted-causal":
        return _doc_mask(L, False, True)
    if name == "modality":
        img = _modality(L)
        im, ik = E.load("img", m, integer=True), E.load("img", n, integer=True)
        pred = sp.Or(n <= m, sp.And(sp.Eq(im, ik), im >= 0))
        return pred, {}, {"img": img}, (ki <= qi) | ((img[qi] == img[ki]) & (img[qi] >= 0)), {}
    if name == "neighborhood-2d":
        pred = sp.And(sp.Abs(sp.floor(m / GRID_W) - sp.floor(n / GRID_W)) <= 2,
                      sp.Abs(sp.Mod(m, GRID_W) - sp.Mod(n, GRID_W)) <= 2)
        dense = ((qi // GRID_W - ki // GRID_W).abs() <= 2) & ((qi % GRID_W - ki % GRID_W).abs() <= 2)
        return pred, {}, {}, dense, {}
    if name == "neighborhood-2d-clamped":  # NATTEN: a 5 x 5 window clamped inside the grid
        rows, k = -(-L // GRID_W), 5

        def start(x: object, extent: int) -> object:
            return sp.Max(0, sp.Min(x - k // 2, extent - k))

        rq, cq, rk, ck = sp.floor(m / GRID_W), sp.Mod(m, GRID_W), sp.floor(n / GRID_W), sp.Mod(n, GRID_W)
        pred = sp.And(start(rq, rows) <= rk, rk < start(rq, rows) + k, start(cq, GRID_W) <= ck,
                      ck < start(cq, GRID_W) + k)

        def t_start(x: torch.Tensor, extent: int) -> torch.Tensor:
            return (x - k // 2).clamp(max=extent - k).clamp(min=0)

        r0, c0 = t_start(qi // GRID_W, rows), t_start(qi % GRID_W, GRID_W)
        dense = (r0 <= ki // GRID_W) & (ki // GRID_W < r0 + k) & (c0 <= ki % GRID_W) & (ki % GRID_W < c0 + k)
        return pred, {}, {}, dense, {}
    if name == "per-head-window":
        hh = torch.arange(3).view(1, 3, 1, 1)
        return sp.And(n <= m, m - n < 5 + 11 * h), {}, {}, (ki <= qi) & (qi - ki < 5 + 11 * hh), {"H": 3}
    if name == "per-batch-documents":
        docs = torch.stack([_doc_ids(L, True), _doc_ids(L + 1, True)[:L]])
        pred = sp.Eq(E.load("docs", b, m, integer=True), E.load("docs", b, n, integer=True))
        bb = torch.arange(2).view(2, 1, 1, 1)
        return pred, {}, {"docs": docs}, docs[bb, qi] == docs[bb, ki], {"B": 2}
    raise AssertionError(name)


MASKS = ["causal", "sliding-window", "sinks-window", "document-sorted", "document-unsorted-causal", "modality",
         "neighborhood-2d", "neighborhood-2d-clamped", "per-head-window", "per-batch-documents"]
LENGTHS = [1, 63, 77, 501]
TILES = [pytest.param(16, 16, id="t16x16"), pytest.param(32, 16, id="t32x16"), pytest.param(16, 32, id="t16x32")]


@pytest.mark.parametrize("bm,bn", TILES)
@pytest.mark.parametrize("L", LENGTHS, ids=[f"L{x}" for x in LENGTHS])
@pytest.mark.parametrize("name", MASKS)
def test_classify_equals_brute_force(name: str, L: int, bm: int, bn: int) -> None:
    pred, params, caps, dense, extra = _case(name, L)
    got = classify_tiles(pred, {"M": L, "N": L, **extra}, params, caps, bm, bn)
    B, H = extra.get("B", 1), extra.get("H", 1)
    want = brute_classes(dense.expand(B, H, L, L), bm, bn)
    assert got.dtype == torch.int8 and got.shape == want.shape, f"{name}: classes {got.dtype} {tuple(got.shape)}"
    bad = (got != want).nonzero()
    assert bad.numel() == 0, f"{name}: classes differ at tiles {bad[:5].tolist()}: got {got[tuple(bad[0])]}, " \
                             f"want {want[tuple(bad[0])]}"


@pytest.mark.parametrize("M,N", [pytest.param(63, 130, id="63x130"), pytest.param(130, 17, id="130x17")])
def test_classify_cross_lengths(M: int, N: int) -> None:
    """Different query and key lengths, with a mask reading N (bottom-right aligned causal)."""
    qi, ki = torch.arange(M).view(1, 1, -1, 1), torch.arange(N).view(1, 1, 1, -1)
    pred = n <= m + E.SIZE_SYMBOLS["N"] - E.SIZE_SYMBOLS["M"]
    got = classify_tiles(pred, {"M": M, "N": N}, {}, {}, 16, 32)
    want = brute_classes(ki <= qi + N - M, 16, 32)
    assert torch.equal(got, want), f"classes differ at {(got != want).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("pred,want", [pytest.param(sp.true, 2, id="true"), pytest.param(sp.false, 0, id="false"),
                                       pytest.param(n >= 0, 2, id="always"), pytest.param(m < 0, 0, id="never")])
def test_constant_masks(pred: sp.Basic, want: int) -> None:
    got = classify_tiles(pred, {"M": 64, "N": 48}, {}, {}, 16, 16)
    assert got.shape == (1, 1, 4, 3) and bool((got == want).all()), f"{pred}: classes {got.unique().tolist()}"


def _straddling(ids: torch.Tensor, block: int) -> torch.Tensor:
    """Per tile: whether the tile holds more than one id."""
    pad = -(-ids.numel() // block) * block
    x = torch.cat([ids, ids[-1:].expand(pad - ids.numel())]).view(-1, block)
    return x.amin(1) != x.amax(1)


@pytest.mark.parametrize("causal", [pytest.param(False, id="document"), pytest.param(True, id="document-causal")])
def test_interval_step_leaves_only_boundary_tiles(causal: bool) -> None:
    """Sorted document ids: the fallback evaluates only tiles that straddle a document boundary."""
    L, bm, bn = 1000, 32, 16
    lengths = torch.tensor([37, 100, 3, 250, 64, 1, 300, 245])
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pred = sp.Eq(E.load("doc", m, integer=True), E.load("doc", n, integer=True))
    pred = sp.And(pred, n <= m) if causal else pred
    stats = ClassifyStats()
    got = classify_tiles(pred, {"M": L, "N": L}, {}, {"doc": doc}, bm, bn, stats=stats)
    qi, ki = _ar(L)
    dense = (doc[qi] == doc[ki]) & ((ki <= qi) if causal else True)
    assert torch.equal(got, brute_classes(dense, bm, bn)), "classes differ from brute force"
    assert stats.tiles == got.numel() and stats.fallback is not None
    rows, cols = _straddling(doc, bm), _straddling(doc, bn)
    evaluated = stats.fallback
    ok = rows[evaluated[:, 2]] | cols[evaluated[:, 3]]
    assert bool(ok.all()), f"fallback evaluated tiles inside one document: {evaluated[~ok][:5].tolist()}"
    assert stats.fallback_elements <= stats.fallback_tiles * bm * bn
    assert stats.fallback_tiles < 0.1 * stats.tiles, f"fallback took {stats.fallback_tiles} of {stats.tiles} tiles"


@pytest.mark.parametrize("name", ["document-sorted", "sliding-window", "neighborhood-2d"])
def test_aligned_patterns_need_no_fallback(name: str) -> None:
    """Documents on tile boundaries, a window and a grid whose width is a multiple of the tiles:
    the interval step decides every tile."""
    L = 512
    if name == "document-sorted":
        doc = torch.arange(L) // 64
        pred = sp.Eq(E.load("doc", m, integer=True), E.load("doc", n, integer=True))
        caps, params = {"doc": doc}, {}
    elif name == "sliding-window":
        pred, caps, params = sp.And(n <= m, m - n < WINDOW), {}, {WINDOW: 100}
    else:
        pred = sp.And(sp.Abs(sp.floor(m / 32) - sp.floor(n / 32)) <= 3, sp.Abs(sp.Mod(m, 32) - sp.Mod(n, 32)) <= 3)
        caps, params = {}, {}
    stats = ClassifyStats()
    classify_tiles(pred, {"M": L, "N": L}, params, caps, 32, 16, stats=stats)
    assert stats.fallback_elements == 0, f"{name}: fallback evaluated {stats.fallback_tiles} tiles"


@pytest.mark.parametrize("point_box", [pytest.param(1, id="points"), pytest.param(256, id="whole-tiles")])
def test_bisection_batches_and_depth_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch,
                                                              point_box: int) -> None:
    """Small box batches, and bisection down to single points or no bisection at all (every
    undecided tile evaluated whole), classify alike."""
    monkeypatch.setattr(refine_mod, "BOX_BATCH", 7)
    monkeypatch.setattr(refine_mod, "POINT_BOX", point_box)
    for name in ("document-unsorted-causal", "neighborhood-2d-clamped"):
        pred, params, caps, dense, _ = _case(name, 200)
        got = classify_tiles(pred, {"M": 200, "N": 200}, params, caps, 16, 16)
        assert torch.equal(got, brute_classes(dense, 16, 16)), f"{name}: classes differ"


def _from_lists(num: torch.Tensor, idx: torch.Tensor, cols: int) -> torch.Tensor:
    """Dense selection [.., R, cols] from (num, idx) lists, by a Python loop."""
    out = torch.zeros(*num.shape, cols, dtype=torch.bool)
    for pos in torch.cartesian_prod(*[torch.arange(s) for s in num.shape]).view(-1, num.dim()).tolist():
        k = int(num[tuple(pos)])
        row = idx[tuple(pos)].tolist()
        assert row[:k] == sorted(row[:k]), f"row {pos} not ascending: {row[:k]}"
        assert all(v == 0 for v in row[k:]), f"row {pos}: entries past num are not 0: {row[k:]}"
        for v in row[:k]:
            out[tuple(pos) + (v,)] = True
    return out


@pytest.mark.parametrize("shape", [pytest.param((1, 1, 5, 7), id="1x1x5x7"), pytest.param((2, 3, 4, 1), id="2x3x4x1"),
                                   pytest.param((1, 2, 1, 9), id="1x2x1x9")])
def test_block_tables_lists_and_transposes(shape: tuple[int, ...]) -> None:
    classes = torch.randint(0, 3, shape, dtype=torch.int8)
    t = block_tables(classes, 16, 32)
    for name in ("kv_num_blocks", "kv_indices", "q_num_blocks", "full_q_indices"):
        assert getattr(t, name).dtype == torch.int32, f"{name}: {getattr(t, name).dtype}"
    assert t.kv_indices.shape == shape and t.q_indices.shape == (*shape[:2], shape[3], shape[2])
    assert torch.equal(_from_lists(t.kv_num_blocks, t.kv_indices, shape[3]), classes == 1), "kv_indices"
    assert torch.equal(_from_lists(t.full_kv_num_blocks, t.full_kv_indices, shape[3]), classes == 2), "full_kv"
    assert torch.equal(_from_lists(t.q_num_blocks, t.q_indices, shape[2]), (classes == 1).transpose(-1, -2)), "q"
    assert torch.equal(_from_lists(t.full_q_num_blocks, t.full_q_indices, shape[2]),
                       (classes == 2).transpose(-1, -2)), "full_q"
    assert torch.equal(t.classes, classes) and t.tiles_nonempty() == int((classes > 0).sum())


def test_tables_from_flex_round_trip() -> None:
    classes = torch.randint(0, 3, (2, 2, 5, 4), dtype=torch.int8)
    t = block_tables(classes, 16, 16)
    back = tables_from_flex(t.kv_num_blocks, t.kv_indices, t.full_kv_num_blocks, t.full_kv_indices, 16, 16, 80, 64)
    assert torch.equal(back.classes, classes), "classes lost in the round trip"
    for name in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        assert torch.equal(getattr(back, name), getattr(t, name)), f"{name} differs"
    partial_only = tables_from_flex(t.kv_num_blocks, t.kv_indices, None, None, 16, 16, 80, 64)
    assert torch.equal(partial_only.classes, (classes == 1).to(torch.int8)), "full_* None must mean no full tiles"


def test_tables_from_flex_reads_torch_block_mask() -> None:
    """torch's own create_block_mask layout (unsorted rows, stale entries past the counts)."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    L, blk = 77, 16
    doc = _doc_ids(L, False)

    def mask_mod(b_, h_, q, kv):
        return (doc[q] == doc[kv]) | (kv <= q)

    bm = flex.create_block_mask(mask_mod, None, None, L, L, device="cpu", BLOCK_SIZE=blk)
    t = tables_from_flex(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, blk, blk, L, L)
    qi, ki = _ar(L)
    want = brute_classes((doc[qi] == doc[ki]) | (ki <= qi), blk, blk)
    assert torch.equal(t.classes, want), f"differs at {(t.classes != want).nonzero()[:5].tolist()}"


def test_tables_from_flex_cut_full_tiles_become_partial() -> None:
    num = torch.tensor([[[0, 0]]], dtype=torch.int32)
    idx = torch.zeros(1, 1, 2, 2, dtype=torch.int32)
    fnum = torch.tensor([[[2, 2]]], dtype=torch.int32)
    fidx = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32)
    t = tables_from_flex(num, idx, fnum, fidx, 16, 16, 20, 32)
    assert t.classes.tolist() == [[[[2, 2], [1, 1]]]], f"classes {t.classes.tolist()}"


def _flex_args(**over) -> dict:
    args = {"kv_num_blocks": torch.tensor([[[1, 2]]], dtype=torch.int32),
            "kv_indices": torch.tensor([[[[0, 0], [1, 0]]]], dtype=torch.int32),
            "full_kv_num_blocks": None, "full_kv_indices": None, "block_m": 16, "block_n": 16, "M": 32, "N": 32}
    args.update(over)
    return args


@pytest.mark.parametrize("over,needle", [
    pytest.param({"kv_indices": torch.tensor([[[[0, 0], [1, 2]]]], dtype=torch.int32)}, "must lie in [0, 2)",
                 id="index-out-of-range"),
    pytest.param({"kv_num_blocks": torch.tensor([[[1, 3]]], dtype=torch.int32)}, "must lie in [0, 2]", id="count"),
    pytest.param({"kv_num_blocks": torch.tensor([[[1, 2]]], dtype=torch.float32)}, "integer dtype", id="dtype"),
    pytest.param({"M": 48}, "must be [B, H, 3]", id="query-tiles"),
    pytest.param({"full_kv_num_blocks": torch.tensor([[[1, 0]]], dtype=torch.int32)}, "or neither", id="half-full"),
    pytest.param({"full_kv_num_blocks": torch.tensor([[[1, 0]]], dtype=torch.int32),
                  "full_kv_indices": torch.zeros(1, 1, 2, 1, dtype=torch.int32)}, "both in kv_indices", id="overlap"),
])
def test_tables_from_flex_bad_inputs(over: dict, needle: str) -> None:
    args = _flex_args(**over)
    with pytest.raises(InputError) as err:
        tables_from_flex(**args)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and msg.startswith("tables_from_flex:"), msg


def test_tables_from_flex_duplicate_tile() -> None:
    args = _flex_args(kv_indices=torch.tensor([[[[0, 0], [1, 1]]]], dtype=torch.int32))
    with pytest.raises(InputError, match="twice"):
        tables_from_flex(**args)


@pytest.mark.parametrize("call,needle", [
    pytest.param(lambda: classify_tiles(m >= n, {"M": 8}, {}, {}, 4, 4), "must give N", id="missing-size"),
    pytest.param(lambda: classify_tiles(m >= n, {"M": 8, "N": 8}, {}, {}, 0, 4), "block_m", id="block"),
    pytest.param(lambda: classify_tiles(m + n, {"M": 8, "N": 8}, {}, {}, 4, 4), "predicate", id="not-predicate"),
    pytest.param(lambda: classify_tiles(E.score > 0, {"M": 8, "N": 8}, {}, {}, 4, 4), "score", id="score"),
    pytest.param(lambda: classify_tiles(sp.Eq(E.load("d", m, integer=True), 0), {"M": 8, "N": 8}, {},
                                        {"d": torch.zeros(5)}, 4, 4), "size 5", id="capture-too-short"),
    pytest.param(lambda: classify_tiles(sp.Eq(E.load("d", m, integer=True), 0), {"M": 8, "N": 8}, {}, {}, 4, 4),
                 "missing captured tensor", id="capture-missing"),
    pytest.param(lambda: block_tables(torch.full((1, 1, 2, 2), 3), 4, 4), "0 (empty)", id="bad-class"),
    pytest.param(lambda: block_tables(torch.zeros(2, 2, dtype=torch.int8), 4, 4), "4-D", id="classes-rank"),
    pytest.param(lambda: topk_tables(torch.zeros(1, 1, 2, 3), 4, 16, 16), "k must", id="topk-k"),
    pytest.param(lambda: topk_tables(torch.full((1, 1, 2, 3), float("nan")), 1, 16, 16), "NaN", id="topk-nan"),
    pytest.param(lambda: topk_tables(torch.zeros(2, 3), 1, 16, 16), "[B, H, Tm, Tn]", id="topk-rank"),
    pytest.param(lambda: mass_tables(torch.zeros(1, 1, 2, 3), 1.5, 16, 16), "threshold", id="mass-threshold"),
    pytest.param(lambda: mass_tables(torch.zeros(1, 1, 2, 3), 0.5, 16, 16, M=40), "do not match", id="mass-lengths"),
])
def test_bad_inputs_are_one_line_input_errors(call: Callable[[], object], needle: str) -> None:
    with pytest.raises(InputError) as err:
        call()
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def _causal_ok(tm: int, tn: int, bm: int, bn: int) -> torch.Tensor:
    """Tiles holding some element with n <= m (lengths Tm*bm, Tn*bn), by brute force."""
    qi, ki = _ar(tm * bm)[0], _ar(tn * bn)[1]
    return brute_classes(ki <= qi, bm, bn)[0, 0] > 0


@pytest.mark.parametrize("causal", [pytest.param(False, id="plain"), pytest.param(True, id="causal")])
@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_topk_tables_pick_the_best_tiles(k: int, causal: bool) -> None:
    scores = torch.randn(2, 2, 5, 6)
    scores[0, 1, 2, 4] = float("-inf")
    t = topk_tables(scores, k, 16, 16, causal=causal)
    ok = _causal_ok(5, 6, 16, 16) if causal else torch.ones(5, 6, dtype=torch.bool)
    for bi in range(2):
        for hi in range(2):
            for i in range(5):
                cand = [j for j in range(6) if ok[i, j] and scores[bi, hi, i, j] > float("-inf")]
                best = sorted(cand, key=lambda j: -float(scores[bi, hi, i, j]))[:k]
                got = t.kv_indices[bi, hi, i, :int(t.kv_num_blocks[bi, hi, i])].tolist()
                assert got == sorted(best), f"b{bi} h{hi} row {i}: got {got}, want {sorted(best)}"
    assert int(t.full_kv_num_blocks.sum()) == 0, "topk tiles are partial unless full=True"


def test_topk_full_keeps_diagonal_and_cut_tiles_partial() -> None:
    scores = torch.randn(1, 1, 4, 4)
    t = topk_tables(scores, 4, 16, 16, causal=True, full=True, M=60, N=64)
    ok = _causal_ok(4, 4, 16, 16)
    whole_below = torch.tensor([[j * 16 + 15 <= i * 16 and i * 16 + 16 <= 60 for j in range(4)] for i in range(4)])
    want = torch.where(whole_below, 2, torch.where(ok, 1, 0)).to(torch.int8)
    assert torch.equal(t.classes[0, 0], want), f"classes {t.classes[0, 0].tolist()}, want {want.tolist()}"


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("causal", [pytest.param(False, id="plain"), pytest.param(True, id="causal")])
def test_mass_tables_take_the_fewest_tiles_reaching_the_threshold(threshold: float, causal: bool) -> None:
    scores = torch.randn(1, 2, 4, 7) * 2
    t = mass_tables(scores, threshold, 32, 16, causal=causal)
    ok = _causal_ok(4, 7, 32, 16) if causal else torch.ones(4, 7, dtype=torch.bool)
    for hi in range(2):
        for i in range(4):
            cand = [j for j in range(7) if ok[i, j]]
            w = torch.tensor([float(scores[0, hi, i, j]) for j in cand], dtype=torch.float64).exp()
            probs = (w / w.sum()).tolist()
            order = sorted(range(len(cand)), key=lambda x: -probs[x])
            chosen, mass = [], 0.0
            for x in order:
                if mass >= threshold:
                    break
                chosen.append(cand[x])
                mass += probs[x]
            got = t.kv_indices[0, hi, i, :int(t.kv_num_blocks[0, hi, i])].tolist()
            assert got == sorted(chosen), f"h{hi} row {i} threshold {threshold}: got {got}, want {sorted(chosen)}"


@pytest.mark.parametrize("name", ["document-unsorted-causal", "per-batch-documents", "per-head-window", "modality"])
def test_small_chunks_give_the_same_tables(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval step, the tile summaries and the tables in chunks of a few rows."""
    from attncc.passes import blocks
    L, bm, bn = 130, 16, 8
    pred, params, caps, dense, extra = _case(name, L)
    want = brute_classes(dense.expand(extra.get("B", 1), extra.get("H", 1), L, L), bm, bn)
    whole = block_tables(want, bm, bn)
    monkeypatch.setattr(blocks, "BOX_CHUNK", 40)
    got = classify_tiles(pred, {"M": L, "N": L, **extra}, params, caps, bm, bn)
    assert torch.equal(got, want), f"{name}: classes differ at {(got != want).nonzero()[:5].tolist()}"
    chunked = block_tables(got, bm, bn)
    for f in ("kv_num_blocks", "kv_indices", "full_kv_indices", "q_num_blocks", "q_indices", "full_q_num_blocks"):
        assert torch.equal(getattr(chunked, f), getattr(whole, f)), f"{name}: {f} differs in chunks"
