"""Tensor-core instruction counts from the SASS of a cubin (``cuobjdump -sass``), without a GPU.

Hopper warpgroup MMA shows up in SASS as ``HGMMA`` (PTX ``wgmma.mma_async``), the older warp-level
``mma.sync`` as ``HMMA``.  A kernel may mix both: Triton lowers each ``tl.dot`` on its own, so
e.g. a backward kernel can issue a few ``HGMMA`` and many ``HMMA`` per iteration.  Counting both,
in the whole kernel and in its key loop, says how much of the tensor-core work is wgmma.

A loop is a backward branch (``BRA`` to a lower address); its body is the address range from the
target to the branch.  The key loop is the smallest *innermost* loop (one containing no other
loop) that issues tensor-core instructions: in attncc's kernels the mask-free tiles' loop, since
the masked loops around it carry the mask arithmetic on top of the same tile work (checked for
the built-in ``causal`` spec against nvdisasm's line information).

Global loads are counted by how they move data: ``UTMALDG``/``UBLKCP``/``UTMAPF`` are the tensor
memory accelerator (TMA: tensor-descriptor loads, bulk copies, prefetches), ``LDGSTS`` is
``cp.async`` (a pointer load straight into shared memory) and ``LDG`` a plain pointer load into
registers.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton

from attncc.errors import CompileError

__all__ = ["SassStats", "cuobjdump_sass", "parse_sass"]

WGMMA_OPCODE = "HGMMA"
MMA_SYNC_OPCODE = "HMMA"
TMA_OPCODES = frozenset({"UTMALDG", "UBLKCP", "UTMAPF"})
CP_ASYNC_OPCODE = "LDGSTS"
LOAD_OPCODE = "LDG"

# "/*0ca0*/   @!P3 BRA 0x2070 ;" -> address, opcode (without its .modifiers), operands
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_]*)\S*\s*([^;]*);")
_BRANCH_TARGET = re.compile(r"^0x([0-9a-f]+)\s*$")


@dataclass(frozen=True)
class SassStats:
    """Tensor-core instructions and global loads of one kernel, and of its key loop (``None``: no
    such loop).  ``tma``/``cp_async``/``ldg``: TMA, ``LDGSTS`` and ``LDG`` instructions."""

    instructions: int
    hgmma: int
    hmma: int
    loop_instructions: int | None
    loop_hgmma: int | None
    loop_hmma: int | None
    tma: int = 0
    cp_async: int = 0
    ldg: int = 0
    loop_tma: int | None = None
    loop_cp_async: int | None = None
    loop_ldg: int | None = None


@dataclass(frozen=True)
class _Instruction:
    address: int
    opcode: str
    operands: str


def _instructions(sass: str) -> list[_Instruction]:
    out = []
    for line in sass.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            out.append(_Instruction(int(match.group(1), 16), match.group(2), match.group(3).strip()))
    return out


def _loops(instructions: list[_Instruction]) -> list[tuple[int, int]]:
    """(first, last) addresses of every loop body; the ``BRA`` to itself after ``EXIT`` is no loop."""
    loops = []
    for ins in instructions:
        target = _BRANCH_TARGET.match(ins.operands) if ins.opcode == "BRA" else None
        if target and int(target.group(1), 16) < ins.address:
            loops.append((int(target.group(1), 16), ins.address))
    return loops


def _innermost(loops: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [a for a in loops if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]


def _loads(opcodes: list[str]) -> tuple[int, int, int]:
    """(TMA, cp.async, plain) global loads among ``opcodes``."""
    tma = sum(op in TMA_OPCODES for op in opcodes)
    return tma, opcodes.count(CP_ASYNC_OPCODE), opcodes.count(LOAD_OPCODE)


def parse_sass(sass: str) -> SassStats:
    """Count ``HGMMA``/``HMMA`` and global loads in ``cuobjdump -sass`` text of one kernel, whole
    and in its key loop."""
    instructions = _instructions(sass)
    opcodes = [i.opcode for i in instructions]
    bodies = []
    for first, last in _innermost(_loops(instructions)):
        body = [i.opcode for i in instructions if first <= i.address <= last]
        if WGMMA_OPCODE in body or MMA_SYNC_OPCODE in body:
            bodies.append(body)
    key = min(bodies, key=len, default=None)
    tma, cp_async, ldg = _loads(opcodes)
    loop_loads = (None, None, None) if key is None else _loads(key)
    return SassStats(
        instructions=len(opcodes),
        hgmma=opcodes.count(WGMMA_OPCODE),
        hmma=opcodes.count(MMA_SYNC_OPCODE),
        loop_instructions=None if key is None else len(key),
        loop_hgmma=None if key is None else key.count(WGMMA_OPCODE),
        loop_hmma=None if key is None else key.count(MMA_SYNC_OPCODE),
        tma=tma, cp_async=cp_async, ldg=ldg,
        loop_tma=loop_loads[0], loop_cp_async=loop_loads[1], loop_ldg=loop_loads[2],
    )


def cuobjdump_sass(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin, with the ``cuobjdump`` shipped in Triton's wheel."""
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception as exc:
        raise CompileError(f"cuobjdump not found: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="attncc-sass-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        proc = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exited with {proc.returncode}"])[0]
        raise CompileError(f"cuobjdump -sass: {detail}")
    return proc.stdout
