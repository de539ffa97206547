"""Find the best config of a :class:`~attncc.autotune.tunable.Tunable` for one shape and dtype.

Online (a GPU, or an injected ``timer``):

1. enumerate the kind's config space;
2. static pruning: compile every candidate ahead of time for the device's target and drop those
   that fail to compile, spill registers, overflow shared memory or cannot fit one program on an
   SM (the count is reported as candidates saved from timing);
3. an Optuna TPE study over the space (each parameter an ordinal index into its allowed values)
   stored in the same database as the cache, named from the cache key and the exact shape and
   opened with ``load_if_exists`` so interrupted runs and other machines continue it;
   enqueued first: the configs offline runs ranked best for this GPU's target (stored or imported
   entries, :func:`attncc.autotune.history.offline_seeds`), the heuristic default, the cost model's best;
4. each suggested config: statically pruned -> recorded PRUNED, no timing; measured before (in
   this run, an earlier one or on another machine) -> the stored value is reused, not re-timed;
   otherwise timed with ``timer`` (``triton.testing.do_bench``); compile or launch failures are
   recorded as FAIL trials and the run goes on.  Every trial is committed as it finishes;
5. the best complete trial of the study is written to the tuning cache.

Offline (``offline_target="sm_90"``): no timing; candidates are pruned statically and ranked by
:mod:`attncc.autotune.cost_model`; the best is stored under the identity ``offline/<target>``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attncc.autotune.cache import CacheEntry, TuneKey, TuningCache
from attncc.autotune.cost_model import CostEstimate, estimate, target_spec
from attncc.autotune.device import GpuIdentity, current_identity, offline_identity
from attncc.autotune.history import offline_seeds
from attncc.autotune.lookup import invalidate_lookup_cache
from attncc.autotune.progress import Progress
from attncc.autotune.space import SPACES, Config, ConfigSpace, config_to_str, default_config
from attncc.autotune.storage import (
    LOG,
    StorageError,
    ask_lock,
    display_url,
    one_line,
    optuna_storage,
    resolve_storage_url,
    retrying,
)
from attncc.autotune.tunable import Shape, Tunable, as_shape
from attncc.errors import AttnccError, CompileError, InputError

if TYPE_CHECKING:
    from attncc.codegen.report import KernelReport

Timer = Callable[[Callable[[], object]], float]
Measured = tuple[float | None, str | None, int]  # (value or None if failed, failure reason, trial number)
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrialRecord:
    """One candidate's fate: ``timed``, ``failed``, ``repeat``, ``pruned`` or ``ranked``."""

    config: Config
    state: str
    value: float | None = None
    reason: str | None = None
    number: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "config": dict(self.config), "state": self.state,
                "value": self.value, "reason": self.reason}


@dataclass
class TuneResult:
    """Outcome of :func:`tune`; ``best_value`` is ms measured (online) or estimated (offline)."""

    spec_name: str
    kind: str
    shape: Shape
    dtype: str
    mode: str
    target: str | None
    key: TuneKey
    storage: str
    study_name: str | None
    best_config: Config | None
    best_value: float | None
    metric: str
    candidates: int
    pruned: int
    timed: int = 0
    failed: int = 0
    repeated: int = 0
    skipped: int = 0
    offline_seeds: int = 0
    stored: bool = False
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def saved_from_timing(self) -> int:
        """Candidates the static pruning removed before any timing."""
        return self.pruned

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec_name, "kind": self.kind, "shape": str(self.shape), "dtype": self.dtype,
            "mode": self.mode, "target": self.target, "key": self.key.to_json(), "storage": self.storage,
            "study": self.study_name, "best_config": self.best_config, "best_value": self.best_value,
            "metric": self.metric, "candidates": self.candidates, "pruned_statically": self.pruned,
            "timed": self.timed, "failed": self.failed, "repeated": self.repeated,
            "skipped_pruned_suggestions": self.skipped, "offline_seeds": self.offline_seeds, "stored": self.stored,
            "trials": [t.to_json() for t in self.trials],
        }

    def summary(self) -> str:
        """A few human-readable lines for the terminal."""
        unit = "ms" if self.metric == "time_ms" else "ms (cost model)"
        best = (f"{config_to_str(self.best_config)}  {self.best_value:.4g} {unit}"
                if self.best_config is not None and self.best_value is not None else "none (every candidate failed)")
        lines = [
            f"{self.spec_name} {self.kind} shape={self.shape} {self.dtype} ({self.mode}"
            + (f", target {self.target})" if self.target else ")"),
            f"best: {best}",
            f"candidates {self.candidates}, pruned statically {self.pruned} (saved from timing), "
            f"timed {self.timed}, failed {self.failed}, repeats not re-timed {self.repeated}"
            + (f", started from {self.offline_seeds} offline-ranked config(s)" if self.offline_seeds else ""),
            f"storage: {self.storage}" + (" (stored)" if self.stored else " (not stored)"),
        ]
        return "\n".join(lines)


@dataclass
class Candidate:
    """A config with its ahead-of-time report, cost estimate and the reason it was pruned, if any."""

    config: Config
    report: KernelReport | None = None
    cost: CostEstimate | None = None
    reason: str | None = None


# -- static pruning and ranking ----------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _report_problem(report: KernelReport) -> str | None:
    if report.spills:
        return f"spills {report.spills} bytes ({report.registers} registers)"
    if report.shared_bytes > report.max_shared_bytes:
        return f"shared memory {report.shared_bytes} > {report.max_shared_bytes} bytes"
    return None


def _judge(candidate: Candidate, outcome: object) -> Candidate:
    """Record an ahead-of-time outcome (a report or the exception it raised) on ``candidate``."""
    if isinstance(outcome, CompileError):
        first = str(outcome).splitlines()[0][:300] if str(outcome) else "CompileError"
        candidate.reason = f"does not compile: {first}"
    elif isinstance(outcome, BaseException):
        candidate.reason = f"does not compile: {_short(outcome)}"
    elif hasattr(outcome, "spills") and hasattr(outcome, "shared_bytes"):
        candidate.report = outcome  # type: ignore[assignment]
        candidate.reason = _report_problem(candidate.report)  # type: ignore[arg-type]
    else:
        candidate.reason = f"does not compile: aot_report returned {type(outcome).__name__}"
    return candidate


def _batch_outcomes(batch: Callable[..., Any], configs: list[Config], shape: Shape, dtype: str,
                    target: str) -> list[object]:
    """Outcomes from an optional ``aot_reports`` (one compile job for all configs, e.g. a subprocess)."""
    try:
        outcomes = list(batch([dict(c) for c in configs], shape, dtype, target))
    except Exception as exc:  # the whole batch failed: every candidate shares the reason
        return [exc] * len(configs)
    if len(outcomes) != len(configs):
        return [CompileError(f"aot_reports returned {len(outcomes)} results for {len(configs)} configs")] * len(configs)
    return outcomes


def static_prune(
    tunable: Tunable, configs: list[Config], shape: Shape, dtype: str, target: str, progress: Progress
) -> list[Candidate]:
    """Compile every config ahead of time for ``target``; set ``reason`` on those that are unusable.

    A tunable may offer ``aot_reports(configs, shape, dtype, target) -> list[KernelReport |
    Exception]`` to compile all candidates in one job; otherwise ``aot_report`` is called per config.
    """
    batch = getattr(tunable, "aot_reports", None)
    if callable(batch):
        out = [_judge(Candidate(dict(c)), o) for c, o in zip(configs, _batch_outcomes(batch, configs, shape, dtype,
                                                                                     target), strict=True)]
        progress.update(len(out), f"pruned {sum(c.reason is not None for c in out)}")
        progress.close()
        return out
    out = []
    for i, config in enumerate(configs):
        try:
            outcome: object = tunable.aot_report(dict(config), shape, dtype, target)
        except Exception as exc:  # a crashing compiler must not end the run
            outcome = exc
        out.append(_judge(Candidate(dict(config)), outcome))
        progress.update(i + 1, f"pruned {sum(c.reason is not None for c in out)}")
    progress.close()
    return out


def rank(tunable: Tunable, candidates: list[Candidate], shape: Shape, dtype: str, target: str) -> list[Candidate]:
    """Estimate the cost of the unpruned candidates; prune the infeasible; return them best first."""
    flops = float(tunable.flops(shape))
    programs_of = getattr(tunable, "num_programs", None)
    padding_of = getattr(tunable, "padding", None)
    iterations_of = getattr(tunable, "inner_iterations", None)
    ranked: list[Candidate] = []
    for cand in candidates:
        if cand.reason is not None or cand.report is None:
            continue
        programs = int(programs_of(shape, cand.config)) if callable(programs_of) else None
        cand.cost = estimate(cand.report, cand.config, kind=tunable.kind, shape=shape, dtype=dtype, flops=flops,
                             bytes_moved=float(tunable.bytes_moved(shape, dtype, dict(cand.config))),
                             target=target, programs=programs,
                             padding=float(padding_of(shape, cand.config)) if callable(padding_of) else None,
                             iterations=int(iterations_of(shape, cand.config)) if callable(iterations_of) else None)
        if math.isinf(cand.cost.ms):
            cand.reason = "no program fits on an SM (registers or shared memory per SM)"
        else:
            ranked.append(cand)
    ranked.sort(key=lambda c: (c.cost.ms if c.cost else math.inf, list(c.config.values())))
    return ranked


# -- Optuna plumbing ---------------------------------------------------------------------------


def _distributions(space: ConfigSpace) -> dict[str, Any]:
    from optuna.distributions import IntDistribution

    return {name: IntDistribution(0, len(values) - 1) for name, values in space.params.items()}


def _params_of(space: ConfigSpace, config: Mapping[str, int]) -> dict[str, int]:
    config = space.complete(config)
    return {name: space.params[name].index(config[name]) for name in space.names}


def _config_of(space: ConfigSpace, params: Mapping[str, Any]) -> Config | None:
    try:
        return space.canonical({name: space.params[name][int(params[name])] for name in space.names})
    except (KeyError, IndexError, TypeError, ValueError):
        return None


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def _open_study(url: str, name: str, seed: int | None, trials: int) -> Any:
    import optuna

    storage = optuna_storage(url)
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=min(10, max(3, trials // 4))
    )
    return retrying(lambda: optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                                direction="minimize", load_if_exists=True), creating=True)


def _measured(study: Any, space: ConfigSpace) -> dict[tuple[int, ...], Measured]:
    """Configs already timed (value) or failed (reason) in the study, first occurrence wins."""
    from optuna.trial import TrialState

    seen: dict[tuple[int, ...], Measured] = {}
    trials = retrying(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))
    for trial in sorted(trials, key=lambda t: t.number):
        config = _config_of(space, trial.params)
        reason = trial.user_attrs.get("reason")
        if config is None or reason == INTERRUPTED:
            continue
        value = trial.value if trial.state == TrialState.COMPLETE else None
        seen.setdefault(space.key(config), (value, reason, trial.number))
    return seen


def _tell(study: Any, trial: Any, *, value: float | None = None, state: Any = None, attrs: Mapping[str, Any]) -> bool:
    """Finish ``trial``; False when another worker already finished it.

    On SQLite two workers can both pop the same enqueued trial (no row locks); the loser's
    result is dropped, which loses nothing since the winner recorded the same config.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for name, attr in attrs.items():
            retrying(lambda n=name, a=attr: trial.set_user_attr(n, a))
        if value is not None:
            retrying(lambda: study.tell(trial, value))
        else:
            retrying(lambda: study.tell(trial, state=state))
    except UpdateFinishedTrialError:
        return False
    except ValueError as exc:  # optuna: "Cannot tell a COMPLETE trial."
        if not str(exc).startswith("Cannot tell a"):
            raise
        return False
    return True


def _do_bench(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn))  # type: ignore[arg-type]


def _measure(tunable: Tunable, config: Config, shape: Shape, dtype: str, timer: Timer) -> tuple[float | None, str | None]:
    """Time one config; ``(None, reason)`` when it fails to compile, launch or time."""
    try:
        runner = tunable.make_runner(dict(config), shape, dtype)
        ms = float(timer(runner))
    except Exception as exc:
        return None, _short(exc)
    if not math.isfinite(ms) or ms <= 0:
        return None, f"invalid timing {ms!r}"
    return ms, None


# -- the online loop ---------------------------------------------------------------------------


@dataclass
class _Run:
    """State of one online tuning run."""

    tunable: Tunable
    space: ConfigSpace
    shape: Shape
    dtype: str
    timer: Timer
    study: Any
    allowed: set[tuple[int, ...]]
    rejected: dict[tuple[int, ...], str]  # statically pruned candidates and why
    result: TuneResult
    progress: Progress
    url: str

    def step(self, trial: Any, measured: Mapping[tuple[int, ...], Measured]) -> bool:
        """Handle one suggestion; True when it counts against the trial budget."""
        config = _config_of(self.space, trial.params)
        attrs: dict[str, Any] = {"config": json.dumps(config)}
        if config is None or self.space.key(config) not in self.allowed:
            return self._reject(trial, config, attrs, measured)
        known = measured.get(self.space.key(config))
        if known is not None:
            return self._reuse(trial, config, attrs, known)
        return self._time(trial, config, attrs)

    def _reject(self, trial: Any, config: Config | None, attrs: dict[str, Any],
                measured: Mapping[tuple[int, ...], Measured]) -> bool:
        """A statically pruned or invalid proposal: never launched, never counted."""
        from optuna.trial import TrialState

        key = None if config is None else self.space.key(config)
        reason = "invalid combination" if key is None else self.rejected.get(key, "invalid combination")
        if config is not None and reason.startswith("does not compile") and key not in measured:
            # a compile failure is recorded once as a failed trial; its repeats become PRUNED
            if _tell(self.study, trial, state=TrialState.FAIL, attrs={**attrs, "reason": reason}):
                self.result.trials.append(TrialRecord(config, "failed", None, reason, trial.number))
                self.result.failed += 1
            return False
        _tell(self.study, trial, state=TrialState.PRUNED, attrs={**attrs, "reason": reason})
        self.result.skipped += 1
        return False

    def _reuse(self, trial: Any, config: Config, attrs: dict[str, Any], known: Measured) -> bool:
        """A config measured before (here or elsewhere): answer from the study, do not re-time."""
        from optuna.trial import TrialState

        value, reason, number = known
        attrs["repeat_of"] = number
        if value is None:
            # TPE ignores FAIL trials and would keep proposing this config: a PRUNED record
            # tells it the region is bad.  No launch, no timing, no budget.
            _tell(self.study, trial, state=TrialState.PRUNED, attrs={**attrs, "reason": f"known failure: {reason}"})
            self.result.skipped += 1
            return False
        if not self._finish(trial, config, value, reason, attrs, "repeat"):
            return False
        self.result.repeated += 1
        return True

    def _time(self, trial: Any, config: Config, attrs: dict[str, Any]) -> bool:
        """Launch and time a new config; failures become FAIL trials, an interrupt is recorded first."""
        from optuna.trial import TrialState

        try:
            value, reason = _measure(self.tunable, config, self.shape, self.dtype, self.timer)
        except BaseException:  # KeyboardInterrupt, SystemExit: keep the study consistent, then stop
            _tell(self.study, trial, state=TrialState.FAIL, attrs={**attrs, "reason": INTERRUPTED})
            raise
        if not self._finish(trial, config, value, reason, attrs, "timed" if value is not None else "failed"):
            return False  # another worker finished the same enqueued trial: its record stands
        if value is None:
            self.result.failed += 1
        else:
            self.result.timed += 1
        return True

    def _finish(self, trial: Any, config: Config, value: float | None, reason: str | None,
                attrs: dict[str, Any], state: str) -> bool:
        """Record the outcome; False when another worker had already finished this trial."""
        from optuna.trial import TrialState

        if value is None:
            told = _tell(self.study, trial, state=TrialState.FAIL, attrs={**attrs, "reason": reason or "failed"})
        else:
            told = _tell(self.study, trial, value=value, attrs=attrs)
        if told:
            self.result.trials.append(TrialRecord(config, state, value, reason, trial.number))
        return told

    def best(self, measured: Mapping[tuple[int, ...], Measured] | None = None) -> tuple[Config, float] | None:
        """The best complete, allowed config of the study (read fresh unless ``measured`` is given)."""
        measured = _measured(self.study, self.space) if measured is None else measured
        best = [(v, list(k)) for k, (v, _, _) in measured.items() if v is not None and k in self.allowed]
        if not best:
            return None
        value, values = min(best)
        return self.space.canonical(dict(zip(self.space.names, values, strict=True))), value


def _seed_study(study: Any, space: ConfigSpace, seeds: list[Config]) -> None:
    for config in seeds:
        retrying(lambda c=config: study.enqueue_trial(_params_of(space, c), skip_if_exists=True))


def _seeds(tunable: Tunable, candidates: list[Candidate], shape: Shape, dtype: str, trials: int) -> list[Config]:
    """The heuristic default (if it survived) and the cost model's best few, in that order."""
    surviving = [c for c in candidates if c.reason is None]
    by_cost = sorted((c for c in surviving if c.cost is not None), key=lambda c: c.cost.ms)  # type: ignore[union-attr]
    seeds: list[Config] = []
    own_default = getattr(tunable, "default_config", None)
    if callable(own_default) or tunable.kind in SPACES:
        default = own_default(shape.D) if callable(own_default) else default_config(tunable.kind, shape.D, dtype)
        if any(c.config == default for c in surviving):
            seeds.append(default)
    for cand in by_cost[: max(1, trials // 5)]:
        if cand.config not in seeds:
            seeds.append(cand.config)
    return seeds


def _store(result: TuneResult, spec_name: str, value: float, config: Config, url: str, trials: int) -> bool:
    entry = CacheEntry(result.key, spec_name, config, value, result.metric,
                       "online" if result.mode == "online" else "offline", str(result.shape),
                       result.study_name, trials)
    with TuningCache(url) as cache:
        stored = cache.put(entry)
    invalidate_lookup_cache()
    return stored


def _check_space(tunable: Tunable, space: ConfigSpace, configs: list[Config]) -> None:
    reference = SPACES.get(tunable.kind)
    if reference is None:
        raise InputError(f"unknown kernel kind {tunable.kind!r}")
    outside = [c for c in configs if c not in reference]
    if outside:
        raise AttnccError(f"{tunable.spec_name}: config {config_to_str(outside[0])} is outside SPACES[{tunable.kind!r}]")


def _online(tunable: Tunable, shape: Shape, dtype: str, trials: int, url: str, timer: Timer | None,
            identity: GpuIdentity, target: str | None, seed: int | None, progress: bool) -> TuneResult:
    if timer is None:
        if identity.target is None:
            raise AttnccError("online tuning needs a CUDA GPU; use --offline --target sm_90 to rank statically")
        timer = _do_bench
    target = target or identity.target
    space = tunable.space()
    configs = space.enumerate()
    _check_space(tunable, space, configs)
    candidates = [Candidate(c) for c in configs]
    if target is not None:
        candidates = static_prune(tunable, configs, shape, dtype, target,
                                  Progress(f"compile {target}", len(configs), enabled=progress))
        if target_spec_or_none(target) is not None:
            rank(tunable, candidates, shape, dtype, target)
    allowed = {space.key(c.config) for c in candidates if c.reason is None}
    key = TuneKey.for_shape(tunable.spec_hash, tunable.kind, shape, dtype, identity)
    name = key.study_name(tunable.spec_name, shape)
    result = TuneResult(tunable.spec_name, tunable.kind, shape, dtype, "online", target, key, display_url(url),
                        name, None, None, "time_ms", len(configs), len(configs) - len(allowed))
    result.trials.extend(TrialRecord(c.config, "pruned", None, c.reason) for c in candidates if c.reason)
    if not allowed:
        return result
    with _quiet_optuna():
        study = _open_study(url, name, seed, trials)
        offline = [c for c in offline_seeds(url, tunable.spec_hash, tunable.kind, shape, dtype, target)
                   if space.key(c) in allowed]
        result.offline_seeds = len(offline)
        seeds = offline + [c for c in _seeds(tunable, candidates, shape, dtype, trials) if c not in offline]
        with ask_lock(url):  # check-then-enqueue: one process at a time on SQLite
            _seed_study(study, space, seeds)
        rejected = {space.key(c.config): c.reason for c in candidates if c.reason}
        run = _Run(tunable, space, shape, dtype, timer, study, allowed, rejected, result,
                   Progress(f"tune {tunable.spec_name} {tunable.kind}", trials, enabled=progress), url)
        try:
            _loop(run, trials, len(configs))
        finally:
            _conclude(run, url, progress)
    return result


def target_spec_or_none(target: str) -> Any:
    try:
        return target_spec(target)
    except InputError:
        return None


def _loop(run: _Run, trials: int, n_configs: int) -> None:
    counted = 0
    attempts = 0
    distributions = _distributions(run.space)
    while counted < trials and attempts < trials + n_configs:
        attempts += 1
        measured = _measured(run.study, run.space)
        best = run.best(measured)
        run.progress.update(counted, f"best {best[1]:.4g} ms, failed {run.result.failed}" if best else "")
        if run.allowed <= set(measured):
            break  # every surviving candidate has a value or a failure: nothing left to learn
        with ask_lock(run.url):
            trial = retrying(lambda: run.study.ask(fixed_distributions=distributions))
        counted += run.step(trial, measured)


def _conclude(run: _Run, url: str, progress: bool) -> None:
    """Record the study's best (also after an interrupt) and close the progress bar."""
    result = run.result
    try:
        best = run.best()
        if best is not None:
            run.progress.update(run.progress.done, f"best {best[1]:.4g} ms, failed {result.failed}")
            result.best_config, result.best_value = best
            n = len(_measured(run.study, run.space))
            result.stored = _store(result, run.tunable.spec_name, best[1], best[0], url, n)
    except Exception as exc:  # never mask the original error of the run
        LOG.warning("attncc tune: could not store the best config: %s", _short(exc))
    run.progress.close()


def _offline(tunable: Tunable, shape: Shape, dtype: str, target: str, url: str, progress: bool) -> TuneResult:
    target_spec(target)
    space = tunable.space()
    configs = space.enumerate()
    _check_space(tunable, space, configs)
    candidates = static_prune(tunable, configs, shape, dtype, target,
                              Progress(f"compile {target}", len(configs), enabled=progress))
    ranked = rank(tunable, candidates, shape, dtype, target)
    key = TuneKey.for_shape(tunable.spec_hash, tunable.kind, shape, dtype, offline_identity(target))
    result = TuneResult(tunable.spec_name, tunable.kind, shape, dtype, "offline", target, key, display_url(url),
                        None, None, None, "model_ms", len(configs), len(configs) - len(ranked))
    result.trials.extend(TrialRecord(c.config, "ranked", c.cost.ms if c.cost else None) for c in ranked)
    result.trials.extend(TrialRecord(c.config, "pruned", None, c.reason) for c in candidates if c.reason)
    if ranked:
        best = ranked[0]
        result.best_config, result.best_value = dict(best.config), best.cost.ms if best.cost else None
        if result.best_value is not None:
            result.stored = _store(result, tunable.spec_name, result.best_value, result.best_config, url, len(ranked))
    return result


def tune(
    tunable: Tunable,
    shape: Shape | tuple[int, ...] | str,
    dtype: str,
    *,
    trials: int,
    storage_url: str | None = None,
    offline_target: str | None = None,
    timer: Timer | None = None,
    progress: bool = True,
    target: str | None = None,
    identity: GpuIdentity | None = None,
    seed: int | None = None,
) -> TuneResult:
    """Tune ``tunable`` for ``shape``/``dtype`` and store the best config in the cache.

    ``offline_target`` switches to static ranking (no GPU).  Online, ``timer`` (ms of one call of
    a runner; default ``triton.testing.do_bench``) measures candidates; ``target`` overrides the
    static-pruning target (default: the current device's, none on CPU) and ``identity`` the GPU
    identity of the cache key.  ``seed`` makes the TPE sampler reproducible.
    """
    shape = as_shape(shape)
    if dtype not in ("fp16", "bf16", "fp32"):
        raise InputError(f"unknown dtype {dtype!r}; expected fp16, bf16 or fp32")
    if trials < 1 and offline_target is None:
        raise InputError(f"--trials must be at least 1, got {trials}")
    url = resolve_storage_url(storage_url)
    try:
        if offline_target is not None:
            return _offline(tunable, shape, dtype, offline_target, url, progress)
        return _online(tunable, shape, dtype, trials, url, timer, identity or current_identity(), target, seed,
                       progress)
    except Exception as exc:
        if is_storage_failure(exc):
            raise StorageError(f"tuning storage {display_url(url)}: {one_line(exc)}") from None
        raise


def is_storage_failure(exc: BaseException) -> bool:
    """SQLAlchemy errors and Optuna's storage errors (lock timeouts past the retry deadline, lost server)."""
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, SQLAlchemyError) or type(exc).__name__ == "StorageInternalError"
