"""Kernels with a block-table plan: they visit exactly the listed blocks (partial with the mask,
full without), match a dense reference forward and backward, and take new tables without a new
module.  Tables are built here by brute force from the hand-written masks of tests/reference.py."""

from __future__ import annotations

import pytest
import torch
from reference import REFERENCES, Grid, masked_softmax_attention

from attncc.compiler import generate, load_module
from attncc.passes.lowered import CallFacts
from attncc.passes.plans import tile_env
from attncc.spec.loader import resolve

TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def _tables_from_dense(keep: torch.Tensor, bm: int, bn: int) -> dict:
    """FlexAttention-layout tables of keep [B, H, M, N] (brute force, plain torch)."""
    B, H, M, N = keep.shape
    tm, tn = -(-M // bm), -(-N // bn)
    pad = torch.zeros(B, H, tm * bm, tn * bn, dtype=torch.bool)
    inside = torch.zeros_like(pad)
    pad[:, :, :M, :N] = keep
    inside[:, :, :M, :N] = True
    blocks = pad.view(B, H, tm, bm, tn, bn)
    any_ = blocks.any(5).any(3)
    full = (blocks | ~inside.view(B, H, tm, bm, tn, bn)).all(5).all(3) & any_
    partial = any_ & ~full

    def lists(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = sel.sum(-1).to(torch.int32)
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num, order

    out = {"block_m": bm, "block_n": bn}
    out["kv_num_blocks"], out["kv_indices"] = lists(partial)
    out["full_kv_num_blocks"], out["full_kv_indices"] = lists(full)
    out["q_num_blocks"], out["q_indices"] = lists(partial.transpose(2, 3))
    out["full_q_num_blocks"], out["full_q_indices"] = lists(full.transpose(2, 3))
    return out


def _any_blocks(x: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    """Whether each [br, bc] block of x [B, H, R, C] holds a True (x padded with False)."""
    B, H, R, C = x.shape
    pad = torch.zeros(B, H, -(-R // br) * br, -(-C // bc) * bc, dtype=torch.bool)
    pad[:, :, :R, :C] = x
    return pad.view(B, H, pad.shape[2] // br, br, pad.shape[3] // bc, bc).any(5).any(3)


def _module(spec: str) -> object:
    return load_module(generate(resolve(spec), CallFacts(block_table=True)))


def _keep(spec: str, B: int, H: int, M: int, N: int, params: dict) -> torch.Tensor:
    ref = REFERENCES[spec]
    return torch.as_tensor(ref.mask(Grid.make(B, H, M, N), {**ref.defaults, **params})).expand(B, H, M, N)


CASES = [
    pytest.param("causal", 77, 77, {}, (16, 16), id="causal-77-b16"),
    pytest.param("causal", 63, 90, {}, (32, 64), id="causal-63x90-b32x64"),
    pytest.param("sliding_window", 77, 77, {"window": 20}, (16, 32), id="window-77"),
    pytest.param("sinks_window", 90, 90, {"sinks": 3, "window": 17}, (32, 16), id="sinks-90"),
    pytest.param("prefix_lm", 1, 63, {"prefix": 20}, (16, 16), id="prefix-1x63"),
]


@pytest.mark.parametrize(("spec", "M", "N", "params", "blocks"), CASES)
def test_block_table_kernels_match_the_reference_and_visit_the_listed_tiles(
        spec: str, M: int, N: int, params: dict, blocks: tuple[int, int]) -> None:
    mod = _module(spec)
    B, H, D = 2, 2, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=gen, dtype=torch.float64).float() for L in (M, N, N))
    do = torch.randn(B, H, M, D, generator=gen)
    keep = _keep(spec, B, H, M, N, params)
    tables = _tables_from_dense(keep, *blocks)
    logs = {n: torch.zeros(mod.tile_log_shape(n, B, H, M, N, TILES), dtype=torch.int32)
            for n in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv")}
    o, lse = mod.attention_forward(q, k, v, config=TILES, block_tables=tables, tile_log=logs["attn_fwd"], **params)
    dq, dk, dv, _ = mod.attention_backward(q, k, v, o, lse, do, config=TILES, block_tables=tables, tile_log={
        n: logs[n] for n in ("attn_bwd_dq", "attn_bwd_dkdv")}, **params)
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    s = qd @ kd.transpose(-1, -2) / D**0.5
    ro, rlse = masked_softmax_attention(s, keep, vd)
    for name, got, want in (("o", o, ro), ("lse", lse, rlse)):
        ok = torch.isfinite(want)
        assert torch.equal(ok, torch.isfinite(got)), f"{spec} {name}: infinities differ"
        assert torch.allclose(got.double()[ok], want[ok], atol=2e-5, rtol=1e-4), f"{spec} {name}"
    grads = torch.autograd.grad(ro, (qd, kd, vd), do.double())
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), grads, strict=True):
        assert torch.allclose(got.double(), want, atol=5e-5, rtol=1e-4), f"{spec} {name}"
    low = generate(resolve(spec), CallFacts(block_table=True)).lowered
    sizes = {"B": B, "H": H, "HK": H, "M": M, "N": N, "D": D, "E": D}
    for name, rows, bsz, csz in (("attn_fwd", logs["attn_fwd"].shape[1], 16, 16),
                                 ("attn_bwd_dq", logs["attn_bwd_dq"].shape[1], 16, 16),
                                 ("attn_bwd_dkdv", logs["attn_bwd_dkdv"].shape[1], 16, 16)):
        plan = low.plan(name)
        want = torch.zeros_like(logs[name])
        extent = N if name == "attn_bwd_dkdv" else M
        for b in range(B):
            for h in range(H):
                for r in range(rows):
                    env = tile_env(plan, sizes, {}, r * bsz, min(r * bsz + bsz, extent) - 1, b, h)
                    for t in plan.visits(env, csz, tables=tables):
                        want[b * H + h, r, t.start // csz] += 16 if t.masked else 1
        assert torch.equal(logs[name], want), f"{spec} {name}: visited tiles differ from the table's plan"
        # At the table's granularity, the kernel visits exactly the non-empty blocks (and, with
        # tables at the tile size, exactly the non-empty tiles).
        kept = keep if name != "attn_bwd_dkdv" else keep.transpose(2, 3)
        rb, cb = blocks if name != "attn_bwd_dkdv" else blocks[::-1]
        visited = logs[name].view(B, H, *logs[name].shape[1:]) > 0
        assert torch.equal(_any_blocks(visited, rb // bsz, cb // csz), _any_blocks(kept, rb, cb)), \
            f"{spec} {name}: visited blocks != non-empty blocks"


def test_new_tables_reuse_the_module_and_an_empty_row_gives_zero() -> None:
    """A dynamic (top-k style) mask on the unmasked spec: tables change between calls, the module
    and its kernels stay; a query block with no listed block gives o = 0, lse = -inf."""
    mod = _module("full")
    B, H, M, N, D = 1, 2, 64, 96, 16
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, D, generator=gen) for L in (M, N, N))
    kernel = mod.attn_fwd
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        keep_blocks = torch.rand(B, H, M // 32, N // 32, generator=g) < 0.5
        keep_blocks[:, :, 0] = False  # query block 0 attends nothing
        keep = keep_blocks.repeat_interleave(32, 2).repeat_interleave(32, 3)
        tables = _tables_from_dense(keep, 32, 32)
        assert int(tables["kv_num_blocks"].sum()) == 0, "blocks of a block-aligned mask are full, not partial"
        o, lse = mod.attention_forward(q, k, v, config=TILES, block_tables=tables)
        ro, rlse = masked_softmax_attention((q.double() @ k.double().transpose(-1, -2)) / D**0.5, keep, v.double())
        assert torch.allclose(o.double(), ro, atol=2e-5), f"seed {seed}: o"
        assert torch.isneginf(lse[:, :, :32]).all() and (o[:, :, :32] == 0).all(), f"seed {seed}: empty row"
        assert mod.attn_fwd is kernel, "a new table must not need a new kernel"


@pytest.mark.parametrize(("change", "match"), [
    pytest.param(lambda t: t.pop("kv_indices"), "kv_indices", id="missing"),
    pytest.param(lambda t: t.update(block_m=24), "power of two", id="block-size"),
    pytest.param(lambda t: t.update(kv_num_blocks=t["kv_num_blocks"].long()), "int32", id="dtype"),
    pytest.param(lambda t: t.update(kv_num_blocks=t["kv_num_blocks"][:, :, :1]), "shape", id="rows"),
])
def test_bad_tables_are_one_line_errors(change: object, match: str) -> None:
    mod = _module("causal")
    q = torch.randn(1, 1, 40, 16)
    tables = _tables_from_dense(_keep("causal", 1, 1, 40, 40, {}), 16, 16)
    change(tables)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match) as err:
        mod.attention_forward(q, q, q, config=TILES, block_tables=tables)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pass block_tables"):
        mod.attention_forward(q, q, q, config=TILES)


AOT_SCRIPT = """
import os, json
os.environ["TRITON_INTERPRET"] = "0"
import attncc
from attncc.codegen.aot import compile_report
from attncc.runtime.aot_spec import kernel_signature, launch_divisibility
fn = attncc.load("document_causal")
gen = fn.generated_for(True)
class F: pass
f = F(); f.module = fn.module_for(gen.key); f.spec = fn.spec
sched = gen.lowered.schedule
out = []
for target in ("sm_80", "sm_90"):
    for d in sched.kernels:
        cfg = sched.default_config(d.kind, 64)
        sig, ce = kernel_signature(f, d, "fp16", 64, 64, cfg)
        r = compile_report(getattr(f.module, d.name), sig, ce, target, cfg["num_warps"], cfg["num_stages"],
                           kernel_name=d.name, divisible_by_16=launch_divisibility(sig, 64, 64))
        out.append([target, d.name, r.registers, r.spills])
print(json.dumps(out))
"""


def test_block_table_kernels_compile_for_sm80_and_sm90_without_spills() -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = ("attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
    assert sorted((r[0], r[1]) for r in reports) == sorted((t, k) for t in ("sm_80", "sm_90") for k in kernels), reports
    spilling = [r for r in reports if r[3] != 0]
    assert not spilling, f"block-table kernels spill: {spilling}"
