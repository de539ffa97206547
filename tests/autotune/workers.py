"""Entry points of the writer processes in the concurrency tests (spawned, so importable)."""

from __future__ import annotations

import os
from typing import Any

from attncc.autotune.cache import CacheEntry, TuneKey, TuningCache
from attncc.autotune.device import GpuIdentity
from attncc.autotune.tunable import Shape
from attncc.autotune.tuner import tune

from .fakes import FakeTimer, FakeTunable

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90")
SHAPE = Shape.of(2, 8, 1024, 1024, 64)
SHARED_SHAPE = Shape.of(1, 1, 64, 64, 64)
CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


def shared_key() -> TuneKey:
    return TuneKey.for_shape("shared", "fwd", SHARED_SHAPE, "fp16", H100)


def write_and_tune(url: str, worker: int, entries: int, trials: int, barrier: Any) -> None:
    """Write ``entries`` distinct entries plus one contended key, then tune the shared study."""
    os.environ.pop("ATTNCC_STORAGE", None)
    tunable = FakeTunable(spec_hash="concurrent")
    timer = FakeTimer()
    with TuningCache(url) as cache:
        barrier.wait(timeout=120)  # everyone hammers the database at the same moment
        for i in range(entries):
            key = TuneKey.for_shape(f"w{worker}-{i}", "fwd", SHAPE, "fp16", H100)
            cache.put(CacheEntry(key, "writer", CONFIG, 1.0 + i, shape=str(SHAPE)))
            # every worker also updates one shared key; the lowest value must win
            cache.put(CacheEntry(shared_key(), "shared", CONFIG, float(100 * worker + i + 1), shape="x"))
    tune(tunable, SHAPE, "fp16", trials=trials, storage_url=url, timer=timer, target="sm_90",
         identity=H100, seed=worker, progress=False)
