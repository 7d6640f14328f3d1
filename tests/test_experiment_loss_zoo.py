"""The loss-zoo study (paper figure 7): helpers on known answers, and the quick run end to end."""

import math

import numpy as np
import pytest

from experiments import loss_zoo
from experiments.common import STATUSES, Row

# The piecewise-linear slices below are exact on their grid, up to float rounding.
EXACT = 1e-12


# --------------------------------------------------------------------------
# slice_width


def test_slice_width_of_a_v_shape_is_where_it_crosses_the_level():
    t = np.linspace(-1, 1, 21)
    assert loss_zoo.slice_width(t, np.abs(t), 0.3) == pytest.approx(0.3, abs=EXACT)
    # The crossing between grid points is interpolated linearly (0.25 lies between 0.2 and 0.3).
    assert loss_zoo.slice_width(t, np.abs(t) + 5.0, 0.25) == pytest.approx(0.25, abs=EXACT)


def test_slice_width_averages_the_two_sides():
    t = np.linspace(-1, 1, 41)
    v = np.where(t > 0, 2 * t, -t)  # reaches 0.3 at t = 0.15 on the right, t = -0.3 on the left
    assert loss_zoo.slice_width(t, v, 0.3) == pytest.approx(0.225, abs=EXACT)


def test_slice_width_uses_the_first_crossing_and_censors_at_the_span():
    t = np.linspace(-1, 1, 21)
    bumpy = np.where(np.abs(np.abs(t) - 0.5) < 1e-9, 1.0, 0.0)  # a spike at |t| = 0.5 only
    assert loss_zoo.slice_width(t, bumpy, 0.5) == pytest.approx(0.45, abs=EXACT)
    # Never rising: the width is the span (a lower bound).
    assert loss_zoo.slice_width(t, np.zeros_like(t), 0.1) == pytest.approx(1.0)
    # One-sided grid: only that side counts.
    t1 = np.linspace(0, 1, 11)
    assert loss_zoo.slice_width(t1, t1, 0.4) == pytest.approx(0.4, abs=EXACT)


def test_slice_width_rejects_bad_input():
    with pytest.raises(ValueError, match="t = 0"):
        loss_zoo.slice_width(np.linspace(0.1, 1, 5), np.zeros(5), 0.1)
    with pytest.raises(ValueError, match="rise"):
        loss_zoo.slice_width(np.linspace(-1, 1, 5), np.zeros(5), 0.0)
    with pytest.raises(ValueError, match="equal length"):
        loss_zoo.slice_width(np.linspace(-1, 1, 5), np.zeros(4), 0.1)


# --------------------------------------------------------------------------
# Tables and verdicts from synthetic runs


def test_accuracy_std_error_is_binomial():
    assert loss_zoo.accuracy_std_error(0.5, 100) == pytest.approx(0.05)
    assert loss_zoo.accuracy_std_error(1.0, 100) == 0.0


def _run(config, metrics):
    return Row(config, metrics)


def _cls_row(loss, acc, lam, flat, trace=10.0, loss_value=0.5):
    return {"loss": loss, "test_accuracy": acc, "num_test": 1000, "train_loss": loss_value, "hessian_trace": trace,
            "hessian_trace_se": 0.5, "lambda_max": lam, "lambda_max_over_loss": lam / loss_value,
            "pacbayes_flatness": flat, "pacbayes_sigma": flat**-0.5, "slice_width": 0.4, "epochs": 10}


def test_classification_reading_follows_the_data_either_way():
    flatter_wins = [_cls_row("cross_entropy", 0.60, 10.0, 20.0), _cls_row("focal", 0.55, 5.0, 30.0),
                    _cls_row("mse", 0.50, 1.0, 40.0)]
    text = loss_zoo.classification_reading(flatter_wins)
    assert "flatter minima test better" in text and "τ(sharpness, accuracy) = -1.00" in text
    assert "from 50.0 % (MSE) to 60.0 % (cross-entropy) (binomial s.e. 1.6 pp)" in text
    assert "factor 10" in text and "MSE lowest" in text
    sharper_wins = [dict(r, pacbayes_flatness=60.0 - r["pacbayes_flatness"]) for r in flatter_wins]
    assert "sharper minima test better" in loss_zoo.classification_reading(sharper_wins)
    mixed = [dict(r, pacbayes_flatness=f) for r, f in zip(flatter_wins, (30.0, 20.0, 40.0))]
    assert "no consistent link" in loss_zoo.classification_reading(mixed)
    # Differences within two binomial standard errors (1.6 pp on 1000 examples) are not ranked.
    close = [dict(r, test_accuracy=0.5 + 0.01 * i) for i, r in enumerate(flatter_wins)]
    assert "similar test accuracy (50.0–52.0 %" in loss_zoo.classification_reading(close)
    ties = [dict(r, pacbayes_flatness=5.0) for r in flatter_wins]
    assert "equally sharp" in loss_zoo.classification_reading(ties)


def _reg_metrics(mse, trace, ggn, lam_max, lam_min):
    return {"clean_test_mse": mse, "hessian_trace": trace, "hessian_trace_se": 1.0, "ggn_trace": ggn,
            "lambda_max": lam_max, "lambda_min": lam_min}


def test_regression_table_averages_over_seeds():
    runs = [
        _run({"part": "regression", "loss": "mse", "fraction": 0.1, "seed": s},
             _reg_metrics(m, 10.0 + s, 9.0, 5.0, -0.1))
        for s, m in enumerate((0.1, 0.3))
    ]
    (row,) = loss_zoo.regression_table(runs)
    assert row["num_seeds"] == 2
    assert row["clean_test_mse"] == pytest.approx(0.2)
    assert row["clean_test_mse_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert row["hessian_trace"] == pytest.approx(10.5)


def test_regression_reading_names_the_robust_loss_and_the_flat_hessian():
    rows = []
    for loss, mses, trace, ggn, lam in (("mse", (0.03, 0.16), 80.0, 80.0, 28.0), ("mae", (0.03, 0.04), 0.5, 0.0, 1.0),
                                        ("huber", (0.03, 0.05), 40.0, 40.0, 14.0)):
        for frac, mse in zip((0.0, 0.2), mses):
            rows.append({"loss": loss, "fraction": frac, "num_seeds": 1,
                         **_reg_metrics(mse, trace, ggn, lam, -lam if loss == "mae" else -0.05)})
    text = loss_zoo.regression_reading(rows)
    assert text.startswith("(b) with 20 % outliers MAE keeps the clean fit best")
    assert "MSE 0.03→0.16 (×5.33)" in text
    assert "MAE: Gauss–Newton trace exactly 0, Hessian trace ≈ 0" in text and "λ_min ≈ −λ_max" in text
    assert "λ_min goes MSE -0.05→-0.05, MAE -1→-1" in text
    assert "MSE:" not in text and "Huber:" not in text  # their curvature is not zero
    # The other way round: MSE stays best when the outliers do not hurt it.
    flipped = [dict(r, clean_test_mse=0.01) if r["loss"] == "mse" else r for r in rows]
    assert loss_zoo.regression_reading(flipped).startswith("(b) with 20 % outliers MSE keeps the clean fit best")


def test_the_quick_config_is_small_and_unknown_losses_are_rejected():
    cls, reg = loss_zoo._configs(loss_zoo.quick())
    assert len({c["name"] for c in cls + reg}) == len(cls) + len(reg)
    with pytest.raises(ValueError, match="valid"):
        loss_zoo._configs(loss_zoo.Config(losses=("cross_entropy", "not_a_loss")))


# --------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_quick_loss_zoo_runs_every_cell(quick_results):
    config = loss_zoo.quick()
    rows = loss_zoo.run(config, str(quick_results))
    cls = {r["loss"]: r for r in loss_zoo.classification_table(rows)}
    assert set(cls) == set(config.losses)
    for row in cls.values():
        for key in ("test_accuracy", "train_loss", "hessian_trace", "hessian_trace_se", "lambda_max",
                    "lambda_max_over_loss", "pacbayes_flatness", "slice_width"):
            assert math.isfinite(row[key]), (row["loss"], key, row[key])
        assert 0 <= row["test_accuracy"] <= 1 and 0 < row["slice_width"] <= config.line_span
    reg = {(r["loss"], r["fraction"]): r for r in loss_zoo.regression_table(rows)}
    assert set(reg) == {(loss, f) for loss in config.reg_losses for f in config.outlier_fractions}
    for row in reg.values():
        assert row["num_seeds"] == len(config.reg_seeds)
        for key in ("clean_test_mse", "hessian_trace", "ggn_trace", "lambda_max", "lambda_min"):
            assert math.isfinite(row[key]), (row["loss"], row["fraction"], key)
        assert row["lambda_min"] <= row["lambda_max"]
    # MAE has no output-space curvature: its Gauss–Newton matrix is exactly zero.
    assert all(r["ggn_trace"] == 0.0 for (loss, _), r in reg.items() if loss == "mae")
    # Stored slices have one row per direction.
    for row in rows:
        if row.config["part"] == "classification":
            assert row.arrays["test_error"].shape == (config.num_directions, config.line_points)
    v = loss_zoo.verdict(rows)
    assert v.status in STATUSES and v.evidence["summary"].startswith("(a)") and "(b)" in v.evidence["summary"]
    # The quick run has no MSE regression to compare the robust loss with: (b) is undecided.
    assert v.evidence["parts"]["robust_loss_keeps_the_fit"] is None
    fig = loss_zoo.figure(rows)
    assert len(fig.axes) >= len(config.losses) + 5 + 3
