"""``attncc tune`` and ``attncc cache ls|export|import|clear|stats``.

Data goes to stdout (``--json``: JSON only), progress and messages to stderr.  Bad input is one
line on stderr and exit code 2, never a traceback.  The main CLI registers these with
``main.add_command(tune); main.add_command(cache)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from attncc.errors import AttnccError, InputError

STORAGE_HELP = "storage URL: sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB (default: $ATTNCC_STORAGE or the user cache dir)"


class SpaceChoice(click.Choice):
    """The kernel kinds or dtypes of :mod:`attncc.autotune.space`, read when first needed: building
    the commands imports nothing heavy (the kinds come from the registered schedules)."""

    def __init__(self, name: str) -> None:
        self._name = name
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from attncc.autotune import space

        return tuple(getattr(space, self._name))

    @choices.setter
    def choices(self, _value: object) -> None:
        pass  # fixed by ``name``


KIND_CHOICE = SpaceChoice("KINDS")
DTYPE_CHOICE = SpaceChoice("DTYPES")


def config_to_str(config: Any) -> str:
    from attncc.autotune.space import config_to_str as to_str

    return to_str(config)


class OneLineError(click.ClickException):
    """Printed by click as a single ``Error: ...`` line; exit code 2."""

    exit_code = 2


class OneLineCommand(click.Command):
    """A command whose usage errors and attncc errors are one line with exit code 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OneLineError(exc.format_message().replace("\n", " ")) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AttnccError as exc:
            raise OneLineError(str(exc).replace("\n", " ")) from None


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@contextmanager
def _open_cache(storage: str | None, *, create: bool) -> Iterator[Any]:
    """The tuning cache; with ``create=False`` nothing is written and a missing cache yields None."""
    from attncc.autotune.cache import CacheMissing, TuningCache

    try:
        cache = TuningCache(storage, create=create)
    except CacheMissing:
        yield None
        return
    try:
        yield cache
    finally:
        cache.close()


def _warn_invalid(cache: Any) -> None:
    """One stderr line per invalid row the cache skipped."""
    for label, problem in cache.invalid.items():
        click.echo(f"warning: skipped invalid entry {label}: {problem}", err=True)


# How ``attncc tune SPEC`` turns a spec name into a Tunable.  The autotuner does not know about the
# compiler's runtime: the ``attncc`` command registers its resolver here (attncc.cli).
_RESOLVERS: list[Callable[[str, str], Any]] = []


def register_resolver(resolver: Callable[[str, str], Any]) -> None:
    """Set the function ``(spec, kind) -> Tunable`` used by ``attncc tune`` (the last one wins)."""
    _RESOLVERS.append(resolver)


def _resolve_tunable(spec: str, kind: str) -> Any:
    if not _RESOLVERS:
        raise AttnccError(f"cannot resolve spec {spec!r}: no spec resolver registered (run it as `attncc tune`)")
    try:
        return _RESOLVERS[-1](spec, kind)
    except ImportError as exc:
        raise AttnccError(f"cannot resolve spec {spec!r}: the compiler runtime is unavailable ({exc})") from None


def _offline_target(target: str | None) -> str:
    from attncc.autotune.device import current_identity

    chosen = target or current_identity().target
    if chosen is None:
        raise InputError("--offline needs --target (e.g. --target sm_90) on a machine without a GPU")
    return chosen


@click.command("tune", cls=OneLineCommand)
@click.argument("spec")
@click.option("--shape", required=True, help="problem size B,H,M,N,D or B,H,M,N,D,E")
@click.option("--dtype", type=DTYPE_CHOICE, default="fp16", show_default=True)
@click.option("--kind", type=KIND_CHOICE, default="fwd", show_default=True, help="kernel kind")
@click.option("--trials", type=click.IntRange(min=1), default=50, show_default=True, help="trials to run")
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--offline", is_flag=True, help="no GPU: prune and rank statically for --target")
@click.option("--target", default=None, help="compile target such as sm_90 (default: this GPU)")
@click.option("--seed", type=int, default=None, help="seed of the TPE sampler")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON only")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.option("--plot", "plot", default=None, type=click.Path(dir_okay=False),
              help="draw the study's optimisation history to FILE.png (online runs; needs matplotlib)")
def tune_command(spec: str, shape: str, dtype: str, kind: str, trials: int, storage: str | None,
                 offline: bool, target: str | None, seed: int | None, as_json: bool, quiet: bool,
                 plot: str | None) -> None:
    """Find the best config of SPEC's KIND kernel for one shape and store it in the tuning cache.

    Online, the study starts from the configs that offline runs ranked best for this GPU's target.
    """
    from attncc.autotune.tunable import parse_shape
    from attncc.autotune.tuner import tune

    if plot is not None and offline:
        raise InputError("--plot draws an online study's history; an --offline run has no study")
    parsed = parse_shape(shape)
    offline_target = _offline_target(target) if offline else None
    tunable = _resolve_tunable(spec, kind)
    try:
        result = tune(tunable, parsed, dtype, trials=trials, storage_url=storage, offline_target=offline_target,
                      target=None if offline else target, progress=not quiet, seed=seed)
    except KeyboardInterrupt:
        click.echo("interrupted: finished trials are kept in the study; run the same command to resume", err=True)
        sys.exit(130)
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(result.summary())
    if plot is not None:
        _plot(result, storage, plot)
    if result.best_config is None:
        sys.exit(1)


def _plot(result: Any, storage: str | None, path: str) -> None:
    """``tune --plot``: the study's history, unless static pruning left nothing to run."""
    from attncc.autotune.history import plot_history
    from attncc.autotune.storage import resolve_storage_url

    if result.study_name is None or result.candidates == result.pruned:
        click.echo(f"not plotted: every candidate was pruned statically, no trial ran ({path})", err=True)
        return
    plot_history(resolve_storage_url(storage), result.study_name, path)
    click.echo(f"wrote {path}", err=True)


@click.group("cache")
def cache_group() -> None:
    """Inspect and share the tuning cache (best configs per spec, kind, shape bucket, dtype, GPU)."""


def _storage_option(fn: Any) -> Any:
    return click.option("--storage", default=None, help=STORAGE_HELP)(fn)


def _filter_options(fn: Any) -> Any:
    fn = click.option("--kind", type=KIND_CHOICE, default=None, help="only this kernel kind")(fn)
    fn = click.option("--spec-hash", default=None, help="only this spec hash")(fn)
    return click.option("--gpu", default=None, help="only this GPU name")(fn)


@cache_group.command("ls", cls=OneLineCommand)
@_storage_option
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="JSON only")
def ls_command(storage: str | None, kind: str | None, spec_hash: str | None, gpu: str | None, as_json: bool) -> None:
    """List the stored best configs."""
    entries: list[Any] = []
    with _open_cache(storage, create=False) as cache:
        if cache is not None:
            entries, _bad = cache.entries(kind=kind, spec_hash=spec_hash, gpu_name=gpu)
            _warn_invalid(cache)
    if as_json:
        _emit_json([e.to_json() for e in entries])
        return
    if not entries:
        click.echo("no entries")
        return
    for line in _table(LS_COLUMNS, [_ls_row(e) for e in entries]):
        click.echo(line)


LS_COLUMNS = ("SPEC", "KIND", "DTYPE", "BUCKET", "GPU", "CONFIG", "TIME", "SOURCE")


def _ls_row(e: Any) -> tuple[str, ...]:
    unit = "ms" if e.metric == "time_ms" else "ms (model)"
    return (e.spec_name, e.key.kind, e.key.dtype, e.key.bucket, str(e.key.identity), config_to_str(e.config),
            f"{e.value:.4g} {unit}", e.source)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header first."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)]


@cache_group.command("export", cls=OneLineCommand)
@click.argument("file", type=click.Path(dir_okay=False))
@_storage_option
@_filter_options
def export_command(file: str, storage: str | None, kind: str | None, spec_hash: str | None, gpu: str | None) -> None:
    """Write the (filtered) entries to FILE as JSON with a metadata block."""
    from attncc.autotune.transfer import write_export

    entries: list[Any] = []
    with _open_cache(storage, create=False) as cache:
        if cache is not None:
            entries, _bad = cache.entries(kind=kind, spec_hash=spec_hash, gpu_name=gpu)
            _warn_invalid(cache)
    count = write_export(entries, file)
    click.echo(f"exported {count} entries to {file}")


@cache_group.command("import", cls=OneLineCommand)
@click.argument("file", type=click.Path(dir_okay=False))
@_storage_option
@click.option("--force", is_flag=True, help="import even if the versions or the GPU differ from this machine")
def import_command(file: str, storage: str | None, force: bool) -> None:
    """Import entries exported by ``attncc cache export`` (checked against this machine).

    Idempotent: entries equal to the stored ones are not written again; an existing better entry is kept.
    """
    from attncc.autotune.lookup import invalidate_lookup_cache
    from attncc.autotune.transfer import check_import

    entries = check_import(file, force=force)  # a refused file leaves the storage untouched (not even created)
    with _open_cache(storage, create=True) as cache:
        counts = cache.merge(entries)
    invalidate_lookup_cache()
    click.echo(f"imported {counts.written} of {len(entries)} entries from {file}: {counts.summary()}")


def _delete_studies(storage_url: str, names: set[str] | None) -> int:
    """Delete attncc Optuna studies (all when ``names`` is None); returns how many."""
    import optuna

    from attncc.autotune.cache import STUDY_PREFIX
    from attncc.autotune.storage import optuna_storage, retrying

    storage = optuna_storage(storage_url, create=False)
    if storage is None:
        return 0
    deleted = 0
    for summary in storage.get_all_studies():
        name = summary.study_name
        if name.startswith(STUDY_PREFIX) and (names is None or name in names):
            retrying(lambda n=name: optuna.delete_study(study_name=n, storage=storage))
            deleted += 1
    return deleted


@cache_group.command("clear", cls=OneLineCommand)
@_storage_option
@click.option("--kind", type=KIND_CHOICE, default=None, help="only this kernel kind")
@click.option("--spec-hash", default=None, help="only this spec hash")
@click.option("--keep-studies", is_flag=True, help="keep the Optuna studies (measured trials)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def clear_command(storage: str | None, kind: str | None, spec_hash: str | None, keep_studies: bool, yes: bool) -> None:
    """Delete entries and (unless --keep-studies) their Optuna studies."""
    with _open_cache(storage, create=False) as cache:
        if cache is None:
            click.echo("removed 0 entries and 0 studies (no tuning cache)")
            return
        if not yes:
            click.confirm(f"delete tuning entries from {cache.display_url}?", abort=True, err=True)
        filtered = kind is not None or spec_hash is not None
        names = {e.study_name for e in cache.entries(kind=kind, spec_hash=spec_hash)[0] if e.study_name}
        removed = cache.clear(kind=kind, spec_hash=spec_hash)
        studies = 0 if keep_studies else _delete_studies(cache.url, names if filtered else None)
    click.echo(f"removed {removed} entries and {studies} studies")


def _study_stats(url: str) -> dict[str, Any]:
    from attncc.autotune.cache import STUDY_PREFIX
    from attncc.autotune.storage import optuna_storage

    storage = optuna_storage(url, create=False)
    if storage is None:
        return {"studies": 0, "trials": {}}
    studies = [s for s in storage.get_all_studies() if s.study_name.startswith(STUDY_PREFIX)]
    states: dict[str, int] = {}
    for study in studies:
        study_id = storage.get_study_id_from_name(study.study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False):
            states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    return {"studies": len(studies), "trials": states}


@cache_group.command("stats", cls=OneLineCommand)
@_storage_option
@click.option("--json", "as_json", is_flag=True, help="JSON only")
def stats_command(storage: str | None, as_json: bool) -> None:
    """Entry counts by kind, GPU, source and version; Optuna studies and trials; lookup counters."""
    from attncc.autotune.lookup import lookup_stats
    from attncc.autotune.storage import display_url, resolve_storage_url

    with _open_cache(storage, create=False) as cache:
        if cache is None:
            data: dict[str, Any] = {"storage": display_url(resolve_storage_url(storage)), "exists": False,
                                    "entries": 0, "invalid_entries": 0, "studies": 0, "trials": {}}
        else:
            data = cache.stats()
            _warn_invalid(cache)
            data.update(_study_stats(cache.url))
    data["lookups_this_process"] = lookup_stats()
    if as_json:
        _emit_json(data)
        return
    for name, value in data.items():
        click.echo(f"{name}: {value}")


tune = tune_command
cache = cache_group
