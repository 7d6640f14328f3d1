r"""Rank correlation of a measure with the generalization gap over a sweep of runs.

* :func:`kendall_tau` — Kendall's τ-b (ties handled as in ``scipy.stats.kendalltau``).
* :func:`granulated_kendall` — Jiang et al. (2020)'s granulated τ: for each
  hyper-parameter axis i, the mean τ over groups of runs that differ *only* in axis i,
  :math:`\psi_i = \frac{1}{|G_i|}\sum_{g \in G_i} \tau(\mu_g, \text{gap}_g)`, and their
  average :math:`\Psi = \frac1{|I|}\sum_i \psi_i`.
* :func:`bootstrap_ci` — percentile bootstrap confidence interval of any statistic of
  the runs (resampling runs with replacement, explicit seed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np


def _pairs(a: np.ndarray) -> np.ndarray:
    """sign(a_j − a_i) for i < j, flattened."""
    i, j = np.triu_indices(a.shape[0], 1)
    return np.sign(a[j] - a[i])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Kendall's τ-b between two sequences of equal length n.

    .. math:: \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_x)(n_0 - n_y)}}

    with :math:`n_c, n_d` the concordant / discordant pairs, :math:`n_0 = n(n-1)/2` and
    :math:`n_x, n_y` the pairs tied in x / y (Kendall 1945). O(n²) time and memory in
    pairs, fine for sweeps of up to a few thousand runs. Returns NaN when either input is
    constant or n < 2; non-finite entries are dropped pairwise.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.shape[0] < 2:
        return float("nan")
    sx, sy = _pairs(x), _pairs(y)
    denom = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    if denom == 0:
        return float("nan")
    return float(np.sum(sx * sy) / denom)


class GranulatedTau(NamedTuple):
    """Granulated Kendall τ.

    Attributes:
      overall: Ψ, the mean of the per-axis values (NaN axes skipped).
      per_axis: ``{axis: ψ_i}`` (NaN when the axis has no group of ≥ 2 distinct values).
      num_groups: ``{axis: number of groups averaged}``.
    """

    overall: float
    per_axis: dict[str, float]
    num_groups: dict[str, int]


def granulated_kendall(
    measure: Sequence[float], gap: Sequence[float], hparams: Mapping[str, Sequence]
) -> GranulatedTau:
    r"""Jiang et al. (2020)'s granulated Kendall coefficient.

    For each axis i of ``hparams``, runs are grouped by the values of all *other* axes;
    within each group (only axis i varies) τ(measure, gap) is computed; groups with fewer
    than two distinct values of axis i, or where τ is undefined, are skipped;
    :math:`\psi_i` is the mean over the remaining groups and :math:`\Psi` the mean of the
    :math:`\psi_i`. Works for a full grid (Jiang's setting) and for a one-axis-at-a-time
    (star) design, where each axis has one group per setting of the others.

    Args:
      measure: the measure per run, ``(n,)``.
      gap: the generalization gap per run, ``(n,)``.
      hparams: ``{axis name: (n,) values}`` (any hashable values).
    """
    measure, gap = np.asarray(measure, np.float64), np.asarray(gap, np.float64)
    n = measure.shape[0]
    if gap.shape != (n,):
        raise ValueError(f"measure and gap must have the same length, got {n} and {gap.shape}")
    if not hparams:
        raise ValueError("granulated_kendall needs at least one hyper-parameter axis")
    for name, values in hparams.items():
        if len(values) != n:
            raise ValueError(f"hyper-parameter {name!r} has {len(values)} values for {n} runs")
    axes = list(hparams)
    columns = {a: [_hashable(v) for v in hparams[a]] for a in axes}
    per_axis, counts = {}, {}
    for axis in axes:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for r in range(n):
            groups[tuple(columns[b][r] for b in axes if b != axis)].append(r)
        taus = []
        for rows in groups.values():
            if len({columns[axis][r] for r in rows}) < 2:
                continue
            t = kendall_tau(measure[rows], gap[rows])
            if np.isfinite(t):
                taus.append(t)
        per_axis[axis] = float(np.mean(taus)) if taus else float("nan")
        counts[axis] = len(taus)
    finite = [v for v in per_axis.values() if np.isfinite(v)]
    return GranulatedTau(float(np.mean(finite)) if finite else float("nan"), per_axis, counts)


def _hashable(v):
    if isinstance(v, (list, np.ndarray)):
        return tuple(np.asarray(v).ravel().tolist())
    return v


class ConfidenceInterval(NamedTuple):
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    num_resamples: int


def bootstrap_ci(
    statistic: Callable[..., float],
    *columns: Sequence,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    r"""Percentile bootstrap interval of ``statistic(*columns)`` (Efron & Tibshirani 1993).

    Runs (rows) are resampled with replacement ``num_resamples`` times with
    ``numpy.random.default_rng(seed)``; the interval is the ``(1−level)/2`` and
    ``(1+level)/2`` quantiles of the finite resampled statistics. Cost: ``num_resamples``
    evaluations of the statistic.

    Args:
      statistic: e.g. :func:`kendall_tau`, called as ``statistic(*resampled_columns)``.
      *columns: equal-length sequences (e.g. measure, gap).
      num_resamples: bootstrap resamples B ≥ 10.
      level: confidence level in (0, 1).
      seed: resampling seed.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num_resamples < 10:
        raise ValueError(f"num_resamples must be >= 10, got {num_resamples}")
    if not columns:
        raise ValueError("bootstrap_ci needs at least one column")
    arrays = [np.asarray(c) for c in columns]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"all columns must have the same length, got {[a.shape[0] for a in arrays]}")
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*arrays))
    stats = np.empty(num_resamples)
    for b in range(num_resamples):
        idx = rng.integers(0, n, n)
        stats[b] = statistic(*(a[idx] for a in arrays))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return ConfidenceInterval(estimate, float("nan"), float("nan"), num_resamples)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return ConfidenceInterval(estimate, float(low), float(high), num_resamples)


def kendall_table(
    measures: Mapping[str, Sequence[float]],
    gap: Sequence[float],
    hparams: Mapping[str, Sequence] | None = None,
    *,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """One row per measure: τ with its bootstrap interval, and the granulated τ (overall and per axis).

    Returns:
      ``[{"measure", "tau", "tau_low", "tau_high", "granulated_tau", "psi/<axis>"...}]``.
    """
    rows = []
    for name, values in measures.items():
        ci = bootstrap_ci(kendall_tau, values, gap, num_resamples=num_resamples, level=level, seed=seed)
        row = {"measure": name, "tau": ci.estimate, "tau_low": ci.low, "tau_high": ci.high}
        if hparams:
            g = granulated_kendall(values, gap, hparams)
            row["granulated_tau"] = g.overall
            row.update({f"psi/{k}": v for k, v in g.per_axis.items()})
        rows.append(row)
    return rows


__all__ = [
    "ConfidenceInterval",
    "GranulatedTau",
    "bootstrap_ci",
    "granulated_kendall",
    "kendall_table",
    "kendall_tau",
]
