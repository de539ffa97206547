"""What an online run starts from, and what it leaves to look at.

* :func:`offline_seeds`: the configs that offline runs (``attncc tune --offline --target T``, here or
  imported with ``attncc cache import``) ranked best for this key, for an online run on a GPU whose
  target is ``T``: the exact bucket's entry first, then the nearest offline-tuned bucket's.  The
  tuner enqueues them as the study's first trials.
* :func:`plot_history`: the study's optimisation history (Optuna's matplotlib visualisation) as a PNG.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from attncc.autotune.cache import TuneKey, TuningCache
from attncc.autotune.device import offline_identity
from attncc.autotune.space import Config
from attncc.autotune.storage import display_url, optuna_storage, retrying
from attncc.autotune.tunable import Shape
from attncc.errors import InputError


def offline_seeds(url: str, spec_hash: str, kind: str, shape: Shape, dtype: str, target: str | None) -> list[Config]:
    """Offline-ranked best configs for ``target`` (exact bucket, then nearest bucket), without repeats."""
    if target is None:
        return []
    key = TuneKey.for_shape(spec_hash, kind, shape, dtype, offline_identity(target))
    with TuningCache(url) as cache:
        found = [cache.get(key), cache.nearest(key)]
    seeds: list[Config] = []
    for entry in found:
        if entry is not None and entry.source == "offline" and entry.config not in seeds:
            seeds.append(dict(entry.config))
    return seeds


def plot_history(url: str, study_name: str, path: str | Path) -> None:
    """Draw the optimisation history of the study ``study_name`` to ``path`` (PNG, needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install 'attncc[plot]')") from None
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    storage = optuna_storage(url, create=False)
    if storage is None:
        raise InputError(f"--plot: no tuning storage at {display_url(url)}")
    study = retrying(lambda: optuna.load_study(study_name=study_name, storage=storage))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study)
    ax.set_title(f"{study_name.split(':', 1)[-1]}: optimisation history")
    ax.set_ylabel("time (ms)")
    try:
        ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise InputError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(ax.figure)
