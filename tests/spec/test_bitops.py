"""Integer bit operations (``& | ^ << >> ~``) and base-2 logarithms, from spec text to the kernel.

The operators are bitwise on integer operands and logical on conditions; mixing the two is a
one-line located error.  Kernels run under the interpreter against references written here in
plain torch / Python integers (never the IR's evaluator).  The dense evaluator
(``attncc.ir.evaluate``, behind ``BlockMask.dense_mask`` and the tile statistics) must agree
with the kernel element for element, including ``log2`` at powers of two.
"""

from __future__ import annotations

import json
import re

import pytest
import sympy as sp
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden, masked_softmax_attention

import attncc
from attncc.codegen.printer import TorchPrinter, TritonPrinter
from attncc.errors import SpecError
from attncc.ir import expr as E
from attncc.ir.evaluate import evaluate
from attncc.passes.mask_analysis import KEYS, analyse
from attncc.spec.loader import load_text
from attncc.spec.parser import Location, Scope, parse_expression

FILE = "bits.toml"
SHIFT = sp.Symbol("shift", integer=True)
NAMES = {**E.INDEX_SYMBOLS, **E.SIZE_SYMBOLS, "scale": E.scale, "score": E.score, "shift": SHIFT}
SCOPE = Scope(NAMES, {"ids": 1, "bias": 1}, frozenset({"ids"}))
LOC = Location(FILE, 4, 10)
LOCATED = re.compile(rf"^{re.escape(FILE)}:(\d+):(\d+): (\S.*)$")


def parse(text: str) -> sp.Basic:
    return parse_expression(text, SCOPE, LOC)


# --- semantics: the lowering agrees with Python's integers, negative values included ------------

# (spec text over m, n and the int param ``shift``; the same in Python)
SEMANTICS = [
    pytest.param("m & n", lambda m, n, s: m & n, id="and"),
    pytest.param("m | n", lambda m, n, s: m | n, id="or"),
    pytest.param("m ^ n", lambda m, n, s: m ^ n, id="xor"),
    pytest.param("(m - n) & 7", lambda m, n, s: (m - n) & 7, id="and-negative"),
    pytest.param("(m - n) | 5", lambda m, n, s: (m - n) | 5, id="or-negative"),
    pytest.param("(n - m) ^ (m - 3)", lambda m, n, s: (n - m) ^ (m - 3), id="xor-negative"),
    pytest.param("m << 3", lambda m, n, s: m << 3, id="shl-const"),
    pytest.param("(m - n) >> 2", lambda m, n, s: (m - n) >> 2, id="shr-const-negative"),
    pytest.param("m << shift", lambda m, n, s: m << s, id="shl-param"),
    pytest.param("(n - m) >> shift", lambda m, n, s: (n - m) >> s, id="shr-param-negative"),
    pytest.param("~(m - n)", lambda m, n, s: ~(m - n), id="invert"),
    pytest.param("m & n | m ^ n << 1", lambda m, n, s: m & n | m ^ n << 1, id="python-precedence"),
    pytest.param("((m - n) & (m - n - 1)) == 0", lambda m, n, s: ((m - n) & (m - n - 1)) == 0, id="power-of-two"),
    pytest.param("(m < 3) ^ (n < 2)", lambda m, n, s: (m < 3) != (n < 2), id="xor-of-conditions"),
    pytest.param("~(m < n) & (m | n > 2)", lambda m, n, s: (not m < n) and (m | n) > 2, id="logical-with-bitwise"),
    pytest.param("floor(log2(m + 1))", lambda m, n, s: (m + 1).bit_length() - 1, id="floor-log2"),
]
GRID = [(m, n, s) for m in (0, 1, 2, 5, 8, 13, 64) for n in (0, 1, 3, 7, 8, 40) for s in (0, 1, 4)]


@pytest.mark.parametrize("text,python", SEMANTICS)
def test_bit_operations_agree_with_python(text: str, python) -> None:
    expr = parse(text)
    for m, n, s in GRID:
        got = expr.subs({E.m: m, E.n: n, SHIFT: s})
        want = python(m, n, s)
        got = bool(got) if isinstance(got, sp.logic.boolalg.BooleanAtom) else int(sp.floor(got))
        assert got == want, f"{text} at m={m}, n={n}, shift={s}: sympy {got}, Python {want}"


@pytest.mark.parametrize("text,python", SEMANTICS)
def test_dense_evaluator_agrees_with_python(text: str, python) -> None:
    expr = parse(text)
    ms = torch.tensor([g[0] for g in GRID])
    ns = torch.tensor([g[1] for g in GRID])
    ss = torch.tensor([g[2] for g in GRID])
    got = torch.as_tensor(evaluate(expr, {E.m: ms, E.n: ns, SHIFT: ss}, {}))
    for i, (m, n, s) in enumerate(GRID):
        want = python(m, n, s)
        assert got[i].item() == want, f"{text} at m={m}, n={n}, shift={s}: evaluator {got[i].item()}, Python {want}"


def test_bit_functions_fold_only_integer_literals() -> None:
    assert parse("12 & 10") == 8 and parse("12 | 3") == 15 and parse("6 ^ 3") == 5 and parse("-7 >> 1") == -4
    e = parse("m & (m - 1)")
    assert isinstance(e, E.BitAnd) and e.is_integer, sp.srepr(e)
    assert isinstance(parse("m >> h"), E.ShiftRight) and isinstance(parse("m << h"), E.ShiftLeft)
    assert parse("m >> 3") == sp.floor(E.m / 8) and parse("m << 2") == 4 * E.m  # constant shifts are arithmetic
    assert parse("~m") == -E.m - 1
    assert parse("m & 7").is_nonnegative and parse("(m - n) | n").is_nonnegative is None


# --- rejections: one line, with the location of the operator -------------------------------------

REJECTED = [
    pytest.param("score & 1", "score & 1", "integer operands", id="float-operand"),
    pytest.param("m ^ 1.5", "m ^ 1.5", "integer operands", id="float-constant"),
    pytest.param("bias[h] | m", "bias[h] | m", "integer operands", id="float-capture"),
    pytest.param("(m < n) & 1", "(m < n) & 1", "condition and a number", id="condition-and-number"),
    pytest.param("m | (n > 2)", "m | (n > 2)", "condition and a number", id="number-or-condition"),
    pytest.param("(m < n) << 1", "(m < n) << 1", "condition", id="shift-of-condition"),
    pytest.param("(m < n) >> (n < 2)", "(m < n) >> (n < 2)", "not conditions", id="shift-two-conditions"),
    pytest.param("m << 32", "m << 32", "shift count 32 out of range", id="shift-too-far"),
    pytest.param("m >> -1", "m >> -1", "out of range", id="negative-shift"),
    pytest.param("~score", "~score", "integer operand", id="invert-float"),
    pytest.param("m >= n & n > 0", "n & n", "chained comparison", id="chain-without-parentheses"),
    pytest.param("0 < m ^ n < 4", "m ^ n", "parentheses", id="xor-in-chain"),
]


@pytest.mark.parametrize("text,at,words", REJECTED)
def test_rejected_bit_expression_is_one_located_line(text: str, at: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    msg = str(info.value)
    assert "\n" not in msg, f"{text!r}: not one line: {msg!r}"
    mo = LOCATED.match(msg)
    assert mo, f"{text!r}: no {FILE}:line:col in {msg!r}"
    assert int(mo[1]) == 4, msg
    assert int(mo[2]) == 10 + text.index(at) + 1, f"{text!r}: column {mo[2]}, expected {10 + text.index(at) + 1}"
    assert words.lower() in mo[3].lower(), f"{text!r}: {msg!r} does not mention {words!r}"


def test_parenthesised_bit_operation_in_a_chain_is_accepted() -> None:
    x = E.bitwise("^", E.m, E.n)
    assert parse("0 < (m ^ n) < 4") == sp.And(sp.Lt(0, x), sp.Lt(x, 4))


# --- printers ------------------------------------------------------------------------------------

def test_triton_printer_parenthesises_bit_operations() -> None:
    pr = TritonPrinter({E.m: "om", E.n: "on", E.h: "off_h"}, lambda ld, p: "LOAD")
    assert pr.doprint(parse("m & (n | 3)")) == "(om & (on | 3))"
    assert pr.doprint(parse("(m ^ n) >> h")) == "((om ^ on) >> off_h)"
    assert pr.doprint(parse("(m << h) * 3")) == "(3 * (om << off_h))"
    assert pr.doprint(parse("floor(log2(m))")) == "_floor_log2(om)" and "_floor_log2" in pr.helpers
    assert pr.doprint(parse("log2(m)")) == "tl.log2((om * 1.0))"  # not tl.log(...) * 1.4426950408889634


def test_torch_printer_bit_operations_and_nested_loads() -> None:
    pr = TorchPrinter({E.m: "m", E.n: "n", E.h: "h"}, lambda ld, p: f"L[{', '.join(p.p(i) for i in ld.indices)}]")
    assert pr.doprint(parse("m & (n | 3)")) == "(_t(m) & _t((_t(n) | _t(3))))"
    assert pr.doprint(parse("ids[m ^ n]")) == "L[(_t(m) ^ _t(n))]"
    assert pr.doprint(parse("(m ^ n) >> h")) == "(_t((_t(m) ^ _t(n))) >> _t(h))"
    assert pr.doprint(parse("floor(log2(m))")).startswith("torch.where(_t(m) > 0, torch.frexp(")


# --- the mask analysis treats bit operations as opaque atoms --------------------------------------

def _check_segments_sound(text: str, python, M: int = 70, N: int = 70, bm: int = 8) -> list:
    """Every unmasked (m, n) lies in a visited range; every key a segment calls full is unmasked for
    every row of the tile (brute force over the grid, the predicate in plain Python)."""
    analysis = analyse(parse(text), KEYS)
    first_tile_his: list[int] = []
    m_first, m_last = (sp.Symbol(s, integer=True, nonnegative=True) for s in ("m_first", "m_last"))
    for m0 in range(0, M, bm):
        rows = range(m0, min(m0 + bm, M))
        env = {m_first: rows[0], m_last: rows[-1], E.SIZE_SYMBOLS["N"]: N, E.SIZE_SYMBOLS["M"]: M}
        ranges = [(int(sg.lo.subs(env)), int(sg.hi.subs(env)), sg) for sg in analysis.segments]
        if m0 == 0:
            first_tile_his = [hi for _, hi, _ in ranges]
        for m in rows:
            for n in range(N):
                if python(m, n):
                    assert any(lo <= n < hi for lo, hi, _ in ranges), f"{text}: ({m}, {n}) unmasked, not visited"
        for _, _, sg in ranges:
            if sg.full_lo is not None:
                for n in range(max(int(sg.full_lo.subs(env)), 0), min(int(sg.full_hi.subs(env)), N)):
                    assert all(python(m, n) for m in rows), f"{text}: key {n} called full for rows {rows}"
    return first_tile_his


def test_mask_analysis_treats_bit_atoms_soundly() -> None:
    """Bit operations are atoms the analysis does not bound (opaque): it must stay correct, and still use
    the causal bound of the conjunct they sit in."""
    his = _check_segments_sound("(n <= m) & (((m - n) & (m - n - 1)) == 0)",
                                lambda m, n: n <= m and ((m - n) & (m - n - 1)) == 0)
    assert max(his) <= 8, f"the causal bound n <= m was dropped: the first query tile visits keys up to {his}"
    _check_segments_sound("((m ^ n) & 4) == 0", lambda m, n: ((m ^ n) & 4) == 0)
    _check_segments_sound("(n <= m) & ((m >> 3) == (n >> 3))", lambda m, n: n <= m and m >> 3 == n >> 3)


# --- kernels (interpreter) against plain torch -----------------------------------------------------

def spec_text(mask: str, modify: str = "score", params: str = "") -> str:
    return (f'name = "bits"\ndescription = "bit operations"\n[inputs]\nq = "b h m d"\nk = "b h n d"\n'
            f'v = "b h n e"\n[params]\n{params}\n[cascade]\nscore = "q[b,h,m,d] * k[b,h,n,d] * scale"\n'
            f"modify = {json.dumps(modify)}\nmask = {json.dumps(mask)}\nnormalize = \"softmax(n)\"\n"
            'output = "p[b,h,m,n] * v[b,h,n,e]"\n')


def grids(B: int, H: int, M: int, N: int) -> tuple[torch.Tensor, ...]:
    return (torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
            torch.arange(M).view(1, 1, M, 1), torch.arange(N).view(1, 1, 1, N))


def power_attention(b, h, m, n):
    """PowerAttention: keys at distance 0 or a power of two."""
    d = m - n
    return (d >= 0) & ((d & (d - 1)) == 0)


def head_blocks(b, h, m, n):
    """Per head h, block-diagonal blocks of 2**h positions."""
    return ((m >> h) ^ (n >> h)) == 0


def bit_bias(s, b, h, m, n):
    return s + ((m | n) & 7) * 0.25 - (m ^ n) % 3 * 0.5


KERNEL_CASES = [
    pytest.param("(n <= m) & (((m - n) & (m - n - 1)) == 0)", "score", power_attention, None, id="power-attention"),
    pytest.param("((m >> h) ^ (n >> h)) == 0", "score", head_blocks, None, id="shift-by-head-xor"),
    pytest.param("(~(n > m)) & ((m & 3) != 3)", "score + ((m | n) & 7) * 0.25 - ((m ^ n) % 3) * 0.5",
                 lambda b, h, m, n: (n <= m) & ((m & 3) != 3), bit_bias, id="bitwise-score-and-mask"),
]


@pytest.mark.parametrize("mask,modify,ref_mask,ref_mod", KERNEL_CASES)
@pytest.mark.parametrize("M", [1, 63, 77], ids=lambda v: f"M{v}")
def test_bit_masks_run_against_plain_torch(mask: str, modify: str, ref_mask, ref_mod, M: int) -> None:
    B, H, D = 1, 3, 16
    gen = torch.Generator().manual_seed(M)
    q, k, v = (torch.randn(B, H, M, D, generator=gen) for _ in range(3))
    fn = attncc.load(load_text(spec_text(mask, modify), FILE))
    got = fn(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), return_lse=True, config=dict(SMALL_TILES))
    b, h, m, n = grids(B, H, M, M)
    keep = ref_mask(b, h, m, n).expand(B, H, M, M)

    def ref(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        s = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * D**-0.5
        if ref_mod is not None:
            s = ref_mod(s, b, h, m, n)
        return masked_softmax_attention(s, keep, v.to(dtype))

    golden, same = ref(torch.float64), ref(torch.float32)
    label = f"{mask} M={M}"
    assert_close_to_golden(f"{label}: output", got[0].cpu(), golden[0], same[0], input_dtype=torch.float32)
    assert_close_to_golden(f"{label}: lse", got[1].cpu(), golden[1], same[1], input_dtype=torch.float32)


# --- log2: the kernel and the dense evaluator agree on integers -----------------------------------

LOG2_ROWS = 64  # x = m * 64 + n + base covers base .. base + 4095 with a 64 x 64 kernel


def visible_keys(mask: str, params: str = "", **values: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel, evaluator) [M, N] masks of ``mask``: the kernel's from q = k = 0 and v = identity (each
    visible key gets weight 1 / count), the evaluator's from ``BlockMask``-style dense evaluation."""
    from attncc.runtime.reference import dense_mask, index_env
    M = N = LOG2_ROWS
    q = torch.zeros(1, 1, M, 16)
    k = torch.zeros(1, 1, N, 16)
    v = torch.eye(N).view(1, 1, N, N)
    spec = load_text(spec_text(mask, params=params), FILE)
    o = attncc.load(spec)(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), config=dict(SMALL_TILES), **values)
    kernel = o[0, 0].cpu() > 0
    env = index_env(spec, 1, 1, 1, M, N, 16, N, values, 1.0)
    dense = dense_mask(spec, env, {}, (1, 1, M, N))[0, 0]
    return kernel, dense


def test_log2_power_of_two_test_agrees_for_distances_1_to_4096() -> None:
    """``log2(x) == floor(log2(x))`` holds exactly at x = 1, 2, 4, ..., 4096 in the kernel and the evaluator
    (the evaluator used to miss 8 and 64: log(8) * (1 / log(2)) is 2.9999999999999996 in float64)."""
    kernel, dense = visible_keys("log2(m * 64 + n + 1) == floor(log2(m * 64 + n + 1))")
    x = torch.arange(LOG2_ROWS).view(-1, 1) * 64 + torch.arange(LOG2_ROWS).view(1, -1) + 1
    want = (x & (x - 1)) == 0
    assert torch.equal(dense, want), f"evaluator: powers of two {x[dense].tolist()}, expected {x[want].tolist()}"
    assert torch.equal(kernel, want), f"kernel: powers of two {x[kernel].tolist()}, expected {x[want].tolist()}"


@pytest.mark.parametrize("base", [1, 2**24 - 2048, 2**30 - 2048], ids=["from1", "around2e24", "around2e30"])
def test_floor_log2_is_exact_in_kernel_and_evaluator(base: int) -> None:
    """``floor(log2(x))`` of an integer is exact, also where fp32 cannot hold x (2**24 + 1 rounds to 2**24)."""
    kernel, dense = visible_keys("floor(log2(m * 64 + n + base)) % 2 == 0",
                                 params='base = { type = "int", default = 1 }', base=base)
    x = torch.arange(LOG2_ROWS).view(-1, 1) * 64 + torch.arange(LOG2_ROWS).view(1, -1) + base
    want = torch.tensor([(int(v).bit_length() - 1) % 2 == 0 for v in x.flatten()]).view(x.shape)
    assert torch.equal(dense, want), f"evaluator: {int((dense != want).sum())} element(s) differ from Python"
    assert torch.equal(kernel, want), f"kernel: {int((kernel != want).sum())} element(s) differ from Python"


def test_traced_log2_mask_agrees_with_block_mask_dense() -> None:
    """The issue's case: a mask_mod using torch.log2; ``BlockMask.dense_mask()`` against plain torch."""
    def powers(b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        return (d == 0) | ((d > 0) & (torch.floor(torch.log2(d)) == torch.log2(d)))

    M = N = 80
    dense = attncc.create_block_mask(powers, 1, 1, M, N).dense_mask()[0, 0]
    d = torch.arange(M).view(-1, 1) - torch.arange(N).view(1, -1)
    want = (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))
    got_d = sorted({int(v) for v in d[dense]})
    assert torch.equal(dense, want), f"dense_mask distances {got_d}, expected 0, 1, 2, 4, ..., 64"


# --- real (not interpreted) Triton code generation of the printed forms ---------------------------

def test_bit_and_log2_kernels_compile_ahead_of_time(tmp_path) -> None:
    """The interpreter does not apply Triton's type rules: compile fwd and bwd for sm_90 for real
    (bit operators, a shift by the head index, ``_floor_log2``, ``tl.log2``, a load indexed by a load)."""
    from attncc.runtime.aot_spec import report_many
    from attncc.spec.loader import load_file

    text = spec_text("(n <= m) & (((m - n) & (m - n - 1)) == 0) & (((m >> h) ^ (n << 1)) != 5) "
                     "& (floor(log2(m + 1)) % 2 == 0) & (log2(m + 1) >= 0)",
                     "score + bias[h, dist[b, m, n] | 1]")
    text = text.replace("[cascade]", '[captures]\nbias = { dims = "h k" }\n'
                        'dist = { dims = "b m n", dtype = "int32" }\n[cascade]')
    path = tmp_path / "bits.toml"
    path.write_text(text)
    reports = report_many([(load_file(path), "sm_90", "fp16", 64, None, None, ("fwd", "bwd"))])
    kernels = {r.kernel.split(".")[1].split("[")[0] for r in reports}
    assert kernels == {"attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq"}, kernels
    assert all(r.registers > 0 for r in reports), [(r.kernel, r.registers) for r in reports]
