"""The ``prefill`` schedule (see :mod:`attncc.schedules.prefill.schedule`)."""

from attncc.schedules.prefill.schedule import PREFILL, PrefillSchedule

__all__ = ["PREFILL", "PrefillSchedule"]
