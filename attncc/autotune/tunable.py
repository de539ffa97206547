"""The contract between a compiled attncc kernel and the autotuner: ``Shape`` and ``Tunable``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from attncc.errors import InputError

if TYPE_CHECKING:
    from attncc.autotune.space import ConfigSpace
    from attncc.codegen.report import KernelReport


class Shape(NamedTuple):
    """Problem size: batch ``B``, heads ``H``, queries ``M``, keys ``N``, head dim ``D``, value dim ``E``.

    ``E`` defaults to ``D``; build with ``Shape.of(...)`` or :func:`parse_shape` to get that default.
    """

    B: int
    H: int
    M: int
    N: int
    D: int
    E: int

    @classmethod
    def of(cls, B: int, H: int, M: int, N: int, D: int, E: int | None = None) -> Shape:
        """Build a shape, ``E`` defaulting to ``D``; every dimension must be a positive int."""
        dims = (B, H, M, N, D, D if E is None else E)
        for name, value in zip(cls._fields, dims, strict=True):
            if type(value) is not int or value < 1:
                raise InputError(f"shape dimension {name} must be a positive integer, got {value!r}")
        return cls(*dims)

    def __str__(self) -> str:
        return ",".join(str(v) for v in self)


def parse_shape(text: str) -> Shape:
    """Parse ``"B,H,M,N,D"`` or ``"B,H,M,N,D,E"``; bad input raises a one-line ``InputError``."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (5, 6):
        raise InputError(f"shape {text!r} must be B,H,M,N,D or B,H,M,N,D,E (5 or 6 integers)")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"shape {text!r} must contain only integers") from None
    return Shape.of(*dims)


def as_shape(shape: Shape | tuple[int, ...] | str) -> Shape:
    """Accept a ``Shape``, a 5/6-tuple or a string."""
    if isinstance(shape, Shape):
        return shape
    if isinstance(shape, str):
        return parse_shape(shape)
    dims = tuple(shape)
    if len(dims) not in (5, 6):
        raise InputError(f"shape {dims!r} must have 5 or 6 dimensions")
    return Shape.of(*dims)


@runtime_checkable
class Tunable(Protocol):
    """What the compiler provides for one kernel (one spec, one kind) so that it can be tuned.

    ``aot_report`` compiles ahead of time for a target such as ``"sm_90"`` without a GPU and
    raises :class:`attncc.errors.CompileError` when the config does not compile.  ``make_runner``
    allocates CUDA inputs and returns a zero-argument callable that launches the kernel once; it
    (or the callable) raises on launch failure or when resources run out.

    Optional extras the tuner uses when present (not part of the required protocol):

    * ``aot_reports(configs, shape, dtype, target) -> list[KernelReport | Exception]``: compile
      all candidates in one job (e.g. one subprocess when this process runs Triton's
      interpreter), one outcome per config, in order;
    * ``num_programs(shape, config) -> int``: the grid size, when it differs from the kind's.
    """

    spec_hash: str
    spec_name: str
    kind: str

    def space(self) -> ConfigSpace: ...

    def flops(self, shape: Shape) -> float: ...

    def bytes_moved(self, shape: Shape, dtype: str, config: dict) -> float: ...

    def aot_report(self, config: dict, shape: Shape, dtype: str, target: str) -> KernelReport: ...

    def make_runner(self, config: dict, shape: Shape, dtype: str) -> Callable[[], object]: ...
