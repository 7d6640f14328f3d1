"""Training-curve figures from stored histories."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

_METADATA: list[dict] = []


@contextlib.contextmanager
def figure_metadata(**metadata) -> Iterator[None]:
    """Within the block, every figure written by :func:`save` also carries ``metadata``.

    Lets a driver (e.g. ``experiments.paper``) stamp provenance into figures drawn by
    code it does not control::

        with figure_metadata(config_hash="3f2a...", git_commit="abc123"):
            study.draw(runs, folder)
    """
    _METADATA.append({str(k): v for k, v in metadata.items()})
    try:
        yield
    finally:
        _METADATA.pop()


def _axes(ax, figsize=(6.0, 4.0)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
        return fig, ax
    return ax.figure, ax


def training_curves(
    histories: Mapping[str, Mapping] | Sequence[Mapping],
    *,
    ax=None,
    metric: str = "loss",
    log_y: bool = True,
    title: str | None = None,
):
    """Train and validation curves per run, with the early-stopping (best) epoch marked.

    Args:
      histories: ``{label: history_dict}`` (or a list; labels are then run indices), each a
        :class:`losslab.History` ``as_dict()``.
      ax: matplotlib axes to draw on (a new figure when None).
      metric: "loss" (eval-mode train loss and validation loss) or "accuracy".
      log_y: log-scale y axis (losses span decades).
      title: axes title.

    Returns:
      The matplotlib figure.
    """
    if not isinstance(histories, Mapping):
        histories = {f"run {i}": h for i, h in enumerate(histories)}
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    fig, ax = _axes(ax)
    colors = iter(__import__("matplotlib").pyplot.rcParams["axes.prop_cycle"].by_key()["color"] * 10)
    for label, h in histories.items():
        color = next(colors)
        epochs = np.asarray(h["epoch"])
        train = np.asarray(h["train_eval_loss"] if metric == "loss" else h["train_accuracy"], float)
        val = np.asarray(h["val_loss"] if metric == "loss" else h["val_accuracy"], float)
        ax.plot(epochs, train, color=color, lw=1.5, label=f"{label} train")
        ax.plot(epochs, val, color=color, lw=1.5, ls="--", label=f"{label} val")
        best = h.get("best_epoch")
        if best is not None:
            i = int(np.flatnonzero(epochs == best)[0])
            ax.plot([best], [val[i]], marker="*", ms=12, color=color, mec="k", zorder=5)
            ax.axvline(best, color=color, lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (nats)" if metric == "loss" else "accuracy")
    if log_y and metric == "loss":
        ax.set_yscale("log")
    if any(h.get("best_epoch") is not None for h in histories.values()):
        ax.plot([], [], marker="*", ls="", color="gray", mec="k", ms=10, label="early-stopping point (best val)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def save(
    fig,
    path_without_suffix: str,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    metadata: Mapping | None = None,
    dpi: int = 150,
    bbox_inches: str | None = None,
):
    """Saves a figure as PNG and PDF (``path_without_suffix`` + ``.png``/``.pdf``), with metadata.

    ``metadata`` (e.g. provenance: config hash, versions, git commit) is written into both
    files (PNG text chunks, PDF info dictionary), merged over any active
    :func:`figure_metadata` block. Returns the written paths.
    """
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path_without_suffix)), exist_ok=True)
    merged: dict = {}
    for layer in _METADATA:
        merged.update(layer)
    merged.update(metadata or {})
    metadata = merged
    paths = []
    for fmt in formats:
        path = f"{path_without_suffix}.{fmt}"
        meta = None
        if metadata:
            if fmt == "png":
                meta = {str(k): str(v) for k, v in metadata.items()}
            elif fmt == "pdf":
                meta = {"Subject": "; ".join(f"{k}={v}" for k, v in metadata.items()), "Creator": "losslab"}
        fig.savefig(path, dpi=dpi if fmt == "png" else None, metadata=meta, bbox_inches=bbox_inches)
        paths.append(path)
    return paths
