"""Context parallelism: work and communication balance (any machine), scaling (multi-GPU).

Without ``--time`` (the default, no processes, no GPU needed) it prints, for world sizes 2/4/8,
the plan of each mask and layout (``attncc.distributed.plan``): tiles per rank, skipped pairs,
bytes each rank sends on the ring and in an all-gather, the balance (min/max tiles) and the
strategy the cost model picks.

With ``--time``, launched by ``torchrun --nproc-per-node N bench/context_parallel.py --time`` on N
GPUs, it times the forward of each mask on one GPU (the full sequence) and across the N ranks
(zigzag shards), and prints the scaling efficiency ``t_1 / (N * t_N)``.  (Not run on CPU.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import attncc
import attncc.distributed

MASKS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("causal", "causal", {}),
    ("sliding window 4096", "sliding_window", {"window": 4096}),
    ("prefix-LM 8192", "prefix_lm", {"prefix": 8192}),
)


def doc_ids(length: int, doc: int) -> torch.Tensor:
    """[1, length] int32: documents of ``doc`` tokens each."""
    return (torch.arange(length, dtype=torch.int32) // doc).view(1, length)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=131072, help="global sequence length")
    p.add_argument("--worlds", default="2,4,8", help="comma-separated world sizes (plan mode)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--document", type=int, default=8192, help="document length of the document mask")
    p.add_argument("--time", action="store_true", help="time scaling (under torchrun, one GPU per rank)")
    args = p.parse_args(argv)
    try:
        args.worlds = [int(w) for w in args.worlds.split(",")]
    except ValueError:
        p.error("--worlds: expected comma-separated integers")
    if min(args.worlds) < 1:
        p.error("--worlds: world sizes must be positive")
    return args


def masks(args: argparse.Namespace) -> list[tuple[str, str, dict[str, object]]]:
    out: list[tuple[str, str, dict[str, object]]] = [(label, name, dict(kw)) for label, name, kw in MASKS]
    out.append((f"documents of {args.document}", "document", {"doc": doc_ids(args.length, args.document)}))
    return out


def print_plans(args: argparse.Namespace) -> None:
    for world in args.worlds:
        for label, name, kwargs in masks(args):
            for layout in ("zigzag", "contiguous"):
                plan = attncc.distributed.plan(name, args.length, world, layout, heads=args.heads,
                                               head_dim=args.head_dim, **kwargs)
                print(f"## {label}")
                print(plan.describe())
                print()


def _timed(fn, reps: int = 10) -> float:  # noqa: ANN001 - any callable
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def _time_one(args: argparse.Namespace, name: str, kwargs: dict[str, object], rank: int) -> tuple[float, float]:
    """(one-GPU time of the full sequence on rank 0, context-parallel time of the shards)."""
    import torch.distributed as dist

    kw = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    fn = attncc.load(name)
    q, k, v = (torch.randn((1, args.heads, args.length, args.head_dim), device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    single = _timed(lambda: fn(q, k, v, **kw)) if rank == 0 else 0.0
    qs, ks, vs = (attncc.distributed.shard(x) for x in (q, k, v))
    dist.barrier()
    return single, _timed(lambda: fn.distributed(qs, ks, vs, **kw))


def time_scaling(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    if not torch.cuda.is_available() or "WORLD_SIZE" not in os.environ:
        sys.exit("--time needs GPUs and torchrun (WORLD_SIZE is not set)")
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank % torch.cuda.device_count())
    for label, name, kwargs in masks(args):
        single, multi = _time_one(args, name, kwargs, rank)
        if rank == 0:
            print(f"{label}: 1 GPU {single * 1e3:.2f} ms, {world} GPUs {multi * 1e3:.2f} ms, "
                  f"efficiency {single / (world * multi):.0%}")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.time:
        time_scaling(args)
    else:
        print_plans(args)


if __name__ == "__main__":
    main()
