"""Context parallelism over torch.distributed: sequence shards across ranks (see docs/distributed.md).

- :func:`shard` / :func:`unshard`: a full sequence to this rank's part and back (contiguous or zigzag);
- :func:`attention` (also ``attncc.load(spec).distributed(...)``) and :func:`flex_attention`: attention
  on this rank's shards, equal to the single-device result, by a ring or an all-gather of K/V;
- :func:`plan` / :func:`explain`: the per-rank work and communication and the chosen strategy.
"""

from attncc.distributed.api import attention, explain, flex_attention, plan
from attncc.distributed.comm import WorkLog, shard, unshard
from attncc.distributed.layout import LAYOUTS, assemble, chunks, positions, shard_of
from attncc.distributed.planning import ContextPlan, Machine
from attncc.distributed.recurrence import recurrence_attention
from attncc.runtime import compiled as _compiled
from attncc.runtime import recurrence as _recurrence

_compiled.DISTRIBUTED = attention  # CompiledAttention.distributed delegates here
_recurrence.DISTRIBUTED = recurrence_attention  # and CompiledRecurrence.distributed here

__all__ = ["LAYOUTS", "ContextPlan", "Machine", "WorkLog", "assemble", "attention", "chunks", "explain",
           "flex_attention", "plan", "positions", "recurrence_attention", "shard", "shard_of", "unshard"]
