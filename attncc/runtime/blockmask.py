"""attncc's FlexAttention-compatible ``BlockMask``: a mask_mod, block tables, or both.

* :func:`create_block_mask` keeps the mask_mod and the lengths; nothing O(L^2) is built.  At call
  time the kernels take the symbolic plan of the mask when it is exact, else block tables built
  for the call's tile sizes (:func:`attncc.runtime.ops.auto_tables`).  The FlexAttention
  attributes (``kv_num_blocks`` ...) are built on first access at ``BLOCK_SIZE``.
* :meth:`BlockMask.from_kv_blocks` takes FlexAttention's tensors (data-dependent sparsity: top-k
  routing and the like); the kernels read these tables directly (partial blocks evaluate the
  mask_mod, if any; full blocks do not), so a new mask of the same shape never recompiles.

Tables: ``kv_num_blocks [B, H, Mb]``, ``kv_indices [B, H, Mb, Nb]`` (partial blocks),
``full_kv_num_blocks``, ``full_kv_indices`` (full blocks), and the transposed ``q_*`` lists
``[B, H, Nb(, Mb)]`` the backward reads; ``B`` and ``H`` may be 1 (broadcast).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from attncc.codegen.launch import TABLE_ORDER
from attncc.errors import InputError
from attncc.runtime.compiled import compile_spec, spec_from_mods


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    bs = (size, size) if isinstance(size, int) else tuple(size)
    if len(bs) != 2 or any(type(b) is not int or b < 16 or b & (b - 1) for b in bs):
        raise InputError(f"BLOCK_SIZE must be a power of two >= 16 (or a pair of them), got {size!r}")
    return bs  # type: ignore[return-value]


def sliced_mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    """The ``mask_mod`` of a sliced :class:`BlockMask` (torch resets it the same way)."""
    raise InputError("BlockMask: a sliced mask has no mask_mod; set mask_mod from the original mask")


@dataclass(repr=False)
class BlockMask:
    """A mask for ``attncc.flex_attention`` (see the module docstring)."""

    mask_mod: Callable[..., Any] | None
    B: int | None
    H: int | None
    Q_LEN: int
    KV_LEN: int
    BLOCK_SIZE: tuple[int, int] = (128, 128)
    device: Any = None
    given_tables: dict[str, Any] | None = None  # from_kv_blocks: the kernels read these
    _built: dict[str, Any] | None = field(default=None, repr=False)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_kv_blocks(cls, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor,
                       full_kv_num_blocks: torch.Tensor | None = None, full_kv_indices: torch.Tensor | None = None,
                       BLOCK_SIZE: int | tuple[int, int] = 128, mask_mod: Callable[..., Any] | None = None,
                       seq_lengths: tuple[int, int] | None = None) -> BlockMask:
        """FlexAttention's ``BlockMask.from_kv_blocks``: block lists per query block (int32);
        the transposed lists for the backward are derived here."""
        from attncc.passes.blocks import tables_from_flex

        bm, bn = _pair(BLOCK_SIZE)
        if not isinstance(kv_num_blocks, torch.Tensor) or kv_num_blocks.dim() != 3:
            raise InputError("from_kv_blocks: kv_num_blocks must be a [B, H, num_query_blocks] tensor")
        M, N = seq_lengths if seq_lengths is not None else (kv_num_blocks.shape[2] * bm, kv_indices.shape[-1] * bn)
        bt = tables_from_flex(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, bm, bn, int(M), int(N))
        tables: dict[str, Any] = {name: getattr(bt, name) for name in TABLE_ORDER}
        tables.update(block_m=bm, block_n=bn)
        return cls(mask_mod, kv_num_blocks.shape[0], kv_num_blocks.shape[1], int(M), int(N), (bm, bn),
                   kv_num_blocks.device, tables)

    @classmethod
    def from_block_scores(cls, scores: torch.Tensor, *, topk: int | None = None, mass: float | None = None,
                          BLOCK_SIZE: int | tuple[int, int] = 128, seq_lengths: tuple[int, int] | None = None,
                          mask_mod: Callable[..., Any] | None = None, causal: bool = False) -> BlockMask:
        """A dynamic mask from per-block scores ``[B, H, Mb, Nb]``: per query block the ``topk``
        highest-scoring key blocks, or the fewest whose softmax mass reaches ``mass`` (FlexPrefill).
        Chosen blocks evaluate ``mask_mod`` (and causality with ``causal``) elementwise."""
        from attncc.passes.blocks import mass_tables, topk_tables

        if (topk is None) == (mass is None):
            raise InputError("from_block_scores: give exactly one of topk= and mass=")
        bm, bn = _pair(BLOCK_SIZE)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 4:
            raise InputError("from_block_scores: scores must be a [B, H, query_blocks, key_blocks] tensor")
        M, N = seq_lengths if seq_lengths is not None else (scores.shape[2] * bm, scores.shape[3] * bn)
        bt = (topk_tables(scores, topk, bm, bn, causal=causal, M=M, N=N) if topk is not None
              else mass_tables(scores, float(mass), bm, bn, causal=causal, M=M, N=N))  # type: ignore[arg-type]
        if causal:
            mask_mod = _causal if mask_mod is None else _and_causal(mask_mod)
        tables: dict[str, Any] = {name: getattr(bt, name) for name in TABLE_ORDER}
        tables.update(block_m=bm, block_n=bn)
        return cls(mask_mod, scores.shape[0], scores.shape[1], int(M), int(N), (bm, bn), scores.device, tables)

    # --- FlexAttention's attributes ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.B or 1, self.H or 1, self.Q_LEN, self.KV_LEN)

    @property
    def seq_lengths(self) -> tuple[int, int]:
        return (self.Q_LEN, self.KV_LEN)

    @property
    def tables(self) -> dict[str, Any]:
        """The block tables at ``BLOCK_SIZE``: the given ones, or built from the mask_mod once."""
        if self.given_tables is not None:
            return self.given_tables
        if self._built is None:
            self._built = self._tables_at(*self.BLOCK_SIZE)
        return self._built

    def __getattr__(self, name: str) -> Any:
        if name in TABLE_ORDER:
            return self.tables[name]
        raise AttributeError(f"'BlockMask' object has no attribute '{name}'")

    def _spec(self) -> tuple[Any, dict[str, torch.Tensor]]:
        if self.mask_mod is None:
            raise InputError("BlockMask: no mask_mod to evaluate (a mask built from block tables only)")
        spec, caps = spec_from_mods(None, self.mask_mod)
        return compile_spec(spec), caps

    def _tables_at(self, bm: int, bn: int) -> dict[str, Any]:
        from attncc.passes.blocks import block_tables

        bt = block_tables(self.classes(bm, bn), bm, bn)
        tables: dict[str, Any] = {name: getattr(bt, name) for name in TABLE_ORDER}
        tables.update(block_m=bm, block_n=bn)
        return tables

    def classes(self, bm: int | None = None, bn: int | None = None) -> torch.Tensor:
        """Tile classes ``[B, H, Mb, Nb]`` int8 (0 empty, 1 partial, 2 full) at tiles ``bm x bn``
        (default ``BLOCK_SIZE``): from the given tables, or from the mask_mod (exact)."""
        bm, bn = bm or self.BLOCK_SIZE[0], bn or self.BLOCK_SIZE[1]
        if self.given_tables is not None:
            if (bm, bn) != self.BLOCK_SIZE:
                raise InputError(f"BlockMask: block tables were given at {self.BLOCK_SIZE}, not ({bm}, {bn})")
            return _classes_of(self.given_tables, self.Q_LEN, self.KV_LEN)
        from attncc.passes.blocks import classify_tiles

        compiled, caps = self._spec()
        low = compiled.generated.lowered
        B, H = self.shape[:2]
        sizes = {"B": B, "H": H, "HK": H, "M": self.Q_LEN, "N": self.KV_LEN, "D": 1, "E": 1}
        return classify_tiles(low.mask, sizes, {}, caps, bm, bn)

    # --- views ----------------------------------------------------------------------------------
    def dense_mask(self) -> torch.Tensor:
        """Elementwise mask ``[B, H, Q_LEN, KV_LEN]`` (bool): the mask_mod, within the given blocks."""
        B, H, M, N = self.shape
        keep = torch.ones(B, H, M, N, dtype=torch.bool)
        if self.mask_mod is not None and self.mask_mod is not sliced_mask_mod:
            from attncc.runtime.reference import dense_mask, index_env

            spec, caps = spec_from_mods(None, self.mask_mod)
            env = index_env(spec, B, H, H, M, N, 1, 1, {}, 1.0)
            keep = keep & dense_mask(spec, env, caps, (B, H, M, N))
        if self.given_tables is not None:
            bm, bn = self.BLOCK_SIZE
            listed = _classes_of(self.given_tables, M, N) > 0
            listed = listed.expand(B, H, *listed.shape[2:])
            keep = keep & listed.repeat_interleave(bm, 2).repeat_interleave(bn, 3)[:, :, :M, :N]
        return keep

    def to_dense(self) -> torch.Tensor:
        """Block occupancy ``[B, H, Mb, Nb]`` int32 (torch's ``to_dense``): 1 where a block is
        listed (partial or full), i.e. holds an unmasked element."""
        B, H = self.shape[:2]
        return (self.classes() > 0).expand(B, H, -1, -1).to(torch.int32)

    def numel(self) -> int:
        """Elements of the mask, ignoring sparsity: the product of :attr:`shape` (as torch's)."""
        return math.prod(self.shape)

    def sparsity(self) -> float:
        """Percentage of the mask not computed, as torch's ``BlockMask.sparsity``: ``100 * (1 -
        listed blocks * BLOCK_SIZE area / numel)`` (negative when edge blocks overhang the lengths)."""
        computed = int(self.to_dense().sum()) * self.BLOCK_SIZE[0] * self.BLOCK_SIZE[1]
        return 100.0 * (1.0 - computed / self.numel()) if self.numel() else 0.0

    def to_string(self, grid_size: int | tuple[int, int] = (20, 20), limit: int = 4) -> str:
        """torch's ``BlockMask.to_string``: per (batch, head), the block occupancy summarised on at
        most ``grid_size`` cells ('█' all listed, '░' some, ' ' none; each cell two characters wide);
        ``grid_size=-1`` shows every block; at most ``limit`` maps."""
        return _block_text(self.to_dense(), grid_size, limit)

    def __str__(self) -> str:
        return f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, \n{self.to_string().strip()}\n)"

    def __repr__(self) -> str:
        shapes = {name: t.shape if isinstance(t, torch.Tensor) else None
                  for name, t in self.tables.items() if name in TABLE_ORDER}
        lines = [f"    {name}={shapes.get(name)}," for name in TABLE_ORDER]
        mod = getattr(self.mask_mod, "__name__", self.mask_mod)
        return "\n".join(["BlockMask(", *lines, f"    BLOCK_SIZE={self.BLOCK_SIZE},", f"    shape={self.shape},",
                          f"    sparsity={self.sparsity():.2f}%,", f"    mask_mod={mod}", ")"])

    def __getitem__(self, index: Any) -> BlockMask:
        """The mask of some batches and heads (``mask[b]``, ``mask[b, h]``, slices): as torch, an
        integer keeps its dimension and the result has block tables only; its ``mask_mod`` is reset
        (``flex_attention`` refuses it until one is set again from the original mask)."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 2:
            raise InputError("BlockMask[...]: index the batch and head dimensions only "
                             f"(got {len(index)} indices)")
        B, H = self.shape[:2]
        picks = tuple(_as_slice(i, n, what) for i, n, what in
                      zip((*index, slice(None), slice(None))[:2], (B, H), ("batch", "head"), strict=True))
        classes = self.classes().expand(B, H, -1, -1)[picks].contiguous()
        from attncc.passes.blocks import block_tables

        bm, bn = self.BLOCK_SIZE
        bt = block_tables(classes, bm, bn)
        tables: dict[str, Any] = {name: getattr(bt, name) for name in TABLE_ORDER}
        tables.update(block_m=bm, block_n=bn)
        return BlockMask(sliced_mask_mod, classes.shape[0], classes.shape[1], self.Q_LEN, self.KV_LEN,
                         self.BLOCK_SIZE, self.device, tables)

    def to(self, device: Any) -> BlockMask:
        """A copy on ``device`` (given tables moved; tables built from a mask_mod are built again)."""
        tables = None if self.given_tables is None else {
            name: t.to(device) if isinstance(t, torch.Tensor) else t for name, t in self.given_tables.items()}
        return BlockMask(self.mask_mod, self.B, self.H, self.Q_LEN, self.KV_LEN, self.BLOCK_SIZE,
                         torch.device(device), tables)

    def stats(self, head_dim: int = 64) -> dict[str, int]:
        """Kernel tiles at the shape this mask was built for, summed over batch and heads:
        ``block_m``, ``block_n`` (the forward kernel's default tiles at ``head_dim``),
        ``tiles_total``, ``tiles_visited`` (what the kernel loads) and ``tiles_nonempty``."""
        B, H, M, N = self.shape
        if self.given_tables is not None:
            bm, bn = self.BLOCK_SIZE
            cls = _classes_of(self.given_tables, M, N).expand(B, H, -1, -1)
            visited = nonempty = int((cls > 0).sum())
        else:
            compiled, caps = self._spec()
            low = compiled.generated.lowered
            cfg = low.schedule.default_config("fwd", head_dim)
            bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
            cls = self.classes(bm, bn).expand(B, H, -1, -1)
            nonempty = int((cls > 0).sum())
            visited = nonempty if compiled.prefers_block_table() else _planned_visits(low, self, bm, bn)
        total = -(-M // bm) * -(-N // bn) * B * H
        return {"block_m": bm, "block_n": bn, "tiles_total": total, "tiles_visited": visited,
                "tiles_nonempty": nonempty}


def _as_slice(i: Any, n: int, what: str) -> slice:
    """An index of one batch-like dimension of size ``n`` as a slice (an int keeps the dimension)."""
    if isinstance(i, slice):
        if len(range(n)[i]) == 0:
            raise InputError(f"BlockMask[...]: {what} slice {i} selects nothing (size {n})")
        return i
    if isinstance(i, bool) or not isinstance(i, int):
        raise InputError(f"BlockMask[...]: {what} index must be an int or a slice, got {type(i).__name__}")
    if not -n <= i < n:
        raise InputError(f"BlockMask[...]: {what} index {i} out of range for size {n}")
    i %= n
    return slice(i, i + 1)


def _block_text(dense: torch.Tensor, grid_size: int | tuple[int, int], limit: int) -> str:
    """torch's ``BlockMask.to_string`` of a block occupancy map ``[*batch, Mb, Nb]``."""
    *batch, rows, cols = dense.shape
    if isinstance(grid_size, int):
        max_rows, max_cols = (rows, cols) if grid_size == -1 else (grid_size, grid_size)
    else:
        max_rows, max_cols = grid_size
    row_step, col_step = max(1, -(-rows // max_rows)), max(1, -(-cols // max_cols))
    out: list[str] = []
    for count, idx in enumerate(itertools.product(*[range(n) for n in batch])):
        if count == limit:
            out += ["...", "To print out more, set BlockMask.to_string(limit=N)",
                    "You can also index (BlockMask[batch, head]) to choose a specific batch or head"]
            break
        grid = dense[idx].float()
        text = f"{idx}\n"
        for r in range(0, rows, row_step):
            for c in range(0, cols, col_step):
                share = grid[r:r + row_step, c:c + col_step].mean().item()
                text += ("█" if share == 1 else " " if share == 0 else "░") * 2
            text += "\n"
        out.append(text)
    return "\n".join(out)


def _causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
    return q_idx >= kv_idx


def _and_causal(mask_mod: Callable[..., Any]) -> Callable[..., Any]:
    def causal_and(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (q_idx >= kv_idx) & mask_mod(b, h, q_idx, kv_idx)
    return causal_and


def _classes_of(tables: dict[str, Any], M: int, N: int) -> torch.Tensor:
    """Tile classes [B, H, Mb, Nb] int8 of FlexAttention-layout tables."""
    num, idx, fnum, fidx = (tables[n] for n in TABLE_ORDER[:4])
    Mb, Nb = num.shape[2], -(-N // tables["block_n"])
    out = torch.zeros(*num.shape, Nb, dtype=torch.int8)
    for count, index, value in ((num, idx, 1), (fnum, fidx, 2)):
        cols = torch.arange(index.shape[-1]).view(1, 1, 1, -1)
        valid = cols < count.unsqueeze(-1).long()
        target = out.view(-1, Nb)
        rows = torch.arange(target.shape[0]).view(*num.shape, 1).expand_as(index)
        target[rows[valid], index.long()[valid]] = value
    del Mb
    return out


def _planned_visits(low: Any, mask: BlockMask, bm: int, bn: int) -> int:
    """Key tiles the compile-time (segment) plan of the forward kernel visits, summed over B, H."""
    from attncc.schedules.prefill.stats import tile_stats

    st = tile_stats(low, low.plan(low.schedule.kernels[0].name), mask.shape + (64,), bm, bn, {})
    return st.visited if st is not None else -1


def document_ids(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """FlashAttention-style ``cu_seqlens [D + 1]`` (int, starting at 0, non-decreasing) -> the
    document id of every token, ``[1, total]`` int32 (tokens past the last offset get id D):
    the ``doc`` capture of the ``document`` / ``document_causal`` specs."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 \
            or cu_seqlens.is_floating_point():
        raise InputError("document_ids: cu_seqlens must be a 1-D integer tensor of offsets")
    offsets = cu_seqlens.long()
    if int(offsets[0]) != 0 or bool((offsets[1:] < offsets[:-1]).any()):
        raise InputError("document_ids: cu_seqlens must start at 0 and never decrease")
    total = int(offsets[-1]) if total is None else int(total)
    if total < 0:
        raise InputError(f"document_ids: total length must be >= 0, got {total}")
    ids = torch.searchsorted(offsets[1:], torch.arange(total, device=offsets.device), right=True)
    return ids.to(torch.int32).view(1, total)


def create_block_mask(mask_mod: Callable[..., Any], B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                      device: Any = None, BLOCK_SIZE: int | tuple[int, int] = 128, _compile: bool = False,
                      **_ignored: Any) -> BlockMask:
    """FlexAttention-compatible mask object; cheap (no O(L^2) set-up: tables are built when needed)."""
    bs = _pair(BLOCK_SIZE)
    if not torch.compiler.is_compiling():  # under torch.compile the mask is recorded at attention time
        spec_from_mods(None, mask_mod)  # trace now so errors surface at creation
    return BlockMask(mask_mod, B, H, int(Q_LEN), int(KV_LEN), bs, device)
