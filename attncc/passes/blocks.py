"""Block tables: which (query tile, key tile) pairs hold an unmasked element, and which are full.

A tile is ``EMPTY`` (0) when the mask is false at every element inside the lengths
(``m < M``, ``n < N``), ``FULL`` (2) when it is true at every element of the whole tile,
else ``PARTIAL`` (1).  So a non-empty tile cut by ``M`` or ``N`` is always partial, as in
FlexAttention: kernels skip the mask arithmetic, bounds checks included, only on full tiles.

:func:`classify_tiles` decides a static mask in two steps.  First every tile is a box
(``m`` over the tile's rows, ``n`` over its columns, exact ``b`` and ``h``) and the
predicate is evaluated on intervals (:mod:`attncc.ir.intervals`), captured tensors indexed
by bare ``m`` / ``n`` (or ``b``, ``h``, constants) entering through their minimum and maximum
over each tile.  Second, the tiles that this leaves undecided are bisected into smaller boxes
decided on intervals again, down to boxes of a few elements evaluated elementwise
(:mod:`attncc.passes.refine`).  :func:`block_tables` turns the classes
into the kernel's lists; :func:`tables_from_flex` reads FlexAttention's layout;
:func:`topk_tables` and :func:`mass_tables` select key tiles from per-tile scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import sympy as sp
import torch

from attncc.errors import InputError
from attncc.ir import expr as E
from attncc.ir.intervals import decide
from attncc.passes.refine import refine

EMPTY, PARTIAL, FULL = 0, 1, 2
_UNDECIDED = 3
# Tiles per chunk of the interval step and of the table construction: memory stays O(chunk),
# and each torch operation stays under torch's parallel grain size (32768), whose thread
# hand-offs cost more than these small operations on a busy machine.
BOX_CHUNK = 1 << 14
_BOX_SYMBOLS = (E.b, E.h, E.m, E.n)


@dataclass
class BlockTables:
    """The tile lists of one mask (int32; ``Tm = ceil(M / block_m)``, ``Tn = ceil(N / block_n)``).

    ``kv_num_blocks [B, H, Tm]`` / ``kv_indices [B, H, Tm, Tn]``: per query tile, its partial
    key tiles, ascending (entries past ``kv_num_blocks`` are 0); ``full_kv_*`` the same for full
    tiles.  ``q_num_blocks [B, H, Tn]`` / ``q_indices [B, H, Tn, Tm]`` and ``full_q_*``: per key
    tile, its partial / full query tiles (for the backward).  ``classes [B, H, Tm, Tn]`` (int8):
    0 empty, 1 partial, 2 full.  ``B`` or ``H`` is 1 where the mask does not depend on it.
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    q_num_blocks: torch.Tensor
    q_indices: torch.Tensor
    full_q_num_blocks: torch.Tensor
    full_q_indices: torch.Tensor
    block_m: int
    block_n: int
    classes: torch.Tensor

    def to(self, device: Any) -> BlockTables:
        """The same tables on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return BlockTables(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    def tiles_nonempty(self) -> int:
        """Number of partial or full tiles, summed over the table's batch and heads."""
        return int((self.classes != EMPTY).sum())


@dataclass
class ClassifyStats:
    """What :func:`classify_tiles` did: tiles in all, tiles left to the elementwise fallback
    (``fallback``: their ``[b, h, i, j]`` indices, ``[fallback_tiles, 4]``), elements it evaluated."""

    tiles: int = 0
    fallback_tiles: int = 0
    fallback_elements: int = 0
    fallback: torch.Tensor | None = None


# --- checks ---------------------------------------------------------------------------------
def _positive_int(value: Any, name: str, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{fn}: {name} must be a positive int, got {value!r}")
    return value


def _int_tensor(t: Any, name: str, fn: str, dim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{fn}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InputError(f"{fn}: {name} must have an integer dtype, got {t.dtype}")
    if t.dim() != dim:
        raise InputError(f"{fn}: {name} must be {dim}-D, got shape {tuple(t.shape)}")
    return t


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- classification -------------------------------------------------------------------------
def classify_tiles(mask: sp.Basic | bool, sizes: Mapping[str, int], params: Mapping[sp.Symbol, Any],
                   captures: Mapping[str, torch.Tensor], block_m: int, block_n: int, *,
                   stats: ClassifyStats | None = None) -> torch.Tensor:
    """Classes ``[B, H, Tm, Tn]`` (int8: 0 empty, 1 partial, 2 full) of a mask predicate.

    ``mask``: a predicate in the IR vocabulary; ``sizes``: ``{"M": .., "N": .., "B": .., "H": ..,
    ...}`` (``B``/``H`` needed only when the mask reads ``b``/``h``; the result has 1 there
    otherwise); ``params``: ``{param symbol: value}``; ``captures``: ``{name: tensor}``.  Equal
    to evaluating the predicate at every element; elementwise work only on small boxes of the
    tiles the interval step leaves undecided.  ``stats``, when given, is filled in.
    """
    fn = "classify_tiles"
    bm, bn = _positive_int(block_m, "block_m", fn), _positive_int(block_n, "block_n", fn)
    pred = sp.true if mask is True else sp.false if mask is False else mask
    if not isinstance(pred, (sp.logic.boolalg.BooleanAtom, sp.logic.boolalg.BooleanFunction,
                             sp.core.relational.Relational, sp.Piecewise)):
        raise InputError(f"{fn}: mask must be a predicate (sympy Boolean), got {type(mask).__name__}")
    if E.score in pred.free_symbols:
        raise InputError(f"{fn}: the mask depends on the score")
    dims = _dims(pred, sizes, fn)
    env = _scalar_env(sizes, params)
    shape = (dims["B"], dims["H"], _cdiv(dims["M"], bm), _cdiv(dims["N"], bn))
    summaries = _summaries(pred, dims, bm, bn, captures, fn)
    classes = torch.empty(shape, dtype=torch.int8)
    undecided = []
    for r0, r1 in _row_chunks(shape[2], shape[0] * shape[1] * shape[3]):
        part = _decide_rows(pred, env, captures, summaries, dims, bm, bn, r0, r1)
        classes[:, :, r0:r1] = part
        found = (part == _UNDECIDED).nonzero()
        found[:, 2] += r0
        undecided.append(found)
    und = torch.cat(undecided)
    if stats is not None:
        stats.tiles, stats.fallback_tiles, stats.fallback = classes.numel(), int(und.shape[0]), und
    elements = _fallback(pred, env, captures, summaries, dims, bm, bn, classes, und)
    if stats is not None:
        stats.fallback_elements = elements
    _cut_tiles_partial(classes, dims["M"], dims["N"], bm, bn)
    return classes


def _row_chunks(rows: int, per_row: int) -> list[tuple[int, int]]:
    """Row ranges of at most :data:`BOX_CHUNK` elements (at least one row each)."""
    step = max(1, BOX_CHUNK // max(1, per_row))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _decide_rows(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
                 summaries: Mapping[sp.Basic, tuple[torch.Tensor, torch.Tensor]], dims: Mapping[str, int],
                 bm: int, bn: int, r0: int, r1: int) -> torch.Tensor:
    """Classes of query tiles ``r0 .. r1 - 1`` by the interval step (undecided tiles marked)."""
    boxes = _tile_boxes(dims, bm, bn, r0, r1)
    rows = {k: tuple(x[:, :, r0:r1] if x.shape[2] > 1 else x for x in v) for k, v in summaries.items()}
    t = decide(pred, {**env, **boxes}, captures, rows)
    shape = (dims["B"], dims["H"], r1 - r0, _cdiv(dims["N"], bn))
    out = torch.full(shape, _UNDECIDED, dtype=torch.int8)
    out = torch.where((t.some_true & t.some_false).expand(shape), PARTIAL, out)
    out = torch.where((~t.may).expand(shape), EMPTY, out)
    return torch.where(t.must.expand(shape), FULL, out).to(torch.int8)


def _cut_tiles_partial(classes: torch.Tensor, M: int, N: int, bm: int, bn: int) -> None:
    """Full tiles cut by ``M`` (last row tile) or ``N`` (last column tile) become partial, in place."""
    if M % bm:
        last = classes[..., -1, :]
        last[last == FULL] = PARTIAL
    if N % bn:
        last = classes[..., :, -1]
        last[last == FULL] = PARTIAL


def _dims(pred: sp.Basic, sizes: Mapping[str, int], fn: str) -> dict[str, int]:
    """``B, H, M, N`` of the classification (``B``/``H`` 1 when the mask does not read them)."""
    free = pred.free_symbols
    out = {}
    for name, sym in (("B", E.b), ("H", E.h), ("M", E.m), ("N", E.n)):
        needed = name in ("M", "N") or sym in free
        if not needed:
            out[name] = 1
            continue
        if name not in sizes:
            raise InputError(f"{fn}: sizes must give {name}")
        out[name] = _positive_int(sizes[name], f"sizes[{name!r}]", fn)
    return out


def _scalar_env(sizes: Mapping[str, int], params: Mapping[sp.Symbol, Any]) -> dict[sp.Symbol, Any]:
    env: dict[sp.Symbol, Any] = {}
    for name, value in sizes.items():
        if name not in E.SIZE_SYMBOLS:
            raise InputError(f"classify_tiles: unknown size {name!r} (known: {', '.join(E.SIZE_SYMBOLS)})")
        env[E.SIZE_SYMBOLS[name]] = int(value)
    for sym, value in params.items():
        if not isinstance(sym, sp.Symbol):
            raise InputError(f"classify_tiles: params keys must be parameter symbols, got {sym!r}")
        env[sym] = value
    return env


def _tile_boxes(dims: Mapping[str, int], bm: int, bn: int, r0: int, r1: int) -> dict[sp.Symbol, Any]:
    """``m``/``n`` ranges of the tiles of query tiles ``r0 .. r1 - 1`` (clipped to the lengths);
    exact ``b``/``h``."""
    m0 = torch.arange(r0, r1, dtype=torch.float64) * bm
    n0 = torch.arange(_cdiv(dims["N"], bn), dtype=torch.float64) * bn
    return {
        E.b: torch.arange(dims["B"], dtype=torch.float64).view(-1, 1, 1, 1),
        E.h: torch.arange(dims["H"], dtype=torch.float64).view(1, -1, 1, 1),
        E.m: (m0.view(1, 1, -1, 1), torch.clamp(m0 + bm - 1, max=dims["M"] - 1).view(1, 1, -1, 1)),
        E.n: (n0.view(1, 1, 1, -1), torch.clamp(n0 + bn - 1, max=dims["N"] - 1).view(1, 1, 1, -1)),
    }


def _summaries(pred: sp.Basic, dims: Mapping[str, int], bm: int, bn: int,
               captures: Mapping[str, torch.Tensor], fn: str) -> dict[sp.Basic, tuple[torch.Tensor, torch.Tensor]]:
    """Per-tile ``(min, max)`` of each load indexed by distinct bare ``b, h, m, n`` or constants."""
    out = {}
    for ld in E.loads(pred):
        idx = ld.indices
        syms = [i for i in idx if isinstance(i, sp.Symbol)]
        if not all(i in _BOX_SYMBOLS or i.is_Integer for i in idx) or len(set(syms)) != len(syms):
            continue
        t = captures.get(ld.tensor_name)
        if t is None:
            raise InputError(f"{fn}: missing captured tensor '{ld.tensor_name}'")
        if t.dim() != len(idx):
            raise InputError(f"{fn}: captured tensor '{ld.tensor_name}' has {t.dim()} dims, indexed with {len(idx)}")
        if t.dtype.is_complex or t.numel() == 0:
            continue
        out[ld] = _tile_minmax(t, idx, dims, bm, bn, fn)
    return out


def _tile_minmax(t: torch.Tensor, idx: tuple[sp.Basic, ...], dims: Mapping[str, int], bm: int, bn: int,
                 fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``t[idx]`` over each tile, shaped ``[B, H, Tm, Tn]`` with 1 for unused symbols."""
    name_of = {E.b: "B", E.h: "H", E.m: "M", E.n: "N"}
    block = {E.m: bm, E.n: bn}
    lo = hi = t.detach().to(torch.float64)
    kept: list[sp.Symbol] = []  # the symbol of each remaining dim, in order
    for k in reversed(range(len(idx))):  # from the last dim, so earlier dim numbers stay valid
        i, size = idx[k], t.shape[k]
        if i.is_Integer:
            if not 0 <= int(i) < size:
                raise InputError(f"{fn}: captured tensor index {int(i)} out of range for dim {k} (size {size})")
            lo, hi = lo.select(k, int(i)), hi.select(k, int(i))
            continue
        extent = dims[name_of[i]]
        if size < extent:
            raise InputError(f"{fn}: captured tensor dim {k} (size {size}) indexed by {i} up to {extent - 1}")
        lo, hi = lo.narrow(k, 0, extent), hi.narrow(k, 0, extent)
        if i in block:
            lo = _reduce_tiles(lo, k, block[i], torch.amin, float("inf"))
            hi = _reduce_tiles(hi, k, block[i], torch.amax, float("-inf"))
        kept.insert(0, i)
    perm = sorted(range(len(kept)), key=lambda j: _BOX_SYMBOLS.index(kept[j]))
    lo, hi = lo.permute(perm), hi.permute(perm)
    sizes = dict(zip((kept[j] for j in perm), lo.shape, strict=True))
    shape = [sizes.get(s, 1) for s in _BOX_SYMBOLS]
    return lo.reshape(shape), hi.reshape(shape)


def _reduce_tiles(x: torch.Tensor, dim: int, block: int, reduce: Any, pad: float) -> torch.Tensor:
    """Reduce ``dim`` of ``x`` over consecutive blocks of ``block`` (the last one padded with
    ``pad``), :data:`BOX_CHUNK` elements at a time."""
    x = x.movedim(dim, -1)
    tiles = _cdiv(x.shape[-1], block)
    padded = torch.nn.functional.pad(x, (0, tiles * block - x.shape[-1]), value=pad)
    rows = padded.reshape(-1, block)
    out = torch.empty(rows.shape[0], dtype=x.dtype)
    for r0, r1 in _row_chunks(rows.shape[0], block):
        out[r0:r1] = reduce(rows[r0:r1], dim=-1)
    return out.view(*x.shape[:-1], tiles).movedim(-1, dim)


def _fallback(pred: sp.Basic, env: Mapping[sp.Symbol, Any], captures: Mapping[str, torch.Tensor],
              summaries: Mapping[sp.Basic, tuple[torch.Tensor, torch.Tensor]], dims: Mapping[str, int],
              bm: int, bn: int, classes: torch.Tensor, undecided: torch.Tensor) -> int:
    """Classify the undecided tiles by bisection (:func:`attncc.passes.refine.refine`), in place;
    returns the elements evaluated one by one."""
    if undecided.shape[0] == 0:
        return 0
    some_true, some_false, elements = refine(pred, env, captures, summaries, dims, bm, bn, undecided)
    cls = torch.where(some_true & some_false, PARTIAL, torch.where(some_true, FULL, EMPTY)).to(torch.int8)
    classes.view(-1)[(undecided * torch.tensor(classes.stride())).sum(1)] = cls
    return elements


# --- tables ----------------------------------------------------------------------------------
def _lists(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``sel [G, R, C]`` (bool, any strides): how many are set (``[G, R]``), and their
    column indices ascending, then 0 (``[G, R, C]``); in chunks of rows."""
    G, R, C = sel.shape
    num = torch.empty(G, R, dtype=torch.int32, device=sel.device)
    idx = torch.empty(G, R, C, dtype=torch.int32, device=sel.device)
    cols = torch.arange(C, dtype=torch.int32, device=sel.device)
    for g in range(G):
        for r0, r1 in _row_chunks(R, C):
            s = sel[g, r0:r1]
            pos = torch.cumsum(s, -1, dtype=torch.int64) - 1  # rank of each set column in its row
            out = torch.zeros(r1 - r0, C + 1, dtype=torch.int32, device=sel.device)
            out.scatter_(-1, torch.where(s, pos, C), cols.expand_as(pos))  # unset columns go to column C
            num[g, r0:r1] = pos[:, -1] + 1 if C else 0
            idx[g, r0:r1] = out[:, :C]
    return num, idx


def block_tables(classes: torch.Tensor, block_m: int, block_n: int) -> BlockTables:
    """:class:`BlockTables` of ``classes [B, H, Tm, Tn]`` (0 empty, 1 partial, 2 full)."""
    fn = "block_tables"
    _positive_int(block_m, "block_m", fn)
    _positive_int(block_n, "block_n", fn)
    classes = _int_tensor(classes, "classes", fn, 4)
    B, H, tm, tn = classes.shape
    c3 = classes.reshape(B * H, tm, tn)
    for g in range(B * H):
        for r0, r1 in _row_chunks(tm, tn):
            part = c3[g, r0:r1]
            if bool(((part < EMPTY) | (part > FULL)).any()):
                raise InputError(f"{fn}: classes must be 0 (empty), 1 (partial) or 2 (full), got "
                                 f"values in [{int(classes.min())}, {int(classes.max())}]")
    lists = []
    for value in (PARTIAL, FULL):
        sel = _chunked_eq(c3, value)
        kv = _lists(sel)
        q = _lists(sel.transpose(1, 2))
        lists.append((kv, q))
    (kv, q), (fkv, fq) = lists

    def shaped(pair: tuple[torch.Tensor, torch.Tensor], rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pair[0].view(B, H, rows), pair[1].view(B, H, rows, cols)

    return BlockTables(*shaped(kv, tm, tn), *shaped(fkv, tm, tn), *shaped(q, tn, tm), *shaped(fq, tn, tm),
                       block_m, block_n, classes.to(torch.int8))


def _chunked_eq(c3: torch.Tensor, value: int) -> torch.Tensor:
    out = torch.empty(c3.shape, dtype=torch.bool, device=c3.device)
    for g in range(c3.shape[0]):
        for r0, r1 in _row_chunks(c3.shape[1], c3.shape[2]):
            out[g, r0:r1] = c3[g, r0:r1] == value
    return out


def _scatter(num: torch.Tensor, idx: torch.Tensor, tn: int, name: str, fn: str) -> torch.Tensor:
    """Counts ``[B, H, Tm, Tn]`` of the first ``num`` entries of each row of ``idx``."""
    k = idx.shape[-1]
    if num.numel() and (int(num.min()) < 0 or int(num.max()) > k):
        raise InputError(f"{fn}: {name}_num_blocks must lie in [0, {k}], got [{int(num.min())}, {int(num.max())}]")
    live = torch.arange(k, device=idx.device) < num.unsqueeze(-1).to(idx.device)
    used = idx[live]
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= tn):
        raise InputError(f"{fn}: {name}_indices must lie in [0, {tn}), got [{int(used.min())}, {int(used.max())}]")
    counts = torch.zeros(*idx.shape[:-1], tn, dtype=torch.int32, device=idx.device)
    counts.scatter_add_(-1, torch.where(live, idx, 0).long(), live.to(torch.int32))
    if counts.numel() and int(counts.max()) > 1:
        raise InputError(f"{fn}: {name}_indices lists a key tile twice for one query tile")
    return counts


def tables_from_flex(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor,
                     full_kv_num_blocks: torch.Tensor | None, full_kv_indices: torch.Tensor | None,
                     block_m: int, block_n: int, M: int, N: int) -> BlockTables:
    """:class:`BlockTables` from FlexAttention's layout (``BlockMask.from_kv_blocks``'s arguments).

    ``kv_num_blocks [B, H, Tm]``, ``kv_indices [B, H, Tm, K]`` (the first ``kv_num_blocks``
    entries of each row are read, in any order), likewise ``full_*`` or ``None`` for none;
    ``Tm = ceil(M / block_m)``, indices in ``[0, ceil(N / block_n))``.  A tile listed twice,
    or both partial and full, is an :class:`InputError`.  Full tiles cut by ``M`` or ``N`` are
    made partial (see the module docstring).  The per-key-tile lists are derived.
    """
    fn = "tables_from_flex"
    for value, name in ((block_m, "block_m"), (block_n, "block_n"), (M, "M"), (N, "N")):
        _positive_int(value, name, fn)
    tm, tn = _cdiv(M, block_m), _cdiv(N, block_n)
    num, idx = _int_tensor(kv_num_blocks, "kv_num_blocks", fn, 3), _int_tensor(kv_indices, "kv_indices", fn, 4)
    if idx.shape[:3] != num.shape or num.shape[2] != tm:
        raise InputError(f"{fn}: kv_num_blocks {tuple(num.shape)} and kv_indices {tuple(idx.shape)} must be "
                         f"[B, H, {tm}] and [B, H, {tm}, K] (M={M}, block_m={block_m})")
    partial = _scatter(num, idx, tn, "kv", fn)
    full = torch.zeros_like(partial)
    if (full_kv_num_blocks is None) != (full_kv_indices is None):
        raise InputError(f"{fn}: give both full_kv_num_blocks and full_kv_indices, or neither")
    if full_kv_num_blocks is not None and full_kv_indices is not None:
        fnum = _int_tensor(full_kv_num_blocks, "full_kv_num_blocks", fn, 3)
        fidx = _int_tensor(full_kv_indices, "full_kv_indices", fn, 4)
        if fnum.shape != num.shape or fidx.shape[:3] != num.shape:
            raise InputError(f"{fn}: full_kv_num_blocks {tuple(fnum.shape)} and full_kv_indices "
                             f"{tuple(fidx.shape)} must match kv_num_blocks {tuple(num.shape)}")
        full = _scatter(fnum, fidx, tn, "full_kv", fn)
        if bool(((full > 0) & (partial > 0)).any()):
            raise InputError(f"{fn}: a tile is listed both in kv_indices and in full_kv_indices")
    classes = (partial + 2 * full).to(torch.int8)
    _cut_tiles_partial(classes, M, N, block_m, block_n)
    return block_tables(classes, block_m, block_n)


# --- dynamic masks from per-tile scores ------------------------------------------------------
def _check_scores(scores: Any, fn: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or not scores.dtype.is_floating_point:
        raise InputError(f"{fn}: scores must be a floating-point tensor")
    if scores.dim() != 4:
        raise InputError(f"{fn}: scores must be [B, H, Tm, Tn], got shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):
        raise InputError(f"{fn}: scores hold NaN")
    return scores


def _lengths(scores: torch.Tensor, block_m: int, block_n: int, M: int | None, N: int | None,
             fn: str) -> tuple[int, int]:
    tm, tn = scores.shape[-2:]
    M = tm * block_m if M is None else _positive_int(M, "M", fn)
    N = tn * block_n if N is None else _positive_int(N, "N", fn)
    if _cdiv(M, block_m) != tm or _cdiv(N, block_n) != tn:
        raise InputError(f"{fn}: scores [.., {tm}, {tn}] do not match M={M}, N={N} "
                         f"with tiles {block_m}x{block_n}")
    return M, N


def _candidates(scores: torch.Tensor, block_m: int, block_n: int, M: int, N: int,
                causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Selectable tiles (score above -inf and, with ``causal``, some element with ``n <= m``),
    and the tiles that may be full (not cut by ``M`` or ``N``; with ``causal``, every element
    with ``n <= m``)."""
    tm, tn = scores.shape[-2:]
    i = torch.arange(tm, device=scores.device).view(-1, 1)
    j = torch.arange(tn, device=scores.device).view(1, -1)
    allowed = scores > float("-inf")
    whole = (i * block_m + block_m <= M) & (j * block_n + block_n <= N)
    if causal:
        allowed = allowed & (j * block_n <= torch.clamp(i * block_m + block_m - 1, max=M - 1))
        whole = whole & (j * block_n + block_n - 1 <= i * block_m)
    return allowed, whole


def _selected_tables(sel: torch.Tensor, whole: torch.Tensor, block_m: int, block_n: int, full: bool) -> BlockTables:
    classes = sel.to(torch.int8) * PARTIAL
    if full:
        classes = torch.where(sel & whole, FULL, classes).to(torch.int8)
    return block_tables(classes, block_m, block_n)


def topk_tables(scores: torch.Tensor, k: int, block_m: int, block_n: int, *, causal: bool = False,
                full: bool = False, M: int | None = None, N: int | None = None) -> BlockTables:
    """Per query tile, the ``k`` key tiles of highest ``scores [B, H, Tm, Tn]``.

    With ``causal``, only key tiles holding some element with ``n <= m`` are candidates (rows
    with fewer candidates get fewer tiles); tiles scored ``-inf`` are never chosen.  Chosen tiles
    are partial: the kernel applies the mask elementwise.  With ``full``, chosen tiles are full
    (no mask arithmetic) except tiles cut by the lengths ``M``, ``N`` (default: whole tiles) and,
    with ``causal``, tiles crossing the diagonal, which stay partial (the mask must then hold the
    causal condition).
    """
    fn = "topk_tables"
    scores = _check_scores(scores, fn)
    _positive_int(block_m, "block_m", fn)
    _positive_int(block_n, "block_n", fn)
    tn = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= tn:
        raise InputError(f"{fn}: k must be an int in [0, {tn}], got {k!r}")
    allowed, whole = _candidates(scores, block_m, block_n, *_lengths(scores, block_m, block_n, M, N, fn), causal)
    ranked = torch.where(allowed, scores.to(torch.float64), float("-inf"))
    top = torch.topk(ranked, k, dim=-1).indices
    sel = torch.zeros_like(allowed).scatter_(-1, top, True) & allowed
    return _selected_tables(sel, whole, block_m, block_n, full)


def mass_tables(scores: torch.Tensor, threshold: float, block_m: int, block_n: int, *, causal: bool = False,
                full: bool = False, M: int | None = None, N: int | None = None) -> BlockTables:
    """Per query tile, the fewest key tiles whose softmax mass (softmax of ``scores [B, H, Tm, Tn]``
    over the candidate key tiles) reaches ``threshold`` in ``(0, 1]`` (FlexPrefill's rule).

    Candidates, ``causal``, ``full``, ``M`` and ``N`` are as for :func:`topk_tables`.
    """
    fn = "mass_tables"
    scores = _check_scores(scores, fn)
    _positive_int(block_m, "block_m", fn)
    _positive_int(block_n, "block_n", fn)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InputError(f"{fn}: threshold must be a number in (0, 1], got {threshold!r}")
    allowed, whole = _candidates(scores, block_m, block_n, *_lengths(scores, block_m, block_n, M, N, fn), causal)
    ranked = torch.where(allowed, scores.to(torch.float64), float("-inf"))
    probs = torch.nan_to_num(torch.softmax(ranked, dim=-1), nan=0.0)
    p_sorted, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    before = torch.cumsum(p_sorted, dim=-1) - p_sorted  # mass of the tiles ranked higher
    keep_sorted = (before < threshold) & (p_sorted > 0)
    sel = torch.zeros_like(allowed).scatter_(-1, order, keep_sorted) & allowed
    return _selected_tables(sel, whole, block_m, block_n, full)
