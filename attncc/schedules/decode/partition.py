"""Stream-K partition of decode work, and the checks of a decode call, written once.

Decode work is a list of *units*, one per (batch, key/value head, key segment of the mask), each
a run of key tiles; units are numbered ``u = (b * HK + hk) * S + s``.  :func:`stream_k` lays every
unit's tiles end to end and cuts the line into ``programs`` runs whose lengths differ by at most
one tile (LeanAttention): program ``p`` covers global tiles ``[prog_start[p], prog_start[p + 1])``
and so may finish one unit and start the next.  Program ``p`` writes one partial softmax state per
unit ``u`` it touches, at slot ``p + u``: along the walk, each step moves to the next program, the
next unit, or both, so ``p + u`` strictly increases and no two pieces share a slot
(:func:`slots` is ``programs + units``).  The merge kernel of unit ``u`` reads slots ``p + u`` for
``p`` in ``[unit_first_prog[u], unit_last_prog[u]]``.

Everything runs as torch operations on the tensors' device (no host synchronisation), so a new
``cache_seqlens`` or ``block_table`` needs no recompilation and no copy to the host.

This file is used twice, like :mod:`attncc.codegen.launch`: imported by attncc (``explain
--decode``, the tests), and emitted as text into each generated decode module by the
``{{PARTITION}}`` hook, so it imports only ``torch`` and reads no module globals.
"""
import torch


class DecodeError(ValueError):
    """A decode argument the kernels cannot take (one-line message naming the argument)."""


def stream_k(unit_tiles: torch.Tensor, programs: int) -> dict:
    """The stream-K partition of ``unit_tiles [U]`` (int, >= 0) over ``programs`` programs.

    Returns int32 tensors on ``unit_tiles``' device: ``unit_start [U + 1]`` (first global tile of
    each unit; the last entry is the total ``T``), ``prog_start [P + 1]`` (the first ``T % P``
    programs take ``T // P + 1`` tiles, the rest ``T // P``, so empty programs come last),
    ``prog_unit [P]`` (the unit holding program ``p``'s first tile; for an empty program, any),
    ``unit_first_prog [U]`` and ``unit_last_prog [U]`` (the programs covering a non-empty unit's
    first and last tile; ``last < first`` for an empty unit).
    """
    if programs < 1:
        raise DecodeError(f"programs must be at least 1, got {programs}")
    tiles = unit_tiles.to(torch.int64).reshape(-1)
    unit_start = torch.zeros(tiles.numel() + 1, dtype=torch.int64, device=tiles.device)
    unit_start[1:] = torch.cumsum(tiles, 0)
    total = unit_start[-1]
    steps = torch.arange(programs + 1, dtype=torch.int64, device=tiles.device)
    prog_start = steps * (total // programs) + torch.minimum(steps, total % programs)
    prog_unit = torch.searchsorted(unit_start, prog_start[:-1], right=True) - 1
    prog_unit = prog_unit.clamp(max=max(tiles.numel() - 1, 0))
    first = torch.searchsorted(prog_start, unit_start[:-1], right=True) - 1
    last = torch.searchsorted(prog_start, unit_start[1:] - 1, right=True) - 1
    last = torch.where(tiles > 0, last, first - 1)
    return {"unit_start": unit_start.to(torch.int32), "prog_start": prog_start.to(torch.int32),
            "prog_unit": prog_unit.to(torch.int32), "unit_first_prog": first.clamp(min=0).to(torch.int32),
            "unit_last_prog": last.to(torch.int32)}


def slots(programs: int, units: int) -> int:
    """Partial-state slots a partition of ``units`` units over ``programs`` programs writes into."""
    return programs + units


def split_k(unit_tiles: torch.Tensor, splits: int) -> torch.Tensor:
    """Plain split-K (a fixed number of splits per unit, as FlexAttention's decode): the tiles of
    each of the ``U * splits`` programs, ``[U * splits]`` (unit ``u``'s tiles cut in ``splits``
    nearly equal runs)."""
    tiles = unit_tiles.to(torch.int64).reshape(-1, 1)
    k = torch.arange(splits + 1, dtype=torch.int64, device=tiles.device).view(1, -1)
    bounds = tiles * k // splits
    return (bounds[:, 1:] - bounds[:, :-1]).reshape(-1)


def wave_stats(program_tiles: torch.Tensor, sms: int) -> dict:
    """Balance of programs with ``program_tiles`` tiles each, run ``sms`` at a time in launch
    order: the most tiles of one program, and the idle fraction of the last wave (the share of
    its SM-time spent waiting for its longest program)."""
    t = program_tiles.to(torch.int64).reshape(-1)
    waves = -(-t.numel() // sms)
    last = t[(waves - 1) * sms:]
    busy = int(last.sum())
    span = int(last.max()) * sms if last.numel() else 0
    return {"programs": int(t.numel()), "waves": waves, "max_tiles": int(t.max()) if t.numel() else 0,
            "last_wave_idle": 1.0 - busy / span if span else 0.0}


def check_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: object,
                 block_table: object, values: bool = True) -> tuple:
    """Checks of a decode call; returns ``(seqlens [B] int32, paged)``.

    q ``[B, Hq, Lq, D]``; contiguous caches ``[B, Hkv, Lmax, D]`` (``block_table`` None) or paged
    ``[num_pages, Hkv, page_size, D]`` with ``block_table [B, pages_per_seq]`` int32;
    ``cache_seqlens [B]`` int32 (None: every sequence fills the cache, contiguous only).
    Host synchronisation: only to check the lengths and page ids are in range, which ``values``
    False skips (shapes and dtypes are still checked; lengths or pages out of range then read
    outside the cache).
    """
    for label, t in (("query", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise DecodeError(f"{label} must be a 4-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    B, Lq = q.shape[0], q.shape[2]
    paged = block_table is not None
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise DecodeError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in "
                          "pages/batch, heads or length")
    if paged:
        if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2:
            raise DecodeError("block_table must be an int32 tensor [B, pages_per_seq]")
        if block_table.shape[0] != B:
            raise DecodeError(f"block_table has {block_table.shape[0]} rows for a batch of {B}")
        capacity = block_table.shape[1] * k_cache.shape[2]
    else:
        if k_cache.shape[0] != B:
            raise DecodeError(f"k_cache batch {k_cache.shape[0]} != query batch {B} (paged caches need block_table)")
        capacity = k_cache.shape[2]
    if cache_seqlens is None:
        if paged:
            raise DecodeError("a paged cache needs cache_seqlens")
        seqlens = torch.full((B,), capacity, dtype=torch.int32, device=q.device)
    else:
        if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32 or \
                tuple(cache_seqlens.shape) != (B,):
            raise DecodeError(f"cache_seqlens must be an int32 tensor [{B}]")
        seqlens = cache_seqlens
    if not values:
        return seqlens, paged
    _check_lengths(seqlens, Lq, capacity)
    if paged:
        _check_pages(block_table, seqlens, k_cache.shape[0], k_cache.shape[2])
    return seqlens, paged


def _check_lengths(seqlens: torch.Tensor, Lq: int, capacity: int) -> None:
    lo, hi = int(seqlens.min()), int(seqlens.max())
    if hi > capacity:
        b = int(torch.argmax(seqlens))
        raise DecodeError(f"cache_seqlens[{b}] = {hi} is beyond the cache ({capacity} positions)")
    if lo < Lq:
        b = int(torch.argmin(seqlens))
        raise DecodeError(f"query length {Lq} is larger than sequence {b} (cache_seqlens[{b}] = {lo}); "
                          "the queries are the last Lq positions of each sequence")


def _check_pages(block_table: torch.Tensor, seqlens: torch.Tensor, num_pages: int, page_size: int) -> None:
    """The pages each sequence uses (the first ceil(len / page_size) entries) are in the pool."""
    used = torch.arange(block_table.shape[1], device=block_table.device).view(1, -1) * page_size < \
        seqlens.view(-1, 1).to(block_table.device)
    bad = used & ((block_table < 0) | (block_table >= num_pages))
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise DecodeError(f"block_table[{b}, {j}] = {int(block_table[b, j])} is outside the page pool "
                          f"(0..{num_pages - 1})")
