"""``attncc explain --plot``: a block map drawn with matplotlib (an optional dependency)."""

from __future__ import annotations

from pathlib import Path

import torch

from attncc.errors import InputError

COLORS = ("#ffffff", "#f4a261", "#2a9d8f")  # not visited, visited with the mask (partial), full
LABELS = ("empty (skipped)", "partial (mask evaluated)", "full (no mask)")


def plot_tile_map(classes: torch.Tensor, path: Path, title: str) -> None:
    """Draw ``classes [row tiles, key tiles]`` (0/1/2) to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install 'attncc[plot]')") from None
    rows, cols = classes.shape
    fig, ax = plt.subplots(figsize=(min(12, 2 + cols / 8), min(12, 2 + rows / 8)))
    ax.imshow(classes.numpy(), cmap=ListedColormap(COLORS), vmin=0, vmax=2, interpolation="nearest")
    ax.set_xlabel("key tile")
    ax.set_ylabel("query tile")
    counts = [int((classes == c).sum()) for c in range(3)]
    ax.set_title(f"{title}: {counts[1] + counts[2]} of {classes.numel()} tiles visited")
    ax.legend(handles=[Patch(color=c, label=f"{lab}: {n}") for c, lab, n in zip(COLORS, LABELS, counts, strict=True)],
              loc="upper right", fontsize=8)
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise InputError(f"--plot: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
