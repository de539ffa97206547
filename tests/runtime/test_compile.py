"""torch.library bindings (``attncc::fwd`` / ``attncc::bwd``) and ``torch.compile(fullgraph=True)``.

``opcheck`` checks schema, fake (meta) implementations, the autograd registration and AOT
dispatch with dynamic shapes.  Compiled forward + backward of a loaded spec, a decorated
function and ``attncc.flex_attention`` with captured tensors (module-level mods, and mods
defined inside an ``nn.Module.forward``) must trace with no graph break and give exactly the
eager results (``aot_eager``: the same kernels run in the same order).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import DEVICE, SMALL_TILES
from reference import assert_close_to_golden
from torch._dynamo.testing import CompileCounterWithBackend, EagerAndRecordGraphs

import attncc
from attncc.runtime import ops

BACKEND = "aot_eager"  # inductor works too, but compiles C++ for ~40 s on CPU


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def _leaves(*shapes: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _grads(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The loss and the gradient of every input, with fresh .grad fields."""
    for x in inputs:
        x.grad = None
    loss = fn(*inputs)
    loss.backward()
    return [loss.detach().clone()] + [x.grad.clone() for x in inputs]


def _assert_same(label: str, eager: list[torch.Tensor], compiled: list[torch.Tensor], names: list[str]) -> None:
    for name, a, b in zip(["loss", *names], eager, compiled, strict=True):
        assert torch.equal(a, b), f"{label}: {name} differs: max |diff| {(a.double() - b.double()).abs().max():.3g}"


# --- opcheck ------------------------------------------------------------------------------------

def _fwd_args(name: str, lse_grad: bool, config: dict | None) -> tuple:
    compiled = attncc.load(name)
    info = ops.spec_info(compiled)
    H, HK = (4, 2) if info.gqa else (2, 2)
    q, k, v = _leaves((1, H, 20, 16), (1, HK, 24, 16), (1, HK, 24, 16))
    caps = []
    for cname, _dims, _dtype in info.captures:
        caps.append(torch.randn(H, 17, requires_grad=True) if cname == "bias"
                    else torch.rand(H, requires_grad=True) if cname == "slopes" else None)
    params = [8.0 if p[0] == "max_distance" else float(p[2]) for p in info.params]
    keys = sorted(config or {})
    return (info.key, q, k, v, caps, None, params, keys, [config[c] for c in keys] if config else [], lse_grad)


@pytest.mark.parametrize("name,lse_grad,config", [
    ("relative_bias", True, SMALL_TILES), ("causal", False, None), ("gqa", True, SMALL_TILES),
    ("alibi", False, SMALL_TILES)])
def test_opcheck_forward(name: str, lse_grad: bool, config: dict | None) -> None:
    args = _fwd_args(name, lse_grad, config)
    torch.library.opcheck(torch.ops.attncc.fwd.default, args)


def test_opcheck_backward() -> None:
    key, q, k, v, caps, scale, params, keys, values, _ = _fwd_args("relative_bias", True, SMALL_TILES)
    q, k, v, caps = q.detach(), k.detach(), v.detach(), [c.detach() for c in caps]
    o, lse = torch.ops.attncc.fwd(key, q, k, v, caps, scale, params, keys, values, False)
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    for dl, wanted in ((dlse, [True]), (None, [False])):
        torch.library.opcheck(torch.ops.attncc.bwd.default,
                              (key, q, k, v, o, lse, do, dl, caps, wanted, scale, params, keys, values))


def test_fake_shapes_and_dtypes() -> None:
    """Fake tensors: o like q with v's head dim, lse fp32 [B, H, M], gradients like their inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    key = ops.spec_info(attncc.load("distinct_value_dim")).key
    with FakeTensorMode():
        q, k, v = torch.empty(2, 3, 5, 16, dtype=torch.float16), torch.empty(2, 3, 7, 16, dtype=torch.float16), \
            torch.empty(2, 3, 7, 32, dtype=torch.float16)
        o, lse = torch.ops.attncc.fwd(key, q, k, v, [], None, [], [], [], False)
        assert (o.shape, o.dtype, lse.shape, lse.dtype) == ((2, 3, 5, 32), torch.float16, (2, 3, 5), torch.float32)
        dq, dk, dv, dc = torch.ops.attncc.bwd(key, q, k, v, o, lse, o, None, [], [], None, [], [], [])
        assert (dq.shape, dk.shape, dv.shape, dc) == (q.shape, k.shape, v.shape, [])
        assert dq.dtype == dk.dtype == dv.dtype == torch.float16


# --- torch.compile(fullgraph=True) ----------------------------------------------------------------

def test_compile_loaded_spec() -> None:
    """A loaded spec with a learnable table, a param, and a loss that uses lse too."""
    fn = attncc.load("relative_bias")

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        o, lse = fn(q, k, v, bias=bias, max_distance=8, config=SMALL_TILES, return_lse=True)
        return o.square().sum() + 0.1 * lse.sum()

    inputs = _leaves((2, 2, 40, 16), (2, 2, 40, 16), (2, 2, 40, 16), (2, 17))
    eager = _grads(step, inputs)
    compiled = _grads(torch.compile(step, fullgraph=True, backend=BACKEND), inputs)
    _assert_same("loaded spec", eager, compiled, ["dq", "dk", "dv", "grad of bias"])


TABLE = torch.randn(2, 81, requires_grad=True)  # read by a module-level mod and a decorated function


def _rel(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return score + TABLE[h, m - n + 40]


def _causal(b: torch.Tensor, h: torch.Tensor, m: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return n <= m


@attncc.attention(mask_mod=_causal)
def decorated(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, m: torch.Tensor,
              n: torch.Tensor) -> torch.Tensor:
    return score + TABLE[h, m - n + 40] * 0.5


def test_compile_decorated_function() -> None:
    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        o, lse = decorated(q, k, v, return_lse=True)
        return (o * torch.arange(o.shape[-1], dtype=o.dtype)).sum() + lse.sum()

    q, k, v = _leaves((1, 2, 40, 16), (1, 2, 40, 16), (1, 2, 40, 16), seed=1)
    eager = _grads(step, [q, k, v, TABLE])
    compiled = _grads(torch.compile(step, fullgraph=True, backend=BACKEND), [q, k, v, TABLE])
    _assert_same("decorated function", eager, compiled, ["dq", "dk", "dv", "grad of TABLE"])
    assert compiled[-1].abs().sum() > 0, "the captured table got no gradient"


def test_compile_flex_with_captured_tensor() -> None:
    mask = attncc.create_block_mask(_causal, None, None, 40, 40)

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        o = attncc.flex_attention(q, k, v, score_mod=_rel, block_mask=mask, kernel_options=SMALL_TILES)
        return o.square().sum()

    q, k, v = _leaves((2, 2, 40, 16), (2, 2, 40, 16), (2, 2, 40, 16), seed=2)
    eager = _grads(step, [q, k, v, TABLE])
    compiled = _grads(torch.compile(step, fullgraph=True, backend=BACKEND), [q, k, v, TABLE])
    _assert_same("flex_attention", eager, compiled, ["dq", "dk", "dv", "grad of TABLE"])


class BiasedAttention(torch.nn.Module):
    """The usual FlexAttention idiom: mods defined in forward, closing over parameters and locals."""

    def __init__(self, heads: int, max_len: int) -> None:
        super().__init__()
        self.rel = torch.nn.Parameter(0.5 * torch.randn(heads, 2 * max_len - 1))
        self.sink = torch.nn.Parameter(torch.randn(heads))
        self.max_len = max_len

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
        offset = self.max_len - 1
        sink = self.sink * 2.0  # an intermediate tensor, captured as such

        def score_mod(score, b, h, m, n):
            s = score * temp[b, h, m] + self.rel[h, m - n + offset]
            return torch.where(n < 1, s + sink[h], s)

        def window(b, h, m, n):
            return (n <= m) & (m - n < 24)

        mask = attncc.create_block_mask(window, None, None, q.shape[2], k.shape[2])
        o, lse = attncc.flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, return_lse=True,
                                       kernel_options=SMALL_TILES)
        return o.square().sum() + lse.sum()


def test_compile_module_with_mods_defined_in_forward() -> None:
    layer = BiasedAttention(heads=2, max_len=40).to(DEVICE)
    q, k, v = _leaves((2, 2, 40, 16), (2, 2, 40, 16), (2, 2, 40, 16), seed=3)
    temp = (0.5 + torch.rand(2, 2, 40)).requires_grad_()
    inputs = [q, k, v, temp, layer.rel, layer.sink]
    names = ["dq", "dk", "dv", "grad of temp", "grad of rel", "grad of sink"]
    eager = _grads(lambda q, k, v, t, *p: layer(q, k, v, t), inputs)
    compiled_layer = torch.compile(layer, fullgraph=True, backend=BACKEND)
    compiled = _grads(lambda q, k, v, t, *p: compiled_layer(q, k, v, t), inputs)
    _assert_same("nn.Module with mods in forward", eager, compiled, names)
    for name, g in zip(names, compiled[1:], strict=True):
        assert g.abs().sum() > 0, f"{name} is zero"


def test_one_graph_calling_the_ops_and_no_recompile() -> None:
    """One Dynamo graph calls attncc::fwd; new values (same shapes) reuse it."""
    recorder = EagerAndRecordGraphs()
    counter = CompileCounterWithBackend(recorder)
    fn = attncc.load("alibi")

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
        a = attncc.flex_attention(q, k, v, score_mod=_rel, kernel_options=SMALL_TILES)
        return a.sum() + fn(q, k, v, slopes=slopes, config=SMALL_TILES).sum()

    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for seed in (4, 5):
        inputs = _leaves((1, 2, 24, 16), (1, 2, 24, 16), (1, 2, 24, 16), (2,), seed=seed)
        expected = _grads(step, inputs)
        _assert_same(f"seed {seed}", expected, _grads(compiled, inputs), ["dq", "dk", "dv", "grad of slopes"])
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for two calls with the same shapes"
    targets = [str(node.target) for node in recorder.graphs[0].graph.nodes if node.op == "call_function"]
    assert sum(t.startswith("attncc.fwd") for t in targets) == 2, targets


def test_input_errors_surface_under_compile() -> None:
    """Validation runs at trace time; with fullgraph=True Dynamo reports the InputError's message."""
    fn = attncc.load("causal")

    def bad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fn(q, k[:, :1], v, config=SMALL_TILES)

    q, k, v = _leaves((1, 2, 16, 16), (1, 2, 16, 16), (1, 2, 16, 16))
    with pytest.raises(Exception, match="differ in heads or length"):
        torch.compile(bad, fullgraph=True, backend=BACKEND)(q, k, v)
    with pytest.raises(attncc.errors.InputError, match="differ in heads or length"):
        torch.compile(bad, backend=BACKEND)(q, k, v)  # without fullgraph: the InputError itself


def test_dynamic_shapes_one_graph_for_two_lengths() -> None:
    """dynamic=True: captured tensors with symbolic sizes (temp [B, H, M]) and two sequence lengths."""
    layer = BiasedAttention(heads=2, max_len=48).to(DEVICE)
    counter = CompileCounterWithBackend(BACKEND)
    compiled_layer = torch.compile(layer, fullgraph=True, backend=counter, dynamic=True)
    for L in (24, 40):
        q, k, v = _leaves((1, 2, L, 16), (1, 2, L, 16), (1, 2, L, 16), seed=L)
        temp = (0.5 + torch.rand(1, 2, L)).requires_grad_()
        inputs = [q, k, v, temp, layer.rel, layer.sink]
        eager = _grads(lambda q, k, v, t, *p: layer(q, k, v, t), inputs)
        compiled = _grads(lambda q, k, v, t, *p: compiled_layer(q, k, v, t), inputs)
        _assert_same(f"dynamic L={L}", eager, compiled, ["dq", "dk", "dv", "grad of temp", "grad of rel", "grad of sink"])
    assert counter.frame_count == 1, f"{counter.frame_count} compilations"


SCALE_T = torch.tensor(0.7)  # a 0-d captured tensor, used as a value


def _spellings(s, b, h, m, n):
    """Many ways to write the same arithmetic; Dynamo hands them to the recorder under other names."""
    x = torch.where((m - n) % 3 == 0, -s, s.abs()) + (1 - s) / 4 + torch.clamp(m - n, min=0) // 2 * 0.1
    # 2.0, not 2: torch computes int ** negative int tensor in integers (2 ** -1 == 0); attncc in floats
    x = x + 2.0 ** (-(m - n).clamp(0, 4)) + s.tanh() * SCALE_T + torch.sigmoid(s) - torch.exp(s * 0.1)
    x = x + (s * s).sqrt() + (s ** 2) * 0.01 + torch.maximum(s, s * 0.5) + torch.minimum(s, 1.0 - s)
    x = x + 1.0 / (1.0 + torch.abs(m - n)) + (7 // (1 + n)) * 0.1 + (7 % (1 + n)) * 0.1 + (m // 2).float() * 0.01
    return -(x - torch.floor(s) + torch.ceil(s * 0.5)) / SCALE_T


def _spelled_mask(b, h, m, n):
    return (~(n > m) & ((m - n < 20) | (n == 0)) & torch.logical_not(m == 5)) | torch.logical_and(m == 5, n == 5)


def _torch_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable,
                mask_mod: Callable) -> torch.Tensor:
    """torch's own FlexAttention, eager (the oracle for what the spellings mean)."""
    from torch.nn.attention import flex_attention as tf

    block_mask = tf.create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
    with torch.no_grad():
        return tf.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_operator_spellings_record_like_eager_tracing() -> None:
    """Eager and compiled tracing of the spellings agree bitwise, and both compute what torch's flex does
    (2x rule against torch's flex on fp64 inputs, same-dtype error from torch's flex in fp32)."""
    mask = attncc.create_block_mask(_spelled_mask, None, None, 24, 24)

    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attncc.flex_attention(q, k, v, score_mod=_spellings, block_mask=mask, kernel_options=SMALL_TILES)

    q, k, v = (x.detach() for x in _leaves((1, 2, 24, 16), (1, 2, 24, 16), (1, 2, 24, 16), seed=6))
    eager = fwd(q, k, v)
    compiled = torch.compile(fwd, fullgraph=True, backend=BACKEND)(q, k, v)
    assert torch.equal(eager, compiled), f"max |diff| {(eager - compiled).abs().max():.3g}"
    golden = _torch_flex(q.double(), k.double(), v.double(), _spellings, _spelled_mask)
    same = _torch_flex(q, k, v, _spellings, _spelled_mask)
    assert_close_to_golden("operator spellings (eager tracing): output", eager.cpu(), golden.cpu(), same.cpu())


def test_untraceable_mod_spelling_is_a_clear_error() -> None:
    """The builtin abs() on a mod argument bypasses the recorder under Dynamo: refused, not miscompiled."""
    def builtin_abs(score, b, h, m, n):
        return abs(score)

    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attncc.flex_attention(q, k, v, score_mod=builtin_abs, kernel_options=SMALL_TILES)

    q, k, v = (x.detach() for x in _leaves((1, 1, 8, 16), (1, 1, 8, 16), (1, 1, 8, 16)))
    fwd(q, k, v)  # eager tracing handles it
    with pytest.raises(Exception, match=r"builtin abs\(x\)"):
        torch.compile(fwd, fullgraph=True, backend=BACKEND)(q, k, v)


def test_inductor_backend() -> None:
    """The default backend: inductor compiles the code around the opaque attncc ops (C++ on CPU)."""
    layer = BiasedAttention(heads=2, max_len=32).to(DEVICE)
    q, k, v = _leaves((1, 2, 32, 16), (1, 2, 32, 16), (1, 2, 32, 16), seed=7)
    temp = (0.5 + torch.rand(1, 2, 32)).requires_grad_()
    inputs = [q, k, v, temp, layer.rel, layer.sink]
    eager = _grads(lambda q, k, v, t, *p: layer(q, k, v, t), inputs)
    compiled_layer = torch.compile(layer, fullgraph=True)
    compiled = _grads(lambda q, k, v, t, *p: compiled_layer(q, k, v, t), inputs)
    for name, a, b in zip(["loss", "dq", "dk", "dv", "grad of temp", "grad of rel", "grad of sink"], eager, compiled,
                          strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"inductor {name}: {m}")
