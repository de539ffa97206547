"""Ring and all-gather context-parallel attention, forward and backward (see docs/distributed.md).

Both walk the (query chunk, key chunk) pairs of :class:`~attncc.distributed.planning.ContextPlan` in a
fixed order, launch only the non-empty ones (:class:`~attncc.distributed.pairs.PairKernel`) and merge
their partial ``(o, lse)`` by the IR's merge rule, so results are deterministic.

- **Ring**: at step ``t`` a rank holds the key chunks of rank ``r - t``; the chunks the next rank
  still needs are posted to it (one ``batch_isend_irecv``) before the current pairs compute.  The
  backward circulates K/V the same way, with the fp32 dK/dV accumulators travelling behind them;
  the last rank that uses a chunk sends its accumulator straight back to the owner.
- **All-gather**: K and V are all-gathered once and every pair is local; in the backward each rank
  sends its dK/dV partials of a chunk to the chunk's owner, which sums them in rank order.

Gradients of captured tensors are summed over the pairs of a rank, then all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attncc.distributed.comm import (
    TAG_DKV,
    TAG_KV,
    TAG_RETURN,
    Exchange,
    Group,
    WorkLog,
    all_gather,
    all_reduce_sum,
)
from attncc.distributed.pairs import PairKernel, State
from attncc.distributed.planning import ContextPlan


@dataclass
class Run:
    """Everything one call needs besides its tensors."""

    kernel: PairKernel
    plan: ContextPlan
    grp: Group
    strategy: str  # "ring" | "allgather"
    log: WorkLog | None = None

    def count(self, phase: str, **counts: int) -> None:
        if self.log is not None:
            self.log.add(phase, **counts)

    def piece(self, x: torch.Tensor, a: int) -> torch.Tensor:
        """Local chunk ``a`` of a shard ``x`` (along dim 2)."""
        c = self.plan.chunk
        return x[:, :, a * c:(a + 1) * c]

    @property
    def mine(self) -> tuple[int, ...]:
        return self.plan.chunks_of(self.grp.rank)


def _post_kv(run: Run, kv: dict[int, tuple[torch.Tensor, torch.Tensor]], step: int, phase: str,
             like: tuple[torch.Tensor, torch.Tensor]) -> tuple[Exchange, tuple[int, ...]]:
    """Send the chunks the next rank still needs; receive those the previous rank sends."""
    plan, grp = run.plan, run.grp
    r, W = grp.rank, grp.world
    ex = Exchange(grp, run.log, phase)
    for j in plan.sends(step, r):
        ex.send(kv[j][0], (r + 1) % W, TAG_KV)
        ex.send(kv[j][1], (r + 1) % W, TAG_KV)
    incoming = plan.sends(step, (r - 1) % W)
    for _ in incoming:
        ex.recv(like[0], (r - 1) % W, TAG_KV)
        ex.recv(like[1], (r - 1) % W, TAG_KV)
    return ex.start(), incoming


def _pairs(x: list[torch.Tensor], names: tuple[int, ...]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    return {j: (x[2 * n], x[2 * n + 1]) for n, j in enumerate(names)}


def _own_kv(run: Run, k: torch.Tensor, v: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    return {j: (run.piece(k, a).contiguous(), run.piece(v, a).contiguous()) for a, j in enumerate(run.mine)}


def _attend(run: Run, q: torch.Tensor, kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
            states: dict[int, State | None], order: list[int]) -> int:
    """Launch the non-empty pairs (local query chunks x ``order``), merge them into ``states``;
    return the number of launches."""
    plan, c = run.plan, run.plan.chunk
    launched = 0
    for a, i in enumerate(run.mine):
        for j in order:
            if not plan.needed(i, j):
                continue
            o, lse = run.kernel.forward(run.piece(q, a), *kv[j], i * c, j * c)
            states[i] = run.kernel.merge(states[i], o, lse)
            run.count("forward", launches=1, tiles=int(plan.pair_tiles[i, j]))
            launched += 1
    return launched


def _finish(run: Run, q: torch.Tensor, v: torch.Tensor, states: dict[int, State | None], launched: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [run.kernel.finalize(states[i], q, run.plan.chunk, v.shape[3]) for i in run.mine]
    run.count("forward", skipped=len(run.mine) * run.plan.parts - launched)
    return torch.cat([o for o, _ in outs], dim=2), torch.cat([lse for _, lse in outs], dim=2)


def ring_forward(run: Run, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``(o, lse)`` by the ring."""
    W, r = run.grp.world, run.grp.rank
    kv = _own_kv(run, k, v)
    like = next(iter(kv.values()))
    states: dict[int, State | None] = {i: None for i in run.mine}
    launched = 0
    for t in range(W):
        ex, incoming = _post_kv(run, kv, t, "forward", like) if t < W - 1 else (None, ())
        launched += _attend(run, q, kv, states, list(run.plan.held(t, r)))
        if ex is not None:
            kv = _pairs(ex.wait(), incoming)
    return _finish(run, q, v, states, launched)


def allgather_forward(run: Run, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``(o, lse)`` after one all-gather of K and V."""
    kv = _gathered_kv(run, k, v, "forward")
    states: dict[int, State | None] = {i: None for i in run.mine}
    launched = _attend(run, q, kv, states, list(range(run.plan.parts)))
    return _finish(run, q, v, states, launched)


def _gathered_kv(run: Run, k: torch.Tensor, v: torch.Tensor, phase: str
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    grp, plan = run.grp, run.plan
    ks, vs = all_gather(k, grp), all_gather(v, grp)
    run.count(phase, bytes_sent=(grp.world - 1) * (k.numel() * k.element_size() + v.numel() * v.element_size()))
    kv = {}
    for s in range(grp.world):
        for a, j in enumerate(plan.chunks_of(s)):
            kv[j] = (run.piece(ks[s], a).contiguous(), run.piece(vs[s], a).contiguous())
    return kv


# --- backward ---------------------------------------------------------------------------------------

@dataclass
class Grads:
    """fp32 accumulators of one rank's backward."""

    dq: dict[int, torch.Tensor]
    dkv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    dcaps: list[torch.Tensor]


def _grads(run: Run, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, wanted: list[bool]) -> Grads:
    zq = torch.zeros(run.piece(q, 0).shape, dtype=torch.float32, device=q.device)
    caps = run.kernel.captures
    return Grads({i: zq.clone() for i in run.mine}, {},
                 [torch.zeros(c.shape, dtype=torch.float32, device=c.device) for c, w in zip(caps, wanted, strict=True)
                  if w])


def _zero_dkv(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(k.shape, dtype=torch.float32, device=k.device), torch.zeros(v.shape, dtype=torch.float32,
                                                                                   device=v.device)


def _backprop(run: Run, tensors: tuple[torch.Tensor, ...], kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
              g: Grads, order: list[int], wanted: list[bool]) -> int:
    """Add the non-empty pairs' gradients (local query chunks x ``order``) to ``g`` (fixed order);
    return the number of launches."""
    q, o, lse, do, dlse = tensors
    plan, c = run.plan, run.plan.chunk
    launched = 0
    for a, i in enumerate(run.mine):
        rows = [None if x is None else run.piece(x, a) for x in (q, o, lse, do, dlse)]
        for j in order:
            if not plan.needed(i, j):
                continue
            dq, dk, dv, dcaps = run.kernel.backward(rows[0], *kv[j], rows[1], rows[2], rows[3], rows[4],
                                                    i * c, j * c, wanted)
            g.dq[i] += dq.float()
            acc = g.dkv.setdefault(j, _zero_dkv(*kv[j]))
            acc[0].add_(dk.float())
            acc[1].add_(dv.float())
            for total, part in zip(g.dcaps, dcaps, strict=True):
                total.add_(part.float())
            run.count("backward", launches=1, tiles=int(plan.pair_tiles[i, j]))
            launched += 1
    return launched


def ring_backward(run: Run, tensors: tuple[torch.Tensor, ...], k: torch.Tensor, v: torch.Tensor,
                  wanted: list[bool]) -> tuple[Grads, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Gradients by the ring: (this rank's accumulators, the final dK/dV of its own chunks)."""
    plan, grp = run.plan, run.grp
    W, r = grp.world, grp.rank
    kv = _own_kv(run, k, v)
    like = next(iter(kv.values()))
    g = _grads(run, tensors[0], k, v, wanted)
    g.dkv = {j: _zero_dkv(*kv[j]) for j in run.mine}
    final: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    dkv_ex: Exchange | None = None
    launched = 0
    for t in range(W):
        ex, incoming = _post_kv(run, kv, t, "backward", like) if t < W - 1 else (None, ())
        held = plan.held(t, r)
        if dkv_ex is not None:
            g.dkv = _pairs(dkv_ex.wait(), held)
        launched += _backprop(run, tensors, kv, g, list(held), wanted)
        outgoing = plan.sends(t, r) if t < W - 1 else ()
        final.update({j: g.dkv[j] for j in held if j not in outgoing})
        if ex is not None:
            dkv_ex = Exchange(grp, run.log, "backward")
            for j in outgoing:
                dkv_ex.send(g.dkv[j][0], (r + 1) % W, TAG_DKV)
                dkv_ex.send(g.dkv[j][1], (r + 1) % W, TAG_DKV)
            zk, zv = _zero_dkv(*like)
            for _ in incoming:
                dkv_ex.recv(zk, (r - 1) % W, TAG_DKV)
                dkv_ex.recv(zv, (r - 1) % W, TAG_DKV)
            dkv_ex.start()
            kv = _pairs(ex.wait(), incoming)
    run.count("backward", skipped=len(run.mine) * plan.parts - launched)
    return g, _return_to_owners(run, final, like)


def _return_to_owners(run: Run, final: dict[int, tuple[torch.Tensor, torch.Tensor]],
                      like: tuple[torch.Tensor, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Send each finished accumulator to its chunk's owner; receive this rank's own chunks."""
    plan, grp, r = run.plan, run.grp, run.grp.rank
    ex = Exchange(grp, run.log, "backward")
    for j in sorted(final):
        if plan.owner(j) != r:
            ex.send(final[j][0], plan.owner(j), TAG_RETURN)
            ex.send(final[j][1], plan.owner(j), TAG_RETURN)
    coming = [j for j in sorted(run.mine) if plan.holder(j, plan.last_step(j)) != r]
    zk, zv = _zero_dkv(*like)
    for j in coming:
        ex.recv(zk, plan.holder(j, plan.last_step(j)), TAG_RETURN)
        ex.recv(zv, plan.holder(j, plan.last_step(j)), TAG_RETURN)
    got = _pairs(ex.start().wait(), tuple(coming))
    return {j: got[j] if j in got else final[j] for j in run.mine}


def allgather_backward(run: Run, tensors: tuple[torch.Tensor, ...], k: torch.Tensor, v: torch.Tensor,
                       wanted: list[bool]) -> tuple[Grads, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Gradients after one all-gather of K and V; partials summed by their owners in rank order."""
    plan, grp, r = run.plan, run.grp, run.grp.rank
    kv = _gathered_kv(run, k, v, "backward")
    g = _grads(run, tensors[0], k, v, wanted)
    launched = _backprop(run, tensors, kv, g, list(range(plan.parts)), wanted)
    run.count("backward", skipped=len(run.mine) * plan.parts - launched)
    ex = Exchange(grp, run.log, "backward")
    for j in sorted(g.dkv):
        if plan.owner(j) != r:
            ex.send(g.dkv[j][0], plan.owner(j), TAG_RETURN)
            ex.send(g.dkv[j][1], plan.owner(j), TAG_RETURN)
    senders = {j: [s for s in range(grp.world) if s != r and plan.needs(s, j)] for j in sorted(run.mine)}
    like = _zero_dkv(*kv[run.mine[0]])
    for j in sorted(run.mine):
        for s in senders[j]:
            ex.recv(like[0], s, TAG_RETURN)
            ex.recv(like[1], s, TAG_RETURN)
    got = iter(ex.start().wait())
    parts: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {j: {} for j in run.mine}
    for j in sorted(run.mine):
        for s in senders[j]:
            parts[j][s] = (next(got), next(got))
        if j in g.dkv:
            parts[j][r] = g.dkv[j]
    out = {}
    for j in run.mine:
        dk, dv = _zero_dkv(*like)
        for s in sorted(parts[j]):  # rank order: deterministic
            dk += parts[j][s][0]
            dv += parts[j][s][1]
        out[j] = (dk, dv)
    return g, out


class ContextAttention(torch.autograd.Function):
    """``(o, lse)`` of this rank's shards; gradients for q, k, v and the float captured tensors."""

    @staticmethod
    def forward(ctx: Any, run: Run, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                *captures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fwd = ring_forward if run.strategy == "ring" else allgather_forward
        o, lse = fwd(run, q, k, v)
        ctx.save_for_backward(q, k, v, o, lse, *captures)
        ctx.run = run
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor | None, dlse: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, o, lse, *captures = ctx.saved_tensors
        run: Run = ctx.run
        wanted = [bool(need) and c.is_floating_point() for need, c in zip(ctx.needs_input_grad[4:], captures,
                                                                          strict=True)]
        do = torch.zeros_like(o) if do is None else do
        bwd = ring_backward if run.strategy == "ring" else allgather_backward
        g, dkv = bwd(run, (q, o, lse, do, dlse), k, v, wanted)
        dq = torch.cat([g.dq[i] for i in run.mine], dim=2).to(q.dtype)
        dk = torch.cat([dkv[j][0] for j in run.mine], dim=2).to(k.dtype)
        dv = torch.cat([dkv[j][1] for j in run.mine], dim=2).to(v.dtype)
        it = iter(all_reduce_sum(t, run.grp) for t in g.dcaps)
        dcaps = [next(it).to(c.dtype) if w else None for c, w in zip(captures, wanted, strict=True)]
        return None, dq, dk, dv, *dcaps
