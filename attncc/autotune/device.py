"""Who is running: GPU identity (name, compute capability) and the library versions in cache keys.

Without a CUDA device the identity is ``("cpu-interpreter", "none")`` so that CPU runs never pick
a config tuned on a GPU.  Offline tuning for a target uses ``("offline", "sm_90")``: such entries are
never confused with measurements on a real device.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

CPU_NAME = "cpu-interpreter"
CPU_CAPABILITY = "none"
OFFLINE_NAME = "offline"


class GpuIdentity(NamedTuple):
    """``name`` as the driver reports it, ``capability`` as a target string (``"sm_90"``)."""

    name: str
    capability: str

    @property
    def target(self) -> str | None:
        """The compile target of this device, ``None`` for the CPU interpreter."""
        return None if self.capability == CPU_CAPABILITY else self.capability

    def __str__(self) -> str:
        return f"{self.name} ({self.capability})"


def cuda_available() -> bool:
    """True when torch sees a usable CUDA (or ROCm) device."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def current_identity() -> GpuIdentity:
    """The identity of the current device (device 0 of torch's current device), memoized."""
    if not cuda_available():
        return GpuIdentity(CPU_NAME, CPU_CAPABILITY)
    import torch

    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    if getattr(torch.version, "hip", None):
        arch = getattr(torch.cuda.get_device_properties(index), "gcnArchName", "gfx")
        return GpuIdentity(name, str(arch).split(":")[0])
    major, minor = torch.cuda.get_device_capability(index)
    return GpuIdentity(name, f"sm_{major}{minor}")


def offline_identity(target: str) -> GpuIdentity:
    """The identity under which offline (static) rankings for ``target`` are stored."""
    return GpuIdentity(OFFLINE_NAME, target)


@functools.lru_cache(maxsize=1)
def triton_version() -> str:
    try:
        import triton
    except ImportError:  # pragma: no cover - triton is a dependency
        return "none"
    return str(triton.__version__)


def attncc_version() -> str:
    from attncc.version import __version__

    return __version__
