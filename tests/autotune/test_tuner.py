"""The tuning loop with an injected deterministic timer, and offline static ranking."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import optuna
import pytest
from optuna.trial import TrialState

from attncc.autotune import SPACES, CacheEntry, TuneKey, TuningCache, lookup_config, lookup_stats, tune
from attncc.autotune.cost_model import estimate
from attncc.autotune.device import GpuIdentity, current_identity
from attncc.autotune.progress import Progress
from attncc.autotune.space import default_config
from attncc.autotune.storage import optuna_storage, resolve_storage_url
from attncc.autotune.tunable import Shape
from attncc.errors import AttnccError

from .fakes import (
    MAX_SHARED,
    OPTIMUM,
    FakeTimer,
    FakeTunable,
    compile_fails,
    compiler_crashes,
    fake_registers,
    fake_shared,
    fake_time,
    subspace,
)

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "sm_90")
SHAPE = Shape.of(2, 8, 1024, 1024, 64)


def statically_pruned(config: Mapping[str, int], head_dim: int, target: str) -> bool:
    """The fake's ground truth: no compile, spills, or shared memory over the target's limit."""
    return (
        compile_fails(config)
        or compiler_crashes(config)
        or fake_registers(config, head_dim) > 255
        or fake_shared(config, head_dim) > MAX_SHARED[target]
    )


def study_trials(url: str, tunable: FakeTunable, shape: Shape, identity: GpuIdentity) -> list:
    name = TuneKey.for_shape(tunable.spec_hash, tunable.kind, shape, "fp16", identity).study_name(
        tunable.spec_name, shape
    )
    study = optuna.load_study(study_name=name, storage=optuna_storage(resolve_storage_url(url)))
    return study.get_trials(deepcopy=False)


def test_online_tuning_finds_the_known_optimum(sqlite_url: str) -> None:
    tunable, timer = FakeTunable(), FakeTimer()
    result = tune(tunable, SHAPE, "fp16", trials=40, storage_url=sqlite_url, timer=timer, target="sm_90",
                  identity=H100, seed=0, progress=False)
    assert result.best_config == OPTIMUM
    assert result.best_value == pytest.approx(1.0)
    assert result.mode == "online" and result.metric == "time_ms"
    # static pruning ran first on every candidate and saved the pruned ones from timing
    expected_pruned = sum(statically_pruned(c, 64, "sm_90") for c in SPACES["fwd"].enumerate())
    assert result.candidates == len(SPACES["fwd"])
    assert result.pruned == result.saved_from_timing == expected_pruned > 0
    assert tunable.aot_calls == result.candidates
    assert not any(statically_pruned(c, 64, "sm_90") for c in timer.calls)
    assert result.timed == len(timer.calls) <= 40
    # the heuristic default was enqueued and measured first
    assert timer.calls[0] == default_config("fwd", 64, "fp16")
    with TuningCache(sqlite_url) as cache:
        entry = cache.get(result.key)
    assert entry is not None and entry.config == OPTIMUM and entry.source == "online"
    assert entry.key.gpu_name == H100.name and entry.key.capability == "sm_90"


def test_failed_trials_are_recorded_and_the_run_goes_on(sqlite_url: str) -> None:
    space = subspace("fwd", BLOCK_M=(32, 64, 128), BLOCK_N=(32, 64), num_warps=(4, 8), num_stages=(2, 3))
    launch_fails = lambda c: c["num_warps"] == 8 and c["BLOCK_M"] == 32  # noqa: E731
    timing_fails = lambda c: c["BLOCK_M"] == 128 and c["BLOCK_N"] == 32  # noqa: E731
    tunable = FakeTunable(restricted=space, launch_fails=launch_fails)
    timer = FakeTimer(fails=timing_fails)
    result = tune(tunable, SHAPE, "fp16", trials=50, storage_url=sqlite_url, timer=timer, target="sm_90",
                  identity=H100, seed=1, progress=False)
    configs = space.enumerate()
    failing = [c for c in configs if launch_fails(c) or timing_fails(c)]
    assert result.failed == len(failing) == 8
    assert result.timed == len(configs) - len(failing)
    assert result.best_config == {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    failed = [t for t in study_trials(sqlite_url, tunable, SHAPE, H100) if t.state == TrialState.FAIL]
    assert len(failed) == 8
    reasons = {t.user_attrs["reason"].split(":")[0] for t in failed}
    assert reasons == {"RuntimeError"}
    assert any("out of resources" in t.user_attrs["reason"] for t in failed)
    assert any("illegal memory access" in t.user_attrs["reason"] for t in failed)
    # failures are data too: a second run neither launches nor times them again
    again = FakeTimer(fails=timing_fails)
    second = tune(tunable, SHAPE, "fp16", trials=10, storage_url=sqlite_url, timer=again, target="sm_90",
                  identity=H100, seed=2, progress=False)
    assert again.calls == [] and second.best_config == result.best_config


def test_compile_failures_proposed_by_tpe_are_failed_trials(sqlite_url: str) -> None:
    space = subspace("fwd", BLOCK_M=(16,), BLOCK_N=(32, 64, 128), num_warps=(2, 4), num_stages=(3, 4))
    tunable, timer = FakeTunable(restricted=space), FakeTimer()
    # few trials: one cost-model seed, then TPE's random start-up proposes from the whole space
    result = tune(tunable, SHAPE, "fp16", trials=4, storage_url=sqlite_url, timer=timer, target="sm_90",
                  identity=H100, seed=0, progress=False)
    assert result.pruned == 6 and result.timed + result.repeated == 4  # num_stages=4 does not compile
    assert all(c["num_stages"] == 3 for c in timer.calls)  # never launched, never timed
    trials = study_trials(sqlite_url, tunable, SHAPE, H100)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["reason"].startswith("does not compile") for t in failed)
    assert len({tuple(t.params.items()) for t in failed}) == len(failed)  # each recorded as FAIL once
    repeats = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["reason"].startswith("does not compile") for t in repeats)
    assert result.failed == len(failed) and result.best_config is not None


def test_repeated_configs_are_not_retimed(sqlite_url: str) -> None:
    space = subspace("fwd", BLOCK_M=(64, 128), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2, 3))
    tunable, timer = FakeTunable(restricted=space), FakeTimer()
    result = tune(tunable, SHAPE, "fp16", trials=30, storage_url=sqlite_url, timer=timer, target="sm_90",
                  identity=H100, seed=0, progress=False)
    keys = [tuple(c.values()) for c in timer.calls]
    assert len(keys) == len(set(keys)) == len(space) == 8  # each config timed exactly once
    assert result.repeated >= 1  # TPE proposed measured configs: answered from the study
    repeats = [t for t in result.trials if t.state == "repeat"]
    assert all(t.value == pytest.approx(fake_time(t.config)) for t in repeats)
    second_timer = FakeTimer()
    second = tune(tunable, SHAPE, "fp16", trials=30, storage_url=sqlite_url, timer=second_timer, target="sm_90",
                  identity=H100, seed=0, progress=False)
    assert second_timer.calls == [] and second.timed == 0
    assert second.best_config == result.best_config


def test_interrupted_run_keeps_its_trials_and_resumes(sqlite_url: str) -> None:
    tunable = FakeTunable()
    first = FakeTimer(interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        tune(tunable, SHAPE, "fp16", trials=20, storage_url=sqlite_url, timer=first, target="sm_90",
             identity=H100, seed=0, progress=False)
    trials = study_trials(sqlite_url, tunable, SHAPE, H100)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert [t.user_attrs["reason"] for t in trials if t.state == TrialState.FAIL] == ["interrupted"]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    key = TuneKey.for_shape(tunable.spec_hash, "fwd", SHAPE, "fp16", H100)
    with TuningCache(sqlite_url) as cache:
        saved = cache.get(key)
    assert saved is not None and saved.value == min(fake_time(c) for c in first.calls)
    second = FakeTimer()
    result = tune(tunable, SHAPE, "fp16", trials=10, storage_url=sqlite_url, timer=second, target="sm_90",
                  identity=H100, seed=0, progress=False)
    measured_before = {tuple(c.values()) for c in first.calls}
    assert measured_before.isdisjoint(tuple(c.values()) for c in second.calls)
    after = study_trials(sqlite_url, tunable, SHAPE, H100)
    assert len([t for t in after if t.state == TrialState.COMPLETE]) == 5 + 10
    assert result.best_value == min(fake_time(c) for c in first.calls + second.calls)


def test_online_without_a_gpu_or_timer_is_a_one_line_error() -> None:
    cpu = GpuIdentity("cpu-interpreter", "none")
    with pytest.raises(AttnccError, match="needs a CUDA GPU") as info:
        tune(FakeTunable(), SHAPE, "fp16", trials=5, identity=cpu, progress=False)
    assert "\n" not in str(info.value)


def test_tunable_space_must_stay_inside_the_kind_space() -> None:
    bad = FakeTunable(restricted=subspace("fwd", BLOCK_M=(64, 256)))
    with pytest.raises(AttnccError, match="outside SPACES"):
        tune(bad, SHAPE, "fp16", trials=5, timer=FakeTimer(), identity=H100, progress=False)


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    space = subspace("fwd", BLOCK_M=(64,), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2,))
    tune(FakeTunable(restricted=space), SHAPE, "fp16", trials=3, storage_url=sqlite_url, timer=FakeTimer(),
         target="sm_90", identity=H100, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "compile sm_90 [" in captured.err and "tune fake fwd [" in captured.err


def test_tuned_config_is_visible_to_the_runtime_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    space = subspace("fwd", BLOCK_M=(64, 128), BLOCK_N=(64,), num_warps=(4,), num_stages=(3,))
    tunable = FakeTunable(restricted=space)
    default = default_config("fwd", 64, "fp16")
    assert lookup_config(tunable.spec_hash, "fwd", SHAPE, "fp16", default) == default  # memoized miss
    tune(tunable, SHAPE, "fp16", trials=5, timer=FakeTimer(), progress=False)  # this machine's identity
    assert lookup_config(tunable.spec_hash, "fwd", SHAPE, "fp16", default) == OPTIMUM
    assert lookup_stats()["exact"] == 1 and lookup_stats()["default"] == 1
    assert TuneKey.for_shape(tunable.spec_hash, "fwd", SHAPE, "fp16").identity == current_identity()


# -- offline ------------------------------------------------------------------------------------


def test_offline_static_ranking_on_sm90(sqlite_url: str) -> None:
    shape = Shape.of(4, 16, 2048, 2048, 128)

    def never(config: Mapping[str, int]) -> bool:
        raise AssertionError("offline tuning must not launch anything")

    tunable = FakeTunable(launch_fails=never)
    result = tune(tunable, shape, "fp16", trials=1, storage_url=sqlite_url, offline_target="sm_90", progress=False)
    configs = SPACES["fwd"].enumerate()
    expected_pruned = [c for c in configs if statically_pruned(c, 128, "sm_90")]
    assert result.mode == "offline" and result.metric == "model_ms" and result.timed == 0
    assert result.candidates == len(configs) and result.pruned == len(expected_pruned)
    reasons = {t.reason.split(" ")[0] for t in result.trials if t.state == "pruned" and t.reason}
    assert reasons == {"spills", "shared", "does"}
    ranked = [t for t in result.trials if t.state == "ranked"]
    assert len(ranked) == len(configs) - len(expected_pruned)
    values = [t.value for t in ranked]
    assert values == sorted(values) and all(v is not None and math.isfinite(v) for v in values)
    assert result.best_config == ranked[0].config and result.best_value == values[0]
    # the ranking is the cost model's, candidate by candidate
    for record in (ranked[0], ranked[len(ranked) // 2], ranked[-1]):
        rep = tunable.aot_report(record.config, shape, "fp16", "sm_90")
        cost = estimate(rep, record.config, kind="fwd", shape=shape, dtype="fp16", flops=tunable.flops(shape),
                        bytes_moved=tunable.bytes_moved(shape, "fp16", record.config), target="sm_90")
        assert cost.ms == pytest.approx(record.value)
    # the best is stored under the offline identity, never under a real GPU
    assert (result.key.gpu_name, result.key.capability) == ("offline", "sm_90")
    with TuningCache(sqlite_url) as cache:
        entry = cache.get(result.key)
    assert entry is not None and entry.metric == "model_ms" and entry.config == result.best_config


def test_offline_pruning_depends_on_the_target() -> None:
    shape = Shape.of(4, 16, 2048, 2048, 128)
    sm90 = tune(FakeTunable(), shape, "fp16", trials=1, offline_target="sm_90", progress=False)
    sm80 = tune(FakeTunable(), shape, "fp16", trials=1, offline_target="sm_80", progress=False)
    configs = SPACES["fwd"].enumerate()
    assert sm80.pruned == sum(statically_pruned(c, 128, "sm_80") for c in configs) > sm90.pruned


def test_offline_unknown_target_is_a_one_line_error() -> None:
    with pytest.raises(AttnccError, match="unknown target 'sm_42'"):
        tune(FakeTunable(), SHAPE, "fp16", trials=1, offline_target="sm_42", progress=False)


def test_progress_in_a_log_file_stays_short() -> None:
    stream = io.StringIO()
    bar = Progress("compile sm_90", 500, stream=stream)
    for i in range(500):
        bar.update(i + 1, f"pruned {i // 7}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("compile sm_90 [########################] 500/500 pruned 71")


def test_online_run_starts_from_the_offline_ranking_of_its_target(sqlite_url: str) -> None:
    """Offline entries for this GPU's target (sm_90) are the study's first trials; another target's are not."""
    from .cache_cases import C1, C3

    tunable = FakeTunable()
    for target, config in (("sm_90", C3), ("sm_80", C1)):
        key = TuneKey.for_shape(tunable.spec_hash, "fwd", SHAPE, "fp16", GpuIdentity("offline", target))
        with TuningCache(sqlite_url) as cache:
            cache.put(CacheEntry(key, tunable.spec_name, config, 0.01, "model_ms", "offline", str(SHAPE)))
    assert C3 not in (default_config("fwd", SHAPE.D, "fp16"), OPTIMUM)
    result = tune(tunable, SHAPE, "fp16", trials=3, storage_url=sqlite_url, timer=FakeTimer(), target="sm_90",
                  identity=H100, seed=0, progress=False)
    # one seed: the sm_80 ranking does not seed an sm_90 run
    assert result.offline_seeds == 1 and "started from 1 offline-ranked config" in result.summary()
    trials = sorted(study_trials(sqlite_url, tunable, SHAPE, H100), key=lambda t: t.number)
    first = SPACES["fwd"].canonical({name: SPACES["fwd"].params[name][i] for name, i in trials[0].params.items()})
    assert first == C3, f"first trial {first}, expected the offline best {C3}"
