"""The ``recurrent`` schedule (see :mod:`attncc.schedules.recurrent.schedule`)."""

from attncc.schedules.recurrent.schedule import RECURRENT, RecurrentSchedule

__all__ = ["RECURRENT", "RecurrentSchedule"]
