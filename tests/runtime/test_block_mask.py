"""BlockMask end to end: data-dependent tables through flex_attention (forward, gradients, no new
module when the mask changes), tables built at launch for masks whose compile-time plan is inexact
(kernel visits == non-empty tiles, observed with the tile log), and the FlexAttention views."""

from __future__ import annotations

import pytest
import torch
from reference import masked_softmax_attention

import attncc
from attncc.runtime import ops
from attncc.runtime.blockmask import BlockMask

TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def _topk_mask(B: int, H: int, Mb: int, Nb: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_num_blocks, kv_indices) of a random top-k block selection, and the block keep map."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(B, H, Mb, Nb, generator=g)
    idx = scores.topk(k, dim=-1).indices.sort(-1).values.to(torch.int32)
    keep = torch.zeros(B, H, Mb, Nb, dtype=torch.bool).scatter_(-1, idx.long(), True)
    return torch.full((B, H, Mb), k, dtype=torch.int32), idx, keep


def test_from_kv_blocks_runs_forward_and_backward_without_new_modules() -> None:
    B, H, M, N, D, bs = 1, 2, 64, 80, 16, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=gen, requires_grad=True) for L in (M, N, N))
    before = None
    for seed in range(3):
        num, idx, keep_blocks = _topk_mask(B, H, M // bs, -(-N // bs), 2, seed)
        mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=bs, seq_lengths=(M, N))
        o = attncc.flex_attention(q, k, v, block_mask=mask, kernel_options=TILES)
        keep = keep_blocks.repeat_interleave(bs, 2).repeat_interleave(bs, 3)[:, :, :M, :N]
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ro, _ = masked_softmax_attention((qd @ kd.transpose(-1, -2)) / D**0.5, keep, vd)
        assert torch.allclose(o.double(), ro, atol=2e-5), f"seed {seed}: o"
        do = torch.randn_like(o)
        got = torch.autograd.grad(o, (q, k, v), do)
        want = torch.autograd.grad(ro, (qd, kd, vd), do.double())
        for name, a, b in zip(("dq", "dk", "dv"), got, want, strict=True):
            assert torch.allclose(a.double(), b, atol=5e-5), f"seed {seed}: {name}"
        modules = len(ops._INFO)
        before = modules if before is None else before
        assert modules == before, "a changed block table must not make a new module"


def _doc_ids(B: int, N: int, lengths: list[int]) -> torch.Tensor:
    ids = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lengths)])[:N]
    return ids.view(1, N).expand(B, N).contiguous()


@pytest.mark.parametrize("N", [pytest.param(77, id="77"), pytest.param(130, id="130")])
def test_document_mask_builds_tables_at_launch_and_visits_only_nonempty_tiles(N: int) -> None:
    fn = attncc.load("document_causal")
    assert fn.prefers_block_table(), "a mask reading document ids takes block tables at launch"
    B, H, D = 1, 2, 16
    doc = _doc_ids(B, N, [30, 7, 50, 60])
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, N, D, generator=gen) for _ in range(3))
    o = fn(q, k, v, doc=doc, config=TILES)
    m, n = torch.arange(N).view(-1, 1), torch.arange(N).view(1, -1)
    keep = ((n <= m) & (doc[0].view(-1, 1) == doc[0].view(1, -1))).expand(B, H, N, N)
    ro, _ = masked_softmax_attention((q.double() @ k.double().transpose(-1, -2)) / D**0.5, keep, v.double())
    assert torch.allclose(o.double(), ro, atol=2e-5), "document_causal o"
    tables = fn.tables_for(q, k, [doc], {}, TILES["BLOCK_M"], TILES["BLOCK_N"])
    module = fn.module_for(fn.generated_for(True).key)
    log = torch.zeros(module.tile_log_shape("attn_fwd", B, H, N, N, TILES), dtype=torch.int32)
    module.attention_forward(q, k, v, config=TILES, captures={"doc": doc}, block_tables=tables, tile_log=log)
    pad = torch.zeros(B, H, -(-N // 16) * 16, -(-N // 16) * 16, dtype=torch.bool)
    pad[:, :, :N, :N] = keep
    nonempty = pad.view(B, H, pad.shape[2] // 16, 16, pad.shape[3] // 16, 16).any(5).any(3)
    assert torch.equal(log.view(B, H, *log.shape[1:]) > 0, nonempty), "visited tiles != non-empty tiles"
    assert int(log.max()) <= 16, "a tile visited twice"


def test_views_and_stats_of_a_causal_mask() -> None:
    mask = attncc.create_block_mask(lambda b, h, q, kv: q >= kv, 1, 2, 100, 100, BLOCK_SIZE=32)
    dense = mask.to_dense()
    assert dense.shape == (1, 2, 4, 4) and int(dense.sum()) == 2 * 10, "causal block occupancy"
    # torch's definition: listed blocks times the block area against B * H * M * N (edge blocks overhang)
    assert mask.sparsity() == pytest.approx(100 * (1 - 2 * 10 * 32 * 32 / (2 * 100 * 100))), "sparsity"
    text = mask.to_string()
    assert text.startswith("(0, 0)\n") and text.count("██") == 2 * 10 and "░" not in text, text
    assert mask.kv_num_blocks.shape == (1, 1, 4) or mask.kv_num_blocks.shape == (1, 2, 4), "kv_num_blocks"
    st = mask.stats()
    assert set(st) == {"block_m", "block_n", "tiles_total", "tiles_visited", "tiles_nonempty"}, st
    assert st["tiles_visited"] == st["tiles_nonempty"], f"causal visits exactly its non-empty tiles: {st}"


@pytest.mark.parametrize("how", [pytest.param({"topk": 2}, id="topk"), pytest.param({"mass": 0.5}, id="mass")])
def test_masks_from_block_scores_match_the_dense_reference(how: dict) -> None:
    B, H, M, N, D, bs = 1, 2, 64, 64, 16, 16
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(B, H, M // bs, N // bs, generator=g)
    mask = BlockMask.from_block_scores(scores, BLOCK_SIZE=bs, causal=True, **how)
    q, k, v = (torch.randn(B, H, M, D, generator=g) for _ in range(3))
    o = attncc.flex_attention(q, k, v, block_mask=mask, kernel_options=TILES)
    keep = mask.dense_mask()
    assert keep.any(-1).all(), "every query keeps its diagonal block under causal top-k/mass"
    m, n = torch.arange(M).view(-1, 1), torch.arange(N).view(1, -1)
    assert not (keep & (n > m)).any(), "causal"
    ro, _ = masked_softmax_attention((q.double() @ k.double().transpose(-1, -2)) / D**0.5, keep, v.double())
    assert torch.allclose(o.double(), ro, atol=2e-5), f"{how}: o"


def test_cu_seqlens_give_the_document_ids() -> None:
    cu = torch.tensor([0, 30, 37, 87, 130], dtype=torch.int32)
    doc = attncc.document_ids(cu)
    assert doc.shape == (1, 130) and doc.dtype == torch.int32, doc.shape
    assert torch.equal(doc, _doc_ids(1, 130, [30, 7, 50, 43])), "ids from offsets"
    with pytest.raises(attncc.InputError, match="start at 0"):
        attncc.document_ids(torch.tensor([1, 5]))
    with pytest.raises(attncc.InputError, match="1-D integer"):
        attncc.document_ids(torch.tensor([0.0, 5.0]))


def test_tables_are_built_under_torch_compile_too() -> None:
    """A document mask under torch.compile(fullgraph=True): the tables come from the attncc::tables
    op inside the graph, and the result equals eager."""
    fn = attncc.load("document_causal")
    B, H, N, D = 1, 2, 77, 16
    doc = _doc_ids(B, N, [30, 7, 40])
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, H, N, D, generator=gen) for _ in range(3))
    seen: list[str] = []

    def backend(gm: torch.fx.GraphModule, _inputs: list) -> object:
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    run = torch.compile(lambda q, k, v, doc: fn(q, k, v, doc=doc, config=TILES), backend=backend, fullgraph=True)
    out = run(q, k, v, doc)
    assert torch.equal(out, fn(q, k, v, doc=doc, config=TILES)), "compiled != eager"
    assert any("attncc.tables" in t for t in seen), f"no attncc::tables in the graph: {seen}"
