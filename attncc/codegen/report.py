"""Resource report of one ahead-of-time compiled kernel (registers, spills, shared memory)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class KernelReport:
    """What ``ptxas``/``cuobjdump`` say about one kernel compiled for one target.

    ``shared_bytes`` is static + dynamic shared memory per program;
    ``max_shared_bytes`` the per-block limit of the target (e.g. 232448 on sm_90).
    """

    kernel: str
    target: str  # "sm_80", "sm_90", ...
    config: dict[str, Any]  # BLOCK_M, BLOCK_N, num_warps, num_stages, ...
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    max_shared_bytes: int
    uses_wgmma: bool
    wgmma_serialized: bool = False

    @property
    def spills(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes

    @property
    def fits(self) -> bool:
        """No spills and shared memory within the target's limit."""
        return self.spills == 0 and self.shared_bytes <= self.max_shared_bytes

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spills"] = self.spills
        d["fits"] = self.fits
        return d
