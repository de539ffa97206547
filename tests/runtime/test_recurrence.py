"""The recurrence specs through attncc.load: outputs, final states and every gradient against the
naive step-by-step recurrence in fp64 (tests/recurrence_reference.py), with the 2x rule.

The floor of the rule scales with the golden's magnitude here: states and gate gradients reach
10-20, where the chunked algorithm's fp32 cumulative gates cost a few units in the last place
that the one-multiply-per-token naive recurrence does not."""

from __future__ import annotations

import math

import pytest
import torch
from recurrence_reference import BIDIRECTIONAL, FEATURES, naive_recurrence
from reference import assert_close_to_golden

import attncc
from attncc.spec.loader import load_text

K = V = 16
H = 2
CONFIG = {"CHUNK": 16, "BLOCK_K": 16, "BLOCK_V": 16, "num_warps": 4, "num_stages": 1}


def _retnet_gate(B: int, T: int) -> torch.Tensor:
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=torch.float64)
    return torch.log(gamma).view(1, H, 1).expand(B, H, T)


def _lightning_gate(B: int, T: int) -> torch.Tensor:
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    return (-slopes).view(1, H, 1).expand(B, H, T)


# spec -> (feature of the reference, the gate input's rank (None: no input), the reference's log-gate)
SPECS = {
    "linear_attention": ("elu1", None, None),
    "retnet": ("identity", None, _retnet_gate),
    "lightning": ("identity", None, _lightning_gate),
    "gla": ("identity", 4, None),
    "mamba2": ("identity", 3, None),
    "hedgehog": ("identity", None, None),
}


def _inputs(B: int, T: int, rank: int | None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {"q": torch.randn(B, H, T, K, generator=gen), "k": torch.randn(B, H, T, K, generator=gen),
           "v": torch.randn(B, H, T, V, generator=gen), "h0": torch.randn(B, H, K, V, generator=gen)}
    if rank is not None:
        shape = (B, H, T, K) if rank == 4 else (B, H, T)
        out["g"] = -torch.nn.functional.softplus(torch.randn(*shape, generator=gen)) * 0.5
    return out


def _reference(spec: str, x: dict, dtype: torch.dtype, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    feature, rank, gate_fn = SPECS[spec]
    g = x.get("g") if rank is not None else (gate_fn(B, T) if gate_fn else None)
    return naive_recurrence(x["q"].to(dtype), x["k"].to(dtype), x["v"].to(dtype),
                            None if g is None else g.to(dtype), feature=FEATURES[feature],
                            initial_state=x["h0"].to(dtype))


def _grads(outputs: tuple[torch.Tensor, torch.Tensor], leaves: dict, seed: int = 3) -> dict:
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(outputs[0].shape, generator=gen).to(outputs[0].dtype)
    dfinal = torch.randn(outputs[1].shape, generator=gen).to(outputs[1].dtype)
    torch.autograd.backward(outputs, (do, dfinal))
    return {name: t.grad for name, t in leaves.items()}


def _leaves(x: dict, dtype: torch.dtype) -> dict:
    return {name: t.detach().to(dtype).requires_grad_(True) for name, t in x.items()}


@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (1, 63, 100)])
@pytest.mark.parametrize("spec", [pytest.param(s, id=s) for s in SPECS])
def test_spec_matches_the_naive_recurrence(spec: str, T: int) -> None:
    B = 1
    x = _inputs(B, T, SPECS[spec][1])
    got_in = _leaves(x, torch.float32)
    fn = attncc.load(spec)
    got = fn(got_in["q"], got_in["k"], got_in["v"], g=got_in.get("g"), initial_state=got_in["h0"],
             output_final_state=True, config=CONFIG)
    gold_in, same_in = _leaves(x, torch.float64), _leaves(x, torch.float32)
    golden = _reference(spec, gold_in, torch.float64, B, T)
    same = _reference(spec, same_in, torch.float32, B, T)
    for i, name in enumerate(("output", "final state")):
        assert_close_to_golden(f"{spec} T={T}: {name}", got[i], golden[i], same[i], input_dtype=torch.float32,
                               relative_floor=True)
    g_got, g_gold, g_same = _grads(got, got_in), _grads(golden, gold_in), _grads(same, same_in)
    for name in got_in:
        assert g_got[name] is not None, f"{spec} T={T}: no gradient for {name}"
        assert_close_to_golden(f"{spec} T={T}: d{name}", g_got[name], g_gold[name], g_same[name],
                               input_dtype=torch.float32, relative_floor=True)


def test_fp16_within_twice_torch_error() -> None:
    x = _inputs(1, 40, 4, seed=5)
    fn = attncc.load("gla")
    half = {n: t.half() for n, t in x.items()}
    o, s = fn(half["q"], half["k"], half["v"], g=half["g"], initial_state=x["h0"], output_final_state=True,
              config=CONFIG)
    golden = naive_recurrence(*(half[n].double() for n in ("q", "k", "v", "g")), initial_state=x["h0"].double())
    same = naive_recurrence(*(half[n] for n in ("q", "k", "v", "g")), initial_state=x["h0"].half())
    assert o.dtype == torch.float16, "output dtype"
    assert_close_to_golden("gla fp16: output", o, golden[0], same[0], input_dtype=torch.float16)


@pytest.mark.parametrize("spec", [pytest.param(s, id=s) for s in ("gla", "mamba2", "linear_attention")])
def test_chunked_prefill_then_decode_steps_equal_one_pass(spec: str) -> None:
    T, T0 = 50, 37
    x = _inputs(2, T, SPECS[spec][1], seed=2)
    fn = attncc.load(spec)
    g = x.get("g")
    full, final = fn(x["q"], x["k"], x["v"], g=g, initial_state=x["h0"], output_final_state=True, config=CONFIG)
    part, state = fn(x["q"][:, :, :T0], x["k"][:, :, :T0], x["v"][:, :, :T0], g=None if g is None else g[:, :, :T0],
                     initial_state=x["h0"], output_final_state=True, config=CONFIG)
    outs = [part]
    for t in range(T0, T):
        o, state = fn.step(x["q"][:, :, t:t + 1], x["k"][:, :, t:t + 1], x["v"][:, :, t:t + 1],
                           None if g is None else g[:, :, t:t + 1], state=state)
        outs.append(o)
    assert torch.allclose(torch.cat(outs, 2), full, atol=1e-5), f"{spec}: prefill + steps != one pass (output)"
    assert torch.allclose(state, final, atol=1e-5), f"{spec}: prefill + steps != one pass (state)"


def test_packed_sequences_equal_separate_calls() -> None:
    lengths = [5, 63, 20]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    xs = [_inputs(1, L, 3, seed=10 + i) for i, L in enumerate(lengths)]
    packed = {n: torch.cat([x[n] for x in xs], 2) for n in ("q", "k", "v", "g")}
    h0 = torch.cat([x["h0"] for x in xs], 0)
    fn = attncc.load("mamba2")
    o, final = fn(packed["q"], packed["k"], packed["v"], g=packed["g"], initial_state=h0, output_final_state=True,
                  cu_seqlens=cu, config=CONFIG)
    for i, x in enumerate(xs):
        oi, fi = fn(x["q"], x["k"], x["v"], g=x["g"], initial_state=x["h0"], output_final_state=True, config=CONFIG)
        lo, hi = int(cu[i]), int(cu[i + 1])
        assert torch.allclose(o[:, :, lo:hi], oi, atol=1e-5), f"sequence {i}: output"
        assert torch.allclose(final[i:i + 1], fi, atol=1e-5), f"sequence {i}: final state"


def test_bidirectional_is_the_sum_of_both_directions() -> None:
    """o = the causal recurrence's output + the reverse recurrence's (each counts the current token)."""
    x = _inputs(1, 45, 4, seed=7)
    fn = attncc.load(load_text(BIDIRECTIONAL, "bi.toml"))
    leaves = _leaves({n: x[n] for n in ("q", "k", "v", "g")}, torch.float32)
    o = fn(leaves["q"], leaves["k"], leaves["v"], g=leaves["g"], config=CONFIG)
    ref_in = _leaves({n: x[n] for n in ("q", "k", "v", "g")}, torch.float64)
    args = [ref_in[n] for n in ("q", "k", "v", "g")]
    ref = naive_recurrence(*args)[0] + naive_recurrence(*args, reverse=True)[0]
    assert torch.allclose(o.double(), ref, atol=2e-5), "bidirectional output"
    do = torch.randn(o.shape)
    o.backward(do)
    ref.backward(do.double())
    for n in leaves:
        assert torch.allclose(leaves[n].grad.double(), ref_in[n].grad, atol=5e-5), f"bidirectional d{n}"


@pytest.mark.parametrize(("spec", "change", "match"), [
    pytest.param("gla", lambda x: x.update(g=x["g"][..., 0]), "wrong rank", id="gate-rank"),
    pytest.param("gla", lambda x: x.update(g=-x["g"]), "requires decay", id="positive-gate"),
    pytest.param("mamba2", lambda x: x.update(h0=x["h0"][:, :, :8]), "initial_state must be", id="state-shape"),
    pytest.param("linear_attention", lambda x: x.update(g=torch.zeros(1, H, 9)), "takes no gate", id="extra-gate"),
    pytest.param("gla", lambda x: x.pop("g"), "is required", id="missing-gate"),
    pytest.param("gla", lambda x: x.update(v=x["v"][:, :, :5]), "must be [B, H, T, V]", id="v-length"),
])
def test_bad_input_is_a_one_line_error(spec: str, change: object, match: str) -> None:
    x = _inputs(1, 9, SPECS[spec][1])
    change(x)  # type: ignore[operator]
    with pytest.raises(attncc.InputError, match=re_escape(match)) as err:
        attncc.load(spec)(x["q"], x["k"], x["v"], g=x.get("g"), initial_state=x["h0"], config=CONFIG)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{spec}: "), str(err.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_under_torch_compile_fullgraph() -> None:
    x = _inputs(1, 30, 4, seed=4)
    fn = attncc.load("gla")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return fn(q, k, v, g=g, config=CONFIG) * 2

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    leaves = _leaves({n: x[n] for n in ("q", "k", "v", "g")}, torch.float32)
    out = compiled(*(leaves[n] for n in ("q", "k", "v", "g")))
    eager_in = _leaves({n: x[n] for n in ("q", "k", "v", "g")}, torch.float32)
    eager = run(*(eager_in[n] for n in ("q", "k", "v", "g")))
    assert torch.allclose(out, eager, atol=1e-6), "compiled output"
    out.sum().backward()
    eager.sum().backward()
    for n in leaves:
        assert torch.allclose(leaves[n].grad, eager_in[n].grad, atol=1e-6), f"compiled d{n}"


def test_scale_defaults_to_k_to_the_minus_half() -> None:
    x = _inputs(1, 8, None)
    fn = attncc.load("hedgehog")
    a = fn(x["q"], x["k"], x["v"], config=CONFIG)
    b = fn(x["q"], x["k"], x["v"], scale=1 / math.sqrt(K), config=CONFIG)
    assert torch.equal(a, b), "default scale"
