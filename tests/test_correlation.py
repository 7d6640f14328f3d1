"""Kendall τ against scipy, granulated τ on hand-made sweeps, bootstrap intervals."""

import numpy as np
import pytest
from scipy import stats

from losslab.correlation import bootstrap_ci, granulated_kendall, kendall_table, kendall_tau

# τ-b is a ratio of integer pair counts: agreement with scipy to round-off.
TAU_ATOL = 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_kendall_tau_matches_scipy(seed, ties):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=30)
    y = 0.5 * x + rng.normal(size=30)
    if ties:
        x, y = np.round(x), np.round(y * 2) / 2
    expected = stats.kendalltau(x, y).statistic
    assert kendall_tau(x, y) == pytest.approx(expected, abs=TAU_ATOL)


def test_kendall_tau_extremes_and_degenerate_inputs():
    x = np.arange(10.0)
    assert kendall_tau(x, 3 * x + 1) == 1.0
    assert kendall_tau(x, -x) == -1.0
    assert np.isnan(kendall_tau(x, np.ones(10)))
    assert np.isnan(kendall_tau([1.0], [2.0]))
    assert kendall_tau([1, 2, np.nan, 3], [1, 2, 5, 3]) == 1.0  # non-finite rows dropped
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_granulated_tau_on_a_grid():
    # Two axes on a 3x3 grid. The measure tracks the gap along "lr" but is reversed along "bs".
    lr = np.repeat([0.1, 0.2, 0.3], 3)
    bs = np.tile([16, 64, 256], 3)
    gap = lr * 10 + bs / 100
    measure = lr * 10 - bs / 100
    g = granulated_kendall(measure, gap, {"lr": lr, "bs": bs})
    assert g.per_axis == {"lr": 1.0, "bs": -1.0}
    assert g.num_groups == {"lr": 3, "bs": 3}
    assert g.overall == 0.0


def test_granulated_tau_star_design_and_singletons():
    # Base (lr .1, bs 16) plus one-at-a-time variations: one group per axis.
    lr = [0.1, 0.2, 0.4, 0.1, 0.1]
    bs = [16, 16, 16, 64, 256]
    gap = [1.0, 2.0, 3.0, 0.5, 0.2]
    measure = [1.0, 2.0, 3.0, 2.0, 3.0]
    g = granulated_kendall(measure, gap, {"lr": lr, "bs": bs})
    assert g.per_axis["lr"] == pytest.approx(1.0)
    assert g.per_axis["bs"] == pytest.approx(-1.0)
    assert g.num_groups == {"lr": 1, "bs": 1}
    one_axis = granulated_kendall(measure, gap, {"lr": lr, "seed": [0] * 5})
    assert np.isnan(one_axis.per_axis["seed"]) and one_axis.num_groups["seed"] == 0


def test_bootstrap_interval_covers_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    ci = bootstrap_ci(kendall_tau, x, y, num_resamples=300, seed=1)
    assert ci.low < ci.estimate < ci.high
    assert 0.2 < ci.estimate < 0.8 and ci.high - ci.low < 0.5
    assert bootstrap_ci(kendall_tau, x, y, num_resamples=300, seed=1) == ci
    assert bootstrap_ci(kendall_tau, x, y, num_resamples=300, seed=2) != ci
    # A wider level gives a wider interval.
    wide = bootstrap_ci(kendall_tau, x, y, num_resamples=300, seed=1, level=0.99)
    assert wide.low <= ci.low and wide.high >= ci.high
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_ci(kendall_tau, x, y, level=1.5)


def test_kendall_table_rows():
    lr = np.repeat([0.1, 0.2], 3)
    seed = np.tile([0, 1, 2], 2)
    gap = lr + 0.01 * seed
    rows = kendall_table({"good": gap * 2, "bad": -gap}, gap, {"lr": lr, "seed": seed}, num_resamples=50)
    by = {r["measure"]: r for r in rows}
    assert by["good"]["tau"] == 1.0 and by["bad"]["tau"] == -1.0
    assert by["good"]["granulated_tau"] == 1.0 and by["good"]["psi/lr"] == 1.0
