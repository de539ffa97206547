"""Process-group plumbing: ranks, batched point-to-point exchanges, shard/unshard, a work log.

Everything goes through ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).  Without an initialised
process group (or with a group of one rank) every function works on one rank and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from attncc.distributed.layout import assemble, shard_of

# Tags keep the messages of one step apart on backends that match by tag (gloo).
TAG_KV, TAG_DKV, TAG_RETURN = 1, 2, 3


@dataclass
class Group:
    """A process group as attncc uses it: this rank, the world size, and global peer ranks."""

    handle: Any
    rank: int
    world: int

    def peer(self, group_rank: int) -> int:
        """Global rank of ``group_rank`` (what the P2P operations address)."""
        if self.handle is None or self.world == 1:
            return group_rank
        return dist.get_global_rank(self.handle, group_rank)


def group_of(group: Any = None) -> Group:
    """The :class:`Group` of ``group`` (None: the default group; one rank when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group(None, 0, 1)
    return Group(group, dist.get_rank(group), dist.get_world_size(group))


@dataclass
class WorkLog:
    """What a context-parallel call did on this rank, counted as it ran.

    ``launches``/``tiles``: kernel launches (one per computed chunk pair) and their non-empty tiles
    (the plan's count for each launched pair); ``bytes_sent``: bytes this rank handed to
    ``torch.distributed`` (point-to-point sends, and ``world - 1`` times its shard in an all-gather);
    ``skipped``: chunk pairs not launched.  Forward and backward add to the same log, each under its
    own key of ``phases``.
    """

    launches: int = 0
    tiles: int = 0
    bytes_sent: int = 0
    skipped: int = 0
    strategy: str = ""
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, phase: str, **counts: int) -> None:
        slot = self.phases.setdefault(phase, {"launches": 0, "tiles": 0, "bytes_sent": 0, "skipped": 0})
        for key, value in counts.items():
            slot[key] += int(value)
            setattr(self, key, getattr(self, key) + int(value))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Exchange:
    """One batch of point-to-point sends and receives (``torch.distributed.batch_isend_irecv``),
    posted at once and waited for later, so that it overlaps the work in between."""

    def __init__(self, grp: Group, log: WorkLog | None = None, phase: str = "") -> None:
        self.grp, self.log, self.phase = grp, log, phase
        self.ops: list[Any] = []
        self.received: list[torch.Tensor] = []
        self.requests: list[Any] = []

    def send(self, tensor: torch.Tensor, to: int, tag: int) -> None:
        self.ops.append(dist.P2POp(dist.isend, tensor.contiguous(), self.grp.peer(to), self.grp.handle, tag))
        if self.log is not None:
            self.log.add(self.phase, bytes_sent=_nbytes(tensor))

    def recv(self, like: torch.Tensor, frm: int, tag: int) -> torch.Tensor:
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
        self.ops.append(dist.P2POp(dist.irecv, buf, self.grp.peer(frm), self.grp.handle, tag))
        self.received.append(buf)
        return buf

    def start(self) -> Exchange:
        if self.ops:
            self.requests = dist.batch_isend_irecv(self.ops)
        return self

    def wait(self) -> list[torch.Tensor]:
        for req in self.requests:
            req.wait()
        self.requests = []
        return self.received


def all_gather(x: torch.Tensor, grp: Group) -> list[torch.Tensor]:
    """Every rank's ``x`` (same shape on all ranks), rank order; not differentiable."""
    if grp.world == 1:
        return [x]
    out = [torch.empty_like(x) for _ in range(grp.world)]
    dist.all_gather(out, x.contiguous(), group=grp.handle)
    return out


def all_reduce_sum(x: torch.Tensor, grp: Group) -> torch.Tensor:
    if grp.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=grp.handle)
    return x


def shard(x: torch.Tensor, group: Any = None, dim: int = 2, layout: str = "zigzag") -> torch.Tensor:
    """This rank's shard of the full tensor ``x`` along ``dim`` (every rank passes the same ``x``)."""
    grp = group_of(group)
    return shard_of(x, layout, grp.world, grp.rank, dim)


class _Unshard(torch.autograd.Function):
    """All-gather of the shards; the backward all-reduces the full gradient and keeps this rank's shard."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, grp: Group, dim: int, layout: str) -> torch.Tensor:
        ctx.attncc = (grp, dim, layout)
        return assemble(all_gather(x, grp), layout, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grp, dim, layout = ctx.attncc
        full = all_reduce_sum(grad.contiguous().clone(), grp)
        return shard_of(full, layout, grp.world, grp.rank, dim), None, None, None


def unshard(x: torch.Tensor, group: Any = None, dim: int = 2, layout: str = "zigzag") -> torch.Tensor:
    """The full tensor from every rank's shard ``x`` (an all-gather; differentiable: the gradient of
    this rank's shard is the sum over ranks of the full gradient's slice for it)."""
    grp = group_of(group)
    return _Unshard.apply(x, grp, dim % x.dim(), layout)
