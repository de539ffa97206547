"""Schedule choice and iteration planning: the last two passes of the pipeline.

``choose_schedule`` asks each candidate schedule (``Lowering.schedules``, in priority order)
whether it realises the lowered cascade for the call (:meth:`Schedule.applies` reads facts of the
IR, such as an ``online_softmax`` or ``scan`` node, and of the call, such as a fixed query length
or a runtime block table) and takes the first that does.  ``plan_iteration`` then asks the chosen
schedule for one iteration plan per kernel (:mod:`attncc.passes.plans`).
"""

from __future__ import annotations

from attncc.errors import CompileError
from attncc.ir.graph import PassRecord
from attncc.passes.lowered import Lowering


def choose_schedule(low: Lowering) -> PassRecord:
    for schedule in low.schedules:
        if schedule.applies(low):
            low.schedule = schedule
            return PassRecord("choose_schedule", True, schedule.name)
    ops = sorted({d["op"] for _, d in low.graph.nodes(data=True)})
    raise CompileError(f"no registered schedule realises this cascade (ops: {', '.join(ops)}; "
                       f"schedules: {', '.join(s.name for s in low.schedules) or 'none'})")


def plan_iteration(low: Lowering) -> PassRecord:
    if low.schedule is None:
        raise CompileError("plan_iteration runs after choose_schedule")
    low.plans = {k.name: low.schedule.plan(k, low) for k in low.schedule.kernels}
    notes = ", ".join(f"{name}: {p.kind} over {p.swept}" for name, p in low.plans.items())
    return PassRecord("plan_iteration", True, notes)
