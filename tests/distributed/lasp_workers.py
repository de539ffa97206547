"""The rank processes of tests/distributed/test_lasp.py (importable by the spawned ranks).

Each rank joins one gloo group, runs every case of its world size and writes what it found to
``rank<r>.json`` (plain data: case id -> None or the failure's one-line message, and the
measured bytes of each collective).  References are the naive step-by-step recurrence
(tests/recurrence_reference.py) on the full sequence in fp64 (golden) and fp32 (same dtype).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from recurrence_reference import BIDIRECTIONAL, FEATURES, naive_recurrence
from reference import assert_close_to_golden

import attncc
from attncc.distributed.layout import shard_of
from attncc.distributed.recurrence import recurrence_attention
from attncc.spec.loader import load_text

H = 2
K = V = 16
CONFIG = {"CHUNK": 16, "BLOCK_K": 16, "BLOCK_V": 16, "num_warps": 4, "num_stages": 1}

POSITIONAL = '''
name = "positional_decay"
description = "A decay that grows with the position (reads t): not splittable across ranks."
[inputs]
q = "b h t k"
k = "b h t k"
v = "b h t v"
[state]
gate = "-0.001 * t"
[cascade]
normalize = "none"
'''


def _retnet_gate(T: int) -> torch.Tensor:
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=torch.float64)
    return torch.log(gamma).view(1, H, 1).expand(1, H, T)


# spec -> (the reference's feature, the gate input's rank (None: no input), the reference's constant gate)
SPECS: dict[str, tuple[str, int | None, Callable[[int], torch.Tensor] | None]] = {
    "gla": ("identity", 4, None),
    "mamba2": ("identity", 3, None),
    "retnet": ("identity", None, _retnet_gate),
    "linear_attention": ("elu1", None, None),
    "gla_bidirectional": ("identity", 4, None),
}

# (id, spec, layout, shard length, with an initial state and the final state) for each world size
CASES: dict[int, list[tuple[str, str, str, int, bool]]] = {
    2: [("gla-zigzag-T60", "gla", "zigzag", 30, True),
        ("mamba2-contiguous-T62", "mamba2", "contiguous", 31, True),
        ("retnet-zigzag-T60", "retnet", "zigzag", 30, True),
        ("linear_attention-contiguous-T62", "linear_attention", "contiguous", 31, True),
        ("gla_bidirectional-zigzag-T60", "gla_bidirectional", "zigzag", 30, False)],
    4: [("gla-contiguous-T60", "gla", "contiguous", 15, True),
        ("mamba2-zigzag-T64", "mamba2", "zigzag", 16, True),
        ("retnet-contiguous-T60-no-state", "retnet", "contiguous", 15, False),
        ("linear_attention-zigzag-T64", "linear_attention", "zigzag", 16, True)],
}

# every rank's share of the final state's upstream gradient (they add up to 1, exactly in binary)
DFINAL_SHARE = {2: (0.25, 0.75), 4: (0.125, 0.125, 0.25, 0.5)}


def load(spec: str) -> Any:
    return attncc.load(load_text(BIDIRECTIONAL, "bi.toml") if spec == "gla_bidirectional" else spec)


def inputs(spec: str, T: int, seed: int) -> dict[str, torch.Tensor]:
    """The full sequence's q, k, v (g), h0 and upstream gradients do, dfinal (fp64, the same on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    out = {n: torch.randn(1, H, T, K, generator=gen, dtype=torch.float64) for n in ("q", "k", "v")}
    rank = SPECS[spec][1]
    if rank is not None:
        shape = (1, H, T, K) if rank == 4 else (1, H, T)
        out["g"] = -torch.nn.functional.softplus(torch.randn(*shape, generator=gen, dtype=torch.float64)) * 0.5
    out["h0"] = torch.randn(1, H, K, V, generator=gen, dtype=torch.float64)
    out["do"] = torch.randn(1, H, T, V, generator=gen, dtype=torch.float64)
    out["dfinal"] = torch.randn(1, H, K, V, generator=gen, dtype=torch.float64)
    return out


def reference(spec: str, x: dict[str, torch.Tensor], dtype: torch.dtype, with_state: bool) -> dict[str, torch.Tensor]:
    """The naive recurrence's o, final state and gradients on the full sequence in ``dtype``."""
    feature, rank, gate_fn = SPECS[spec]
    names = [n for n in ("q", "k", "v", "g", "h0") if n in x and (n != "h0" or with_state)]
    leaves = {n: x[n].detach().to(dtype, copy=True).requires_grad_(True) for n in names}
    g = leaves.get("g") if rank is not None else (gate_fn(x["q"].shape[2]).to(dtype) if gate_fn else None)
    args = (leaves["q"], leaves["k"], leaves["v"], g)
    o, final = naive_recurrence(*args, feature=FEATURES[feature], initial_state=leaves.get("h0"))
    if spec == "gla_bidirectional":
        o = o + naive_recurrence(*args, reverse=True)[0]
    outputs, grads = [o], [x["do"].to(dtype)]
    if with_state:
        outputs.append(final)
        grads.append(x["dfinal"].to(dtype))
    torch.autograd.backward(outputs, grads)
    out = {"output": o.detach(), "final state": final.detach()}
    out.update({f"d{n}": t.grad for n, t in leaves.items()})
    return out


def distributed(spec: str, x: dict[str, torch.Tensor], layout: str, with_state: bool,
                world: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's shard of o, the final state and this rank's gradients, through CompiledRecurrence.distributed."""
    fn = load(spec)
    leaves = {n: shard_of(x[n].float(), layout, world, rank).requires_grad_(True) for n in ("q", "k", "v", "g")
              if n in x and (n != "g" or SPECS[spec][1] is not None)}
    h0 = x["h0"].float().requires_grad_(True) if with_state else None
    res = fn.distributed(leaves["q"], leaves["k"], leaves["v"], g=leaves.get("g"), layout=layout,
                         initial_state=h0, output_final_state=with_state, config=CONFIG)  # the public entry
    o, final = res if with_state else (res, None)
    outputs, grads = [o], [shard_of(x["do"].float(), layout, world, rank)]
    if with_state:
        outputs.append(final)
        grads.append(x["dfinal"].float() * DFINAL_SHARE[world][rank])
    torch.autograd.backward(outputs, grads)
    out = {"output": o.detach(), **({"final state": final.detach()} if with_state else {})}
    out.update({f"d{n}": t.grad for n, t in leaves.items()})
    if h0 is not None:
        out["dh0"] = h0.grad
    return out


def check_case(spec: str, layout: str, T_local: int, with_state: bool, world: int, rank: int) -> None:
    x = inputs(spec, T_local * world, seed=zlib.crc32(f"{spec} {layout}".encode()) % 1000)
    got = distributed(spec, x, layout, with_state, world, rank)
    golden = reference(spec, x, torch.float64, with_state)
    same = reference(spec, x, torch.float32, with_state)
    for name, value in got.items():
        local = name not in ("final state", "dh0")  # the rest are this rank's shard of the full tensor
        pick = (lambda t: shard_of(t, layout, world, rank)) if local else (lambda t: t)
        assert_close_to_golden(f"{spec} {layout} world={world} rank={rank}: {name}", value, pick(golden[name]),
                               pick(same[name]), input_dtype=torch.float32, relative_floor=True)


class Counter:
    """Bytes this rank sends through each collective, measured by wrapping torch.distributed's."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.saved = {name: getattr(dist, name) for name in ("all_gather_single", "all_to_all_single")}

    def __enter__(self) -> Counter:
        for name, fn in self.saved.items():
            setattr(dist, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(dist, name, fn)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(output: torch.Tensor, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.sent.append((name, tensor.numel() * tensor.element_size()))
            return fn(output, tensor, *args, **kwargs)
        return counted


def communication(world: int, rank: int) -> dict[str, Any]:
    """The collectives of one forward and backward of gla at two lengths, and a repeat for determinism."""
    measured: dict[str, Any] = {}
    repeat = []
    for T_local in (8, 16, 16):
        x = inputs("gla", T_local * world, seed=1)
        with Counter() as counter:
            got = distributed("gla", x, "contiguous", True, world, rank)
        measured[str(T_local)] = counter.sent
        repeat.append(got)
    measured["bitwise repeatable"] = all(torch.equal(repeat[1][n], repeat[2][n]) for n in repeat[1])
    return measured


def bad_inputs(world: int, rank: int) -> dict[str, str]:
    """The one-line message each bad call raises on this rank (every rank must raise)."""
    fn = load("gla")
    x = {n: shard_of(t.float(), "contiguous", world, rank) for n, t in inputs("gla", 16 * world, 2).items()
         if n in ("q", "k", "v", "g")}
    calls: dict[str, Callable[[], Any]] = {
        "odd-zigzag-shard": lambda: recurrence_attention(fn, *(x[n][:, :, :15] for n in "qkv"), g=x["g"][:, :, :15],
                                                         layout="zigzag"),
        "mismatched-layouts": lambda: recurrence_attention(fn, x["q"], x["k"], x["v"], g=x["g"],
                                                           layout="zigzag" if rank == 0 else "contiguous"),
        "mismatched-lengths": lambda: recurrence_attention(fn, *(x[n][:, :, :8 if rank else 16] for n in "qkv"),
                                                           g=x["g"][:, :, :8 if rank else 16]),
        "bad-gate-on-rank-1": lambda: recurrence_attention(fn, x["q"], x["k"], x["v"],
                                                           g=x["g"][..., 0] if rank == 1 else x["g"]),
        "gradients-on-rank-0-only": lambda: recurrence_attention(
            fn, x["q"], x["k"].detach().requires_grad_(rank == 0), x["v"], g=x["g"]),
        "unknown-layout": lambda: recurrence_attention(fn, x["q"], x["k"], x["v"], g=x["g"], layout="ring"),
        "packed": lambda: recurrence_attention(fn, x["q"], x["k"], x["v"], g=x["g"],
                                               cu_seqlens=torch.tensor([0, 16], dtype=torch.int32)),
        "position-gate": lambda: recurrence_attention(attncc.load(load_text(POSITIONAL, "pos.toml")), x["q"],
                                                      x["k"], x["v"]),
    }
    found = {}
    for case, call in calls.items():
        try:
            call()
            found[case] = "no error"
        except attncc.InputError as exc:
            found[case] = str(exc)
    return found


def run(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: join the group, run every case, write rank<r>.json."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results: dict[str, Any] = {"cases": {}, "cpu_s": {}}
    try:
        for case, spec, layout, T_local, with_state in CASES[world]:
            start = time.process_time()
            try:
                check_case(spec, layout, T_local, with_state, world, rank)
                results["cases"][case] = None
            except Exception as exc:  # noqa: BLE001 - reported by the test that reads the case
                results["cases"][case] = f"{type(exc).__name__}: {exc}"
            results["cpu_s"][case] = time.process_time() - start
        results["bad inputs"] = bad_inputs(world, rank)
        results["communication"] = communication(world, rank)
        results["cpu_s"]["total"] = time.process_time()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
