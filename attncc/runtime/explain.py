"""``attncc explain``: the cascade, the passes, the schedule's section (kernels, plans, tile statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attncc.errors import InputError
from attncc.ir.build import build_cascade
from attncc.ir.graph import describe, sweeps_over
from attncc.ir.scan import build_scan
from attncc.ir.variant import Variant
from attncc.passes.lowered import Lowered
from attncc.spec.model import CaptureDecl, Spec
from attncc.spec.recurrence import RecurrenceSpec

if TYPE_CHECKING:
    import torch


def explain(spec: Spec | RecurrenceSpec, low: Lowered, shape: tuple[int, ...] | None, params: dict[str, Any] | None = None,
            tiles: tuple[int, int] | None = None, captures: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Everything ``attncc explain`` prints, as data (the schedule section from ``low.schedule.explain``;
    ``captures`` gives values of captured tensors, e.g. from :func:`run_captures`)."""
    naive = build_scan(spec) if isinstance(spec, RecurrenceSpec) else build_cascade(spec)
    index = "t" if isinstance(spec, RecurrenceSpec) else "n"
    out: dict[str, Any] = {
        "spec": low.variant.name, "description": low.variant.description,
        "cascade": describe(naive),
        "passes": [{"name": r.name, "changed": r.changed, "note": r.note} for r in low.records],
        "passes_over_n": {"index": index, "before": sweeps_over(naive, index),
                          "after": sweeps_over(low.graph, index)},
        "lowered": describe(low.graph),
    }
    out.update(low.schedule.explain(low, shape, params or {}, tiles, captures or {}))
    return out


def run_captures(variant: Variant, items: Sequence[str], shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Integer id tensors described as runs, for the tile statistics of masks that read captures.

    Each item is ``NAME=runs:L1[,L2,...][%K]``: consecutive runs of L1, L2, ... tokens (the list
    repeats until it covers max(M, N) tokens of ``shape = (B, H, M, N, ...)``); run i holds id i,
    or i mod K with ``%K`` (``runs:256,768%2`` alternates 256 zeros and 768 ones).  The tensor has
    the capture's rank: B for a dimension named ``b``, H for ``h``, the tokens last.
    """
    out: dict[str, torch.Tensor] = {}
    for item in items:
        name, sep, text = item.partition("=")
        where = f"--capture {item}"
        decl = next((c for c in variant.captures if c.name == name), None)
        if not sep or decl is None:
            names = ", ".join(c.name for c in variant.captures) or "none"
            raise InputError(f"{where}: expected NAME=runs:LEN,... with NAME one of the captures ({names})")
        out[name] = _runs_tensor(decl, text, shape, where)
    return out


def _runs_tensor(decl: CaptureDecl, text: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    import torch  # explain without captures does not need torch

    body, _, mod = text.removeprefix("runs:").partition("%")
    try:
        lengths, modulus = [int(x) for x in body.split(",")], int(mod) if mod else None
    except ValueError:
        raise InputError(f"{where}: expected runs:LEN[,LEN...][%K] with integers") from None
    if not text.startswith("runs:") or min(lengths) < 1 or (modulus is not None and modulus < 1):
        raise InputError(f"{where}: expected runs:LEN[,LEN...][%K] with positive integers")
    if "int" not in decl.dtype:
        raise InputError(f"{where}: {decl.name} holds {decl.dtype}; runs describe integer ids")
    B, H, M, N = shape[:4]
    sizes = {"b": B, "h": H}
    if any(d not in sizes for d in decl.dims[:-1]):
        raise InputError(f"{where}: {decl.name} [{' '.join(decl.dims)}] is not a per-token id vector")
    tokens = max(M, N)
    reps = -(-tokens // sum(lengths))
    ids = torch.repeat_interleave(torch.arange(reps * len(lengths)), torch.tensor(lengths * reps))[:tokens]
    if modulus is not None:
        ids = ids % modulus
    lead = [sizes[d] for d in decl.dims[:-1]]
    return ids.to(torch.int32).view(*[1] * len(lead), tokens).expand(*lead, tokens).contiguous()


def format_explain(info: dict[str, Any]) -> str:
    lines = [f"spec: {info['spec']} — {info['description']}", "", "Einsum cascade (as written):"]
    lines += [f"  {x}" for x in info["cascade"]]
    lines += ["", "Passes:"] + [f"  {p['name']}: {p['note']}" for p in info["passes"]]
    po = info["passes_over_n"]
    how = "online softmax" if po["index"] == "n" else "one scan"
    lines += [f"  passes over {po['index']}: {po['before']} -> {po['after']} ({how})", "", "Lowered cascade:"]
    lines += [f"  {x}" for x in info["lowered"]]
    lines += ["", f"Schedule: {info['schedule']['name']} — {info['schedule']['description']}"]
    lines += [f"  kernel {k['name']} ({k['kind']}): grid {k['grid']}, {k['plan']} plan over {k['sweeps']}"
              for k in info["schedule"].get("kernels", [])]
    if "recurrence" in info:
        r = info["recurrence"]
        lines += ["", f"Recurrence: phi(x) = {r['feature']} (d phi/dx = {r['feature_grad']}), log-gate {r['gate']} "
                  f"({r['gate_kind']}{', must be <= 0' if r['decay'] else ''}), {r['direction']}"]
    if "mask" in info:
        lines += ["", f"Mask: {info['mask']['predicate']}  ({info['mask']['analysis']})"]
        for i, s in enumerate(info["mask"].get("segments", []), 1):
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
