"""Spectral-density figure: the SLQ curve on a log-scale y axis (Ghorbani et al. 2019, Fig. 1 style)."""

from __future__ import annotations

import numpy as np


def density(result, *, ax=None, label: str | None = None, floor: float = 1e-8, show_nodes: bool = False, color=None):
    """Plots a spectral density with a log-scale y axis and returns the figure.

    Args:
      result: a :class:`losslab.curvature.DensityResult`, a
        :class:`losslab.curvature.api.DensityEstimate`, or a mapping with ``grid`` and
        ``density`` (e.g. loaded from a results store); nothing is recomputed.
      ax: matplotlib axes to draw into; None makes a new figure.
      label: legend label.
      floor: densities below this are clipped (log scale cannot show 0).
      show_nodes: also mark the quadrature nodes (Ritz values) along the bottom.
      color: line colour.

    Returns:
      The matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    res = getattr(result, "result", result)
    get = (lambda k: res[k]) if isinstance(res, dict) else (lambda k: getattr(res, k))
    grid = np.asarray(get("grid"), float)
    dens = np.asarray(get("density"), float)
    if grid.shape != dens.shape or grid.ndim != 1:
        raise ValueError(f"grid and density must be 1-D of equal length, got {grid.shape} and {dens.shape}")
    if not floor > 0:
        raise ValueError(f"floor must be > 0 for a log scale, got {floor}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    ax.semilogy(grid, np.maximum(dens, floor), label=label, color=color)
    if show_nodes:
        nodes = np.asarray(get("nodes"), float).ravel()
        ax.plot(nodes, np.full_like(nodes, floor * 2), "|", color=color or "k", alpha=0.5, markersize=8)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=floor)
    if label is not None:
        ax.legend()
    return fig
