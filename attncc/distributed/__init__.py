"""Context parallelism over torch.distributed: sequence shards across ranks (see docs/distributed.md)."""

from attncc.distributed.layout import LAYOUTS, assemble, chunks, positions, shard_of

__all__ = ["LAYOUTS", "assemble", "chunks", "positions", "shard_of"]
