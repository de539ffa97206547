"""Independent dense references for the built-in specs, and the accuracy check the kernels must pass.

Nothing here uses attncc: every mask and score formula is written by hand in
torch from the spec descriptions (``specs/*.toml``), with the defaults of each
parameter restated.  ``reference(name, q, k, v, compute_dtype=torch.float64,
**kwargs)`` returns ``(o [B, H, M, E], lse [B, H, M])``:

* ``compute_dtype=torch.float64`` gives the golden values (exact to ~1e-15);
* ``compute_dtype=q.dtype`` gives "same-dtype PyTorch math": the identical
  computation carried out in the input dtype (fp16 matmuls, softmax and all),
  which is the yardstick of :func:`assert_close_to_golden` (FlashAttention's
  convention: the kernel's error against the golden must not exceed twice the
  error of same-dtype PyTorch, plus a small absolute floor).

Rows whose keys are all masked give output 0 and lse ``-inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# --- index grids ----------------------------------------------------------------------------------


@dataclass
class Grid:
    """Broadcastable index grids over [B, H, M, N]."""

    b: torch.Tensor
    h: torch.Tensor
    m: torch.Tensor
    n: torch.Tensor

    @staticmethod
    def make(B: int, H: int, M: int, N: int) -> Grid:
        return Grid(
            torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
            torch.arange(M).view(1, 1, M, 1), torch.arange(N).view(1, 1, 1, N),
        )


@dataclass
class RefSpec:
    """How one built-in spec attends.

    ``mask(g, p)``: bool, broadcastable to [B, H, M, N] (True = key visible); ``p`` holds the
    parameters and the integer captured tensors (ids, lengths: mask inputs);
    ``modify(s, g, p, caps)``: the modified score from the scaled ``q . k`` tile;
    ``defaults``: parameter defaults; ``captures``: names of the tensors it reads;
    ``gqa``: key/value head of query head h is ``h // (H // HK)`` (else HK must equal H).
    """

    mask: Callable[[Grid, dict], torch.Tensor | bool]
    modify: Callable[[torch.Tensor, Grid, dict, dict], torch.Tensor] = lambda s, g, p, c: s
    defaults: dict[str, float] = field(default_factory=dict)
    captures: tuple[str, ...] = ()
    gqa: bool = False


def _causal(g: Grid, p: dict) -> torch.Tensor:
    return g.n <= g.m


def _everything(g: Grid, p: dict) -> bool:
    return True


def _relative_bias(s: torch.Tensor, g: Grid, p: dict, c: dict) -> torch.Tensor:
    md = int(p["max_distance"])
    col = torch.clamp(g.m - g.n, -md, md) + md  # [1, 1, M, N]
    table = c["bias"]  # [H, 2 * md + 1]
    return s + table[g.h, col]  # -> [1, H, M, N]


# --- sparse patterns (issue 9) --------------------------------------------------------------------


def _positions(g: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions [M] and key positions [N]."""
    return g.m.flatten(), g.n.flatten()


def _as_bhmn(mask_mn: torch.Tensor) -> torch.Tensor:
    return mask_mn[None, None]


def _dilated(g: Grid, p: dict) -> torch.Tensor:
    dist = g.m - g.n
    keep = (dist.abs() <= p["window"] * p["dilation"]) & (dist % p["dilation"] == 0)
    return keep & (dist >= 0) if p["causal"] == 1 else keep


def _longlora(g: Grid, p: dict) -> torch.Tensor:
    """Group ids from explicit group boundaries: G, 2G, ... (plain heads) or G/2, 3G/2, ... (shifted)."""
    G, H = int(p["group"]), g.h.shape[1]
    qpos, kpos = _positions(g)
    end = max(qpos.numel(), kpos.numel()) + G

    def same_group(bounds: torch.Tensor) -> torch.Tensor:
        gq = torch.bucketize(qpos, bounds, right=True)
        gk = torch.bucketize(kpos, bounds, right=True)
        return gq[:, None] == gk[None, :]

    plain, shifted = same_group(torch.arange(G, end, G)), same_group(torch.arange(G // 2, end, G))
    per_head = torch.stack([plain if h < H // 2 else shifted for h in range(H)])  # [H, M, N]
    return per_head[None] & (g.n <= g.m)


def _halo(g: Grid, p: dict) -> torch.Tensor:
    block, halo = int(p["block"]), int(p["halo"])
    start = g.m - g.m % block  # first query of m's block
    return (g.n >= start - halo) & (g.n < start + block + halo)


def _same_doc(g: Grid, doc: torch.Tensor) -> torch.Tensor:
    """doc [B, >= max(M, N)]: tokens m and n in the same document."""
    M, N = g.m.shape[2], g.n.shape[3]
    return (doc[:, :M, None] == doc[:, None, :N])[:, None]


def _modality_mutual(g: Grid, p: dict) -> torch.Tensor:
    """Causal, and an image query sees up to the end of its run (a maximal stretch of image tokens
    with one image_span id), found by scanning the run boundaries rather than comparing ids."""
    mod, span = p["modality"], p["image_span"]
    B, L = mod.shape
    M = g.m.shape[2]
    starts = torch.ones(B, L, dtype=torch.bool)
    starts[:, 1:] = (mod[:, 1:] != mod[:, :-1]) | (span[:, 1:] != span[:, :-1])
    run = starts.long().cumsum(1) - 1  # [B, L]: run index of each token
    pos = torch.arange(L).expand(B, L)
    run_end = torch.zeros(B, L, dtype=torch.long).scatter_reduce(1, run, pos, "amax")  # last token of each run
    end_of_m = run_end.gather(1, run)[:, :M]  # [B, M]
    image_m = mod[:, :M] == 1
    ahead = image_m[:, :, None] & (g.n[0, 0] <= end_of_m[:, :, None])  # [B, M, N]: rest of m's image
    return (g.n <= g.m) | ahead[:, None]


def _natten_axis(qx: torch.Tensor, kx: torch.Tensor, extent: int, kernel: int, dilation: int,
                 causal: int) -> torch.Tensor:
    """[len(qx), len(kx)]: key coordinate kx is a neighbour of query coordinate qx along one axis.

    NATTEN's semantics (stride 1), as in its FlexAttention mask (SHI-Labs/NATTEN,
    src/natten/backends/flex.py, ``get_na_flex_mask``): coordinates fall into ``dilation`` groups
    (x % dilation) of positions x // dilation; a group holds as many positions as the axis has
    coordinates in it.  Centred: with left = kernel // 2 and right = kernel // 2 + kernel % 2 - 1,
    centre = clamp(position, left, group_size - 1 - right) and the keys are the positions
    centre - left .. centre + right of the query's group: the window is shifted inward at the
    borders, never truncated.  Causal: the positions p with q - kernel < p <= q.
    """
    group_size = torch.bincount(torch.arange(extent) % dilation, minlength=dilation)  # counted, not derived
    qg, kg = qx % dilation, kx % dilation
    qi, ki = (qx // dilation)[:, None], (kx // dilation)[None, :]
    same = qg[:, None] == kg[None, :]
    if causal == 1:
        return same & (ki <= qi) & (qi - ki < kernel)
    left = kernel // 2
    right = kernel // 2 + kernel % 2 - 1
    size = group_size[qg][:, None]
    centre = torch.minimum(torch.maximum(qi, torch.tensor(left)), size - 1 - right)  # torch.clamp order
    return same & (ki >= centre - left) & (ki <= centre + right)


def _na1d(g: Grid, p: dict) -> torch.Tensor:
    qpos, kpos = _positions(g)
    return _as_bhmn(_natten_axis(qpos, kpos, kpos.numel(), int(p["kernel_size"]), int(p["dilation"]),
                                 int(p["causal"])))


def _na2d(g: Grid, p: dict) -> torch.Tensor:
    """Row-major grid of `cols` columns; ceil(N / cols) rows (the last one may be partial)."""
    qpos, kpos = _positions(g)
    cols = int(p["cols"])
    rows = math.ceil(kpos.numel() / cols)
    keep = _natten_axis(qpos // cols, kpos // cols, rows, int(p["kernel_rows"]), int(p["dilation_rows"]),
                        int(p["causal_rows"]))
    keep &= _natten_axis(qpos % cols, kpos % cols, cols, int(p["kernel_cols"]), int(p["dilation_cols"]),
                         int(p["causal_cols"]))
    return _as_bhmn(keep)


def _na3d(g: Grid, p: dict) -> torch.Tensor:
    """Grid depth x rows x cols, row-major; ceil(N / (rows * cols)) slices (the last one may be partial)."""
    qpos, kpos = _positions(g)
    rows, cols = int(p["rows"]), int(p["cols"])
    depth = math.ceil(kpos.numel() / (rows * cols))
    keep = torch.ones(qpos.numel(), kpos.numel(), dtype=torch.bool)
    for axis, (q_at, k_at, extent) in {
        "depth": (qpos // (rows * cols), kpos // (rows * cols), depth),
        "rows": ((qpos // cols) % rows, (kpos // cols) % rows, rows),
        "cols": (qpos % cols, kpos % cols, cols),
    }.items():
        keep &= _natten_axis(q_at, k_at, extent, int(p[f"kernel_{axis}"]), int(p[f"dilation_{axis}"]),
                             int(p[f"causal_{axis}"]))
    return _as_bhmn(keep)


def _power_of_two_distance(g: Grid, p: dict) -> torch.Tensor:
    dist = g.m - g.n
    return (dist == 0) | ((dist > 0) & ((dist & (dist - 1)) == 0))


REFERENCES: dict[str, RefSpec] = {
    # Full bidirectional attention (no mask).
    "full": RefSpec(_everything),
    # Causal: query m sees keys n <= m.
    "causal": RefSpec(_causal),
    # Causal sliding window: m - window < n <= m.
    "sliding_window": RefSpec(lambda g, p: (g.n <= g.m) & (g.m - g.n < p["window"]), defaults={"window": 256}),
    # Symmetric sliding window: |m - n| <= window.
    "sliding_window_symmetric": RefSpec(lambda g, p: (g.m - g.n).abs() <= p["window"], defaults={"window": 128}),
    # Prefix-LM: bidirectional over the first `prefix` keys, causal after.
    "prefix_lm": RefSpec(lambda g, p: (g.n <= g.m) | (g.n < p["prefix"]), defaults={"prefix": 128}),
    # StreamingLLM: causal, and (one of the first `sinks` keys, or within the last `window`).
    "sinks_window": RefSpec(
        lambda g, p: (g.n <= g.m) & ((g.n < p["sinks"]) | (g.m - g.n < p["window"])),
        defaults={"sinks": 4, "window": 256}),
    # ALiBi: causal, score - slopes[h] * (m - n).
    "alibi": RefSpec(_causal, lambda s, g, p, c: s - c["slopes"].view(1, -1, 1, 1) * (g.m - g.n).to(s.dtype),
                     captures=("slopes",)),
    # Gemma-2 soft-capping, causal: cap * tanh(score / cap).
    "softcap": RefSpec(_causal, lambda s, g, p, c: p["cap"] * torch.tanh(s / p["cap"]), defaults={"cap": 50.0}),
    # T5-style relative bias, bidirectional: score + bias[h, clamp(m - n, -D, D) + D].
    "relative_bias": RefSpec(_everything, _relative_bias, defaults={"max_distance": 128}, captures=("bias",)),
    # Per-query temperature, causal: score * temp[b, h, m].
    "temperature": RefSpec(_causal, lambda s, g, p, c: s * c["temp"][:, :, :, None], captures=("temp",)),
    # Grouped-query attention, causal.
    "gqa": RefSpec(_causal, gqa=True),
    # Cross attention with per-batch key lengths: n < kv_lens[b].
    "cross_attention": RefSpec(lambda g, p: g.n < p["kv_lens"].view(-1, 1, 1, 1), captures=("kv_lens",)),
    # Causal with a value head dim different from the query/key head dim.
    "distinct_value_dim": RefSpec(_causal),
    # DiNAT 1-D: |m - n| <= window * dilation, m - n a multiple of dilation; n <= m when causal.
    "dilated_sliding_window": RefSpec(_dilated, defaults={"window": 8, "dilation": 4, "causal": 0}),
    # Longformer-style: symmetric window, plus the first global_tokens tokens as queries and as keys.
    "global_window": RefSpec(
        lambda g, p: ((g.m - g.n).abs() <= p["window"]) | (g.m < p["global_tokens"]) | (g.n < p["global_tokens"]),
        defaults={"global_tokens": 16, "window": 128}),
    # LongLoRA S2-Attn, causal: groups of `group`; heads h >= H // 2 shifted by group // 2.
    "longlora": RefSpec(_longlora, defaults={"group": 256}),
    # HaloNet 1-D: the block of `block` queries sees its block and `halo` keys on each side.
    "halo": RefSpec(_halo, defaults={"block": 64, "halo": 16}),
    # Packed documents: same document id; alone and causal.
    "document": RefSpec(lambda g, p: _same_doc(g, p["doc"]), captures=("doc",)),
    "document_causal": RefSpec(lambda g, p: _same_doc(g, p["doc"]) & (g.n <= g.m), captures=("doc",)),
    # Text causal, image tokens also see the rest of their contiguous image span.
    "modality_mutual": RefSpec(_modality_mutual, captures=("modality", "image_span")),
    # NATTEN neighbourhood attention, stride 1, on a 1-D sequence and row-major 2-D / 3-D grids.
    "na1d": RefSpec(_na1d, defaults={"kernel_size": 7, "dilation": 1, "causal": 0}),
    "na2d": RefSpec(_na2d, defaults={"cols": 64, "kernel_rows": 7, "kernel_cols": 7, "dilation_rows": 1,
                                     "dilation_cols": 1, "causal_rows": 0, "causal_cols": 0}),
    "na3d": RefSpec(_na3d, defaults={"rows": 16, "cols": 16, "kernel_depth": 3, "kernel_rows": 3, "kernel_cols": 3,
                                     "dilation_depth": 1, "dilation_rows": 1, "dilation_cols": 1,
                                     "causal_depth": 0, "causal_rows": 0, "causal_cols": 0}),
    # PowerAttention, causal: distance 0 or a power of two.
    "power_attention": RefSpec(_power_of_two_distance),
}


def reference(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              compute_dtype: torch.dtype = torch.float64, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention of built-in spec ``name``; ``kwargs`` are its params and captured tensors."""
    if name not in REFERENCES:
        raise KeyError(f"tests/reference.py has no reference for spec '{name}'")
    spec = REFERENCES[name]
    B, H, M, D = q.shape
    HK, N = k.shape[1], k.shape[2]
    unknown = set(kwargs) - set(spec.defaults) - set(spec.captures)
    assert not unknown, f"reference({name}): unknown arguments {unknown}"
    params = {**spec.defaults, **{k_: v_ for k_, v_ in kwargs.items() if k_ in spec.defaults}}
    caps = {}
    for cname in spec.captures:
        t = kwargs[cname]
        caps[cname] = t.to(compute_dtype) if t.is_floating_point() else t.long()
    for cname in [c for c, t in caps.items() if not t.is_floating_point()]:  # mask inputs, not score inputs
        params[cname] = caps.pop(cname)
    if spec.gqa:
        assert H % HK == 0
        heads = torch.arange(H) // (H // HK)
    else:
        assert HK == H, f"{name}: no grouped-query head map, but H={H}, HK={HK}"
        heads = torch.arange(H)
    kx, vx = k[:, heads].to(compute_dtype), v[:, heads].to(compute_dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = (q.to(compute_dtype) @ kx.transpose(-1, -2)) * scale
    g = Grid.make(B, H, M, N)
    s = spec.modify(s, g, params, caps).expand(B, H, M, N)
    keep = torch.as_tensor(spec.mask(g, params)).expand(B, H, M, N)
    return masked_softmax_attention(s, keep, vx)


def masked_softmax_attention(s: torch.Tensor, keep: torch.Tensor, v: torch.Tensor,
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(s masked by keep) @ v, and the natural-log lse; empty rows give 0 and -inf."""
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - safe[..., None])
    return p @ v, lse


# --- accuracy rule --------------------------------------------------------------------------------

# Absolute floors of the 2x rule, per input dtype.  fp32 kernels are within ~3e-7 of the golden on
# these shapes, so 1e-6 still lets a 1e-5 slip (an lse off by a wrong LN2 constant) fail.
FLOORS = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def _max_err(x: torch.Tensor, ref: torch.Tensor, where: torch.Tensor) -> float:
    d = (x.double() - ref.double()).abs()
    d = d[where & torch.isfinite(d)]
    return d.max().item() if d.numel() else 0.0


def assert_close_to_golden(name: str, out: torch.Tensor, golden: torch.Tensor, same_dtype_torch: torch.Tensor,
                           *, input_dtype: torch.dtype | None = None, factor: float = 2.0,
                           relative_floor: bool = False) -> None:
    """Kernel ``out`` vs fp64 ``golden``: max error <= factor x (same-dtype torch's error) + floor.

    ``name`` names the tensor (``"causal fp16 M=77: output"``).  A NaN anywhere
    in ``out`` fails; infinities must be where the golden has the same infinity.
    ``input_dtype`` picks the floor (default: ``same_dtype_torch.dtype``); with ``relative_floor``
    the floor scales with the golden's largest magnitude (for quantities well above 1, such as
    recurrence states and gate gradients, where a few units in the last place exceed the floor).
    """
    assert out.shape == golden.shape, f"{name}: shape {tuple(out.shape)} != expected {tuple(golden.shape)}"
    nan = torch.isnan(out)
    if nan.any():
        first = tuple(nan.nonzero()[0].tolist())
        raise AssertionError(f"{name}: {int(nan.sum())} NaN value(s), first at {first}")
    assert not torch.isnan(golden).any(), f"{name}: golden has NaN (bad test)"
    g_inf, o_inf = torch.isinf(golden), torch.isinf(out)
    bad_inf = (g_inf != o_inf) | (g_inf & o_inf & (golden.double().sign() != out.double().sign()))
    if bad_inf.any():
        idx = tuple(bad_inf.nonzero()[0].tolist())
        raise AssertionError(f"{name}: infinity mismatch at {idx}: got {out[idx].item()}, "
                             f"expected {golden[idx].item()} ({int(bad_inf.sum())} position(s))")
    finite = ~g_inf
    err = _max_err(out, golden, finite)
    torch_err = _max_err(same_dtype_torch, golden, finite)
    floor = FLOORS[input_dtype or same_dtype_torch.dtype]
    if relative_floor:
        floor *= max(1.0, float(golden.double()[finite].abs().max()) if finite.any() else 1.0)
    bound = factor * torch_err + floor
    if not err <= bound:
        diff = (out.double() - golden.double()).abs().masked_fill(~finite, 0)
        idx = tuple((diff == diff.max()).nonzero()[0].tolist())
        raise AssertionError(f"{name} max err {err:.3g} > {factor:g} x torch {torch_err:.3g} + {floor:.0e} "
                             f"(worst at {idx}: got {out[idx].item():.6g}, expected {golden[idx].item():.6g})")


def check_attention(label: str, got: tuple[torch.Tensor, torch.Tensor],
                    golden: tuple[torch.Tensor, torch.Tensor], torch_same: tuple[torch.Tensor, torch.Tensor],
                    input_dtype: torch.dtype) -> None:
    """Output and lse of a kernel against golden, by :func:`assert_close_to_golden`."""
    o, lse = got
    assert o.dtype == input_dtype, f"{label}: output dtype {o.dtype}, expected {input_dtype}"
    assert lse.dtype == torch.float32, f"{label}: lse dtype {lse.dtype}, expected float32"
    assert_close_to_golden(f"{label}: output", o, golden[0], torch_same[0], input_dtype=input_dtype)
    assert_close_to_golden(f"{label}: lse", lse, golden[1], torch_same[1], input_dtype=input_dtype)
