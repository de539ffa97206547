"""Print an iteration plan as the tile loops of a kernel: one emitter per plan kind.

:func:`emit_plan` is the only way a kernel's tile loop is written.  Each visited tile calls the
schedule's tile function (``tile_call``, with ``{masked}`` replaced by ``True`` or ``False``) and,
when the kernel is launched with ``LOG_TILES=True``, adds its weight (:data:`LOG_WEIGHTS`) to
``log_row[tile index]`` so that tests observe the tiles a kernel visits (the code is compiled
away when ``LOG_TILES`` is False).
"""

from __future__ import annotations

from collections.abc import Callable

from attncc.codegen.literals import comment_text
from attncc.codegen.printer import TritonPrinter
from attncc.passes.mask_analysis import KEYS, Segment
from attncc.passes.plans import BlockTablePlan, ChunkPlan, PagePlan, Plan, SegmentPlan

# What one visit adds to its tile's log entry: a tile visited once reads 1 (full) or 16 (masked).
LOG_WEIGHTS: dict[str, int] = {"full": 1, "masked": 16}


class Loop:
    """How one kernel prints its tile loop: loop variable, tile size, body and log row pointer."""

    def __init__(self, tile_call: str, var: str, block: str, log_row: str, indent: str = "    ") -> None:
        self.tile_call = tile_call
        self.var = var
        self.block = block
        self.log_row = log_row
        self.indent = indent

    def body(self, masked: bool) -> list[str]:
        weight = LOG_WEIGHTS["masked" if masked else "full"]
        return [f"    {self.tile_call.format(masked='True' if masked else 'False')}",
                "    if LOG_TILES:",
                f"        tl.atomic_add({self.log_row} + {self.var} // {self.block}, {weight})"]

    def for_range(self, lo: str, hi: str, masked: bool) -> list[str]:
        return [f"for {self.var} in range({lo}, {hi}, {self.block}):", *self.body(masked)]


def _segment(k: int, total: int, seg: Segment, swept: str, pr: TritonPrinter, loop: Loop) -> list[str]:
    """Tile loops of one segment: masked edge tiles, mask-free full tiles, masked edge tiles.

    The full range is floored to whole tiles and to ``whole_end`` (the last whole tile of the
    swept length), and starts at or after ``seg_lo >= 0``: every mask-free tile lies inside the
    sequence, so the kernels load it without bounds checks."""
    block = loop.block
    lines = [f"# segment {k + 1} of {total}: {swept} where {comment_text(str(seg.conjunct))}",
             f"#   visited {swept}: [{comment_text(f'{seg.lo}, {seg.hi}')})",
             f"seg_lo = tl.maximum(({pr.p(seg.lo)}) // {block} * {block}, visited_end)",
             f"seg_end = tl.maximum(tl.cdiv({pr.p(seg.hi)}, {block}) * {block}, seg_lo)"]
    if seg.full_lo is None or seg.full_hi is None:
        lines += ["#   no tile is known to be full: every tile evaluates the mask",
                  *loop.for_range("seg_lo", "seg_end", True)]
    else:
        lines += [f"#   full (mask-free) tiles inside: [{comment_text(f'{seg.full_lo}, {seg.full_hi}')})",
                  f"full_lo = tl.minimum(tl.maximum(tl.cdiv({pr.p(seg.full_lo)}, {block}) * {block}, seg_lo), seg_end)",
                  f"full_hi = tl.maximum(tl.minimum(tl.minimum(({pr.p(seg.full_hi)}) // {block} * {block}, seg_end), whole_end), "
                  "full_lo)"]
        for lo, hi, masked in (("seg_lo", "full_lo", True), ("full_lo", "full_hi", False),
                               ("full_hi", "seg_end", True)):
            lines += loop.for_range(lo, hi, masked)
    lines.append("visited_end = seg_end")
    return lines


def _emit_segments(plan: SegmentPlan, pr: TritonPrinter, loop: Loop) -> list[str]:
    segs = plan.segments
    if not segs:
        return ["pass  # the mask is never true: no tile is visited"]
    extent = "N" if plan.direction == KEYS else "M"
    lines = [f"visited_end = tl.full([], 0, tl.int32)  # {plan.swept[:-1]} tiles below this were swept by an earlier segment",
             f"whole_end = {extent} // {loop.block} * {loop.block}  # mask-free tiles end here: they carry no bounds check"]
    for i, seg in enumerate(segs):
        lines += _segment(i, len(segs), seg, plan.swept, pr, loop)
    return lines


# Kernel parameters of a block-table plan (the kernel's own orientation: rows are the program's
# tiles, columns the swept ones); attncc.codegen.launch.table_args packs them on the host.
TABLE_PARAMS = ("TBL_NUM, TBL_IDX, TBL_FULL_NUM, TBL_FULL_IDX, tbl_num_sb, tbl_num_sh, tbl_idx_sb, tbl_idx_sh, "
                "tbl_cols, TBL_ROW: tl.constexpr, TBL_COL: tl.constexpr,")


def _emit_block_table(plan: BlockTablePlan, pr: TritonPrinter, loop: Loop) -> list[str]:
    """Partial blocks (mask on), then full blocks (mask off except a tail past the last whole tile:
    the mask-free range of a block ends at ``whole_end``, so those tiles lie inside the sequence)."""
    first, extent = ("m_first", "N") if plan.direction == KEYS else ("n_first", "M")
    names = plan.tables
    lines = [f"# block table: {names[0]}/{names[1]} (partial) and {names[2]}/{names[3]} (full), "
             f"rows of TBL_ROW, blocks of TBL_COL {plan.swept}",
             f"tbl_row = {first} // TBL_ROW",
             "tbl_num = off_b * tbl_num_sb + off_h * tbl_num_sh + tbl_row",
             "tbl_idx = off_b * tbl_idx_sb + off_h * tbl_idx_sh + tbl_row * tbl_cols",
             f"whole_end = {extent} // {loop.block} * {loop.block}  # tiles below this lie inside the {plan.swept}"]
    for count, index, full in (("TBL_NUM", "TBL_IDX", False), ("TBL_FULL_NUM", "TBL_FULL_IDX", True)):
        lines += [f"for tbl_j in range(0, tl.load({count} + tbl_num)):",
                  f"    blk_lo = tl.load({index} + tbl_idx + tbl_j) * TBL_COL",
                  f"    blk_hi = tl.minimum(blk_lo + TBL_COL, {extent})"]
        inner = loop.for_range("blk_lo", "tl.minimum(blk_hi, tl.maximum(whole_end, blk_lo))" if full else "blk_hi",
                               not full)
        if full:
            inner += loop.for_range("tl.minimum(tl.maximum(whole_end, blk_lo), blk_hi)", "blk_hi", True)
        lines += ["    " + line for line in inner]
    return lines


def _emit_pages(plan: PagePlan, pr: TritonPrinter, loop: Loop) -> list[str]:
    """Stream-K units of one (sequence, key/value head): per key segment, its tile range hulled over
    the group's query heads (``off_h``), and the mask-free range common to all of them (keys
    inside the cache and, with ``AT_END``, at or before every query row), stored as ``UNITS[unit, s] = (lo, end, full_lo,
    full_hi)`` key positions, multiples of ``{block}`` (``loop.block``)."""
    block, segs = loop.block, plan.segments
    lines = ["visited_end = tl.full([], 0, tl.int32)  # keys below this belong to an earlier unit",
             f"kv_end = tl.cdiv(N, {block}) * {block}",
             f"causal_full = tl.where(AT_END != 0, (m_first + 1) // {block} * {block}, N // {block} * {block})"
             "  # keys every query row sees"]
    for k, seg in enumerate(segs):
        has_full = seg.full_lo is not None and seg.full_hi is not None
        lines += [f"# unit {k + 1} of {len(segs)}: keys where {comment_text(str(seg.conjunct))}",
                  f"#   keys [{comment_text(f'{seg.lo}, {seg.hi}')})"
                  + (f", mask-free [{comment_text(f'{seg.full_lo}, {seg.full_hi}')})" if has_full else
                     ", no key known mask-free"),
                  "u_lo = tl.full([], 2147483647, tl.int32)",
                  "u_hi = tl.full([], -2147483647, tl.int32)",
                  "f_lo = tl.full([], -2147483647, tl.int32)",
                  "f_hi = tl.full([], 2147483647, tl.int32)" if has_full else "f_hi = tl.full([], -2147483647, tl.int32)",
                  "for g in range(0, G):  # the query heads of this key/value head",
                  "    off_h = off_hk * G + g",
                  f"    u_lo = tl.minimum(u_lo, {pr.p(seg.lo)})",
                  f"    u_hi = tl.maximum(u_hi, {pr.p(seg.hi)})"]
        if has_full:
            lines += [f"    f_lo = tl.maximum(f_lo, {pr.p(seg.full_lo)})",
                      f"    f_hi = tl.minimum(f_hi, {pr.p(seg.full_hi)})"]
        lines += [f"seg_lo = tl.minimum(tl.maximum((u_lo // {block}) * {block}, visited_end), kv_end)",
                  f"seg_end = tl.maximum(tl.minimum(tl.cdiv(u_hi, {block}) * {block}, kv_end), seg_lo)",
                  f"full_lo = tl.minimum(tl.maximum(tl.cdiv(f_lo, {block}) * {block}, seg_lo), seg_end)",
                  f"full_hi = tl.maximum(tl.minimum(tl.minimum(f_hi // {block} * {block}, seg_end), causal_full), full_lo)",
                  f"tl.store(UNITS + (pid * {len(segs)} + {k}) * 4 + 0, seg_lo)",
                  f"tl.store(UNITS + (pid * {len(segs)} + {k}) * 4 + 1, seg_end)",
                  f"tl.store(UNITS + (pid * {len(segs)} + {k}) * 4 + 2, full_lo)",
                  f"tl.store(UNITS + (pid * {len(segs)} + {k}) * 4 + 3, full_hi)",
                  "visited_end = seg_end"]
    if not segs:
        lines.append("pass  # the mask is never true: no unit has keys")
    return lines


def _emit_chunks(plan: ChunkPlan, pr: TritonPrinter, loop: Loop) -> list[str]:
    """The chunk sweep is fixed in the recurrence templates: this prints its description (a comment)."""
    order = "last to first" if plan.reverse else "first to last"
    return [f"# tokens swept {order}, {loop.block} at a time; the state is carried between chunks in fp32"]


EMITTERS: dict[str, Callable[..., list[str]]] = {SegmentPlan.kind: _emit_segments, ChunkPlan.kind: _emit_chunks,
                                                 BlockTablePlan.kind: _emit_block_table,
                                                 PagePlan.kind: _emit_pages}


def plan_params(plan: Plan) -> str:
    """Extra kernel parameters a plan kind needs (text for the kernel's signature)."""
    return f"\n             {TABLE_PARAMS}" if plan.kind == BlockTablePlan.kind else ""


def emit_plan(plan: Plan, pr: TritonPrinter, loop: Loop) -> str:
    """The tile loops of ``plan``; bounds are printed by ``pr`` (which names the row tile's bounds)."""
    emitter = EMITTERS.get(plan.kind)
    if emitter is None:
        raise ValueError(f"no emitter for plan kind {plan.kind!r}")
    return "\n".join(loop.indent + line for line in emitter(plan, pr, loop))
