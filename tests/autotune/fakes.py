"""A deterministic, pure-Python Tunable and timer for tuner tests (no GPU, no compiler)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from attncc.autotune.space import SPACES, ConfigSpace
from attncc.autotune.tunable import Shape
from attncc.codegen.report import KernelReport
from attncc.errors import CompileError

MAX_SHARED = {"sm_80": 166912, "sm_90": 232448}
OPTIMUM = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def subspace(kind: str, **values: tuple[int, ...]) -> ConfigSpace:
    """``SPACES[kind]`` restricted to some values (same constraint); a parameter with a default
    (``USE_TMA``) is held at its default unless given."""
    base = SPACES[kind]
    params = {name: values.get(name, (base.defaults[name],) if name in base.defaults else allowed)
              for name, allowed in base.params.items()}
    return ConfigSpace(params, valid=base.valid, defaults=base.defaults)


def fake_registers(config: Mapping[str, int], head_dim: int) -> int:
    """Accumulators of the BLOCK_M x D output and BLOCK_M x BLOCK_N scores per thread, plus 40."""
    threads = 32 * config["num_warps"]
    return 40 + (config["BLOCK_M"] * head_dim + config["BLOCK_M"] * config["BLOCK_N"]) // threads


def fake_shared(config: Mapping[str, int], head_dim: int, elem: int = 2) -> int:
    """Q tile once plus K and V tiles per pipeline stage."""
    return elem * (config["BLOCK_M"] * head_dim + 2 * config["num_stages"] * config["BLOCK_N"] * head_dim)


def compile_fails(config: Mapping[str, int]) -> bool:
    """A synthetic compiler bug: BLOCK_M=16 with four stages does not compile."""
    return config.get("BLOCK_M") == 16 and config["num_stages"] == 4


def compiler_crashes(config: Mapping[str, int]) -> bool:
    """A synthetic compiler crash (not a CompileError): BLOCK_N=16, BLOCK_M=128, 8 warps."""
    return config.get("BLOCK_N") == 16 and config.get("BLOCK_M") == 128 and config["num_warps"] == 8


@dataclass
class FakeTunable:
    """Pure-Python stand-in for a compiled fwd kernel (FLOPs and bytes of real attention)."""

    kind: str = "fwd"
    spec_hash: str = "fakehash0123"
    spec_name: str = "fake"
    restricted: ConfigSpace | None = None
    launch_fails: Callable[[Mapping[str, int]], bool] = field(default=lambda c: False)
    aot_calls: int = 0

    def space(self) -> ConfigSpace:
        return self.restricted or SPACES[self.kind]

    def flops(self, shape: Shape) -> float:
        return 4.0 * shape.B * shape.H * shape.M * shape.N * shape.D

    def bytes_moved(self, shape: Shape, dtype: str, config: dict) -> float:
        elem = 4 if dtype == "fp32" else 2
        q_blocks = math.ceil(shape.M / config["BLOCK_M"])
        per_head = shape.M * shape.D + shape.M * shape.E + q_blocks * shape.N * (shape.D + shape.E)
        return float(elem * shape.B * shape.H * per_head)

    def aot_report(self, config: dict, shape: Shape, dtype: str, target: str) -> KernelReport:
        self.aot_calls += 1
        if compile_fails(config):
            raise CompileError(f"synthetic compile failure for {config}")
        if compiler_crashes(config):
            raise RuntimeError("synthetic compiler crash\nwith a second line")
        regs = fake_registers(config, shape.D)
        spill = max(0, regs - 255) * 4
        shared = fake_shared(config, shape.D, 4 if dtype == "fp32" else 2)
        return KernelReport("fake", target, dict(config), min(regs, 255), spill, spill, shared,
                            MAX_SHARED.get(target, 232448), uses_wgmma=config["num_warps"] >= 4)

    def make_runner(self, config: dict, shape: Shape, dtype: str) -> Callable[[], object]:
        if self.launch_fails(config):
            raise RuntimeError(f"out of resources: shared memory, Required: {fake_shared(config, shape.D)}")
        frozen = dict(config)
        return lambda: frozen


def fake_time(config: Mapping[str, int]) -> float:
    """A smooth landscape with a unique minimum at ``OPTIMUM`` (1.0 ms)."""
    return (
        1.0
        + abs(math.log2(config["BLOCK_M"]) - 6)
        + 0.5 * abs(math.log2(config["BLOCK_N"]) - 6)
        + 0.3 * abs(config["num_warps"] - 4) / 2
        + 0.1 * abs(config["num_stages"] - 3)
        + 0.2 * (config.get("USE_TMA", 1) == 0)  # the pointer path is slower; an omitted USE_TMA means 1
    )


class FakeTimer:
    """Calls the runner, derives a time from the config it returns; counts calls.

    ``interrupt_after``: raise KeyboardInterrupt on call number ``interrupt_after + 1``.
    ``fails``: configs for which timing raises (e.g. an illegal memory access).
    """

    def __init__(self, interrupt_after: int | None = None,
                 fails: Callable[[Mapping[str, int]], bool] = lambda c: False) -> None:
        self.calls: list[dict[str, int]] = []
        self.interrupt_after = interrupt_after
        self.fails = fails

    def __call__(self, runner: Callable[[], object]) -> float:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        config = runner()
        assert isinstance(config, dict)
        self.calls.append(config)
        if self.fails(config):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return fake_time(config)
