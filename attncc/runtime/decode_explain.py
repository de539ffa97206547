"""``attncc explain --decode LENGTHS``: the stream-K partition of a decode batch, next to plain split-K.

A CPU-side computation of who covers which key tiles (:mod:`attncc.schedules.decode.partition`);
no kernel runs and nothing is timed.  The balance figures are tile counts: the most tiles one
program covers, and the idle fraction of the last wave when the programs run ``programs`` at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attncc.errors import InputError
from attncc.passes.lowered import Lowered
from attncc.passes.plans import tile_env
from attncc.schedules.decode.partition import split_k, stream_k, wave_stats

MAX_SEQUENCES = 1 << 16
MAX_PROGRAMS = 1 << 20
MAX_TILES = 2**31 - 1  # the partition's tensors are int32
SHOWN_PROGRAMS = 6
SPLIT_RULE = "splits = max(1, programs // units), the same fixed count for every unit (FlexAttention-style)"
NOTE = "tile counts from a CPU-side partition computation, not a timing"


def parse_ints(text: str, option: str, count: int | None = None) -> list[int]:
    """``"128,128,32768"`` as positive integers; one-line :class:`InputError` naming ``option`` otherwise."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"{option} '{text}': expected comma-separated integers") from None
    if count is not None and len(values) != count:
        raise InputError(f"{option} '{text}': expected {count} integers, got {len(values)}")
    if min(values) < 1 or max(values) > MAX_TILES:
        raise InputError(f"{option} '{text}': every value must be between 1 and {MAX_TILES}")
    return values


def unit_tiles(lengths: Sequence[int], hkv: int, block_n: int) -> torch.Tensor:
    """Key tiles of each unit ``u = b * hkv + hk``, ``[len(lengths) * hkv]`` int64: one key segment
    per unit, ``cdiv(length, block_n)`` tiles (every key of the sequence; the queries are its last
    positions)."""
    per_seq = -(-torch.tensor(list(lengths), dtype=torch.int64) // block_n)
    return per_seq.repeat_interleave(hkv)


def spec_unit_tiles(low: Lowered, lengths: Sequence[int], heads: tuple[int, int], block_n: int, query_len: int,
                    params: Mapping[str, Any]) -> torch.Tensor:
    """Key tiles of each unit ``u = (b * hkv + hk) * S + s`` of a spec's decode plan (the key
    segments of its mask for the last ``query_len`` positions, hulled over each GQA group),
    ``[len(lengths) * hkv * S]`` int64: what the decode kernels visit."""
    plan = low.plan(low.schedule.kernels[0].name)  # every decode kernel follows the pages plan
    hq, hkv = heads
    group = hq // hkv
    values = {p.symbol: params.get(p.name, p.default) for p in low.variant.params}
    out = []
    for b, L in enumerate(lengths):
        sizes = {"B": len(lengths), "H": hq, "HK": hkv, "M": L, "N": L, "D": 64, "E": 64}
        for hk in range(hkv):
            envs = [tile_env(plan, sizes, values, L - query_len, L - 1, b, hk * group + g) for g in range(group)]
            out += [(end - lo) // block_n for lo, end, _, _ in plan.units(envs, block_n)]
    return torch.tensor(out, dtype=torch.int64)


def _check(lengths: Sequence[int], heads: tuple[int, int], block_n: int, programs: int, query_len: int) -> None:
    hq, hkv = heads
    for name, value in (("--heads HQ", hq), ("--heads HKV", hkv), ("--block-n", block_n),
                        ("--programs", programs), ("--query-len", query_len)):
        if value < 1:
            raise InputError(f"{name} must be a positive integer, got {value}")
    if not lengths or min(lengths) < 1:
        raise InputError("--decode needs positive sequence lengths")
    if len(lengths) > MAX_SEQUENCES or programs > MAX_PROGRAMS:
        raise InputError(f"--decode takes at most {MAX_SEQUENCES} sequences and --programs at most {MAX_PROGRAMS}")
    if hq % hkv:
        raise InputError(f"--heads {hq},{hkv}: query heads must be a multiple of key/value heads")
    if query_len > min(lengths):
        b = list(lengths).index(min(lengths))
        raise InputError(f"--query-len {query_len} is larger than sequence {b} (length {lengths[b]}); "
                         "the queries are the last positions of each sequence")


def _balance(program_tiles: torch.Tensor, sms: int) -> dict[str, Any]:
    stats = wave_stats(program_tiles, sms)
    stats["min_tiles"] = int(program_tiles.min())
    return stats


def _spans(tiles: torch.Tensor, part: dict[str, torch.Tensor], hkv: int, segments: int = 1) -> dict[str, Any]:
    """Which units each program covers: the count for every program, the detail for the first few."""
    start, ustart = part["prog_start"].to(torch.int64), part["unit_start"].to(torch.int64)
    first, last = part["unit_first_prog"].to(torch.int64), part["unit_last_prog"].to(torch.int64)
    programs = start.numel() - 1
    nonempty = tiles > 0
    count = torch.zeros(programs + 1, dtype=torch.int64)
    count.index_add_(0, first[nonempty], torch.ones_like(first[nonempty]))
    count.index_add_(0, last[nonempty] + 1, -torch.ones_like(last[nonempty]))
    per_program = torch.cumsum(count, 0)[:programs]
    shown = []
    for p in range(min(programs, SHOWN_PROGRAMS)):
        lo, hi = int(start[p]), int(start[p + 1])
        pieces = []
        if hi > lo:
            for u in range(int(part["prog_unit"][p]), int(torch.searchsorted(ustart, hi - 1, right=True))):
                a, b = max(lo, int(ustart[u])), min(hi, int(ustart[u + 1]))
                if b > a:
                    pieces.append({"b": u // (hkv * segments), "hkv": u // segments % hkv, "segment": u % segments,
                                   "tiles": [a - int(ustart[u]), b - int(ustart[u])]})
        shown.append({"program": p, "tiles": hi - lo, "units": pieces})
    return {"max_units_per_program": int(per_program.max()), "first_programs": shown}


def decode_partition(lengths: Sequence[int], heads: tuple[int, int] = (8, 1), block_n: int = 64,
                     programs: int = 132, query_len: int = 1, low: Lowered | None = None,
                     params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Stream-K over ``programs`` programs and fixed split-K for a batch of sequence ``lengths``:
    tiles per program, the units programs span, and the balance of each on ``programs`` SMs.
    With ``low`` (a spec's decode lowering) the units are its mask's key segments
    (:func:`spec_unit_tiles`), else one segment of every key per (sequence, kv head)."""
    _check(lengths, heads, block_n, programs, query_len)
    segments = 1 if low is None else len(low.plan(low.schedule.kernels[0].name).segments)
    tiles = (unit_tiles(lengths, heads[1], block_n) if low is None
             else spec_unit_tiles(low, lengths, heads, block_n, query_len, params or {}))
    total = int(tiles.sum())
    if total > MAX_TILES:
        raise InputError(f"--decode: {total} key tiles in all is more than {MAX_TILES} (int32 indices)")
    part = stream_k(tiles, programs)
    units = tiles.numel()
    splits = max(1, programs // units)
    return {
        "note": NOTE, "lengths": list(lengths), "heads": {"q": heads[0], "kv": heads[1]},
        "group_rows": heads[0] // heads[1] * query_len, "query_len": query_len, "block_n": block_n,
        "units": units, "segments_per_unit_pair": segments, "total_tiles": total,
        "stream_k": {"programs": programs, **_balance(part["prog_start"].diff(), programs),
                     **_spans(tiles, part, heads[1], segments)},
        "split_k": {"splits_per_unit": splits, "rule": SPLIT_RULE, **_balance(split_k(tiles, splits), programs)},
    }


def _piece(x: dict[str, Any]) -> str:
    seg = f",s{x['segment']}" if x.get("segment") else ""
    return f"(b{x['b']},h{x['hkv']}{seg})[{x['tiles'][0]}:{x['tiles'][1]}]"


def format_decode(info: dict[str, Any]) -> str:
    """The text form of :func:`decode_partition`'s result."""
    sk, sp = info["stream_k"], info["split_k"]
    lines = [f"Decode partition ({info['note']}):",
             f"  {len(info['lengths'])} sequence(s) x {info['heads']['kv']} kv head(s) = {info['units']} units, "
             f"BLOCK_N={info['block_n']}, {info['total_tiles']} key tiles; GQA {info['heads']['q']}:"
             f"{info['heads']['kv']} x Lq {info['query_len']} = {info['group_rows']} query rows per unit",
             f"  stream-K: {sk['programs']} programs, tiles per program {sk['min_tiles']}..{sk['max_tiles']}, "
             f"at most {sk['max_units_per_program']} unit(s) per program"]
    for p in sk["first_programs"]:
        lines.append(f"    program {p['program']}: {p['tiles']} tiles "
                     f"{' '.join(_piece(x) for x in p['units']) or '(none)'}")
    if sk["programs"] > len(sk["first_programs"]):
        lines.append(f"    ... ({sk['programs'] - len(sk['first_programs'])} more)")
    lines.append(f"  split-K: {sp['splits_per_unit']} split(s) per unit ({sp['rule']}): {sp['programs']} programs, "
                 f"tiles per program {sp['min_tiles']}..{sp['max_tiles']}")
    lines.append(f"  on {sk['programs']} SMs: max tiles per program stream-K {sk['max_tiles']} vs split-K "
                 f"{sp['max_tiles']}; last-wave idle stream-K {sk['last_wave_idle']:.1%} ({sk['waves']} wave(s)) "
                 f"vs split-K {sp['last_wave_idle']:.1%} ({sp['waves']} wave(s))")
    return "\n".join(lines)
