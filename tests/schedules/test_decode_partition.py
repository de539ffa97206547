"""The stream-K decode partition against a brute-force walk over every tile, split-K and the wave
statistics on hand-computed cases, and the one-line errors of ``check_decode``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attncc.schedules.decode.partition import DecodeError, check_decode, slots, split_k, stream_k, wave_stats

UNIT_TILES = st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=40)
PROGRAMS = st.integers(min_value=1, max_value=200)


def _owners(tiles: list[int], prog_start: list[int]) -> tuple[list[int], list[int]]:
    """Brute force: for each global tile, the unit holding it and the program covering it."""
    unit_of = [u for u, n in enumerate(tiles) for _ in range(n)]
    prog_of: list[int] = []
    for p in range(len(prog_start) - 1):
        prog_of += [p] * (prog_start[p + 1] - prog_start[p])
    return unit_of, prog_of


def _partition(tiles: list[int], programs: int) -> dict[str, list[int]]:
    part = stream_k(torch.tensor(tiles, dtype=torch.int32), programs)
    for name, t in part.items():
        assert t.dtype == torch.int32, f"{name} is {t.dtype}"
    return {name: t.tolist() for name, t in part.items()}


@settings(max_examples=200, deadline=None)
@given(tiles=UNIT_TILES, programs=PROGRAMS)
def test_every_tile_is_covered_once_and_loads_differ_by_at_most_one(tiles: list[int], programs: int) -> None:
    part = _partition(tiles, programs)
    start = part["prog_start"]
    assert len(start) == programs + 1 and start[0] == 0 and start[-1] == sum(tiles), f"prog_start {start}"
    loads = [b - a for a, b in zip(start[:-1], start[1:], strict=True)]
    assert min(loads) >= 0, f"prog_start decreases: {start}"
    assert max(loads) - min(loads) <= 1, f"program loads {loads}"
    _, prog_of = _owners(tiles, start)
    assert prog_of == sorted(prog_of) and len(prog_of) == sum(tiles), "a tile is covered twice or not at all"
    assert part["unit_start"] == [sum(tiles[:u]) for u in range(len(tiles) + 1)], f"unit_start {part['unit_start']}"


@settings(max_examples=200, deadline=None)
@given(tiles=UNIT_TILES, programs=PROGRAMS)
def test_prog_unit_holds_each_programs_first_tile(tiles: list[int], programs: int) -> None:
    part = _partition(tiles, programs)
    unit_of, _ = _owners(tiles, part["prog_start"])
    start = part["prog_start"]
    for p in range(programs):
        if start[p + 1] > start[p]:
            assert part["prog_unit"][p] == unit_of[start[p]], f"prog_unit[{p}]"


def _pieces(tiles: list[int], prog_start: list[int]) -> set[tuple[int, int]]:
    unit_of, prog_of = _owners(tiles, prog_start)
    return set(zip(prog_of, unit_of, strict=True))


@settings(max_examples=200, deadline=None)
@given(tiles=UNIT_TILES, programs=PROGRAMS)
def test_units_first_and_last_programs_and_unique_slots(tiles: list[int], programs: int) -> None:
    part = _partition(tiles, programs)
    unit_of, prog_of = _owners(tiles, part["prog_start"])
    first, last = part["unit_first_prog"], part["unit_last_prog"]
    pieces = _pieces(tiles, part["prog_start"])
    for u, n in enumerate(tiles):
        if n == 0:
            assert last[u] < first[u], f"empty unit {u}: unit_first_prog {first[u]}, unit_last_prog {last[u]}"
            continue
        lo, hi = part["unit_start"][u], part["unit_start"][u + 1] - 1
        assert first[u] == prog_of[lo] and last[u] == prog_of[hi], f"unit {u}: first/last program"
        for p in range(first[u], last[u] + 1):  # the merge of unit u reads every slot p + u in this range
            assert (p, u) in pieces, f"unit {u}: program {p} lies in [{first[u]}, {last[u]}] but covers none of it"
    assert len(pieces) == sum(last[u] - first[u] + 1 for u, n in enumerate(tiles) if n), "pieces outside ranges"
    slot_ids = [p + u for p, u in pieces]
    assert len(set(slot_ids)) == len(slot_ids), "two (program, unit) pieces share a slot"
    assert all(0 <= s < slots(programs, len(tiles)) for s in slot_ids), "a slot beyond slots(P, U)"
    assert unit_of == sorted(unit_of)


def test_programs_must_be_positive() -> None:
    with pytest.raises(DecodeError, match="programs must be at least 1"):
        stream_k(torch.tensor([3]), 0)


@settings(max_examples=200, deadline=None)
@given(tiles=UNIT_TILES, splits=st.integers(min_value=1, max_value=64))
def test_split_k_cuts_each_unit_into_nearly_equal_runs(tiles: list[int], splits: int) -> None:
    runs = split_k(torch.tensor(tiles, dtype=torch.int64), splits).tolist()
    assert len(runs) == len(tiles) * splits, "split_k returns U * splits programs"
    for u, n in enumerate(tiles):
        mine = runs[u * splits:(u + 1) * splits]
        assert sum(mine) == n and max(mine) - min(mine) <= 1, f"unit {u} ({n} tiles): splits {mine}"


@pytest.mark.parametrize(("tiles", "sms", "waves", "max_tiles", "idle"), [
    pytest.param([4, 4, 4, 1], 2, 2, 4, 1 - 5 / 8, id="4441-on-2"),
    pytest.param([3, 3, 3], 3, 1, 3, 0.0, id="balanced-one-wave"),
    pytest.param([5, 1, 2], 2, 2, 5, 0.5, id="lone-last-program"),
    pytest.param([2, 6, 1, 1, 1], 4, 2, 6, 0.75, id="one-in-last-wave-of-4"),
    pytest.param([0, 0], 2, 1, 0, 0.0, id="no-work"),
])
def test_wave_stats_hand_computed(tiles: list[int], sms: int, waves: int, max_tiles: int, idle: float) -> None:
    got = wave_stats(torch.tensor(tiles), sms)
    assert (got["programs"], got["waves"], got["max_tiles"]) == (len(tiles), waves, max_tiles), got
    assert got["last_wave_idle"] == pytest.approx(idle), got


def _caches(B: int, H: int, L: int, D: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(B, 2 * H, 1, D), torch.zeros(B, H, L, D), torch.zeros(B, H, L, D)


def _paged(pages: int, page_size: int, table: list[list[int]]) -> tuple[torch.Tensor, ...]:
    q = torch.zeros(len(table), 2, 1, 4)
    k = torch.zeros(pages, 1, page_size, 4)
    return q, k, k.clone(), torch.tensor(table, dtype=torch.int32)


def _lens(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.int32)


def test_an_unused_block_table_entry_may_be_out_of_range() -> None:
    q, k, v, table = _paged(4, 16, [[3, 99], [0, 1]])  # sequence 0 uses one page only
    seqlens, paged = check_decode(q, k, v, _lens(16, 17), table)
    assert paged and seqlens.tolist() == [16, 17]


def test_contiguous_without_seqlens_fills_the_cache() -> None:
    seqlens, paged = check_decode(*_caches(3, 1, 77), None, None)
    assert not paged and seqlens.tolist() == [77, 77, 77] and seqlens.dtype == torch.int32


def _bad_cases() -> list[object]:
    q, k, v = _caches(2, 1, 64)
    pq, pk, pv, table = _paged(4, 16, [[3, 4], [0, 1]])
    return [
        pytest.param((pq, pk, pv, _lens(17, 20), table), r"block_table\[0, 1\] = 4 is outside the page pool",
                     id="page-beyond-pool"),
        pytest.param((pq, pk, pv, _lens(5, 20), torch.tensor([[-1, 0], [0, 1]], dtype=torch.int32)),
                     r"block_table\[0, 0\] = -1 is outside the page pool", id="negative-page"),
        pytest.param((q, k, v, _lens(64, 65), None), r"cache_seqlens\[1\] = 65 is beyond the cache \(64",
                     id="seqlen-beyond-contiguous"),
        pytest.param((pq, pk, pv, _lens(33, 20), table), r"cache_seqlens\[0\] = 33 is beyond the cache \(32",
                     id="seqlen-beyond-paged"),
        pytest.param((torch.zeros(2, 2, 5, 4), k, v, _lens(64, 4), None),
                     r"query length 5 is larger than sequence 1", id="lq-beyond-sequence"),
        pytest.param((q, k, torch.zeros(2, 1, 63, 4), None, None), r"k_cache .* and v_cache .* differ",
                     id="kv-shapes-differ"),
        pytest.param((pq, pk, torch.zeros(4, 1, 8, 4), _lens(5, 5), table), r"k_cache .* and v_cache .* differ",
                     id="page-sizes-differ"),
        pytest.param((pq, pk, pv, _lens(5, 5), table.to(torch.int64)), r"block_table must be an int32 tensor",
                     id="block-table-int64"),
        pytest.param((pq, pk, pv, _lens(5, 5), table[:1]), r"block_table has 1 rows for a batch of 2",
                     id="block-table-rows"),
        pytest.param((pq, pk, pv, None, table), r"a paged cache needs cache_seqlens", id="paged-without-seqlens"),
        pytest.param((q, k, v, torch.tensor([5, 5]), None), r"cache_seqlens must be an int32 tensor \[2\]",
                     id="seqlens-int64"),
        pytest.param((q, k[:1], v[:1], None, None), r"k_cache batch 1 != query batch 2", id="contiguous-batch"),
        pytest.param((q[0], k, v, None, None), r"query must be a 4-D tensor", id="query-3d"),
    ]


@pytest.mark.parametrize(("args", "match"), _bad_cases())
def test_check_decode_errors_are_one_line(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        check_decode(*args)
    assert "\n" not in str(info.value), str(info.value)
