"""Every built-in spec, compiled and run, against the independent references of tests/reference.py.

Accuracy rule (FlashAttention's): the kernel's error against the fp64 golden is
at most twice the error of the same computation in PyTorch in the input dtype,
plus a small absolute floor.  Output and lse are both checked; NaN anywhere fails
(the launcher pre-fills outputs with NaN, so an unwritten element shows up).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import REFERENCES, check_attention, reference

import attncc
from attncc.spec.loader import softmax_library

LIBRARY = sorted(softmax_library())
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}

# Non-default parameters chosen so that masks and modifications bite at lengths below 128.
SMALL_PARAMS: dict[str, dict] = {
    "sliding_window": {"window": 16},
    "sliding_window_symmetric": {"window": 9},
    "prefix_lm": {"prefix": 20},
    "sinks_window": {"sinks": 3, "window": 16},
    "softcap": {"cap": 2.0},
    "relative_bias": {"max_distance": 8},
    "dilated_sliding_window": {"window": 4, "dilation": 3},
    "global_window": {"global_tokens": 5, "window": 6},
    "longlora": {"group": 16},
    "halo": {"block": 12, "halo": 5},
    "na1d": {"kernel_size": 7, "dilation": 2},
    "na2d": {"cols": 9, "kernel_rows": 3, "kernel_cols": 5, "dilation_cols": 2},  # 63 tokens: 7 x 9; 77: partial row
    "na3d": {"rows": 3, "cols": 4, "kernel_depth": 3, "kernel_rows": 2, "kernel_cols": 3, "dilation_cols": 2},
}
# Specs whose masks are long expressions (slow under the interpreter): one batch element and head.
ONE_HEAD = {"na2d", "na3d"}
# Larger scores where the modification is non-linear, so that it matters.
SCALES: dict[str, float] = {"softcap": 1.0}


@dataclass(frozen=True)
class Case:
    spec: str
    dtype: str
    M: int
    N: int
    B: int = 2
    H: int = 2
    HK: int | None = None
    D: int = 16
    E: int | None = None
    params: dict = field(default_factory=dict, hash=False)
    kv_lens: tuple[int, ...] | None = None
    scale: float | None = None
    config: dict | None = field(default_factory=lambda: dict(SMALL_TILES), hash=False)
    tag: str = ""

    @property
    def id(self) -> str:
        s = f"{self.spec}-{self.dtype}-M{self.M}"
        if self.N != self.M:
            s += f"-N{self.N}"
        return s + (f"-{self.tag}" if self.tag else "")

    @property
    def label(self) -> str:
        lens = f"M={self.M}" + (f" N={self.N}" if self.N != self.M else "")
        extra = f" [{self.tag}]" if self.tag else ""
        return f"{self.spec} {self.dtype} {lens}{extra}"


def _base(spec: str, dtype: str, M: int, N: int, **kw) -> Case:
    kw.setdefault("params", dict(SMALL_PARAMS.get(spec, {})))
    kw.setdefault("scale", SCALES.get(spec))
    if spec == "gqa":
        kw.setdefault("H", 4)
        kw.setdefault("HK", 2)
    if spec == "distinct_value_dim":
        kw.setdefault("E", 32)
    if spec == "cross_attention":
        kw.setdefault("B", 3)
        kw.setdefault("kv_lens", (N, 0, N // 2 + 1))
    if spec in ONE_HEAD:
        kw.setdefault("B", 1)
        kw.setdefault("H", 1)
    return Case(spec, dtype, M, N, **kw)


def packed_documents(B: int, L: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``doc`` [B, L] int32: documents of 1 to 19 tokens packed back to back (ids 0, 1, ...)."""
    rows = []
    for _ in range(B):
        lens: list[int] = []
        while sum(lens) < L:
            lens.append(int(torch.randint(1, 20, (1,), generator=gen)))
        rows.append(torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[:L])
    return {"doc": torch.stack(rows).to(torch.int32)}


def interleaved_modalities(B: int, L: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``modality`` (0 text, 1 image) and ``image_span`` [B, L] int32: runs of 1 to 11 tokens.

    Each image run has its own span id (two image runs may touch); text tokens carry the id of
    the image run before them, which the spec must ignore."""
    mods, spans = [], []
    for _ in range(B):
        mod: list[int] = []
        span: list[int] = []
        run = last_image = 0
        while len(mod) < L:
            kind, length = int(torch.randint(0, 2, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
            run += 1
            last_image = run if kind == 1 else last_image
            mod += [kind] * length
            span += [last_image] * length
        mods.append(torch.tensor(mod[:L]))
        spans.append(torch.tensor(span[:L]))
    return {"modality": torch.stack(mods).to(torch.int32), "image_span": torch.stack(spans).to(torch.int32)}


# Integer captures of the sparse patterns: builder(B, L, generator), L = max(M, N) (queries and keys share positions).
CAPTURES: dict[str, Callable[[int, int, torch.Generator], dict[str, torch.Tensor]]] = {
    "document": packed_documents,
    "document_causal": packed_documents,
    "modality_mutual": interleaved_modalities,
}


def _cases() -> list:
    cases: list[Case] = []
    for spec in LIBRARY:
        for dtype in DTYPES:
            if spec == "cross_attention":
                lengths = [(1, 77), (33, 77), (77, 63)]
            else:
                lengths = [(1, 1), (63, 63), (77, 77)]
            cases += [_base(spec, dtype, M, N) for M, N in lengths]
        # different query and key lengths, and non-square tiles
        cases.append(_base(spec, "fp32", 50, 77, config={**SMALL_TILES, "BLOCK_N": 32}))
        cases.append(_base(spec, "fp16", 77, 50, config={**SMALL_TILES, "BLOCK_M": 32}))
    # long sequences: many tiles, the parameters' defaults, the default tile configuration
    cases.append(Case("causal", "fp32", 501, 501, B=1, H=1, config={**SMALL_TILES, "BLOCK_M": 32}))
    cases.append(Case("sinks_window", "fp32", 501, 501, B=1, H=1, config=None, tag="defaults"))
    # grouped-query ratios 1, 4, 8
    for HK in (8, 2, 1):
        for dtype in DTYPES:
            cases.append(Case("gqa", dtype, 45, 45, B=1, H=8, HK=HK, tag=f"H8-HK{HK}"))
    # head dims, powers of two and not
    for D in (16, 32, 64, 128, 48, 80):
        for dtype in DTYPES:
            cases.append(Case("causal", dtype, 40, 40, B=1, H=2, D=D, tag=f"D{D}"))
    # value head dim != query/key head dim
    for D, E in ((32, 64), (64, 16)):
        for dtype in DTYPES:
            cases.append(Case("distinct_value_dim", dtype, 37, 37, B=1, H=2, D=D, E=E, tag=f"D{D}-E{E}"))
    # an explicit scale, and a kv_lens vector with lengths beyond N (clipped by the key range)
    cases.append(_base("full", "fp32", 30, 45, scale=0.3, tag="scale0.3"))
    cases.append(_base("cross_attention", "fp32", 20, 45, kv_lens=(100, 3, 45), tag="lens-beyond-N"))
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate test ids {dup}"
    return [pytest.param(c, id=c.id) for c in cases]


CASES = _cases()


def make_inputs(c: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    dtype = DTYPES[c.dtype]
    gen = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))
    HK = c.HK or c.H
    E = c.E or c.D

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)

    q, k, v = rand(c.B, c.H, c.M, c.D), rand(c.B, HK, c.N, c.D), rand(c.B, HK, c.N, E)
    kwargs: dict = dict(c.params)
    if c.spec == "alibi":
        kwargs["slopes"] = (0.05 + 0.5 * torch.rand(c.H, generator=gen)).to(DEVICE)
    if c.spec == "relative_bias":
        md = c.params.get("max_distance", 128)
        kwargs["bias"] = torch.randn(c.H, 2 * md + 1, generator=gen).to(DEVICE)
    if c.spec == "temperature":
        kwargs["temp"] = (0.25 + 1.75 * torch.rand(c.B, c.H, c.M, generator=gen)).to(DEVICE)
    if c.spec == "cross_attention":
        kwargs["kv_lens"] = torch.tensor(c.kv_lens, dtype=torch.int32, device=DEVICE)
    if c.spec in CAPTURES:
        kwargs.update({n: t.to(DEVICE) for n, t in CAPTURES[c.spec](c.B, max(c.M, c.N), gen).items()})
    return q, k, v, kwargs


def run_case(c: Case) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, kwargs = make_inputs(c)
    fn = attncc.load(c.spec)
    o, lse = fn(q, k, v, scale=c.scale, return_lse=True, config=c.config, **kwargs)
    golden = reference(c.spec, q.cpu(), k.cpu(), v.cpu(), scale=c.scale, **_cpu(kwargs))
    same = reference(c.spec, q.cpu(), k.cpu(), v.cpu(), scale=c.scale, compute_dtype=q.dtype, **_cpu(kwargs))
    assert o.shape == (c.B, c.H, c.M, c.E or c.D), f"{c.label}: output shape {tuple(o.shape)}"
    assert lse.shape == (c.B, c.H, c.M), f"{c.label}: lse shape {tuple(lse.shape)}"
    check_attention(c.label, (o.cpu(), lse.cpu()), golden, same, q.dtype)
    return o.cpu(), lse.cpu()


def _cpu(kwargs: dict) -> dict:
    return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def test_every_builtin_spec_has_a_reference() -> None:
    missing = sorted(set(LIBRARY) - set(REFERENCES))
    assert not missing, f"built-in spec(s) without a reference in tests/reference.py: {missing}"
    stale = sorted(set(REFERENCES) - set(LIBRARY))
    assert not stale, f"tests/reference.py has references for specs that no longer exist: {stale}"


@pytest.mark.parametrize("name", LIBRARY)
def test_reference_knows_the_spec_interface(name: str) -> None:
    """Params and captures of the reference are the ones the spec declares (else kwargs would not match)."""
    spec = attncc.load(name).spec
    ref = REFERENCES.get(name)
    assert ref is not None, f"no reference for '{name}'"
    assert set(spec.params) == set(ref.defaults), f"{name}: params {set(spec.params)} vs {set(ref.defaults)}"
    assert set(spec.captures) == set(ref.captures), f"{name}: captures {set(spec.captures)} vs {set(ref.captures)}"
    for p in spec.params.values():
        assert p.default == ref.defaults[p.name], f"{name}: default of '{p.name}' {p.default} != {ref.defaults[p.name]}"


@pytest.mark.parametrize("case", CASES)
def test_spec_matches_reference(case: Case) -> None:
    run_case(case)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_cross_attention_empty_batch_rows_are_zero(dtype: str) -> None:
    """kv_lens[b] == 0: every row of that batch element has output exactly 0 and lse -inf."""
    c = _base("cross_attention", dtype, 33, 77, kv_lens=(77, 0, 40))
    o, lse = run_case(c)
    assert torch.equal(o[1], torch.zeros_like(o[1])), "cross_attention: rows with kv_lens 0 are not exactly 0"
    assert torch.isneginf(lse[1]).all(), "cross_attention: rows with kv_lens 0 must have lse -inf"
    assert torch.isfinite(lse[0]).all() and torch.isfinite(lse[2]).all()


def test_params_change_the_result() -> None:
    """A runtime parameter reaches the kernel: different windows give different outputs."""
    c = _base("sliding_window", "fp32", 64, 64)
    o8, _ = run_case(replace(c, params={"window": 8}))
    o32, _ = run_case(replace(c, params={"window": 32}))
    assert (o8 - o32).abs().max() > 1e-3
