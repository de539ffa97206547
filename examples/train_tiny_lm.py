"""Train a tiny character-level language model on attncc, and the same model on torch SDPA.

The text is the opening of Shakespeare's *Coriolanus* (public domain), ``examples/data/``.  Both
runs start from the same weights and see the same batches (same seed); the attncc run uses the
spec of your choice (``--spec``, with ``--param name=value`` for its params), the baseline
plain causal attention on ``torch.nn.functional.scaled_dot_product_attention``.  Writes a
loss-curve PNG and prints both final losses.  With the defaults it runs on CPU (Triton's
interpreter) in a few minutes, about 3 s of CPU per attncc step; raise ``--steps`` on a GPU::

    python examples/train_tiny_lm.py --spec sliding_window --param window=16 --out loss.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import attncc
from attncc.nn import MultiheadAttention

TEXT = Path(__file__).resolve().parent / "data" / "coriolanus.txt"


class SDPAAttention(MultiheadAttention):
    """The same projections and rotary embedding; causal attention on torch's SDPA."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **spec_kwargs: Any) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)


class Block(nn.Module):
    def __init__(self, attention: nn.Module, dim: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention, self.params = attention, params
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), **self.params)
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Embedding, ``layers`` pre-norm blocks (rotary attention + MLP), a tied output head."""

    def __init__(self, vocab: int, args: argparse.Namespace, sdpa: bool, params: dict[str, Any]) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, args.dim)
        nn.init.normal_(self.embed.weight, std=0.02)  # tied head: small logits at the start

        def attention() -> nn.Module:
            if sdpa:
                return SDPAAttention(args.dim, args.heads, num_kv_heads=args.kv_heads, rotary=True)
            return MultiheadAttention(args.dim, args.heads, num_kv_heads=args.kv_heads, spec=args.spec, rotary=True)

        self.blocks = nn.ModuleList(Block(attention(), args.dim, {} if sdpa else params) for _ in range(args.layers))
        self.norm = nn.LayerNorm(args.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


def parse_params(items: list[str]) -> dict[str, Any]:
    """``name=value`` pairs: int, else float."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param expects name=value, got {item!r}")
        try:
            params[name] = int(value)
        except ValueError:
            try:
                params[name] = float(value)
            except ValueError:
                raise SystemExit(f"--param {name}: {value!r} is not a number") from None
    return params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="causal", help="a built-in spec name or a spec file (default: causal)")
    ap.add_argument("--param", action="append", default=[], help="a spec param, name=value (repeatable)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--out", type=Path, default=Path("tiny_lm_loss.png"), help="loss-curve PNG")
    return ap.parse_args(argv)


def batches(data: torch.Tensor, args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of the run (the same for both models)."""
    gen = torch.Generator().manual_seed(args.seed)
    out = []
    for _ in range(args.steps):
        starts = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), generator=gen)
        window = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()])
        out.append((window[:, :-1], window[:, 1:]))
    return out


def train(model: nn.Module, train_batches: list[tuple[torch.Tensor, torch.Tensor]], val: torch.Tensor,
          args: argparse.Namespace, label: str) -> tuple[list[float], float]:
    """AdamW with a cosine schedule; returns the training losses and the final validation loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, args.steps))))
    losses = []
    start = time.perf_counter()
    for step, (x, y) in enumerate(train_batches):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"{label:>24} step {step + 1:4d}/{args.steps}  loss {loss.item():.4f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        n = (val.numel() - 1) // args.seq * args.seq
        x, y = val[:n].view(-1, args.seq), val[1:n + 1].view(-1, args.seq)
        logits = model(x)
        val_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    return losses, val_loss


def plot(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / character)")
    ax.set_title("tiny character-level LM")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both models; returns their training losses and validation losses."""
    args = parse_args(argv)
    params = parse_params(args.param)
    text = args.text.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    split = int(0.9 * data.numel())
    train_batches = batches(data[:split], args)
    label = f"attncc {attncc.load(args.spec).spec.name}"
    results: dict[str, Any] = {}
    for name, sdpa in ((label, False), ("torch SDPA causal", True)):
        torch.manual_seed(args.seed)
        model = TinyLM(len(chars), args, sdpa, params)
        results[name] = train(model, train_batches, data[split:], args, name)
    plot({name: losses for name, (losses, _) in results.items()}, args.out)
    for name, (losses, val_loss) in results.items():
        print(f"{name}: final training loss {losses[-1]:.4f}, validation loss {val_loss:.4f}")
    print(f"loss curves: {args.out}")
    return results


if __name__ == "__main__":
    main()
