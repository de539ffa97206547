"""The host launch layer of every generated kernel module, written once.

Schedule-independent host code between a caller's tensors and a kernel launch: input checks,
the compute dtype, the launch config (default lookup and validation), the kernels' constexprs
(dot precision, head-dim block rounding), the empty-problem shortcut and the packing of
captured tensors and params into kernel arguments.

This file is used twice:

* imported, as ``attncc.codegen.launch``, by attncc's runtime (``runtime/host.py`` wraps the
  checks into one-line ``InputError``s; ``runtime/aot_spec.py`` takes the constexprs from
  :func:`kernel_constexprs`);
* emitted as text (everything below this docstring) into each generated module by the
  ``{{LAUNCH}}`` hook of the schedule templates (see ``attncc/codegen/launch_text.py``), so that
  the module from ``attncc compile -o`` still needs only torch and triton.

Hence it imports only ``math``, ``torch`` and ``triton`` and reads no module globals: every
spec-dependent datum is a parameter.  The templates define, before this text, ``DEFAULT_CONFIGS``
(kernel kind -> head-dim bound -> config), ``CAPTURES`` (``(name, ndim)`` in kernel order),
``PARAMS`` (name -> default, in kernel order), ``GQA`` (whether the spec maps query heads to
fewer key/value heads) and ``INTERPRETED`` (the kernels run in Triton's interpreter), and pass
them in.  Every check raises :class:`LaunchError` (a ``ValueError``) with a one-line message
that names the argument (``query``, ``key``, ``value``, ``captured 'x'``, ``config``) but not
the caller.

Shapes: q ``[B, H, M, D]``, k ``[B, HK, N, D]``, v ``[B, HK, N, E]``; o ``[B, H, M, E]``;
lse ``[B, H, M]`` fp32.
"""
import math

import torch
import triton


class LaunchError(ValueError):
    """An argument the kernels cannot take (one-line message naming the argument)."""


# Launch config: key -> allowed values (tl.dot needs tiles of at least 16; tl.arange powers of two).
CONFIG_VALUES = {
    "BLOCK_M": (16, 32, 64, 128, 256),
    "BLOCK_N": (16, 32, 64, 128, 256),
    "num_warps": (1, 2, 4, 8, 16, 32),
    "num_stages": (1, 2, 3, 4, 5, 6, 7, 8),
    "USE_TMA": (0, 1),  # optional: 0 forces the pointer path; 1 asks for tensor descriptors (see use_tma)
}
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # largest D and E the kernels take


# --- input checks ---------------------------------------------------------------------------------

def check_tensor_args(q: object, k: object, v: object) -> None:
    """q, k, v are 4-D tensors (checked before anything reads their shapes)."""
    for label, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise LaunchError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise LaunchError(f"{label} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> None:
    """q ``[B, H, M, D]``, k ``[B, HK, N, D]``, v ``[B, HK, N, E]``: one supported dtype and device,
    matching sizes, 1 <= D, E <= MAX_HEAD_DIM; HK == H, or with ``gqa`` H a multiple of HK."""
    check_tensor_args(q, k, v)
    for label, t in (("query", q), ("key", k), ("value", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise LaunchError(f"{label} dtype {t.dtype} not supported (fp16, bf16, fp32)")
    if not (q.dtype == k.dtype == v.dtype):
        raise LaunchError(f"query/key/value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise LaunchError(f"query/key/value on different devices: {q.device}, {k.device}, {v.device}")
    B, H, M, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise LaunchError(f"batch sizes differ: query {B}, key {k.shape[0]}, value {v.shape[0]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise LaunchError(f"key {tuple(k.shape)} and value {tuple(v.shape)} differ in heads or length")
    if k.shape[3] != D:
        raise LaunchError(f"query head dim {D} != key head dim {k.shape[3]}")
    if D == 0 or v.shape[3] == 0:
        raise LaunchError(f"head dims must be at least 1 (query {D}, value {v.shape[3]})")
    if D > MAX_HEAD_DIM or v.shape[3] > MAX_HEAD_DIM:
        raise LaunchError(f"head dims above {MAX_HEAD_DIM} are not supported (D={D}, E={v.shape[3]})")
    check_heads(H, k.shape[1], gqa)


def check_heads(H: int, HK: int, gqa: bool) -> None:
    """H query heads on HK key/value heads: equal, or with ``gqa`` H a multiple of HK."""
    if gqa:
        if HK == 0 and H != 0:
            raise LaunchError(f"key has 0 heads, query {H}")
        if HK != 0 and H % HK != 0:
            raise LaunchError(f"query heads {H} not divisible by key/value heads {HK}")
    elif HK != H:
        raise LaunchError(f"query has {H} heads, key/value {HK}; use a GQA spec or enable_gqa=True")


def check_captures(q: torch.Tensor, captures: dict, expected: list | tuple) -> None:
    """``captures`` (name -> tensor) holds each ``(name, dims)`` of ``expected`` on q's device with
    that many dims; ``dims`` is the number of dims or a tuple of their names."""
    missing = [name for name, _ in expected if name not in captures]
    if missing:
        raise LaunchError(f"missing captured tensor(s) {missing}")
    for name, dims in expected:
        t = captures[name]
        ndim = dims if isinstance(dims, int) else len(dims)
        if not isinstance(t, torch.Tensor):
            raise LaunchError(f"captured '{name}' must be a tensor")
        if t.dim() != ndim:
            shown = "" if isinstance(dims, int) else f" [{' '.join(dims)}]"
            raise LaunchError(f"captured '{name}' must be {ndim}-D{shown}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise LaunchError(f"captured '{name}' on {t.device}, query on {q.device}")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, captures: dict, expected: list | tuple,
                 gqa: bool) -> None:
    """:func:`check_qkv` then :func:`check_captures`."""
    check_qkv(q, k, v, gqa)
    check_captures(q, captures, expected)


def merge_params(params: dict, defaults: dict) -> dict:
    """The spec's param ``defaults`` (name -> value, kernel order) overridden by ``params``."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise LaunchError(f"unknown parameter(s) {sorted(unknown)}; this kernel takes {sorted(defaults)}")
    return {**defaults, **params}


# --- dtype, precision, tiles ----------------------------------------------------------------------

def compute_dtype(dtype: torch.dtype, interpreted: bool) -> torch.dtype:
    """The dtype the kernels compute in for inputs of ``dtype``: Triton's interpreter has no bf16
    arithmetic, so there bf16 is computed in fp32 (results are cast back by the caller)."""
    return torch.float32 if dtype == torch.bfloat16 and interpreted else dtype


def upcast(tensors: tuple | dict, dtype: torch.dtype) -> tuple | dict:
    """``tensors`` (a tuple, or a dict of captures) with bf16 ones converted to ``dtype``."""
    def conv(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.dtype == torch.bfloat16 and dtype != torch.bfloat16 else t
    if isinstance(tensors, dict):
        return {name: conv(t) for name, t in tensors.items()}
    return tuple(conv(t) for t in tensors)


def dot_precision(dtype: torch.dtype | str) -> str:
    """``tl.dot``'s input precision for operands of ``dtype`` (a torch dtype or its short name):
    exact ``ieee`` for fp32, else ``tf32`` (which fp16/bf16 dots do not use)."""
    return "ieee" if dtype in (torch.float32, "fp32", "float32") else "tf32"


def block_dim(head_dim: int) -> int:
    """The tile width holding a head dim: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def kernel_constexprs(D: int, E: int, config: dict, dtype: torch.dtype | str) -> dict:
    """Constexpr arguments shared by the kernels for head dims D (q, k) and E (v), tiles ``config``
    (BLOCK_M, BLOCK_N) and compute ``dtype``."""
    return {"HEAD_D": D, "HEAD_E": E, "BLOCK_D": block_dim(D), "BLOCK_E": block_dim(E),
            "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"], "DOT_PRECISION": dot_precision(dtype)}


def launch_options(config: dict) -> dict:
    """Triton's launch options (num_warps, num_stages) of ``config`` (its USE_TMA is a constexpr)."""
    return {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}


def tma_layout_ok(tensors: tuple) -> bool:
    """Every tensor has a contiguous last dim, a 16-byte aligned start and 16-byte multiples as
    its other strides: what a tensor descriptor (TMA) needs of each row it moves."""
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:-1]):
            return False
    return True


def use_tma(config: dict, tensors: tuple, interpreted: bool) -> bool:
    """USE_TMA of a forward launch reading ``tensors`` (k, v) through tensor descriptors: only
    when their layout allows it (:func:`tma_layout_ok`) and ``config`` has no ``USE_TMA=0``; then
    on a CUDA device of compute capability >= 9 (Hopper), never on older devices, and in
    Triton's interpreter only when ``config`` asks for it (``USE_TMA=1``)."""
    want = config.get("USE_TMA")
    if want == 0 or not tma_layout_ok(tensors):
        return False
    if interpreted:
        return want == 1
    dev = tensors[0].device
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 9


def _torch_scratch(size: int, alignment: int, stream: object) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def ensure_allocator() -> None:
    """Device-side tensor descriptors need global scratch: give Triton a torch allocator, unless
    the caller has set one (``triton.set_allocator``)."""
    allocation = triton.runtime._allocation
    if allocation._allocator.get() is allocation._NULL_ALLOCATOR:
        triton.set_allocator(_torch_scratch)


def default_scale(scale: float | None, D: int) -> float:
    """The score scale: ``scale``, else 1/sqrt(D)."""
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def tile_log_arg(tile_log: torch.Tensor | None, shape: tuple, dummy: torch.Tensor) -> tuple:
    """(pointer argument, LOG_TILES) for an optional tile log (a zeroed int32 tensor of ``shape``
    counting a kernel's tile visits; ``dummy`` stands in when there is none)."""
    if tile_log is None:
        return dummy, False
    if tile_log.dtype != torch.int32 or tuple(tile_log.shape) != tuple(shape) or not tile_log.is_contiguous():
        raise LaunchError(f"tile_log must be a contiguous int32 tensor of shape {tuple(shape)}, "
                          f"got {tile_log.dtype} {tuple(tile_log.shape)}")
    return tile_log, True


# --- launch configs -------------------------------------------------------------------------------

def table_config(table: dict, head_dim: int, kind: str) -> dict:
    """The config of ``kind`` from ``table`` (kind -> head-dim bound -> config): the entry of the
    smallest bound >= head_dim, else of the largest bound.  A copy."""
    by_bound = table[kind]
    for bound in sorted(by_bound):
        if head_dim <= bound:
            return dict(by_bound[bound])
    return dict(by_bound[max(by_bound)])


def device_kind(table: dict, kind: str, device: object, interpreted: bool) -> str:
    """The entry of ``table`` for ``kind`` on ``device``: ``<kind>_pre_sm90`` when the table has
    one and the kernels run in Triton's interpreter or on a CUDA device of compute capability
    below 9; else ``kind``.  ``device`` None: the current CUDA device."""
    older = f"{kind}_pre_sm90"
    if older not in table:
        return kind
    if interpreted:
        return older
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return kind
    if not torch.cuda.is_available():
        return kind
    return older if torch.cuda.get_device_capability(dev)[0] < 9 else kind


def check_config_value(key: str, val: object, allowed: tuple, label: str = "config") -> None:
    """``val`` of config entry ``key`` is an int among ``allowed``."""
    if isinstance(val, bool) or not isinstance(val, int):
        raise LaunchError(f"{label} {key}={val!r} must be an int in {list(allowed)}")
    if val not in allowed:
        raise LaunchError(f"{label} {key}={val} is not one of {list(allowed)}")


def check_config(config: dict, label: str = "config") -> None:
    """Every key of ``config`` is in CONFIG_VALUES with an allowed value."""
    for key, val in config.items():
        if key not in CONFIG_VALUES:
            raise LaunchError(f"unknown {label} key {key!r} (expected one of {sorted(CONFIG_VALUES)})")
        check_config_value(key, val, CONFIG_VALUES[key], label)


def launch_config(table: dict, head_dim: int, kind: str, config: dict | None) -> dict:
    """The default config of ``kind`` at ``head_dim`` (from ``table``) overridden by ``config``, checked."""
    cfg = {**table_config(table, head_dim, kind), **(config or {})}
    check_config(cfg)
    return cfg


# --- arguments ------------------------------------------------------------------------------------

def is_empty(q: torch.Tensor, k: torch.Tensor) -> bool:
    """No query row or no key: the result is known without a launch (o = 0, lse = -inf)."""
    return q.shape[0] * q.shape[1] * q.shape[2] == 0 or k.shape[2] == 0


def empty_forward(q: torch.Tensor, E: int, dtype: torch.dtype) -> tuple:
    """(o [B, H, M, E] zeros of ``dtype``, lse [B, H, M] -inf fp32) of a problem without a launch."""
    B, H, M = q.shape[:3]
    return (torch.zeros((B, H, M, E), dtype=dtype, device=q.device),
            torch.full((B, H, M), float("-inf"), dtype=torch.float32, device=q.device))


def ctx_args(captures: dict, params: dict, expected: list | tuple, param_names: dict | list) -> list:
    """Kernel arguments after the fixed ones: per captured tensor of ``expected`` (``(name, dims)``
    in kernel order) the tensor (bool as int8), its strides and sizes; then the values of
    ``param_names`` from ``params``."""
    args = []
    for name, _ in expected:
        t = captures[name]
        if t.dtype == torch.bool:
            t = t.to(torch.int8)
        args += [t, *t.stride(), *t.shape]
    args += [params[name] for name in param_names]
    return args


# --- block tables (plans of kind "block_table") ----------------------------------------------------
# A kernel whose plan is a block table takes the lists of its swept index: "keys" reads
# kv_num_blocks [B, H, Tm], kv_indices [B, H, Tm, Tn] and their full_ counterparts; "queries"
# the transposed q_* lists.  B and H may be 1 (broadcast).  Block sizes block_m / block_n are
# powers of two >= 16; the kernel's tiles divide them.
TABLE_KEYS = {
    "keys": ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"),
    "queries": ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"),
}
TABLE_ORDER = (*TABLE_KEYS["keys"], *TABLE_KEYS["queries"])  # flat order (attncc's ops)


def check_tables(tables: dict, B: int, H: int, M: int, N: int) -> None:
    """The block tables fit the problem (shapes, dtypes, block sizes); LaunchError otherwise."""
    if not isinstance(tables, dict):
        raise LaunchError("block_tables must be a dict of the BlockMask tensors and block sizes")
    bm, bn = tables.get("block_m"), tables.get("block_n")
    for name, size in (("block_m", bm), ("block_n", bn)):
        if type(size) is not int or size < 16 or size & (size - 1):
            raise LaunchError(f"block_tables {name} must be a power of two >= 16, got {size!r}")
    rows = {"keys": (triton.cdiv(M, bm), triton.cdiv(N, bn)), "queries": (triton.cdiv(N, bn), triton.cdiv(M, bm))}
    for swept, keys in TABLE_KEYS.items():
        tm, tn = rows[swept]
        for num_key, idx_key in (keys[:2], keys[2:]):
            num, idx = tables.get(num_key), tables.get(idx_key)
            if num is None and idx is None and num_key.startswith("full_"):
                continue
            for key, t, dims in ((num_key, num, 3), (idx_key, idx, 4)):
                if not isinstance(t, torch.Tensor) or t.dim() != dims or t.dtype != torch.int32:
                    raise LaunchError(f"block_tables {key} must be a {dims}-D int32 tensor")
                if t.shape[0] not in (1, B) or t.shape[1] not in (1, H) or t.shape[2] != tm:
                    raise LaunchError(f"block_tables {key} has shape {tuple(t.shape)}; expected [B or 1, H or 1, {tm}"
                                      + (f", {tn}]" if dims == 4 else "]"))
            if idx.shape[3] < 1 or idx.shape[3] > tn:
                raise LaunchError(f"block_tables {idx_key} has {idx.shape[3]} columns; expected 1 to {tn}")


def fit_tiles(config: dict, tables: dict | None) -> dict:
    """``config`` with tiles no larger than the table's blocks (which they then divide)."""
    if not tables:
        return config
    return {**config, "BLOCK_M": min(config["BLOCK_M"], tables["block_m"]),
            "BLOCK_N": min(config["BLOCK_N"], tables["block_n"])}


def _pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cols - t.shape[3])) if t.shape[3] < cols else t


def _bh_stride(t: torch.Tensor, dim: int) -> int:
    return 0 if t.shape[dim] == 1 else t.stride(dim)


def table_args(tables: dict | None, swept: str) -> tuple[list, dict]:
    """Positional arguments and constexprs of a block-table kernel sweeping ``swept``
    (``([], {})`` without tables: a kernel with another plan)."""
    if not tables:
        return [], {}
    num, idx, full_num, full_idx = (tables.get(k) for k in TABLE_KEYS[swept])
    if full_num is None:  # no full blocks: an empty list per row
        full_num, full_idx = torch.zeros_like(num), idx[..., :1]
    if num.shape[:2] != full_num.shape[:2] or idx.shape[:2] != full_idx.shape[:2]:
        raise LaunchError("block_tables: partial and full lists must broadcast alike over B and H")
    cols = max(idx.shape[3], full_idx.shape[3])
    num, full_num = num.contiguous(), full_num.contiguous()
    idx, full_idx = _pad_cols(idx, cols).contiguous(), _pad_cols(full_idx, cols).contiguous()
    rows_cols = (tables["block_m"], tables["block_n"]) if swept == "keys" else (tables["block_n"], tables["block_m"])
    args = [num, idx, full_num, full_idx, _bh_stride(num, 0), _bh_stride(num, 1), _bh_stride(idx, 0),
            _bh_stride(idx, 1), cols]
    return args, {"TBL_ROW": rows_cols[0], "TBL_COL": rows_cols[1]}
