"""The ``chunkwise`` schedule (see :mod:`attncc.schedules.chunkwise.schedule`)."""

from attncc.schedules.chunkwise.schedule import CHUNKWISE, ChunkwiseSchedule

__all__ = ["CHUNKWISE", "ChunkwiseSchedule"]
