"""GPU benchmark: decode attention's achieved HBM bandwidth, attncc vs torch SDPA and FlexAttention.

One new query token (``--query-len``) per sequence against a KV cache of 4K..512K positions
(``--contexts``), batch 1 and 16 (``--batches``), GQA 8:1 (Hq=32, Hkv=4), head dim 128, bf16,
plus a skewed batch (lengths 128, 128, 128, 32768 in one cache, given as ``cache_seqlens``).
Bandwidth = bytes of K and V read (sum over sequences of len * Hkv * D * 2 tensors * 2 bytes)
/ median time of ``--reps`` runs (torch.cuda.Event, after ``--warmup`` runs; the L2 cache is
flushed before each run), and its fraction of ``--peak-gbps`` (4800 GB/s: H200 HBM3e).

- attncc: ``attncc.load("causal").decode(q, k_cache, v_cache, cache_seqlens=..., check_values=False)``.
- sdpa: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` (backend chosen by torch); on
  the skewed batch, one call per sequence on its own keys (SDPA takes no per-sequence lengths).
- flex: ``torch.compile(flex_attention)`` with a block mask keeping ``kv_idx < length`` (its
  decode path serves short queries); skipped with a message if it does not compile.

A measurement that runs out of memory is skipped with a message.  Needs a CUDA GPU; exits with a
message otherwise.  Usage: python bench/decode_bandwidth.py [--contexts 4096,32768] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SKEWED = (128, 128, 128, 32768)
ELEMENT_BYTES = 2  # bf16


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated integers") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': values must be positive")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=_ints, default=[4096, 32768, 131072, 524288], help="cache lengths")
    ap.add_argument("--batches", type=_ints, default=[1, 16], help="batch sizes")
    ap.add_argument("--hq", type=int, default=32, help="query heads")
    ap.add_argument("--hkv", type=int, default=4, help="key/value heads")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--query-len", type=int, default=1, help="new queries per sequence (last positions, causal)")
    ap.add_argument("--peak-gbps", type=float, default=4800.0, help="peak HBM bandwidth in GB/s (H200: 4800)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="timed runs; the median is reported")
    ap.add_argument("--no-skewed", action="store_true", help="leave out the skewed batch")
    ap.add_argument("--no-flex", action="store_true", help="leave out FlexAttention")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    return ap.parse_args(argv)


def kv_bytes(lengths: list[int], hkv: int, d: int) -> int:
    """Bytes of K and V a decode step must read: every cached position once, both tensors."""
    return sum(lengths) * hkv * d * 2 * ELEMENT_BYTES


def time_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    """Median milliseconds of ``reps`` runs of ``fn``, each after an L2 flush, timed with CUDA events."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    Lq, Lk = q.shape[2], k.shape[2]
    if Lq == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Lq, Lk), enable_gqa=True)


def _flex_runner(flex: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 lengths: list[int]) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask

    B, Lq, Lmax = q.shape[0], q.shape[2], k.shape[2]
    lens = torch.tensor(lengths, device="cuda")

    def keep(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:  # the last Lq positions, causal among themselves
        return kv_idx <= lens[b] - Lq + q_idx

    mask = create_block_mask(keep, B, None, Lq, Lmax, device="cuda")
    return lambda: flex(q, k, v, block_mask=mask, enable_gqa=True)


def runners(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int],
            flex: Any) -> dict[str, Callable[[], torch.Tensor]]:
    import attncc

    seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    fn = attncc.load("causal")
    fn.decode(q, k, v, cache_seqlens=seqlens)  # validated once; the timed calls skip the host checks
    out: dict[str, Callable[[], torch.Tensor]] = {
        "attncc": lambda: fn.decode(q, k, v, cache_seqlens=seqlens, check_values=False)}
    if all(n == k.shape[2] for n in lengths):
        out["sdpa"] = lambda: _sdpa(q, k, v)
    else:
        def per_sequence() -> torch.Tensor:
            return torch.cat([_sdpa(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]) for b, n in enumerate(lengths)])
        out["sdpa"] = per_sequence
    if flex is not None:
        try:
            out["flex"] = _flex_runner(flex, q, k, v, lengths)
        except Exception as exc:  # noqa: BLE001 - FlexAttention is an optional baseline
            print(f"flex: no block mask for {len(lengths)} sequence(s) up to {max(lengths)}: "
                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return out


def measure(case: str, lengths: list[int], args: argparse.Namespace, flex: Any) -> list[dict[str, Any]]:
    """Every implementation on one batch; a row per implementation that ran."""
    B, Lmax, D = len(lengths), max(lengths), args.head_dim
    try:
        q = torch.randn(B, args.hq, args.query_len, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, args.hkv, Lmax, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    except torch.cuda.OutOfMemoryError:
        print(f"{case}: skipped, the caches ({2 * B * args.hkv * Lmax * D * ELEMENT_BYTES / 2**30:.1f} GiB) "
              "do not fit", file=sys.stderr)
        return []
    nbytes = kv_bytes(lengths, args.hkv, D)
    rows, reference = [], None
    for impl, fn in runners(q, k, v, lengths, flex).items():
        try:
            result = fn()
            ms = time_ms(fn, args.warmup, args.reps)
        except torch.cuda.OutOfMemoryError:
            print(f"{case} {impl}: skipped, out of memory", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        except Exception as exc:  # noqa: BLE001 - a failing implementation is reported, not fatal
            print(f"{case} {impl}: failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                  file=sys.stderr)
            continue
        reference = result.float() if impl == "sdpa" else reference
        gbps = nbytes / ms / 1e6
        rows.append({"case": case, "B": B, "lengths": lengths if len(set(lengths)) > 1 else Lmax, "impl": impl,
                     "ms": ms, "kv_bytes": nbytes, "gbps": gbps, "fraction_of_peak": gbps / args.peak_gbps,
                     "_out": result})
    for row in rows:  # agreement with SDPA, so a fast wrong kernel shows
        out = row.pop("_out")
        row["max_abs_diff_vs_sdpa"] = None if reference is None else float((out.float() - reference).abs().max())
    del q, k, v
    torch.cuda.empty_cache()
    return rows


def compile_flex() -> Any:
    try:
        from torch.nn.attention.flex_attention import flex_attention

        return torch.compile(flex_attention, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - FlexAttention is an optional baseline
        print(f"flex: skipped, {str(exc).splitlines()[0]}", file=sys.stderr)
        return None


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':22s} {'B':>3s} {'impl':7s} {'ms':>9s} {'GB/s':>8s} {'% peak':>7s} {'max|diff|':>10s}")
    for r in rows:
        diff = "-" if r["max_abs_diff_vs_sdpa"] is None else f"{r['max_abs_diff_vs_sdpa']:.2e}"
        print(f"{r['case']:22s} {r['B']:3d} {r['impl']:7s} {r['ms']:9.4f} {r['gbps']:8.1f} "
              f"{100 * r['fraction_of_peak']:6.1f}% {diff:>10s}")
    skewed = {r["impl"]: r["ms"] for r in rows if r["case"] == "skewed"}
    if "attncc" in skewed and "flex" in skewed:
        print(f"skewed batch: attncc {skewed['flex'] / skewed['attncc']:.2f}x FlexAttention")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("decode_bandwidth.py needs a CUDA GPU (none found); no numbers were produced")
    flex = None if args.no_flex else compile_flex()
    cases = [(f"ctx={L}", [L] * B) for B in args.batches for L in args.contexts]
    if not args.no_skewed:
        cases.append(("skewed", list(SKEWED)))
    rows: list[dict[str, Any]] = []
    for case, lengths in cases:
        rows += measure(case, lengths, args, flex)
        if flex is not None and not any(r["impl"] == "flex" for r in rows if r["case"] == case):
            print(f"{case}: no FlexAttention number (see the message above)", file=sys.stderr)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Hq={args.hq} Hkv={args.hkv} "
          f"D={args.head_dim} Lq={args.query_len} bf16, peak {args.peak_gbps:g} GB/s")
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "peak_gbps": args.peak_gbps, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
