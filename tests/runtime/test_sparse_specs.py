"""Sparse attention patterns (issue 9): each built-in spec, and the same pattern written as a
FlexAttention ``mask_mod`` for ``attncc.flex_attention``, forward and gradients, against the
independent dense references of tests/reference.py.

Accuracy rule as in test_specs.py (output and lse: at most twice the error of same-dtype torch
against the fp64 golden, plus a floor) and test_autograd.py (dq, dk, dv: the same rule with a
floor scaled by the gradient's size).  Lengths 1, 63 and 77; the 2-D and 3-D grids also at
lengths that fill the grid exactly and that leave a partial last row or slice.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import REFERENCES, Grid, check_attention, reference
from test_autograd import assert_grad_close
from test_specs import CAPTURES, DTYPES, SMALL_PARAMS

import attncc
from attncc.spec.loader import library

MaskMod = Callable[..., object]
SPARSE_SPECS = ("dilated_sliding_window", "global_window", "longlora", "halo", "document", "document_causal",
                "modality_mutual", "na1d", "na2d", "na3d", "power_attention")


# --- the patterns as FlexAttention mask_mods (written as a FlexAttention user would) --------------

def _dilated(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    reach, step, causal = p["window"] * p["dilation"], p["dilation"], p["causal"] == 1

    def dilated(b, h, q_idx, kv_idx):
        dist = q_idx - kv_idx
        keep = (torch.abs(dist) <= reach) & (dist % step == 0)
        return keep & (dist >= 0) if causal else keep
    return dilated


def _global_window(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    G, w = p["global_tokens"], p["window"]

    def global_window(b, h, q_idx, kv_idx):
        return (torch.abs(q_idx - kv_idx) <= w) | (q_idx < G) | (kv_idx < G)
    return global_window


def _longlora(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    G = p["group"]

    def shifted_groups(b, h, q_idx, kv_idx):
        shift = torch.where(h >= H // 2, G // 2, 0)
        return ((q_idx + shift) // G == (kv_idx + shift) // G) & (kv_idx <= q_idx)
    return shifted_groups


def _halo(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    block, halo = p["block"], p["halo"]

    def blocked_with_halo(b, h, q_idx, kv_idx):
        start = (q_idx // block) * block
        return (kv_idx >= start - halo) & (kv_idx < start + block + halo)
    return blocked_with_halo


def _document(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    doc = caps["doc"]

    def same_document(b, h, q_idx, kv_idx):
        return doc[b, q_idx] == doc[b, kv_idx]
    return same_document


def _document_causal(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    doc = caps["doc"]

    def causal_document(b, h, q_idx, kv_idx):
        return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx)
    return causal_document


def _modality_mutual(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    modality, span = caps["modality"], caps["image_span"]

    def text_causal_image_bidirectional(b, h, q_idx, kv_idx):
        both_image = (modality[b, q_idx] == 1) & (modality[b, kv_idx] == 1)
        return (kv_idx <= q_idx) | (both_image & (span[b, q_idx] == span[b, kv_idx]))
    return text_causal_image_bidirectional


def natten_axis(q, kv, extent: int, kernel: int, dilation: int, causal: int):
    """One axis of NATTEN's FlexAttention mask (src/natten/backends/flex.py, stride 1), spelled as there:
    the size of the query's dilation group is extent // dilation + 1 - (g + dilation - extent % dilation) // dilation."""
    group = q % dilation
    qi, ki = q // dilation, kv // dilation
    same_group = group == kv % dilation
    if causal == 1:
        return same_group & (qi - ki >= 0) & (qi - ki < kernel)
    size = extent // dilation + 1 - (group + (dilation - extent % dilation)) // dilation
    left, right = kernel // 2, kernel // 2 + (kernel % 2 - 1)
    centre = torch.clamp(qi, left, size - 1 - right)
    w0, w1 = centre - ki, ki - centre
    return same_group & (((0 <= w0) & (w0 <= left)) | ((0 <= w1) & (w1 <= right)))


def _na1d(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    def na1d(b, h, q_idx, kv_idx):
        return natten_axis(q_idx, kv_idx, N, p["kernel_size"], p["dilation"], p["causal"])
    return na1d


def _na2d(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    cols = p["cols"]
    rows = math.ceil(N / cols)

    def na2d(b, h, q_idx, kv_idx):
        along_rows = natten_axis(q_idx // cols, kv_idx // cols, rows, p["kernel_rows"], p["dilation_rows"],
                                 p["causal_rows"])
        along_cols = natten_axis(q_idx % cols, kv_idx % cols, cols, p["kernel_cols"], p["dilation_cols"],
                                 p["causal_cols"])
        return along_rows & along_cols
    return na2d


def _na3d(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    rows, cols = p["rows"], p["cols"]
    depth = math.ceil(N / (rows * cols))

    def na3d(b, h, q_idx, kv_idx):
        z = natten_axis(q_idx // (rows * cols), kv_idx // (rows * cols), depth, p["kernel_depth"],
                        p["dilation_depth"], p["causal_depth"])
        y = natten_axis(q_idx // cols % rows, kv_idx // cols % rows, rows, p["kernel_rows"], p["dilation_rows"],
                        p["causal_rows"])
        x = natten_axis(q_idx % cols, kv_idx % cols, cols, p["kernel_cols"], p["dilation_cols"], p["causal_cols"])
        return z & y & x
    return na3d


def _power_log2(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    def power_of_two_distance(b, h, q_idx, kv_idx):
        dist = q_idx - kv_idx
        nearest = torch.floor(torch.log2(torch.clamp(dist, min=1).float()) + 0.5)  # rounded: exact powers of two
        return (dist == 0) | ((dist > 0) & (dist == torch.exp2(nearest)))
    return power_of_two_distance


def _power_bitwise(p: dict, caps: dict, H: int, N: int) -> MaskMod:
    def power_of_two_distance(b, h, q_idx, kv_idx):
        dist = q_idx - kv_idx
        return (dist >= 0) & ((dist & (dist - 1)) == 0)
    return power_of_two_distance


MASK_MODS: dict[str, Callable[[dict, dict, int, int], MaskMod]] = {
    "dilated_sliding_window": _dilated, "global_window": _global_window, "longlora": _longlora, "halo": _halo,
    "document": _document, "document_causal": _document_causal, "modality_mutual": _modality_mutual,
    "na1d": _na1d, "na2d": _na2d, "na3d": _na3d, "power_attention": _power_log2,
}


# --- cases ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    spec: str
    front: str  # "spec": attncc.load(spec); "flex": attncc.flex_attention with the mask_mod
    dtype: str
    N: int
    B: int = 2
    H: int = 2
    params: dict = field(default_factory=dict, hash=False)
    tag: str = ""
    mask_mod: Callable[[dict, dict, int, int], MaskMod] | None = None

    @property
    def id(self) -> str:
        return f"{self.spec}-{self.front}-{self.dtype}-N{self.N}" + (f"-{self.tag}" if self.tag else "")


VARIANTS: dict[str, list[tuple[str, dict]]] = {  # (tag, params) beyond SMALL_PARAMS, per spec
    "dilated_sliding_window": [("causal", {"window": 5, "dilation": 2, "causal": 1})],
    "halo": [("block16", {"block": 16, "halo": 3})],
    "na1d": [("causal", {"kernel_size": 5, "dilation": 3, "causal": 1}),
             ("wide", {"kernel_size": 40, "dilation": 3})],  # groups shorter than the kernel: the whole group
    "na2d": [("causal-rows", {"cols": 8, "kernel_rows": 4, "kernel_cols": 3, "dilation_rows": 2, "causal_rows": 1})],
    "na3d": [("causal-depth", {"rows": 4, "cols": 3, "kernel_depth": 2, "kernel_rows": 3, "kernel_cols": 2,
                               "dilation_rows": 2, "causal_depth": 1})],
}
# Lengths that fill the grid exactly (na2d: 7 x 9; na3d: 5 x 3 x 4) besides 1, 63 and 77.
FULL_GRID = {"na2d": 63, "na3d": 60}
SIZES = {"longlora": {"H": 4}, "na1d": {"B": 1}, "na2d": {"B": 1, "H": 1}, "na3d": {"B": 1, "H": 1}}


def _cases() -> list:
    cases: list[Case] = []
    for spec in SPARSE_SPECS:
        kw = {"params": dict(SMALL_PARAMS.get(spec, {})), **SIZES.get(spec, {})}
        cases += [Case(spec, "spec", "fp32", 1, **kw), Case(spec, "spec", "fp32", 63, **kw),
                  Case(spec, "spec", "fp16", 77, **kw),
                  Case(spec, "flex", "fp32", 77, **kw), Case(spec, "flex", "fp16", 63, **kw)]
        if spec in FULL_GRID and FULL_GRID[spec] != 63:
            cases.append(Case(spec, "spec", "fp32", FULL_GRID[spec], tag="full-grid", **kw))
        for tag, params in VARIANTS.get(spec, []):
            vkw = {**kw, "params": params}
            cases += [Case(spec, "spec", "fp32", 77, tag=tag, **vkw), Case(spec, "flex", "fp16", 77, tag=tag, **vkw)]
    cases.append(Case("power_attention", "flex", "fp32", 77, tag="bitwise", mask_mod=_power_bitwise))
    return [pytest.param(c, id=c.id) for c in cases]


CASES = _cases()


# --- running and checking -------------------------------------------------------------------------

def _inputs(c: Case) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """fp32 master copies of q, k, v and the output gradient; the captured integer tensors."""
    gen = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))
    t = {n: torch.randn(c.B, c.H, c.N, 16, generator=gen) for n in ("q", "k", "v", "do")}
    caps = CAPTURES[c.spec](c.B, c.N, gen) if c.spec in CAPTURES else {}
    return t, caps


def _run(c: Case, t: dict, caps: dict) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """attncc's output, lse and gradients of sum(o * do)."""
    dtype = DTYPES[c.dtype]
    leaves = {n: t[n].to(DEVICE, dtype, copy=True).requires_grad_() for n in ("q", "k", "v")}
    dev_caps = {n: x.to(DEVICE) for n, x in caps.items()}
    if c.front == "spec":
        o, lse = attncc.load(c.spec)(leaves["q"], leaves["k"], leaves["v"], return_lse=True, config=SMALL_TILES,
                                     **c.params, **dev_caps)
    else:
        params = {**REFERENCES[c.spec].defaults, **c.params}
        mask_mod = (c.mask_mod or MASK_MODS[c.spec])(params, dev_caps, c.H, c.N)
        block_mask = attncc.create_block_mask(mask_mod, c.B, c.H, c.N, c.N, device=DEVICE)
        o, lse = attncc.flex_attention(leaves["q"], leaves["k"], leaves["v"], block_mask=block_mask,
                                       return_lse=True, kernel_options=dict(SMALL_TILES))
    (o.double() * t["do"].to(DEVICE).double()).sum().backward()
    grads = {f"d{n}": x.grad.cpu() for n, x in leaves.items()}
    return grads, (o.detach().cpu(), lse.detach().cpu())


def _dense(c: Case, t: dict, caps: dict, dtype: torch.dtype) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """The reference's output, lse and gradients, computed in ``dtype`` (fp64: the golden values)."""
    leaves = {n: t[n].to(DTYPES[c.dtype]).to(dtype).requires_grad_() for n in ("q", "k", "v")}
    o, lse = reference(c.spec, leaves["q"], leaves["k"], leaves["v"], compute_dtype=dtype, **c.params, **caps)
    (o.double() * t["do"].double()).sum().backward()
    return {f"d{n}": x.grad for n, x in leaves.items()}, (o.detach(), lse.detach())


@pytest.mark.parametrize("case", CASES)
def test_pattern_forward_and_gradients(case: Case) -> None:
    t, caps = _inputs(case)
    dtype = DTYPES[case.dtype]
    got_grads, got = _run(case, t, caps)
    golden_grads, golden = _dense(case, t, caps, torch.float64)
    same_grads, same = _dense(case, t, caps, dtype)
    label = case.id.replace("-", " ")
    check_attention(label, got, golden, same, dtype)
    for name in ("dq", "dk", "dv"):
        assert got_grads[name].dtype == dtype, f"{label}: {name} dtype {got_grads[name].dtype}"
        assert_grad_close(f"{label}: {name}", got_grads[name], golden_grads[name], same_grads[name], dtype)


def test_every_sparse_spec_is_in_the_library_and_bites() -> None:
    """Each pattern ships as a spec, and at the test parameters its mask keeps some, not all, of the
    [77, 77] elements (and differs from plain causal), so the tests above check the pattern."""
    assert set(SPARSE_SPECS) <= set(library()), "a sparse-pattern spec is missing from specs/"
    gen = torch.Generator().manual_seed(0)
    causal = torch.ones(77, 77, dtype=torch.bool).tril()
    for c in CASES:
        case: Case = c.values[0]
        if case.N != 77:
            continue
        ref = REFERENCES[case.spec]
        p = {**ref.defaults, **case.params,
             **{n: x.long() for n, x in (CAPTURES[case.spec](2, 77, gen) if case.spec in CAPTURES else {}).items()}}
        keep = torch.as_tensor(ref.mask(Grid.make(2, case.H, 77, 77), p)).expand(2, case.H, 77, 77)
        density = keep.float().mean().item()
        assert 0.0 < density < 0.75, f"{case.id}: mask keeps {density:.0%} of the elements"
        assert keep.diagonal(dim1=-2, dim2=-1).all(), f"{case.id}: a query does not see itself"
        assert (keep != causal).any(), f"{case.id}: the mask is plain causal"


def _neighbours(name: str, N: int, **params: int) -> list[list[int]]:
    """Keys of each query under the reference of ``name`` (batch 0, head 0)."""
    ref = REFERENCES[name]
    keep = torch.as_tensor(ref.mask(Grid.make(1, 1, N, N), {**ref.defaults, **params})).expand(1, 1, N, N)[0, 0]
    return [row.nonzero().flatten().tolist() for row in keep]


@pytest.mark.parametrize("N,params,expected", [
    pytest.param(8, {"kernel_size": 3}, {0: [0, 1, 2], 3: [2, 3, 4], 7: [5, 6, 7]}, id="k3-clamped-at-both-ends"),
    pytest.param(8, {"kernel_size": 4}, {0: [0, 1, 2, 3], 3: [1, 2, 3, 4], 7: [4, 5, 6, 7]}, id="even-k4-left2-right1"),
    pytest.param(9, {"kernel_size": 3, "dilation": 2}, {0: [0, 2, 4], 1: [1, 3, 5], 4: [2, 4, 6], 7: [3, 5, 7],
                                                      8: [4, 6, 8]}, id="dilation2-per-group"),
    pytest.param(5, {"kernel_size": 7}, {0: [0, 1, 2, 3, 4], 4: [0, 1, 2, 3, 4]}, id="group-shorter-than-kernel"),
    pytest.param(8, {"kernel_size": 3, "causal": 1}, {0: [0], 1: [0, 1], 5: [3, 4, 5]}, id="causal-not-shifted"),
])
def test_natten_reference_windows(N: int, params: dict, expected: dict[int, list[int]]) -> None:
    """The NATTEN reference by hand: windows shifted inward at the borders, not truncated."""
    got = _neighbours("na1d", N, **params)
    for query, keys in expected.items():
        assert got[query] == keys, f"na1d N={N} {params}: query {query} sees {got[query]}, expected {keys}"


@pytest.mark.parametrize("name,N,params,per_query", [
    pytest.param("na1d", 50, {"kernel_size": 7, "dilation": 3}, 7, id="na1d"),
    pytest.param("na2d", 63, {"cols": 9, "kernel_rows": 3, "kernel_cols": 3, "dilation_cols": 2}, 9, id="na2d-7x9"),
    pytest.param("na3d", 60, {"rows": 3, "cols": 4, "kernel_depth": 3, "kernel_rows": 2, "kernel_cols": 3}, 18,
                 id="na3d-5x3x4"),
])
def test_natten_reference_every_query_has_a_full_window(name: str, N: int, params: dict, per_query: int) -> None:
    """On a full grid whose dilation groups are at least the kernel, every query has exactly the product of the
    kernel sizes as neighbours (NATTEN's clamped windows), itself included."""
    for query, keys in enumerate(_neighbours(name, N, **params)):
        assert len(keys) == per_query, f"{name} {params}: query {query} has {len(keys)} neighbours: {keys}"
        assert query in keys, f"{name} {params}: query {query} is not its own neighbour"
