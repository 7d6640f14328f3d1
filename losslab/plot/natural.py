"""Figures of the natural-gradient study, drawn from stored results only.

Each function takes plain arrays / dicts (as stored by ``experiments.natural_gradient``), accepts an
optional matplotlib ``ax`` and returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

X_LABELS = {"step": "steps", "wall_time": "wall time (s)", "cost": "gradient-equivalent cost (matvecs)"}


def _axes(ax, figsize=(5.0, 3.6)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def loss_curves(
    runs: Mapping[str, Mapping],
    *,
    x: str = "step",
    metric: str = "train_eval_loss",
    ax=None,
    target: float | None = None,
):
    """Loss against steps, wall time or gradient-equivalent cost, one line per optimizer.

    Args:
      runs: ``{optimizer: {"step": [...], "wall_time": [...], "cost": [...], metric: [...]}}``.
      x: "step", "wall_time" or "cost".
      metric: a per-epoch history key (``train_eval_loss``, ``val_loss``).
      ax: optional axes.
      target: draw the fixed target loss as a horizontal line.

    Returns:
      The matplotlib figure.
    """
    if x not in X_LABELS:
        raise ValueError(f"unknown x axis {x!r}; valid: {', '.join(X_LABELS)}")
    fig, ax = _axes(ax)
    for name, run in runs.items():
        ax.plot(np.asarray(run[x], float), np.asarray(run[metric], float), label=name, lw=1.4)
    if target is not None:
        ax.axhline(target, color="0.5", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(metric.replace("_", " "))
    if x == "cost":
        ax.set_xscale("log")
    return fig


def overlap_matrix(matrix, labels: Sequence[str], *, ax=None, title: str = ""):
    """Heat map of top-k eigenspace overlaps ``||U_aᵀ U_b||_F² / k`` (1 = same subspace); returns the figure."""
    fig, ax = _axes(ax, (3.6, 3.2))
    m = np.asarray(matrix, float)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return fig


def densities(curves: Mapping[str, tuple], *, ax=None, floor: float = 1e-6, title: str = ""):
    """Overlaid spectral densities ``{name: (grid, density)}`` on a log density axis; returns the figure."""
    fig, ax = _axes(ax)
    for name, (grid, dens) in curves.items():
        ax.plot(np.asarray(grid), np.maximum(np.asarray(dens), floor), label=name, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def sharpness_scatter(rows: Sequence[Mapping], *, measure: str = "lambda_max", ax=None):
    """Sharpness of each optimizer's minimum (x) against its test error (y), one labelled point per row.

    Returns the figure.
    """
    fig, ax = _axes(ax)
    for row in rows:
        ax.scatter(row[measure], row["test_error"], s=25)
        ax.annotate(
            row["optimizer"], (row[measure], row["test_error"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xscale("log")
    ax.set_xlabel(measure.replace("_", " ") + " of the Hessian")
    ax.set_ylabel("test error")
    return fig


def diagonal_scatter(adam_v, fisher_diag, *, ax=None, title: str = ""):
    """Adam's second moment against the Fisher diagonal, log-log, one point per parameter; returns the figure."""
    fig, ax = _axes(ax)
    v = np.asarray(adam_v, float)
    f = np.asarray(fisher_diag, float)
    keep = (v > 0) & (f > 0)
    ax.loglog(f[keep], v[keep], ".", ms=1.5, alpha=0.4)
    ax.set_xlabel("Fisher diagonal")
    ax.set_ylabel("Adam second moment v")
    if title:
        ax.set_title(title)
    return fig
