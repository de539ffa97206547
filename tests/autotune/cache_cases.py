"""Storage checks shared by the SQLite and the PostgreSQL tests (each takes a storage URL)."""

from __future__ import annotations

from attncc.autotune import lookup_config, lookup_stats
from attncc.autotune.cache import CacheEntry, TuneKey, TuningCache
from attncc.autotune.device import GpuIdentity, current_identity
from attncc.autotune.space import default_config
from attncc.autotune.tunable import Shape

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90")
A100 = GpuIdentity("NVIDIA A100-SXM4-80GB", "sm_80")
C1 = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
C2 = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
C3 = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1}


def entry(shape: Shape, config: dict[str, int], value: float = 1.0, *, identity: GpuIdentity | None = None,
          dtype: str = "fp16", spec_hash: str = "spec0", kind: str = "fwd") -> CacheEntry:
    key = TuneKey.for_shape(spec_hash, kind, shape, dtype, identity or current_identity())
    return CacheEntry(key, "causal", config, value, shape=str(shape))


def check_put_get_and_keep_better(url: str) -> None:
    shape = Shape.of(1, 8, 1000, 1000, 64)
    with TuningCache(url) as cache:
        assert cache.put(entry(shape, C1, 2.0, identity=H100))
        assert cache.get(entry(shape, C1, identity=H100).key).config == C1
        assert not cache.put(entry(shape, C2, 3.0, identity=H100))  # worse: kept the better one
        assert cache.get(entry(shape, C1, identity=H100).key).value == 2.0
        assert cache.put(entry(shape, C2, 1.5, identity=H100))  # better: replaced
        assert cache.get(entry(shape, C1, identity=H100).key).config == C2
        assert cache.put(entry(shape, C3, 9.0, identity=H100), keep_better=False)
        assert cache.get(entry(shape, C1, identity=H100).key).config == C3
        # same shape, another GPU: another key
        assert cache.get(entry(shape, C1, identity=A100).key) is None
        assert cache.count() == 1


def check_nearest_bucket(url: str) -> None:
    with TuningCache(url) as cache:
        cache.put(entry(Shape.of(1, 8, 512, 512, 64), C1, identity=H100))
        cache.put(entry(Shape.of(1, 8, 8192, 8192, 64), C2, identity=H100))
        cache.put(entry(Shape.of(1, 8, 2048, 2048, 128), C3, identity=H100))  # other head dim
        cache.put(entry(Shape.of(1, 8, 2048, 2048, 64), C3, identity=A100))  # other GPU
        probe = entry(Shape.of(1, 8, 1500, 1500, 64), C1, identity=H100).key  # bucket M=N=2048
        assert cache.get(probe) is None
        assert cache.nearest(probe).config == C1  # 512 is 2 octaves away, 8192 is 4
        far = entry(Shape.of(1, 8, 16000, 16000, 64), C1, identity=H100).key  # bucket 16384
        assert cache.nearest(far).config == C2
        other_dtype = entry(Shape.of(1, 8, 1500, 1500, 64), C1, identity=H100, dtype="bf16").key
        assert cache.nearest(other_dtype) is None


def check_lookup_order(url: str) -> None:
    """exact -> nearest bucket on the same GPU -> default, with counters."""
    default = default_config("fwd", 64, "fp16")
    with TuningCache(url) as cache:
        cache.put(entry(Shape.of(2, 8, 1024, 1024, 64), C1))
        cache.put(entry(Shape.of(2, 8, 4096, 4096, 64), C2))
        cache.put(entry(Shape.of(2, 8, 256, 256, 128), C3, identity=A100 if current_identity() != A100 else H100))
    assert lookup_config("spec0", "fwd", Shape.of(2, 8, 1000, 1000, 64), "fp16", default) == C1
    assert lookup_config("spec0", "fwd", Shape.of(2, 8, 3000, 3000, 64), "fp16", default) == C2
    assert lookup_config("spec0", "fwd", Shape.of(2, 8, 16384, 16384, 64), "fp16", default) == C2  # nearest
    assert lookup_config("spec0", "fwd", Shape.of(2, 8, 256, 256, 128), "fp16", default) == default  # other GPU
    assert lookup_config("spec0", "fwd", Shape.of(2, 8, 1024, 1024, 64), "bf16", default) == default
    assert lookup_config("other", "fwd", Shape.of(2, 8, 1024, 1024, 64), "fp16", default) == default
    assert lookup_config("spec0", "bwd", Shape.of(2, 8, 1024, 1024, 64), "fp16", default) == default
    stats = lookup_stats()
    assert (stats["exact"], stats["nearest"], stats["default"]) == (2, 1, 4)
    assert stats["hits"] == 3 and stats["misses"] == 4 and stats["errors"] == 0
