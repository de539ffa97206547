"""GPU benchmark: attncc against torch SDPA (flash and cuDNN backends) and FlexAttention.

Forward and forward+backward; masks ``full``, ``causal``, ``document`` (packed documents),
``sliding_window`` (causal, 1024 keys) and ``block_sparse`` (a fixed random pattern of 128x128
blocks, about a quarter of them kept); GQA (``--gqa`` query heads per key/value head); head dims
64/128/256; lengths 1K..16K; fp16/bf16.  For every configuration:

* FlexAttention is ``torch.compile(flex_attention, dynamic=False)``, compiled afresh after
  ``torch._dynamo.reset()`` (one compiled function shared across shapes would run a dynamic-shape
  kernel, or fall back to eager, for the later shapes);
* every implementation's output (and, for fwd+bwd, its dq, dk, dv) is checked against the others
  before anything is timed; one that disagrees is reported and not timed;
* times are medians (``triton.testing.do_bench``, ``return_mode="median"``), fwd+bwd with
  ``grad_to_none`` so gradients do not accumulate;
* the first call's latency (compiles included) and the peak memory of one call are recorded;
* attncc's tile config for the call (tuned or default) is recorded beside its figure.

TFLOP/s count 4*B*H*M*N*D multiply-adds over the mask's unmasked fraction (dense count times
the density); fwd+bwd counts 3.5x the forward.  SDPA runs only the masks it has (``full``,
``causal``).  JSON goes to ``--json PATH`` (default ``bench/results/<gpu>/attention_<mode>_<dtype>.json``).
Needs a CUDA GPU; exits with a message otherwise.

Usage: python bench/attention_tflops.py [--modes fwd,fwdbwd] [--dtypes bf16] [--head-dims 64,128]
       [--lengths 1024,...] [--masks causal,full] [--gqa 1] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ("fwd", "fwdbwd")
DTYPES = ("fp16", "bf16")
MASKS = ("full", "causal", "document", "sliding_window", "block_sparse")
SDPA_MASKS = ("full", "causal")
IMPLS = ("attncc", "sdpa_flash", "sdpa_cudnn", "flex")
WINDOW = 1024
SPARSE_BLOCK = 128
SPARSE_KEEP = 0.25
DOCUMENTS = 8
TOKENS = 16384  # B * L per configuration
HEAD_PRODUCT = 2048  # H * D per configuration
BWD_FACTOR = 3.5  # fwd+bwd FLOPs / forward FLOPs
# Tolerance floor of the output check, relative to max |reference| (a few ulps at 1.0).
CHECK_FLOOR = {"fp16": 4 * 2.0 ** -10, "bf16": 4 * 2.0 ** -7}


# --------------------------------------------------------------------------- arguments


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': values must be positive")
    return values


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"'{text}': expected a comma-separated subset of {', '.join(allowed)}")
        return values
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", type=_choices(MODES), default=list(MODES), help="fwd,fwdbwd")
    ap.add_argument("--dtypes", type=_choices(DTYPES), default=["bf16"], help="fp16,bf16")
    ap.add_argument("--head-dims", type=_ints, default=[64, 128], help="e.g. 64,128,256")
    ap.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096, 8192, 16384], help="sequence lengths")
    ap.add_argument("--masks", type=_choices(MASKS), default=["full", "causal"], help=", ".join(MASKS))
    ap.add_argument("--gqa", type=_ints, default=[1], help="query heads per key/value head, e.g. 1,8")
    ap.add_argument("--impls", type=_choices(IMPLS), default=list(IMPLS), help=", ".join(IMPLS))
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench measurement time, ms")
    ap.add_argument("--json", type=Path, default=None, help="output path (default bench/results/<gpu>/...)")
    ap.add_argument("--quick", action="store_true", help="lengths 1K and 4K only")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths = [1024, 4096]
    for d in args.head_dims:
        if d not in (64, 128, 256):
            ap.error(f"--head-dims: {d} is not one of 64, 128, 256")
    return args


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Case:
    """One configuration: mask, mode, dtype, head dim, length, batch, query and key/value heads."""

    mask: str
    mode: str
    dtype: str
    D: int
    L: int
    B: int
    H: int
    HK: int

    @property
    def label(self) -> str:
        gqa = f" gqa{self.H // self.HK}" if self.HK != self.H else ""
        return f"{self.mode} {self.dtype} {self.mask}{gqa} d{self.D} L{self.L}"


def shape_grid(args: argparse.Namespace) -> list[Case]:
    """Every configuration of ``args``: B * L = 16K tokens, H * D = 2048 (at least one head of
    each kind); GQA ratios that do not divide H are left out."""
    cases = []
    for mode in args.modes:
        for dtype in args.dtypes:
            for mask in args.masks:
                for D in args.head_dims:
                    H = max(1, HEAD_PRODUCT // D)
                    for group in args.gqa:
                        if H % group:
                            continue
                        for L in args.lengths:
                            cases.append(Case(mask, mode, dtype, D, L, max(1, TOKENS // L), H, H // group))
    return cases


def document_lengths(L: int, documents: int = DOCUMENTS) -> list[int]:
    """``documents`` packed documents of L tokens (fixed seed): lengths summing to L, each >= 1."""
    documents = min(documents, L)
    g = torch.Generator().manual_seed(0)
    cuts = sorted((torch.randperm(L - 1, generator=g)[:documents - 1] + 1).tolist())
    bounds = [0, *cuts, L]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sparse_blocks(L: int, block: int = SPARSE_BLOCK, keep: float = SPARSE_KEEP) -> torch.Tensor:
    """``[nb, nb]`` bool: the kept key blocks of each query block (fixed seed; the diagonal always)."""
    nb = math.ceil(L / block)
    g = torch.Generator().manual_seed(0)
    kept = torch.rand(nb, nb, generator=g) < keep
    return kept | torch.eye(nb, dtype=torch.bool)


def density(case: Case) -> float:
    """Unmasked fraction of the L x L score matrix (exact; no dense mask is built)."""
    L = case.L
    if case.mask == "full":
        return 1.0
    if case.mask == "causal":
        return (L * (L + 1) / 2) / (L * L)
    if case.mask == "sliding_window":
        w = min(WINDOW, L)
        return (w * (w + 1) / 2 + (L - w) * w) / (L * L)
    if case.mask == "document":
        return sum(n * n for n in document_lengths(L)) / (L * L)
    blocks = sparse_blocks(L)
    sizes = torch.tensor([min(SPARSE_BLOCK, L - i * SPARSE_BLOCK) for i in range(blocks.shape[0])],
                         dtype=torch.float64)
    return float((blocks.double() * sizes[:, None] * sizes[None, :]).sum()) / (L * L)


def flops(case: Case) -> float:
    """FLOPs of one call: 4 B H L^2 D times the mask's density, times 3.5 for fwd+bwd."""
    f = 4.0 * case.B * case.H * case.L * case.L * case.D * density(case)
    return f * (BWD_FACTOR if case.mode == "fwdbwd" else 1.0)


# --------------------------------------------------------------------------- checks and summary


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in fp32 (inf if a is not finite where b is)."""
    a32, b32 = a.float(), b.float()
    if not torch.isfinite(a32).all():
        return math.inf
    scale = max(float(b32.abs().max()), 1e-30) if b32.numel() else 1.0
    return float((a32 - b32).abs().max()) / scale if b32.numel() else 0.0


def check_outputs(results: Mapping[str, Mapping[str, torch.Tensor]], dtype: str) -> dict[str, dict[str, Any]]:
    """Cross-check implementations before timing.

    ``results``: ``{impl: {tensor name: tensor}}`` (``o``, and ``dq``/``dk``/``dv`` for fwd+bwd).
    The reference is the first implementation given.  The tolerance is twice the closest
    agreement of two baselines (the smallest of the largest differences between two
    implementations other than attncc, so one broken baseline cannot widen it), never below
    :data:`CHECK_FLOOR`: an implementation passes when every tensor is within it.
    Returns ``{impl: {"ok": bool, "diff": {tensor: rel diff}, "tolerance": float, "reference": name}}``.
    """
    names = list(results)
    if not names:
        return {}
    ref = names[0]
    baselines = [n for n in names if n != "attncc"]
    pairs = [max((max_rel_diff(results[a][t], results[b][t]) for t in results[a] if t in results[b]), default=0.0)
             for i, a in enumerate(baselines) for b in baselines[i + 1:]]
    spread = min(pairs, default=0.0)
    tolerance = max(2.0 * spread, CHECK_FLOOR[dtype]) if math.isfinite(spread) else CHECK_FLOOR[dtype]
    out = {}
    for name in names:
        diff = {t: max_rel_diff(x, results[ref][t]) for t, x in results[name].items() if t in results[ref]}
        missing = set(results[ref]) - set(results[name])
        ok = not missing and all(d <= tolerance for d in diff.values())
        out[name] = {"ok": ok, "diff": diff, "tolerance": tolerance, "reference": ref}
    return out


def median(samples: Iterable[float]) -> float:
    values = [s for s in samples if math.isfinite(s)]
    return statistics.median(values) if values else math.nan


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: attncc's TFLOP/s over each baseline's (``None`` where either is missing),
    and whether the issue's goals hold: forward >= 1.0x SDPA flash and >= 1.1x FlexAttention,
    fwd+bwd >= 1.0x FlexAttention, at lengths >= 2K."""
    by_case: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["impl"]] = row
    out = []
    for label, impls in by_case.items():
        mine = impls.get("attncc")
        if mine is None:
            continue
        entry: dict[str, Any] = {"case": label, "mode": mine["mode"], "L": mine["L"]}
        for base in ("sdpa_flash", "sdpa_cudnn", "flex"):
            other = impls.get(base)
            ok = other is not None and _finite(mine.get("tflops")) and _finite(other.get("tflops"))
            entry[f"vs_{base}"] = mine["tflops"] / other["tflops"] if ok else None
        goals = {"fwd": {"vs_sdpa_flash": 1.0, "vs_flex": 1.1}, "fwdbwd": {"vs_flex": 1.0}}[mine["mode"]]
        if mine["L"] >= 2048:
            met = [entry[k] >= v for k, v in goals.items() if entry[k] is not None]
            entry["goal_met"] = all(met) if met else None
        else:
            entry["goal_met"] = None
        out.append(entry)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def default_json_path(gpu: str, mode: str, dtype: str) -> Path:
    return ROOT / "bench" / "results" / gpu_dir(gpu) / f"attention_{mode}_{dtype}.json"


def gpu_dir(gpu: str) -> str:
    """A directory name for a GPU name: ``"NVIDIA H200"`` -> ``"NVIDIA_H200"``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_") or "gpu"


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (non-finite floats as null), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(payload), indent=2) + "\n")
    return path


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return str(x) if isinstance(x, Path) else x


# --------------------------------------------------------------------------- GPU side


def mask_mod(case: Case, device: str) -> Callable[..., Any] | None:
    """The case's mask as a FlexAttention ``mask_mod`` (None for ``full``)."""
    if case.mask == "full":
        return None
    if case.mask == "causal":
        return lambda b, h, m, n: m >= n
    if case.mask == "sliding_window":
        return lambda b, h, m, n: (m >= n) & (m - n < WINDOW)
    if case.mask == "document":
        lengths = document_lengths(case.L)
        doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device=device,
                                                                                              dtype=torch.int32)
        return lambda b, h, m, n: doc[m] == doc[n]
    blocks = sparse_blocks(case.L).to(device)
    return lambda b, h, m, n: blocks[m // SPARSE_BLOCK, n // SPARSE_BLOCK]


def runners(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            impls: Sequence[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument forward calls of every implementation that supports the case."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    import attncc

    gqa = case.HK != case.H
    mod = mask_mod(case, "cuda")
    torch._dynamo.reset()  # a fresh compile per configuration, static shapes
    flex = torch.compile(flex_attention, dynamic=False)
    block_mask = None if mod is None else create_block_mask(mod, None, None, case.L, case.L, device="cuda")
    out: dict[str, Callable[[], torch.Tensor]] = {}
    if "attncc" in impls:
        out["attncc"] = lambda: attncc.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    if case.mask in SDPA_MASKS:
        for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
            if name in impls:
                def sdpa(backend: Any = backend) -> torch.Tensor:
                    with sdpa_kernel(backend):
                        return torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=case.mask == "causal", enable_gqa=gqa)
                out[name] = sdpa
    if "flex" in impls:
        out["flex"] = lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    return out


def attncc_config(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
    """The tile config attncc's drop-in picks for the call, and whether it is the default."""
    from attncc.runtime.compiled import compile_spec, spec_from_mods

    try:
        spec, _ = spec_from_mods(None, mask_mod(case, "cuda"), gqa=case.HK != case.H, name="flex")
        fn = compile_spec(spec)
        info: dict[str, Any] = {}
        for kind in ("fwd", "bwd") if case.mode == "fwdbwd" else ("fwd",):
            config = fn.config_for(kind, q, k, v)
            info[kind] = {"config": config, "default": config == fn.module.default_config(case.D, kind)}
        return info
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def _call(fn: Callable[[], torch.Tensor], case: Case, leaves: Sequence[torch.Tensor],
          do: torch.Tensor | None) -> Callable[[], Any]:
    if case.mode == "fwd":
        return fn
    return lambda: fn().backward(do)


def outputs_of(fn: Callable[[], torch.Tensor], case: Case, leaves: Sequence[torch.Tensor],
               do: torch.Tensor | None) -> dict[str, torch.Tensor]:
    for t in leaves:
        t.grad = None
    o = fn()
    out = {"o": o.detach().clone()}
    if case.mode == "fwdbwd":
        o.backward(do)
        out.update({n: t.grad.detach().clone() for n, t in zip(("dq", "dk", "dv"), leaves, strict=True)})
    return out


def first_call_ms(run: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def peak_bytes(run: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def measure(case: Case, args: argparse.Namespace) -> list[dict[str, Any]]:
    import triton.testing

    dtype = torch.float16 if case.dtype == "fp16" else torch.bfloat16
    grad = case.mode == "fwdbwd"
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(case.B, case.H, case.L, case.D, device="cuda", dtype=dtype, generator=g).requires_grad_(grad)
    k, v = (torch.randn(case.B, case.HK, case.L, case.D, device="cuda", dtype=dtype, generator=g).requires_grad_(grad)
            for _ in range(2))
    leaves = (q, k, v)
    do = torch.randn_like(q) if grad else None
    fns = runners(case, q, k, v, args.impls)
    base = {"case": case.label, **asdict(case)}
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, torch.Tensor]] = {}
    first: dict[str, float] = {}
    for name, fn in fns.items():
        try:
            run = _call(fn, case, leaves, do)
            first[name] = first_call_ms(lambda fn=fn: outputs_of(fn, case, leaves, do))  # compiles included
            results[name] = outputs_of(fn, case, leaves, do)
        except Exception as exc:  # noqa: BLE001 - a failing implementation is reported, not fatal
            rows.append({**base, "impl": name, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
    checks = check_outputs(results, case.dtype)
    for name in results:
        row: dict[str, Any] = {**base, "impl": name, "check": checks[name], "first_call_ms": first[name]}
        if name == "attncc":
            row["attncc_config"] = attncc_config(case, q, k, v)
        if checks[name]["ok"]:
            run = _call(fns[name], case, leaves, do)
            row["peak_bytes"] = peak_bytes(run)
            ms = float(triton.testing.do_bench(run, warmup=args.warmup, rep=args.rep, return_mode="median",
                                               grad_to_none=list(leaves) if grad else None))
            row["ms"] = ms
            row["tflops"] = flops(case) / ms / 1e9
        rows.append(row)
        shown = f"{row['tflops']:7.1f} TFLOP/s" if "tflops" in row else "output mismatch: not timed"
        print(f"{name:11s} {case.label}: {shown}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("attention_tflops.py needs a CUDA GPU (none found); no numbers were produced")
    gpu = torch.cuda.get_device_name()
    rows: list[dict[str, Any]] = []
    for case in shape_grid(args):
        rows += measure(case, args)
    mode = args.modes[0] if len(args.modes) == 1 else "all"
    dtype = args.dtypes[0] if len(args.dtypes) == 1 else "all"
    path = args.json or default_json_path(gpu, mode, dtype)
    payload = {"gpu": gpu, "torch": torch.__version__, "triton": _triton_version(), "args": vars(args),
               "rows": rows, "summary": summarize([r for r in rows if "tflops" in r])}
    print(f"wrote {write_json(path, payload)}")


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    main()
