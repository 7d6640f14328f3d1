"""Loss-surface figures drawn from stored arrays (never recomputing them).

* :func:`contour`: filled contour of a 2-D slice with log-spaced levels, optional
  trajectory and marked solutions (Li et al. 2018, Figs. 5, 9).
* :func:`surface3d`: the same slice as a 3-D surface (Li et al. 2018, Fig. 1).
* :func:`curves`: 1-D slices of several solutions on one axis (Li et al. 2018, Fig. 3).
* :func:`interpolation`: loss and accuracy along the segment between two solutions,
  train solid / test dashed, accuracy on a twin axis (Keskar et al. 2017, Fig. 3).
* :func:`trajectory`: a projected training path over an existing contour axis.
* :func:`save`: writes a figure as PNG and PDF.

Every drawing function takes an optional ``ax`` and returns the figure. 2-D values
use the "ij" layout of :class:`losslab.surface.PlaneSlice`: ``z[i, j]`` is at
``(x[i], y[j])``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors

from losslab.plot import training as training_plot

CMAP = "viridis"


def _check_grid(x, y, z):
    x, y, z = np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)
    if z.shape != (x.size, y.size):
        raise ValueError(f"z must have shape (len(x), len(y)) = {(x.size, y.size)}, got {z.shape}")
    return x, y, z


def log_levels(z, num_levels: int = 30, *, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """``num_levels`` geometrically spaced levels from ``vmin`` to ``vmax`` (default: min/max of finite z > 0).

    Loss surfaces span orders of magnitude; log spacing shows the basin and the walls.
    """
    z = np.asarray(z, float)
    pos = z[np.isfinite(z) & (z > 0)]
    if vmin is None:
        if pos.size == 0:
            raise ValueError("log-spaced levels need positive values; pass log=False for this surface")
        vmin = float(pos.min())
    if vmax is None:
        vmax = float(pos.max()) if pos.size else vmin * 10
    if not 0 < vmin < vmax:
        raise ValueError(f"log levels need 0 < vmin < vmax, got vmin={vmin}, vmax={vmax}")
    return np.geomspace(vmin, vmax, num_levels)


def _new_ax(ax, projection=None, figsize=(5.0, 4.2)):
    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1, projection=projection)


def contour(
    x,
    y,
    z,
    *,
    ax=None,
    num_levels: int = 30,
    log: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = CMAP,
    lines: bool = True,
    colorbar: bool = True,
    label: str = "loss",
    title: str | None = None,
    points: Mapping[str, tuple[float, float]] | None = None,
    path=None,
    xlabel: str = r"$\alpha$ (direction 1)",
    ylabel: str = r"$\beta$ (direction 2)",
):
    """Filled contour of a 2-D slice with log-spaced levels and thin level lines.

    Args:
      x: ``(nx,)`` coordinates along direction 1.
      y: ``(ny,)`` coordinates along direction 2.
      z: ``(nx, ny)`` values (e.g. ``PlaneSlice.values["train_loss"]``).
      ax: an existing axis; None makes a new figure.
      num_levels: number of levels.
      log: geometric (True) or linear level spacing.
      vmin: lower end of the colour scale (share it between panels to compare them).
      vmax: upper end of the colour scale; values above are drawn in the top colour.
      cmap: matplotlib colour map.
      lines: overlay thin contour lines at the same levels.
      colorbar: draw a colour bar.
      label: colour-bar label.
      title: axis title.
      points: ``{name: (x, y)}`` solutions to mark with a star and a label.
      path: ``(T, 2)`` projected trajectory drawn with :func:`trajectory`.
      xlabel: x-axis label.
      ylabel: y-axis label.

    Returns:
      The matplotlib figure.
    """
    x, y, z = _check_grid(x, y, z)
    fig, ax = _new_ax(ax)
    if log:
        levels = log_levels(z, num_levels, vmin=vmin, vmax=vmax)
        norm = mcolors.LogNorm(vmin=levels[0], vmax=levels[-1])
    else:
        finite = z[np.isfinite(z)]
        lo = float(finite.min()) if vmin is None else vmin
        hi = float(finite.max()) if vmax is None else vmax
        levels = np.linspace(lo, hi, num_levels)
        norm = mcolors.Normalize(vmin=lo, vmax=hi)
    zc = np.clip(z, levels[0], levels[-1])
    filled = ax.contourf(x, y, zc.T, levels=levels, norm=norm, cmap=cmap, extend="neither")
    if lines:
        ax.contour(x, y, zc.T, levels=levels[::2], colors="k", linewidths=0.4, alpha=0.5)
    if colorbar:
        cb = fig.colorbar(filled, ax=ax, label=label)
        if log:
            ticks = log_levels(z, 6, vmin=levels[0], vmax=levels[-1])
            cb.set_ticks(ticks)
            cb.set_ticklabels([f"{t:.3g}" for t in ticks])
    for name, (px, py) in (points or {}).items():
        ax.plot(px, py, marker="*", color="red", markersize=12, markeredgecolor="k", linestyle="none")
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(5, 5), fontsize=9, color="k")
    if path is not None:
        trajectory(path, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("auto")
    if title:
        ax.set_title(title)
    return fig


def trajectory(
    coords,
    *,
    ax=None,
    epochs=None,
    color: str = "red",
    label: str | None = "trajectory",
    annotate_every: int = 0,
    explained_variance=None,
):
    """Draws a projected training path ``(T, 2)`` (Li et al. 2018, Fig. 9).

    Args:
      coords: ``(T, 2)`` coordinates, e.g. ``TrajectoryPCA.coords``.
      ax: the axis to draw on (typically a :func:`contour` axis); None makes one.
      epochs: ``(T,)`` epochs, used to annotate every ``annotate_every``-th point.
      color: line colour.
      label: legend label (None: no legend entry).
      annotate_every: annotate every k-th point with its epoch (0: none).
      explained_variance: ``(2,)`` ratios; labels the axes "PC1: 83.2 %" as in Li et al.

    Returns:
      The figure.
    """
    coords = np.asarray(coords, float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must have shape (T, 2), got {coords.shape}")
    fig, ax = _new_ax(ax)
    ax.plot(coords[:, 0], coords[:, 1], "-o", color=color, markersize=3, linewidth=1.2, label=label)
    ax.plot(coords[0, 0], coords[0, 1], "o", color="white", markeredgecolor=color, markersize=7)
    ax.plot(coords[-1, 0], coords[-1, 1], "*", color=color, markeredgecolor="k", markersize=12)
    if annotate_every and epochs is not None:
        for i in range(0, len(coords), annotate_every):
            ax.annotate(str(int(epochs[i])), coords[i], textcoords="offset points", xytext=(3, 3), fontsize=7)
    if explained_variance is not None:
        ev = np.asarray(explained_variance, float)
        ax.set_xlabel(f"PC1: {100 * ev[0]:.1f} %")
        ax.set_ylabel(f"PC2: {100 * ev[1]:.1f} %")
    if label:
        ax.legend(loc="best", fontsize=8)
    return fig


def surface3d(
    x,
    y,
    z,
    *,
    ax=None,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = CMAP,
    zlabel: str = "loss",
    title: str | None = None,
    elev: float = 35.0,
    azim: float = -60.0,
):
    """3-D surface plot of a 2-D slice (Li et al. 2018, Fig. 1).

    ``vmax`` clips the surface from above (walls far from the minimum otherwise
    flatten the basin); ``log`` plots :math:`\\log_{10} z`.

    Returns:
      The figure (``ax`` must be a 3-D axis if given).
    """
    x, y, z = _check_grid(x, y, z)
    fig, ax = _new_ax(ax, projection="3d", figsize=(5.5, 4.5))
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if vmin is None else vmin
    hi = float(finite.max()) if vmax is None else vmax
    zc = np.clip(z, lo, hi)
    if log:
        if lo <= 0:
            raise ValueError(f"log=True needs positive values, min is {lo}")
        zc = np.log10(zc)
        zlabel = f"log10 {zlabel}"
    gx, gy = np.meshgrid(x, y, indexing="ij")
    ax.plot_surface(
        gx, gy, zc, cmap=cmap, linewidth=0, antialiased=True, rcount=min(x.size, 101), ccount=min(y.size, 101)
    )
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel(zlabel)
    ax.view_init(elev=elev, azim=azim)
    if title:
        ax.set_title(title)
    return fig


def curves(
    t,
    series: Mapping[str, Sequence[float]],
    *,
    ax=None,
    log: bool = False,
    xlabel: str = r"$\alpha$",
    ylabel: str = "loss",
    title: str | None = None,
    styles: Mapping[str, str] | None = None,
):
    """Several 1-D slices on one axis, e.g. the filter-normalised lines through a
    small-batch and a large-batch solution (Li et al. 2018, Fig. 3).

    Args:
      t: ``(n,)`` shared coordinates, or a mapping ``{label: (n_i,)}`` for per-series ones.
      series: ``{label: (n,) values}``.
      ax: an existing axis; None makes one.
      log: logarithmic y axis.
      xlabel: x-axis label.
      ylabel: y-axis label.
      title: axis title.
      styles: optional matplotlib format strings per label (e.g. ``{"test": "--"}``).

    Returns:
      The figure.
    """
    fig, ax = _new_ax(ax)
    for name, values in series.items():
        tt = np.asarray(t[name] if isinstance(t, Mapping) else t, float)
        vv = np.asarray(values, float)
        if tt.shape != vv.shape:
            raise ValueError(f"series {name!r}: t has shape {tt.shape}, values {vv.shape}")
        ax.plot(tt, vv, (styles or {}).get(name, "-"), label=name, linewidth=1.5)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def interpolation(
    t,
    values: Mapping[str, Sequence[float]],
    *,
    ax=None,
    log: bool = True,
    names: tuple[str, str] = ("small batch", "large batch"),
    title: str | None = None,
):
    """Keskar et al. 2017, Fig. 3: loss (left axis, blue) and accuracy (right axis, red)
    along :math:`\\theta(\\alpha) = \\theta_a + \\alpha(\\theta_b - \\theta_a)`; train solid,
    test dashed; the two solutions at :math:`\\alpha = 0` and 1 are marked.

    Args:
      t: ``(n,)`` values of α.
      values: ``{"train_loss", "test_loss", "train_accuracy", "test_accuracy"}`` (any subset).
      ax: an existing axis; None makes one.
      log: logarithmic loss axis.
      names: labels of the solutions at α = 0 and α = 1.
      title: axis title.

    Returns:
      The figure.
    """
    t = np.asarray(t, float)
    fig, ax = _new_ax(ax, figsize=(5.5, 4.0))
    loss_color, acc_color = "tab:blue", "tab:red"
    for split, style in (("train", "-"), ("test", "--")):
        if f"{split}_loss" in values:
            ax.plot(t, values[f"{split}_loss"], style, color=loss_color, label=f"{split} loss")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel("cross-entropy", color=loss_color)
    ax.tick_params(axis="y", colors=loss_color)
    handles, labels = ax.get_legend_handles_labels()
    if any(f"{s}_accuracy" in values for s in ("train", "test")):
        ax2 = ax.twinx()
        for split, style in (("train", "-"), ("test", "--")):
            if f"{split}_accuracy" in values:
                ax2.plot(
                    t,
                    100 * np.asarray(values[f"{split}_accuracy"], float),
                    style,
                    color=acc_color,
                    label=f"{split} accuracy",
                )
        ax2.set_ylabel("accuracy (%)", color=acc_color)
        ax2.tick_params(axis="y", colors=acc_color)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    for pos, name in zip((0.0, 1.0), names):
        ax.axvline(pos, color="0.6", linewidth=0.8, linestyle=":")
        ax.annotate(
            name,
            (pos, 1.0),
            xycoords=("data", "axes fraction"),
            textcoords="offset points",
            xytext=(2, -12),
            fontsize=8,
        )
    ax.legend(handles, labels, fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    return fig


def save(fig, path: str, *, dpi: int = 150) -> list[str]:
    """Writes ``fig`` to ``<path>.png`` and ``<path>.pdf`` (a suffix on ``path`` is dropped).

    Returns the two file paths. The figure is closed afterwards.
    """
    stem, _ = os.path.splitext(path)
    directory = os.path.dirname(os.path.abspath(stem))
    os.makedirs(directory, exist_ok=True)
    if not fig.get_constrained_layout():
        fig.tight_layout()
    out = training_plot.save(fig, stem, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out
