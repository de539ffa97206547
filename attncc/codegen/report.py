"""Resource report of one ahead-of-time compiled kernel (registers, spills, shared memory, tensor cores)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


def _fraction(wgmma: int | None, mma_sync: int | None) -> float | None:
    if wgmma is None or mma_sync is None or wgmma + mma_sync == 0:
        return None
    return wgmma / (wgmma + mma_sync)


@dataclass(frozen=True)
class KernelReport:
    """What ``ptxas``/``cuobjdump`` say about one kernel compiled for one target.

    ``shared_bytes`` is static + dynamic shared memory per program;
    ``max_shared_bytes`` the per-block limit of the target (e.g. 232448 on sm_90).
    ``hgmma``/``hmma`` count the SASS wgmma and mma.sync instructions of the whole kernel, the
    ``loop_*`` fields those of its key loop (see :mod:`attncc.codegen.sass`); ``None`` when the
    SASS was not read, or (``loop_*``) when no loop issues tensor-core instructions.
    ``tma``/``cp_async``/``ldg`` (and ``loop_*``) count the global loads by path: TMA
    (``UTMALDG``/``UBLKCP``/``UTMAPF``), ``cp.async`` (``LDGSTS``) and plain ``LDG``.
    ``row_tile``/``swept_tile`` name the config keys of the key loop's rows and of the tile it
    sweeps per iteration (from the schedule: :meth:`attncc.schedules.base.Schedule.loop_tiles`);
    ``None`` when the kernel has no tile loop.  See :attr:`loop_metric` and ``docs/performance.md``.
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
    sass_instructions: int | None = None
    hgmma: int | None = None
    hmma: int | None = None
    loop_instructions: int | None = None
    loop_hgmma: int | None = None
    loop_hmma: int | None = None
    tma: int | None = None
    cp_async: int | None = None
    ldg: int | None = None
    loop_tma: int | None = None
    loop_cp_async: int | None = None
    loop_ldg: int | None = None
    row_tile: str | None = None
    swept_tile: str | None = None

    @property
    def spills(self) -> int:
        return self.spill_store_bytes + self.spill_load_bytes

    @property
    def fits(self) -> bool:
        """No spills and shared memory within the target's limit."""
        return self.spills == 0 and self.shared_bytes <= self.max_shared_bytes

    @property
    def wgmma_fraction(self) -> float | None:
        """HGMMA / (HGMMA + HMMA) over the kernel; None without SASS counts or tensor-core instructions."""
        return _fraction(self.hgmma, self.hmma)

    @property
    def loop_wgmma_fraction(self) -> float | None:
        """HGMMA / (HGMMA + HMMA) in the key loop (one iteration)."""
        return _fraction(self.loop_hgmma, self.loop_hmma)

    @property
    def loop_metric(self) -> float | None:
        """Key-loop SASS instructions x num_warps / swept tile x 128 / row tile: the instructions
        one program issues per swept column (a key, for the forward) for 128 rows (queries).
        ``None`` without a key loop, tile names or their sizes in the config."""
        tiles = (self.config.get(self.row_tile or ""), self.config.get(self.swept_tile or ""))
        warps = self.config.get("num_warps")
        if self.loop_instructions is None or warps is None or not all(isinstance(t, int) and t > 0 for t in tiles):
            return None
        rows, swept = tiles
        return self.loop_instructions * warps / swept * 128 / rows

    @property
    def loads(self) -> str | None:
        """How the kernel reads global memory: ``"tma"`` if it issues any TMA load, else
        ``"cp.async"`` if any ``LDGSTS``, else ``"ldg"`` if any ``LDG``; None without SASS counts."""
        if self.tma is None or self.cp_async is None or self.ldg is None:
            return None
        if self.tma:
            return "tma"
        return "cp.async" if self.cp_async else ("ldg" if self.ldg else "none")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spills"] = self.spills
        d["fits"] = self.fits
        d["wgmma_fraction"] = self.wgmma_fraction
        d["loop_wgmma_fraction"] = self.loop_wgmma_fraction
        d["loop_metric"] = self.loop_metric
        d["loads"] = self.loads
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelReport:
        """Inverse of :meth:`to_json` (the derived keys are dropped)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------- table

_COLUMNS = ("kernel", "target", "config", "regs", "spills st/ld", "smem/limit", "wgmma", "fits")
_SASS_COLUMNS = ("kernel", "target", "config", "regs", "spills st/ld", "smem/limit", "wgmma/mma",
                 "loop wgmma/mma", "loop ins", "metric", "loads", "loop tma/cp.async/ldg", "fits")
_RIGHT_ALIGNED = {"regs", "spills st/ld", "smem/limit", "wgmma/mma", "loop wgmma/mma", "loop ins", "metric",
                  "loop tma/cp.async/ldg"}


def _config_text(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _wgmma_text(report: KernelReport) -> str:
    if not report.uses_wgmma:
        return "no"
    return "serialized" if report.wgmma_serialized else "yes"


def _counts_text(wgmma: int | None, mma_sync: int | None, serialized: bool = False) -> str:
    """``"4/32 11%"``: wgmma and mma.sync instructions and the wgmma share; ``"-"`` when unknown."""
    if wgmma is None or mma_sync is None:
        return "-"
    fraction = _fraction(wgmma, mma_sync)
    text = f"{wgmma}/{mma_sync}" + ("" if fraction is None else f" {round(100 * fraction)}%")
    return text + (" serialized" if serialized and wgmma else "")


def _row(report: KernelReport, sass: bool) -> tuple[str, ...]:
    head = (report.kernel, report.target, _config_text(report.config), str(report.registers),
            f"{report.spill_store_bytes}/{report.spill_load_bytes}",
            f"{report.shared_bytes}/{report.max_shared_bytes}")
    fits = "yes" if report.fits else "NO"
    if not sass:
        return (*head, _wgmma_text(report), fits)
    loop_ins = "-" if report.loop_instructions is None else str(report.loop_instructions)
    metric = "-" if report.loop_metric is None else f"{report.loop_metric:.1f}"
    loop_loads = (report.loop_tma, report.loop_cp_async, report.loop_ldg)
    loads_text = "-" if None in loop_loads else "/".join(str(n) for n in loop_loads)
    return (*head, _counts_text(report.hgmma, report.hmma, report.wgmma_serialized),
            _counts_text(report.loop_hgmma, report.loop_hmma), loop_ins, metric, report.loads or "-",
            loads_text, fits)


def format_reports(reports: list[KernelReport]) -> str:
    """An aligned text table, one kernel per row, and a one-line summary (bytes throughout).

    When any report carries SASS counts, the ``wgmma`` yes/no column becomes the wgmma/mma.sync
    instruction counts of the kernel and of its key loop, plus the key loop's instruction count,
    the loop metric (:attr:`KernelReport.loop_metric`), the kernel's load path and the key loop's
    TMA / cp.async / plain loads.
    """
    sass = any(r.hgmma is not None for r in reports)
    columns = _SASS_COLUMNS if sass else _COLUMNS
    rows = [columns, *(_row(r, sass) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]

    def line(row: tuple[str, ...]) -> str:
        cells = (
            cell.rjust(w) if col in _RIGHT_ALIGNED else cell.ljust(w)
            for col, cell, w in zip(columns, row, widths, strict=True)
        )
        return "  ".join(cells).rstrip()

    misfits = sum(not r.fits for r in reports)
    out = [line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])]
    out.append(f"{len(reports)} kernel(s), {misfits} not fitting (spills or shared memory over the limit)")
    return "\n".join(out)
