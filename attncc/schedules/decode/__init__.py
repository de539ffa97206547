"""The ``decode`` schedule (see :mod:`attncc.schedules.decode.schedule`)."""

from attncc.schedules.decode.schedule import DECODE, DecodeSchedule

__all__ = ["DECODE", "DecodeSchedule"]
