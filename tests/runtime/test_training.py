"""A few optimizer steps of a tiny attention layer trained through attncc, against dense torch.

The layer: linear q/k/v projections, causal attention with a learnable relative-position bias
table read by a ``score_mod`` (defined in ``forward``, closing over the parameter), and an output
projection.  The reference layer has the same parameters and computes the attention with
dense torch ops.  From the same initial weights and data, five Adam steps must give the same
loss at every step (fp32), and the same trained bias table.
"""

from __future__ import annotations

import copy
import math

import torch
from conftest import DEVICE, SMALL_TILES
from torch import nn

import attncc

DIM, HEADS, SEQ, BATCH, STEPS = 32, 2, 40, 2, 5


class Layer(nn.Module):
    """Self-attention block; ``dense=True`` computes the attention with plain torch ops."""

    def __init__(self, dim: int = DIM, heads: int = HEADS, max_len: int = SEQ, dense: bool = False) -> None:
        super().__init__()
        self.heads, self.max_len, self.dense = heads, max_len, dense
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.rel = nn.Parameter(0.3 * torch.randn(heads, 2 * max_len - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = (proj(x).view(B, L, self.heads, C // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        o = self._dense(q, k, v) if self.dense else self._attncc(q, k, v)
        return self.out(o.transpose(1, 2).reshape(B, L, C))

    def _attncc(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        offset = self.max_len - 1

        def rel_bias(score, b, h, m, n):
            return score + self.rel[h, m - n + offset]

        def causal(b, h, m, n):
            return n <= m

        mask = attncc.create_block_mask(causal, None, None, q.shape[2], k.shape[2])
        return attncc.flex_attention(q, k, v, score_mod=rel_bias, block_mask=mask, kernel_options=SMALL_TILES)

    def _dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        L = q.shape[2]
        m, n = torch.arange(L).view(L, 1), torch.arange(L).view(1, L)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + self.rel[:, m - n + self.max_len - 1]
        s = s.masked_fill(n > m, float("-inf"))
        return torch.softmax(s, dim=-1) @ v


def _train(layer: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]],
           table: nn.Parameter | None = None) -> tuple[list[float], list[torch.Tensor]]:
    """Adam steps; the loss of each step and the gradient of ``table`` at each step."""
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses, grads = [], []
    for x, target in data:
        opt.zero_grad()
        loss = nn.functional.mse_loss(layer(x), target)
        loss.backward()
        if table is not None:
            grads.append(table.grad.clone())
        opt.step()
        losses.append(loss.item())
    return losses, grads


def _setup() -> tuple[Layer, Layer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    layer = Layer().to(DEVICE)
    reference = copy.deepcopy(layer)
    reference.dense = True
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(BATCH, SEQ, DIM, generator=gen).to(DEVICE), torch.randn(BATCH, SEQ, DIM, generator=gen).to(DEVICE))
            for _ in range(STEPS)]
    return layer, reference, data


def test_training_matches_dense_reference() -> None:
    layer, reference, data = _setup()
    initial = layer.rel.detach().clone()
    got, got_grads = _train(layer, data, layer.rel)
    expected, expected_grads = _train(reference, data, reference.rel)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert math.isfinite(a), f"step {step}: loss {a}"
        assert abs(a - b) <= 1e-5 * abs(b) + 1e-6, f"step {step}: loss {a:.8g} vs dense reference {b:.8g}"
        # Adam hides a gradient's scale from the losses: compare the table's gradient itself too
        torch.testing.assert_close(got_grads[step], expected_grads[step], rtol=1e-4, atol=1e-7,
                                   msg=lambda m, step=step: f"step {step}: grad of rel: {m}")
    assert expected[-1] < expected[0], "the reference did not learn (bad test)"
    # the table moved, and moved the same way (only entries m - n >= 0 are ever read: the rest stay put)
    moved = (layer.rel.detach() - initial).abs()
    assert moved[:, SEQ - 1:].min() > 0 and moved[:, :SEQ - 1].max() == 0
    torch.testing.assert_close(layer.rel, reference.rel, rtol=0, atol=1e-4, msg="trained bias tables differ")


def test_compiled_training_matches_eager() -> None:
    """The same loop with the layer under torch.compile(fullgraph=True): same losses as eager attncc."""
    layer, _, data = _setup()
    compiled_layer, _, _ = _setup()
    eager, _ = _train(layer, data)
    compiled, _ = _train(torch.compile(compiled_layer, fullgraph=True, backend="aot_eager"), data)
    for step, (a, b) in enumerate(zip(compiled, eager, strict=True)):
        assert abs(a - b) <= 1e-6 * abs(b), f"step {step}: compiled loss {a:.8g} vs eager {b:.8g}"
    torch.testing.assert_close(compiled_layer.rel, layer.rel, rtol=0, atol=1e-6)
