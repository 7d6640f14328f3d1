"""The edge-of-stability study: the in-training λ_max is the exact one, the 2/η lines sit at 2/η, quick run."""

import numpy as np
import pytest

from experiments import stability
from experiments.common import STATUSES, Row
from losslab import curvature

# float32 Hessian-vector products and a float32 dense Hessian: both are good to ~1e-6 relative;
# 1e-3 leaves room for Lanczos convergence yet catches any factor (2×, 1/n) or wrong-point bug.
LAMBDA_RTOL = 1e-3

TINY = {"dataset": "mnist1d", "num_train": 64, "widths": [8], "activation": "tanh", "loss": "mse",
        "learning_rate": 0.5, "steps": 20, "probe_every": 5, "lanczos_steps": 30, "seed": 0}


def test_recorded_lambda_max_is_the_exact_top_eigenvalue():
    obj, result = stability.gradient_descent(TINY)
    rec = result.history.probes["lambda_max/value"]
    assert rec["step"] == [5, 10, 15, 20]
    # The probe at step 20 looks at the parameters after 20 updates: the final ones.
    exact = np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(obj, result.params), np.float64)).max()
    assert rec["value"][-1] == pytest.approx(exact, rel=LAMBDA_RTOL)
    # Same run, same numbers (the study's stored trajectory is this probe record).
    again = stability.trajectory(TINY)["_arrays"]
    np.testing.assert_allclose(again["lambda_max"], rec["value"], rtol=1e-6)
    np.testing.assert_array_equal(again["lambda_step"], rec["step"])
    assert len(again["loss"]) == TINY["steps"]


def _fake_rows(lrs, levels):
    """Rows (as ``stability.run`` returns them) whose λ_max climbs to ``level × 2/η`` and stays there."""
    rows = []
    for lr, level in zip(lrs, levels):
        cfg = {**TINY, "name": f"lr{lr:g}", "learning_rate": lr, "steps": 100}
        steps = np.arange(10, 101, 10)
        lam = np.minimum(np.linspace(0.2, 2.0, steps.size), 1.0) * level * 2.0 / lr
        arrays = {"lambda_step": steps, "lambda_max": lam, "residual": 1e-6 * lam,
                  "loss_step": np.arange(100), "loss": np.geomspace(0.5, 0.01, 100)}
        rows.append(Row(cfg, {"diverged": None, "final_train_loss": 0.01, "max_lambda_max": float(lam.max())},
                        arrays))
    return rows


def test_threshold_lines_sit_at_two_over_eta_and_the_summary_reads_the_data():
    assert stability.threshold(0.5) == 4.0
    lrs = (0.25, 1.0, 2.0)
    runs = _fake_rows(lrs, levels=(0.5, 1.0, 1.05))
    fig = stability.figure(runs)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().startswith("2/η")}
    assert len(lines) == len(lrs)
    drawn = sorted(float(np.unique(ln.get_ydata())[0]) for ln in lines.values())
    np.testing.assert_allclose(drawn, sorted(2.0 / lr for lr in lrs))
    assert ax.get_xlabel() and ax.get_ylabel() and fig.axes[1].get_yscale() == "log"

    rows = {e["learning_rate"]: e for e in stability.summarize(runs)}
    assert rows[0.25]["late_median_over_threshold"] == pytest.approx(0.5)
    assert rows[1.0]["late_median_over_threshold"] == pytest.approx(1.0)
    assert rows[2.0]["max_lambda_max"] == pytest.approx(1.05)
    assert [rows[lr]["at_edge"] for lr in lrs] == [False, True, True]
    v = stability.verdict(runs)
    assert "η ∈ {1, 2}" in v.evidence["summary"] and "η=0.25" in v.evidence["summary"]
    assert v.status == "inconclusive"  # two of three step sizes reach the edge
    # A diverged run is drawn in the legend only and left out of the verdict.
    diverged = Row({**TINY, "learning_rate": 4.0}, {"diverged": "loss became NaN"})
    assert stability.verdict(runs[1:] + [diverged]).status == "holds"
    assert "diverged" in stability.figure(runs + [diverged]).axes[0].get_legend_handles_labels()[1][-1]


@pytest.mark.slow
def test_quick_stability_study_end_to_end(quick_results):
    config = stability.quick()
    runs = stability.run(config, str(quick_results))
    rows = stability.summarize(runs)
    assert [e["learning_rate"] for e in rows] == list(config.learning_rates)
    for e in rows:
        assert not e["diverged"]
        assert e["threshold"] == pytest.approx(2.0 / e["learning_rate"])
        assert np.isfinite(e["max_lambda_max"]) and e["max_lambda_max"] > 0
        assert e["late_max_rel_residual"] < 1e-2
    assert stability.verdict(runs).status in STATUSES
    # Resumes from the store: nothing is recomputed, the same summary comes back.
    assert stability.summarize(stability.run(config, str(quick_results))) == rows
