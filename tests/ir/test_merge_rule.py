"""The online-softmax merge rule, printed from the IR node, folds split partial states into the
dense softmax: through its torch evaluation and its Triton source run in the interpreter."""

from __future__ import annotations

import random

import networkx as nx
import pytest
import sympy as sp
import torch

from attncc.codegen import cache
from attncc.codegen.merge import finalize_state_torch, merge_source, merge_states_torch
from attncc.compiler import lower
from attncc.ir.verify import IRError, verify
from attncc.spec.loader import resolve

R, N, E = 7, 77, 5


@pytest.fixture(scope="module")
def g() -> nx.DiGraph:
    return lower(resolve("causal")).graph


def _case(dtype: torch.dtype, parts: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Scores [R, N] (-inf where masked) and values [N, E]; cut points of ``parts`` non-empty parts.

    Row 0 is masked everywhere, row 1 in the whole first part, row 2 everywhere but one key.
    """
    gen = torch.Generator().manual_seed(seed)
    cuts = [0, *sorted(random.Random(seed).sample(range(1, N), parts - 1)), N]
    s = (torch.randn(R, N, generator=gen, dtype=torch.float64) * 3).to(dtype)
    v = torch.randn(N, E, generator=gen, dtype=torch.float64).to(dtype)
    s[0] = float("-inf")
    s[1, : cuts[1]] = float("-inf")
    s[2, :-1] = float("-inf")
    s[3, torch.rand(N, generator=gen) < 0.5] = float("-inf")
    return s, v, cuts


def _partial(s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-torch state (m, l, acc) of one part, natural-log m; empty rows give (-inf, 0, 0)."""
    m = s.max(dim=1).values
    p = torch.exp(s - torch.where(m > float("-inf"), m, 0.0)[:, None])
    return m, p.sum(dim=1), p @ v


def _dense(s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax output (0 on fully masked rows) and logsumexp, in the inputs' dtype."""
    lse = torch.logsumexp(s, dim=1)
    p = torch.softmax(s, dim=1).nan_to_num(0.0)
    return p @ v, lse


def _states(s: torch.Tensor, v: torch.Tensor, cuts: list[int]) -> list[tuple[torch.Tensor, ...]]:
    return [_partial(s[:, a:b], v[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]


def _fold(g: nx.DiGraph, states: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    out = states[0]
    for st in states[1:]:
        out = merge_states_torch(g, *out, *st)
    return out


def _check(name: str, got: torch.Tensor, s: torch.Tensor, v: torch.Tensor, which: int) -> None:
    """``got`` against the fp64 dense golden within 2x the same-dtype torch error (plus a few ulps)."""
    gold = _dense(s.double(), v.double())[which]
    same = _dense(s, v)[which].double()
    inf = torch.isneginf(gold)
    assert torch.equal(torch.isneginf(got), inf), f"{name}: -inf rows differ: {got}"
    finite = ~inf
    err = (got.double() - gold)[finite].abs().max().item()
    ref_err = (same - gold)[finite].abs().max().item()
    tol = 2 * ref_err + 8 * torch.finfo(s.dtype).eps * max(1.0, gold[finite].abs().max().item())
    assert err <= tol, f"{name}: max error {err:.3e} > {tol:.3e}"


CASES = [
    pytest.param(dtype, parts, seed, id=f"{str(dtype)[6:]}-{parts}parts-seed{seed}")
    for dtype in (torch.float32, torch.float64) for parts in (2, 3, 5) for seed in (0, 1)
]


@pytest.mark.parametrize(("dtype", "parts", "seed"), CASES)
def test_torch_merge_matches_dense_softmax(g: nx.DiGraph, dtype: torch.dtype, parts: int, seed: int) -> None:
    s, v, cuts = _case(dtype, parts, seed)
    o, lse = finalize_state_torch(g, *_fold(g, _states(s, v, cuts)))
    assert o.dtype == dtype and lse.dtype == dtype
    _check("o", o, s, v, 0)
    _check("lse", lse, s, v, 1)
    assert torch.equal(o[0], torch.zeros(E, dtype=dtype)), f"o: fully masked row is {o[0]}"


@pytest.mark.parametrize("seed", [pytest.param(seed, id=f"seed{seed}") for seed in range(3)])
def test_merge_order_does_not_matter(g: nx.DiGraph, seed: int) -> None:
    s, v, cuts = _case(torch.float64, 5, seed)
    states = _states(s, v, cuts)
    a, b = states[0], states[1]
    for name, x, y in zip(("m", "l", "acc"), merge_states_torch(g, *a, *b), merge_states_torch(g, *b, *a),
                          strict=True):
        assert torch.equal(x, y), f"{name}: merge(a, b) != merge(b, a)"
    ref = finalize_state_torch(g, *_fold(g, states))
    shuffled = list(states)
    random.Random(seed).shuffle(shuffled)
    tree = merge_states_torch(g, *_fold(g, shuffled[:2]), *_fold(g, shuffled[2:]))
    for order, got in (("shuffled", _fold(g, shuffled)), ("tree", tree)):
        for name, x, y in zip(("o", "lse"), finalize_state_torch(g, *got), ref, strict=True):
            assert torch.allclose(x, y, rtol=1e-12, atol=1e-12), f"{name} ({order}): {x} vs {y}"


KERNEL = '''

@triton.jit
def _fold_kernel(M, L, ACC, O, LSE, K: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                 RP: tl.constexpr, CP: tl.constexpr):
    r = tl.arange(0, RP)
    c = tl.arange(0, CP)
    rows = r < ROWS
    tile = rows[:, None] & (c[None, :] < COLS)
    m = tl.load(M + r, mask=rows, other=float("-inf"))
    l = tl.load(L + r, mask=rows, other=0.0)
    acc = tl.load(ACC + r[:, None] * COLS + c[None, :], mask=tile, other=0.0)
    for k in tl.static_range(1, K):
        m_k = tl.load(M + k * ROWS + r, mask=rows, other=float("-inf"))
        l_k = tl.load(L + k * ROWS + r, mask=rows, other=0.0)
        acc_k = tl.load(ACC + k * ROWS * COLS + r[:, None] * COLS + c[None, :], mask=tile, other=0.0)
        m, l, acc = _merge_state(m, l, acc, m_k, l_k, acc_k)
    o, lse = _finalize_state(m, l, acc)
    tl.store(O + r[:, None] * COLS + c[None, :], o, mask=tile)
    tl.store(LSE + r, lse, mask=rows)
'''


@pytest.mark.parametrize(("dtype", "parts"), [
    pytest.param(torch.float32, 3, id="float32-3parts"),
    pytest.param(torch.float64, 4, id="float64-4parts"),
])
def test_triton_merge_matches_dense_softmax(g: nx.DiGraph, dtype: torch.dtype, parts: int) -> None:
    text = "import triton\nimport triton.language as tl\n\n\n" + merge_source(g) + KERNEL
    module = cache.execute(f"test_merge_{str(dtype)[6:]}", text)
    s, v, cuts = _case(dtype, parts, 7)
    states = _states(s, v, cuts)
    m, sums, acc = (torch.stack([st[i] for st in states]).contiguous() for i in range(3))
    o = torch.full((R, E), float("nan"), dtype=dtype)
    lse = torch.full((R,), float("nan"), dtype=dtype)
    module._fold_kernel[(1,)](m, sums, acc, o, lse, K=parts, ROWS=R, COLS=E, RP=8, CP=8)
    _check("o", o, s, v, 0)
    _check("lse", lse, s, v, 1)


def test_verify_rejects_an_unprintable_merge(g: nx.DiGraph) -> None:
    bad = lower(resolve("causal")).graph
    rule = dict(bad.nodes["OS"]["merge"])
    rule["m"] = sp.Function("max_i")(sp.Symbol("m_a"))
    bad.nodes["OS"]["merge"] = rule
    with pytest.raises(IRError, match="max_i"):
        verify(bad)
    rule.pop("acc")
    rule["m"] = g.nodes["OS"]["merge"]["m"]
    with pytest.raises(IRError, match="does not define"):
        verify(bad)


def test_verify_rejects_a_broken_update_or_finalize() -> None:
    for label, key, bad_expr, match in (
            ("update", "l", sp.Function("rowmean")(sp.Symbol("s")), "rowmean"),
            ("update", "acc", sp.Symbol("q_tile"), "q_tile"),
            ("finalize", "O", sp.Symbol("v"), "uses")):
        g = lower(resolve("causal")).graph
        rule = dict(g.nodes["OS"][label])
        rule[key] = bad_expr
        g.nodes["OS"][label] = rule
        with pytest.raises(IRError, match=match):
            verify(g)
