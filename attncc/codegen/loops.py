"""Tile loops over the segments of a mask analysis, shared by every kernel of a schedule."""

from __future__ import annotations

from attncc.codegen.literals import comment_text
from attncc.codegen.printer import TritonPrinter
from attncc.ir import expr as E
from attncc.passes.mask_analysis import MaskAnalysis, Segment


def _segment_code(k: int, total: int, seg: Segment, pr: TritonPrinter, tile_call: str,
                  indent: str = "    ", var: str = "n0", block: str = "BLOCK_N", what: str = "keys") -> str:
    """Tile loops of one segment: masked edge tiles, mask-free full tiles, masked edge tiles."""
    lines = [f"# segment {k + 1} of {total}: {what} where {comment_text(str(seg.conjunct))}",
             f"#   visited {what}: [{comment_text(f'{seg.lo}, {seg.hi}')})",
             f"seg_lo = tl.maximum(({pr.p(seg.lo)}) // {block} * {block}, visited_end)",
             f"seg_end = tl.maximum(tl.cdiv({pr.p(seg.hi)}, {block}) * {block}, seg_lo)"]
    if seg.full_lo is None or seg.full_hi is None:
        lines += ["#   no tile is known to be full: every tile evaluates the mask",
                  f"for {var} in range(seg_lo, seg_end, {block}):",
                  f"    {tile_call.format(masked='True')}"]
    else:
        lines += [f"#   full (mask-free) tiles inside: [{comment_text(f'{seg.full_lo}, {seg.full_hi}')})",
                  f"full_lo = tl.minimum(tl.maximum(tl.cdiv({pr.p(seg.full_lo)}, {block}) * {block}, seg_lo), seg_end)",
                  f"full_hi = tl.maximum(tl.minimum(({pr.p(seg.full_hi)}) // {block} * {block}, seg_end), full_lo)"]
        for lo, hi, masked in (("seg_lo", "full_lo", "True"), ("full_lo", "full_hi", "False"),
                               ("full_hi", "seg_end", "True")):
            lines += [f"for {var} in range({lo}, {hi}, {block}):", f"    {tile_call.format(masked=masked)}"]
    lines.append("visited_end = seg_end")
    return "\n".join(indent + line for line in lines)


def segments_code(analysis: MaskAnalysis, pr: TritonPrinter, tile_call: str, indent: str = "    ",
              var: str = "n0", block: str = "BLOCK_N", what: str = "keys") -> str:
    segs = analysis.segments
    if not segs:
        return f"{indent}pass  # the mask is never true: no tile is visited"
    return "\n".join(_segment_code(i, len(segs), sg, pr, tile_call, indent, var, block, what)
                     for i, sg in enumerate(segs))


def tile_shaped(fn: str, expr: object, call_args: str) -> str:
    """A call of a score hook, broadcast to the tile when the expression does not involve it."""
    call = f"{fn}(s, {call_args})"
    if not ({E.score, E.m, E.n} & expr.free_symbols):  # type: ignore[attr-defined]
        return f"{call} + tl.zeros_like(s)"
    return call
