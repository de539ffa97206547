"""``attncc check``: one spec's kernel against its dense float64 evaluation."""

from __future__ import annotations

from typing import Any

import torch

from attncc.runtime.api import load
from attncc.runtime.recurrence import dense_recurrence
from attncc.runtime.reference import reference_forward
from attncc.spec.model import Spec
from attncc.spec.recurrence import RecurrenceSpec

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def example_captures(spec: Spec, shape: tuple[int, ...], params: dict[str, Any], device: str,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Plausible values for each captured tensor, sized from the shape and params."""
    B, H, M, N = shape[:4]
    sizes = {"b": B, "h": H, "m": M, "n": N}
    out = {}
    for cap in spec.captures.values():
        dims = []
        for d in cap.dims:
            if d in sizes:
                dims.append(sizes[d])
            else:  # a table dimension: large enough for every clamped index the spec may form
                dims.append(2 * int(params.get("max_distance", spec.params.get("max_distance").default
                                               if "max_distance" in spec.params else max(M, N))) + 1)
        if cap.dtype.startswith("int"):
            out[cap.name] = torch.randint(0, N + 1, dims, generator=gen, dtype=torch.int32).to(device)
        else:
            out[cap.name] = (torch.rand(dims, generator=gen) * 0.5 + 0.25).to(device)
    return out


def run_check(spec_ref: str, shape: tuple[int, ...], dtype: str, params: dict[str, Any]) -> dict[str, Any]:
    fn = load(spec_ref)
    spec = fn.spec
    if isinstance(spec, RecurrenceSpec):
        return _check_recurrence(fn, shape, dtype, params)
    B, H, M, N, D = shape[:5]
    Ev = shape[5] if len(shape) > 5 else D
    HK = 1 if spec.is_gqa else H
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, M, D, generator=gen)
    k = torch.randn(B, HK, N, D, generator=gen)
    v = torch.randn(B, HK, N, Ev, generator=gen)
    caps = example_captures(spec, shape, params, device, gen)
    dt = DTYPES[dtype]
    qd, kd, vd = (t.to(device=device, dtype=dt) for t in (q, k, v))
    o, lse = fn(qd, kd, vd, return_lse=True, **caps, **params)
    gold_o, gold_lse = reference_forward(spec, qd.double(), kd.double(), vd.double(), caps, params)
    same_o, _ = reference_forward(spec, qd.float(), kd.float(), vd.float(), caps, params)
    torch_err = (same_o.to(dt).double() - gold_o).abs().max().item()
    out_err = (o.double() - gold_o).abs().nan_to_num(float("inf")).max().item()
    finite = torch.isfinite(gold_lse)
    lse_err = (lse.double()[finite] - gold_lse[finite]).abs().max().item() if finite.any() else 0.0
    lse_ok = bool((torch.isinf(lse) == ~finite).all())
    floor = 1e-5 if dt == torch.float32 else 1e-3
    ok = out_err <= 2 * torch_err + floor and lse_err <= 1e-3 and lse_ok
    return {"spec": spec.name, "dtype": dtype, "shape": list(shape), "device": device,
            "out_err": out_err, "torch_out_err": torch_err, "lse_err": lse_err, "ok": ok}


def _check_recurrence(fn: Any, shape: tuple[int, ...], dtype: str, params: dict[str, Any]) -> dict[str, Any]:
    """A recurrence spec: shape ``B,H,T,T,K[,V]``; o and the final state against the spec's
    recurrence evaluated token by token in float64.  ``lse_err`` reports the final state."""
    spec = fn.spec
    B, H, T, _, K = shape[:5]
    Ev = shape[5] if len(shape) > 5 else K
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    dt = DTYPES[dtype]
    q, k = (torch.randn(B, H, T, K, generator=gen) for _ in range(2))
    v = torch.randn(B, H, T, Ev, generator=gen)
    g = None
    if spec.gate_input is not None:
        gshape = (B, H, T, K) if len(spec.gate_input) == 4 else (B, H, T)
        g = -torch.nn.functional.softplus(torch.randn(*gshape, generator=gen)) * 0.5
    caps = example_captures_recurrence(spec, H, gen)
    qd, kd, vd = (t.to(device=device, dtype=dt) for t in (q, k, v))
    gd = None if g is None else g.to(device=device, dtype=dt)
    out = fn(qd, kd, vd, g=gd, output_final_state=spec.direction == "causal", **caps, **params)
    o, final = out if isinstance(out, tuple) else (out, None)
    low = fn.generated.lowered
    values = {p.symbol: params.get(p.name, p.default) for p in spec.params.values()}
    scale = K ** -0.5
    gold_o, gold_s = dense_recurrence(low, q.double(), k.double(), v.double(), None if g is None else g.double(),
                                      caps, values, scale)
    same_o, _ = dense_recurrence(low, qd.float().cpu(), kd.float().cpu(), vd.float().cpu(),
                                 None if gd is None else gd.float().cpu(), caps, values, scale)
    torch_err = (same_o.to(dt).double() - gold_o).abs().max().item() if gold_o.numel() else 0.0
    out_err = (o.double().cpu() - gold_o).abs().nan_to_num(float("inf")).max().item() if gold_o.numel() else 0.0
    state_err = (final.double().cpu() - gold_s).abs().max().item() if final is not None else 0.0
    scale_floor = max(1.0, float(gold_o.abs().max()) if gold_o.numel() else 1.0)
    floor = (1e-5 if dt == torch.float32 else 1e-3) * scale_floor
    ok = out_err <= 2 * torch_err + floor and state_err <= (1e-4 if dt == torch.float32 else 5e-2) * max(
        1.0, float(gold_s.abs().max()))
    return {"spec": spec.name, "dtype": dtype, "shape": list(shape), "device": device,
            "out_err": out_err, "torch_out_err": torch_err, "lse_err": state_err, "ok": ok, "recurrence": True}


def example_captures_recurrence(spec: RecurrenceSpec, H: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Plausible values of a recurrence's captured tensors: per-head values in (0.25, 0.75)."""
    return {c.name: torch.rand(*[H] * c.ndim, generator=gen) * 0.5 + 0.25 for c in spec.captures.values()}
