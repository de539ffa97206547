"""The decode schedule (stream-K over contiguous and paged KV caches) against an independent dense
reference and against the prefill kernels; tiles visited observed from the kernel."""

from __future__ import annotations

import math

import pytest
import torch
from reference import REFERENCES, Grid, assert_close_to_golden, masked_softmax_attention

import attncc

D = 16
PAGE = 16
TILES = {"BLOCK_N": 32}

# spec -> params and captured tensors (H heads) of a decode call
CASES = {
    "causal": lambda H: {},
    "sliding_window": lambda H: {"window": 20},
    "alibi": lambda H: {"slopes": torch.linspace(0.05, 0.5, H)},
    "softcap": lambda H: {"cap": 3.0},
    "sinks_window": lambda H: {"sinks": 3, "window": 20},
    "relative_bias": lambda H: {"max_distance": 16, "bias": torch.randn(H, 33, generator=torch.Generator().manual_seed(5))},
}


def _cache(lengths: list[int], HK: int, paged: bool, seed: int = 0) -> dict:
    """K/V of each sequence [HK, L, D] and the cache holding them: contiguous [B, HK, Lmax, D],
    or pages in shuffled order [num_pages, HK, PAGE, D] with a block table (unused entries -1)."""
    g = torch.Generator().manual_seed(seed)
    B, Lmax = len(lengths), max(lengths) + 5
    ks = [torch.randn(HK, L, D, generator=g) for L in lengths]
    vs = [torch.randn(HK, L, D, generator=g) for L in lengths]
    if not paged:
        k = torch.full((B, HK, Lmax, D), float("nan"))
        v = torch.full((B, HK, Lmax, D), float("nan"))
        for b, L in enumerate(lengths):
            k[b, :, :L], v[b, :, :L] = ks[b], vs[b]
        return {"k": k, "v": v, "seq_k": ks, "seq_v": vs, "block_table": None}
    per_seq = math.ceil(Lmax / PAGE)
    used = [math.ceil(L / PAGE) for L in lengths]
    order = torch.randperm(sum(used) + 3, generator=g)  # 3 pages of the pool stay unused
    pool = len(order)
    k = torch.full((pool, HK, PAGE, D), float("nan"))
    v = torch.full((pool, HK, PAGE, D), float("nan"))
    table = torch.full((B, per_seq), -1, dtype=torch.int32)
    nxt = 0
    for b, L in enumerate(lengths):
        for j in range(used[b]):
            page = int(order[nxt])
            nxt += 1
            table[b, j] = page
            lo, hi = j * PAGE, min(L, (j + 1) * PAGE)
            k[page, :, : hi - lo], v[page, :, : hi - lo] = ks[b][:, lo:hi], vs[b][:, lo:hi]
    return {"k": k, "v": v, "seq_k": ks, "seq_v": vs, "block_table": table}


def _dense(spec: str, q: torch.Tensor, seq_k: list[torch.Tensor], seq_v: list[torch.Tensor], kwargs: dict,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode by hand: sequence b's queries are its last Lq positions, causal against the keys."""
    ref = REFERENCES[spec]
    params = {**ref.defaults, **{k: v for k, v in kwargs.items() if k in ref.defaults}}
    caps = {c: kwargs[c].to(dtype) for c in ref.captures}
    B, H, Lq, _ = q.shape
    outs, lses = [], []
    for b in range(B):
        kb, vb = seq_k[b], seq_v[b]
        HK, L = kb.shape[0], kb.shape[1]
        heads = torch.arange(H) // (H // HK)
        s = (q[b:b + 1].to(dtype) @ kb[heads].to(dtype).transpose(-1, -2)[None]) / math.sqrt(D)
        g = Grid(torch.tensor(b).view(1, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
                 torch.arange(L - Lq, L).view(1, 1, Lq, 1), torch.arange(L).view(1, 1, 1, L))
        s = ref.modify(s, g, params, caps).expand(1, H, Lq, L)
        keep = (torch.as_tensor(ref.mask(g, params)) & (g.n <= g.m)).expand(1, H, Lq, L)
        o, lse = masked_softmax_attention(s, keep, vb[heads].to(dtype)[None])
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def _check(label: str, spec: str, got: tuple, q: torch.Tensor, c: dict, kwargs: dict) -> None:
    golden = _dense(spec, q, c["seq_k"], c["seq_v"], kwargs, torch.float64)
    same = _dense(spec, q, c["seq_k"], c["seq_v"], kwargs, q.dtype)
    assert_close_to_golden(f"{label}: output", got[0], golden[0], same[0], input_dtype=q.dtype)
    assert_close_to_golden(f"{label}: lse", got[1], golden[1], same[1], input_dtype=q.dtype)


def _run(spec: str, lengths: list[int], H: int, HK: int, Lq: int, paged: bool, programs: int = 5,
         dtype: torch.dtype = torch.float32) -> None:
    c = _cache(lengths, HK, paged)
    kwargs = CASES[spec](H)
    q = torch.randn(len(lengths), H, Lq, D, generator=torch.Generator().manual_seed(9)).to(dtype)
    k, v = c["k"].to(dtype), c["v"].to(dtype)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    got = attncc.load(spec).decode(q, k, v, cache_seqlens=seqlens, block_table=c["block_table"], return_lse=True,
                                   config=TILES, programs=programs, **kwargs)
    label = f"{spec} {'paged' if paged else 'contiguous'} H={H} HK={HK} Lq={Lq} lengths={lengths}"
    _check(label, spec, got, q, {**c, "seq_k": [x.to(dtype) for x in c["seq_k"]],
                                 "seq_v": [x.to(dtype) for x in c["seq_v"]]}, kwargs)


@pytest.mark.parametrize("spec", [pytest.param(s, id=s) for s in CASES])
@pytest.mark.parametrize(("paged", "HK", "Lq"), [
    pytest.param(True, 2, 1, id="paged-gqa4-lq1"),
    pytest.param(False, 1, 4, id="contiguous-gqa8-lq4"),
])
def test_decode_matches_the_dense_reference(spec: str, paged: bool, HK: int, Lq: int) -> None:
    lengths = [1, 77, 63, 130] if Lq == 1 else [4, 77, 63, 130]
    _run(spec, lengths, 8, HK, Lq, paged)


@pytest.mark.parametrize("paged", [pytest.param(False, id="contiguous"), pytest.param(True, id="paged")])
@pytest.mark.parametrize("HK", [pytest.param(4, id="gqa1"), pytest.param(1, id="gqa4")])
@pytest.mark.parametrize("Lq", [pytest.param(1, id="lq1"), pytest.param(4, id="lq4")])
def test_causal_over_layouts_group_ratios_and_query_lengths(paged: bool, HK: int, Lq: int) -> None:
    _run("causal", [Lq, 33, 96, 501], 4, HK, Lq, paged, programs=7)


def test_fp16_is_within_twice_torch_error() -> None:
    _run("sliding_window", [9, 100], 4, 2, 2, True, dtype=torch.float16)


def test_decode_equals_the_prefill_kernels() -> None:
    """The last Lq rows of prefill over the whole sequence (same spec) equal decode's rows."""
    spec, H, Lq, lengths = "alibi", 4, 3, [40, 77]
    c = _cache(lengths, H, True, seed=3)
    kwargs = CASES[spec](H)
    q = torch.randn(len(lengths), H, Lq, D, generator=torch.Generator().manual_seed(2))
    fn = attncc.load(spec)
    o, lse = fn.decode(q, c["k"], c["v"], cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                       block_table=c["block_table"], return_lse=True, config=TILES, programs=3, **kwargs)
    for b, L in enumerate(lengths):
        qb = torch.randn(1, H, L, D)
        qb[:, :, L - Lq:] = q[b:b + 1]
        po, plse = fn(qb, c["seq_k"][b][None], c["seq_v"][b][None], return_lse=True, **kwargs)
        assert torch.allclose(o[b], po[0, :, L - Lq:], atol=2e-6), f"sequence {b}: decode o != prefill o"
        assert torch.allclose(lse[b], plse[0, :, L - Lq:], atol=2e-6), f"sequence {b}: decode lse != prefill lse"


@pytest.mark.parametrize("programs", [pytest.param(p, id=f"programs{p}") for p in (1, 2, 9, 64)])
def test_split_states_merge_exactly(programs: int) -> None:
    """Any persistent grid gives the one-program result: the merge of partial states is exact."""
    lengths, H = [200, 3, 129], 4
    c = _cache(lengths, 2, False, seed=4)
    q = torch.randn(3, H, 2, D, generator=torch.Generator().manual_seed(8))
    sl = torch.tensor(lengths, dtype=torch.int32)
    fn = attncc.load("causal")
    one = fn.decode(q, c["k"], c["v"], cache_seqlens=sl, return_lse=True, config=TILES, programs=1)
    got = fn.decode(q, c["k"], c["v"], cache_seqlens=sl, return_lse=True, config=TILES, programs=programs)
    unchecked = fn.decode(q, c["k"], c["v"], cache_seqlens=sl, return_lse=True, config=TILES, programs=programs,
                          check_values=False)
    assert torch.equal(unchecked[0], got[0]), "check_values=False changed the result"
    assert torch.allclose(got[0], one[0], atol=1e-6, rtol=0), f"programs={programs}: output"
    assert torch.allclose(got[1], one[1], atol=1e-6, rtol=0), f"programs={programs}: lse"
    _check(f"causal programs={programs}", "causal", got, q, c, {})


@pytest.mark.parametrize(("spec", "kwargs"), [
    pytest.param("causal", {}, id="causal"),
    pytest.param("sliding_window", {"window": 40}, id="sliding-window"),
    pytest.param("sinks_window", {"sinks": 5, "window": 40}, id="sinks-window"),
])
def test_each_needed_key_tile_is_visited_once_and_no_other(spec: str, kwargs: dict) -> None:
    """From the kernel's tile log: per (sequence, key/value head), the visited key tiles are exactly
    those holding a key some packed row attends (brute force), each visited once; the mask-free
    ones hold no masked key."""
    lengths, H, HK, Lq, bn = [501, 64, 1, 250], 4, 2, 1, TILES["BLOCK_N"]
    c = _cache(lengths, HK, False, seed=6)
    q = torch.randn(len(lengths), H, Lq, D)
    module = attncc.load(spec).decode_module()
    cols = math.ceil(c["k"].shape[2] / bn)
    log = torch.zeros(len(lengths) * HK, cols, dtype=torch.int32)
    module.decode_forward(q, c["k"], c["v"], cache_seqlens=torch.tensor(lengths, dtype=torch.int32), config=TILES,
                          programs=6, tile_log=log, **kwargs)
    ref = REFERENCES[spec]
    params = {**ref.defaults, **kwargs}
    for b, L in enumerate(lengths):
        g = Grid(torch.tensor(b), torch.arange(H).view(-1, 1, 1), torch.arange(L - Lq, L).view(1, -1, 1),
                 torch.arange(L).view(1, 1, -1))
        keep = (torch.as_tensor(ref.mask(g, params)) & (g.n <= g.m)).expand(H, Lq, L).any(1).any(0)
        pad = torch.zeros(cols * bn, dtype=torch.bool)
        pad[:L] = keep
        needed = pad.view(cols, bn).any(1)
        for hk in range(HK):
            row = log[b * HK + hk]
            assert torch.equal(row > 0, needed), f"{spec} sequence {b}: visited {row.tolist()} vs needed {needed.tolist()}"
            assert set(row[row > 0].tolist()) <= {1, 16}, f"{spec} sequence {b}: a tile visited twice"
            full = (row == 1).nonzero().flatten()
            assert all(bool(pad[t * bn:(t + 1) * bn].all()) for t in full.tolist()), \
                f"{spec} sequence {b}: a mask-free tile holds a masked key"


def test_flex_attention_routes_short_queries_to_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """flex_attention with 3 queries and no gradient runs the decode module, with FlexAttention's
    semantics (q_idx from 0, no implied causal order), and matches the prefill path."""
    B, H, M, N = 2, 4, 3, 70
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(B, H, M, D, generator=g), torch.randn(B, 2, N, D, generator=g), torch.randn(B, 2, N, D, generator=g)
    bias = torch.randn(N, generator=g)

    def score_mod(s, b, h, q_idx, kv_idx):
        return s + bias[kv_idx]

    calls = []
    from attncc.runtime import decode as decode_mod
    real = decode_mod.decode_compiled

    def spy(*args: object, **kw: object) -> object:
        calls.append(kw.get("queries_at_end"))
        return real(*args, **kw)

    monkeypatch.setattr("attncc.runtime.api.decode_compiled", spy)
    with torch.no_grad():
        out = attncc.flex_attention(q, k, v, score_mod=score_mod, enable_gqa=True)
    assert calls == [False], "flex_attention did not take the decode schedule"
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q.double() @ kk.double().transpose(-1, -2)) / math.sqrt(D) + bias.double()
    ref = torch.softmax(s, -1) @ vv.double()
    assert torch.allclose(out.double(), ref, atol=2e-6), "routed flex_attention output"
    q.requires_grad_(True)
    out2 = attncc.flex_attention(q, k, v, score_mod=score_mod, enable_gqa=True)
    assert calls == [False], "a call needing gradients must stay on prefill"
    assert torch.allclose(out2.detach(), out, atol=2e-6), "prefill and decode paths differ"


def test_decode_function_takes_mods_and_block_masks() -> None:
    """attncc.decode with a score_mod and a mask_mod BlockMask (positions are absolute)."""
    lengths, H, Lq = [50, 90], 4, 2
    c = _cache(lengths, 2, True, seed=11)
    q = torch.randn(2, H, Lq, D)
    mask = attncc.create_block_mask(lambda b, h, q_idx, kv_idx: q_idx - kv_idx < 20, None, None, 128, 128)
    o, lse = attncc.decode(q, c["k"], c["v"], cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                           block_table=c["block_table"], block_mask=mask,
                           score_mod=lambda s, b, h, q_idx, kv_idx: s * 0.5, return_lse=True)
    kwargs = {"window": 20}
    golden = _dense("sliding_window", q * 0.5, c["seq_k"], c["seq_v"], kwargs, torch.float64)
    assert torch.allclose(o.double(), golden[0], atol=2e-6), "attncc.decode output"
    assert torch.allclose(lse.double(), golden[1], atol=2e-6), "attncc.decode lse"


def _bad_paged() -> dict:
    c = _cache([20, 40], 2, True, seed=12)
    return {"q": torch.randn(2, 4, 1, D), "k": c["k"], "v": c["v"],
            "cache_seqlens": torch.tensor([20, 40], dtype=torch.int32), "block_table": c["block_table"]}


def _with(**changes: object) -> dict:
    args = _bad_paged()
    for key, fn in changes.items():
        args[key] = fn(args)  # type: ignore[operator]
    return args


def _table_entry(args: dict, value: int) -> torch.Tensor:
    t = args["block_table"].clone()
    t[1, 1] = value
    return t


@pytest.mark.parametrize(("args", "match"), [
    pytest.param(lambda: _with(block_table=lambda a: _table_entry(a, 999)), r"block_table\[1, 1\] = 999 is outside",
                 id="page-outside-pool"),
    pytest.param(lambda: _with(cache_seqlens=lambda a: torch.tensor([20, 400], dtype=torch.int32)),
                 r"cache_seqlens\[1\] = 400 is beyond the cache", id="length-beyond-cache"),
    pytest.param(lambda: _with(q=lambda a: torch.randn(2, 4, 30, D)), "query length 30 is larger than sequence 0",
                 id="queries-longer-than-sequence"),
    pytest.param(lambda: _with(v=lambda a: a["v"][:, :, :8]), "differ in pages/batch, heads or length",
                 id="page-sizes-differ"),
    pytest.param(lambda: _with(block_table=lambda a: a["block_table"].long()), "int32", id="table-dtype"),
    pytest.param(lambda: _with(cache_seqlens=lambda a: None), "paged cache needs cache_seqlens", id="no-lengths"),
    pytest.param(lambda: _with(q=lambda a: torch.randn(2, 3, 1, D)), "not divisible", id="heads"),
    pytest.param(lambda: _with(q=lambda a: torch.randn(2, 4, 1, D + 1)), "head dim", id="head-dim"),
])
def test_bad_decode_input_is_a_one_line_error(args: object, match: str) -> None:
    a = args()  # type: ignore[operator]
    with pytest.raises(attncc.InputError, match=match) as err:
        attncc.load("causal").decode(a["q"], a["k"], a["v"], cache_seqlens=a["cache_seqlens"],
                                     block_table=a["block_table"])
    assert "\n" not in str(err.value), "one line"
    assert str(err.value).startswith("causal.decode: "), str(err.value)


def test_too_many_packed_rows_is_a_one_line_error() -> None:
    q, k = torch.randn(1, 64, 4, D), torch.randn(1, 1, 10, D)
    with pytest.raises(attncc.InputError, match="exceeds 128") as err:
        attncc.load("causal").decode(q, k, k)
    assert "\n" not in str(err.value)
