"""Sequence layouts over ranks: which global chunks of a sequence each rank holds.

A sequence of length L is cut into ``chunks_per_rank(layout) * world`` equal chunks.

- ``"contiguous"``: rank r holds chunk r (one chunk per rank).
- ``"zigzag"``: rank r holds chunks r and 2 * world - 1 - r, in that order, so that under a
  causal mask every rank has the same amount of work (an early chunk with little work and a late
  chunk with much).

A rank's shard is its chunks concatenated in the order :func:`chunks` gives.  Lengths that do
not divide evenly are refused with one-line :class:`~attncc.errors.InputError` messages: pad the
sequence (and mask the padding) before sharding.
"""

from __future__ import annotations

import torch

from attncc.errors import InputError

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {', '.join(LAYOUTS)}; got {layout!r}")
    return layout


def chunks_per_rank(layout: str) -> int:
    return 2 if check_layout(layout) == "zigzag" else 1


def chunks(layout: str, world: int, rank: int) -> tuple[int, ...]:
    """Global chunk indices rank ``rank`` holds, in shard order."""
    if not 0 <= rank < world:
        raise InputError(f"rank: expected 0 <= rank < {world}; got {rank}")
    if check_layout(layout) == "zigzag":
        return (rank, 2 * world - 1 - rank)
    return (rank,)


def chunk_length(length: int, layout: str, world: int, what: str = "sequence length") -> int:
    """Length of one chunk of a full sequence of ``length``; refuses lengths that do not divide."""
    parts = chunks_per_rank(layout) * world
    if length <= 0 or length % parts:
        raise InputError(f"{what} {length} does not split into {parts} equal chunks ({layout} layout over "
                         f"{world} ranks): pad it to a multiple of {parts}")
    return length // parts


def positions(local_length: int, layout: str, world: int, rank: int, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
    """Global positions [local_length] (int64) of the rows of rank ``rank``'s shard."""
    parts = chunks_per_rank(layout)
    if local_length <= 0 or local_length % parts:
        raise InputError(f"shard length {local_length} is not a multiple of {parts} ({layout} layout)")
    c = local_length // parts
    return torch.cat([torch.arange(i * c, (i + 1) * c, device=device) for i in chunks(layout, world, rank)])


def shard_of(x: torch.Tensor, layout: str, world: int, rank: int, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard of the full tensor ``x`` along ``dim`` (a new contiguous tensor)."""
    c = chunk_length(x.shape[dim], layout, world)
    parts = [x.narrow(dim, i * c, c) for i in chunks(layout, world, rank)]
    return torch.cat(parts, dim=dim).contiguous()


def assemble(shards: list[torch.Tensor], layout: str, dim: int = 2) -> torch.Tensor:
    """The full tensor from every rank's shard (``shards[r]`` from rank r), inverse of :func:`shard_of`."""
    world = len(shards)
    parts = chunks_per_rank(layout)
    c = shards[0].shape[dim] // parts
    pieces: dict[int, torch.Tensor] = {}
    for rank, s in enumerate(shards):
        for j, i in enumerate(chunks(layout, world, rank)):
            pieces[i] = s.narrow(dim, j * c, c)
    return torch.cat([pieces[i] for i in range(parts * world)], dim=dim)
