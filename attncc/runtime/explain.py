"""``attncc explain``: the cascade, the passes, the schedule's section (kernels, plans, tile statistics)."""

from __future__ import annotations

from typing import Any

from attncc.ir.build import build_cascade
from attncc.ir.graph import describe, sweeps_over
from attncc.passes.lowered import Lowered
from attncc.spec.model import Spec


def explain(spec: Spec, low: Lowered, shape: tuple[int, ...] | None, params: dict[str, Any] | None = None,
            tiles: tuple[int, int] | None = None) -> dict[str, Any]:
    """Everything ``attncc explain`` prints, as data (the schedule section from ``low.schedule.explain``)."""
    naive = build_cascade(spec)
    out: dict[str, Any] = {
        "spec": low.variant.name, "description": low.variant.description,
        "cascade": describe(naive),
        "passes": [{"name": r.name, "changed": r.changed, "note": r.note} for r in low.records],
        "passes_over_n": {"before": sweeps_over(naive, "n"), "after": sweeps_over(low.graph, "n")},
        "lowered": describe(low.graph),
    }
    out.update(low.schedule.explain(low, shape, params or {}, tiles))
    return out


def format_explain(info: dict[str, Any]) -> str:
    lines = [f"spec: {info['spec']} — {info['description']}", "", "Einsum cascade (as written):"]
    lines += [f"  {x}" for x in info["cascade"]]
    lines += ["", "Passes:"] + [f"  {p['name']}: {p['note']}" for p in info["passes"]]
    po = info["passes_over_n"]
    lines += [f"  passes over n: {po['before']} -> {po['after']} (online softmax)", "", "Lowered cascade:"]
    lines += [f"  {x}" for x in info["lowered"]]
    lines += ["", f"Schedule: {info['schedule']['name']} — {info['schedule']['description']}"]
    lines += [f"  kernel {k['name']} ({k['kind']}): grid {k['grid']}, {k['plan']} plan over {k['sweeps']}"
              for k in info["schedule"].get("kernels", [])]
    lines += ["", f"Mask: {info['mask']['predicate']}  ({info['mask']['analysis']})"]
    for i, s in enumerate(info["mask"]["segments"], 1):
        lines.append(f"  segment {i}: keys {s['keys']}, full tiles {s['full'] or 'none (mask evaluated)'}")
    if "tiles" in info:
        t = info["tiles"]
        lines += ["", f"Shape {info['shape']}:"]
        if isinstance(t, str):
            lines.append(f"  tiles: {t}")
        else:
            lines += [f"  tiles BLOCK_M={t['block_m']} BLOCK_N={t['block_n']}: total {t['total']}, "
                      f"visited {t['visited']} (full {t['full']}, partial {t['partial']}), "
                      f"non-empty {'not counted (M*N too large)' if t['non_empty'] is None else t['non_empty']}"]
    return "\n".join(lines)
