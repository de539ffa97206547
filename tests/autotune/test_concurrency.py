"""Four processes writing entries and tuning one study in the same database lose nothing."""

from __future__ import annotations

import multiprocessing

import optuna
from optuna.trial import TrialState

from attncc.autotune.cache import TuneKey, TuningCache
from attncc.autotune.storage import optuna_storage, resolve_storage_url

from .fakes import FakeTunable
from .workers import H100, SHAPE, shared_key, write_and_tune

WORKERS = 4
ENTRIES = 30
TRIALS = 6


def run_writers(url: str) -> None:
    """Start the writers as fresh processes and wait for them.

    A forkserver gives the isolation of ``spawn`` (nothing inherited from the test process: no
    open connections, no threads) but imports attncc (torch, triton) once in the server instead
    of once per writer; with plain ``spawn`` the eight imports dominate the test's run time.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["attncc.autotune", "optuna", "sqlalchemy", "psycopg"])
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=write_and_tune, args=(url, w, ENTRIES, TRIALS, barrier)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0] * WORKERS


def check_nothing_lost(url: str) -> None:
    with TuningCache(url) as cache:
        entries, bad = cache.entries()
        assert not bad
        written = [e for e in entries if e.spec_name == "writer"]
        assert len(written) == WORKERS * ENTRIES
        assert {e.key.spec_hash for e in written} == {f"w{w}-{i}" for w in range(WORKERS) for i in range(ENTRIES)}
        assert cache.get(shared_key()).value == 1.0  # worker 0's first write is the minimum
        tuned = cache.get(TuneKey.for_shape("concurrent", "fwd", SHAPE, "fp16", H100))
    assert tuned is not None and tuned.source == "online"
    tunable = FakeTunable(spec_hash="concurrent")
    name = TuneKey.for_shape("concurrent", "fwd", SHAPE, "fp16", H100).study_name(tunable.spec_name, SHAPE)
    study = optuna.load_study(study_name=name, storage=optuna_storage(resolve_storage_url(url)))
    trials = study.get_trials(deepcopy=False)
    # trials that count against a worker's budget: measured, failed at run time, or repeats
    counted = [t for t in trials if t.state == TrialState.COMPLETE or (
        t.state == TrialState.FAIL and not t.user_attrs["reason"].startswith("does not compile"))]
    assert len(counted) == WORKERS * TRIALS  # every worker's trials are in the one shared study
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert tuned.value == min(t.value for t in counted if t.state == TrialState.COMPLETE)


def test_four_sqlite_writers_lose_nothing(sqlite_url: str) -> None:
    run_writers(sqlite_url)
    check_nothing_lost(sqlite_url)


def test_four_postgres_writers_lose_nothing(postgres_url: str) -> None:
    run_writers(postgres_url)
    check_nothing_lost(postgres_url)
