"""Figures of the flat-minima study, drawn from its results table (never recomputing).

``rows`` are flat dicts, one per run, as written by ``experiments.sharpness``
(``results.json``): hyper-parameters (``model``, ``batch_size``, ...), ``gap_error``,
``gap_loss``, ``test_error`` and one column per measure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from losslab.correlation import kendall_tau


def _axes(ax, figsize=(4.0, 3.2)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _column(rows: Sequence[Mapping], key: str) -> np.ndarray:
    return np.asarray([np.nan if r.get(key) is None else float(r[key]) for r in rows], np.float64)


def measure_vs_gap(
    rows: Sequence[Mapping],
    measure: str,
    gap: str = "gap_error",
    *,
    color_by: str | None = "batch_size",
    ax=None,
    log: bool | None = None,
):
    """Scatter of one measure against the generalization gap, Kendall τ in the title.

    Points are coloured by the hyper-parameter ``color_by`` (log-scaled colours for
    numeric axes); ``log=None`` uses a log x-axis when the measure is positive and spans
    more than two decades.

    Returns:
      The matplotlib figure.
    """
    fig, ax = _axes(ax)
    x, y = _column(rows, measure), _column(rows, gap)
    tau = kendall_tau(x, y)
    colors = None
    if color_by is not None:
        c = np.asarray([r.get(color_by) for r in rows], dtype=object)
        try:
            cf = c.astype(np.float64)
            colors = np.log(np.where(cf > 0, cf, np.nan)) if np.all(cf > 0) else cf
        except (TypeError, ValueError):
            names = sorted({str(v) for v in c})
            colors = np.asarray([names.index(str(v)) for v in c], np.float64)
    style = {"c": colors, "cmap": "viridis"} if colors is not None else {"color": "C0"}
    sc = ax.scatter(x, y, s=22, edgecolors="k", linewidths=0.3, **style)
    finite = x[np.isfinite(x)]
    if log is None:
        log = finite.size > 0 and np.all(finite > 0) and finite.max() / finite.min() > 100
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(measure)
    ax.set_ylabel(gap.replace("_", " "))
    ax.set_title(f"{measure}: τ = {tau:+.2f}", fontsize=9)
    if colors is not None and color_by is not None:
        cb = fig.colorbar(sc, ax=ax)
        cb.set_label(f"log {color_by}" if np.nanmin(colors) != np.nanmax(colors) else color_by, fontsize=7)
    return fig


def measure_grid(
    rows: Sequence[Mapping], measures: Sequence[str], gap: str = "gap_error", *, ncols: int = 4, ax=None
):
    """One :func:`measure_vs_gap` panel per measure in a grid; returns the figure.

    Args:
      rows: one flat dict per run.
      measures: the measure columns, one panel each.
      gap: the gap column on the y axes.
      ncols: panels per row of a new figure.
      ax: optional sequence (or array) of at least ``len(measures)`` axes to draw into; None makes
        a new ``ceil(len(measures) / ncols) x ncols`` figure. Unused axes are switched off.

    Returns:
      The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        nrows = max(1, -(-len(measures) // ncols))
        fig, grid = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
        axes = list(grid.ravel())
    else:
        axes = list(np.ravel(ax))
        if len(axes) < len(measures):
            raise ValueError(f"ax has {len(axes)} axes for {len(measures)} measures")
        fig = axes[0].figure
    for panel, name in zip(axes, measures):
        measure_vs_gap(rows, name, gap, color_by=None, ax=panel)
    for panel in axes[len(measures) :]:
        panel.axis("off")
    if ax is None:
        fig.tight_layout()
    return fig


def tau_bars(table: Sequence[Mapping], *, ax=None):
    """Horizontal bars of τ (with bootstrap interval) and granulated τ per measure; returns the figure."""
    created = ax is None
    fig, ax = _axes(ax, figsize=(5.0, 0.28 * len(table) + 1.0))
    names = [r["measure"] for r in table]
    y = np.arange(len(names))
    tau = np.asarray([r["tau"] for r in table], float)
    lo = np.asarray([r.get("tau_low", np.nan) for r in table], float)
    hi = np.asarray([r.get("tau_high", np.nan) for r in table], float)
    ax.barh(y - 0.2, tau, height=0.4, xerr=np.abs(np.vstack([tau - lo, hi - tau])), label="Kendall τ", color="C0")
    if any("granulated_tau" in r for r in table):
        g = np.asarray([r.get("granulated_tau", np.nan) for r in table], float)
        ax.barh(y + 0.2, g, height=0.4, label="granulated τ (Ψ)", color="C1")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Kendall τ with the generalization gap (error)")
    ax.legend(fontsize=7, loc="lower left")
    if created:
        fig.tight_layout()
    return fig


def keskar_contrast(
    rows: Sequence[Mapping],
    sharpness: str = "epsilon_sharpness",
    *,
    error: str = "test_error",
    by: str = "model",
    ax=None,
):
    """Keskar et al. (2017) contrast: sharpness (left axis) and test error (right) against batch size.

    ``rows`` are the runs of the batch-size axis (other hyper-parameters at their base
    values), one line per value of ``by`` (e.g. model). Returns the figure.
    """
    created = ax is None
    fig, ax = _axes(ax, figsize=(4.8, 3.4))
    ax2 = ax.twinx()
    groups = sorted({str(r.get(by)) for r in rows})
    for i, g in enumerate(groups):
        sub = sorted((r for r in rows if str(r.get(by)) == g), key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in sub]
        ax.plot(bs, _column(sub, sharpness), "o-", color=f"C{i}", label=f"{g} {sharpness}")
        ax2.plot(bs, _column(sub, error), "s--", color=f"C{i}", alpha=0.7, label=f"{g} {error}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{sharpness} (solid)")
    ax2.set_ylabel(f"{error} (dashed)")
    ax.set_title("small vs large batch (Keskar et al. 2017)", fontsize=9)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=6, loc="best")
    if created:
        fig.tight_layout()
    return fig
