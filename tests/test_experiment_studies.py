"""The smaller paper studies (spectrum, depth, noise), end to end in their quick configurations."""

import numpy as np
import pytest

from experiments import depth, noise, spectrum
from experiments.common import STATUSES


@pytest.mark.slow
def test_quick_spectrum_study_matches_the_exact_spectrum(quick_results):
    rows = spectrum.run(spectrum.quick(), str(quick_results))
    small = rows[1].metrics
    for stage in ("init", "end"):
        m = small[stage]
        # Lanczos' top Ritz value converges to the exact top eigenvalue on a 200-parameter model.
        assert m["lambda_max"] == pytest.approx(m["exact_lambda_max"], rel=1e-3)
        # Two Hutchinson probes: within 5 standard errors of the exact trace (a factor-2 bug is far outside).
        assert abs(m["trace"] - m["exact_trace"]) < 5 * m["trace_std_error"] + 1e-3 * abs(m["exact_trace"])
    # The SLQ weights of each probe sum to 1, so the bulk share is a fraction.
    np.testing.assert_allclose(rows[0].arrays["end_weights"].sum(-1), 1.0, rtol=1e-4)
    v = spectrum.verdict(rows)
    assert v.status in STATUSES and 0 <= v.evidence["bulk_fraction"] <= 1
    assert v.evidence["parts"]["slq_recovers_exact"] is True
    assert len(spectrum.figure(rows).axes) == 2


@pytest.mark.slow
def test_quick_depth_study_measures_both_architectures(quick_results):
    rows = depth.run(depth.quick(), str(quick_results))
    summary = {(e["depth"], e["residual"]): e for e in depth.summarize(rows)}
    assert set(summary) == {(2, False), (2, True), (4, False), (4, True)}
    for e in summary.values():
        assert 0 < e["sv_min"] <= e["sv_median"] <= e["sv_max"]
    for cfg, m in rows:
        assert len(m["layer_grad_norms"]) == cfg["depth"]
        assert all(np.isfinite(m["layer_grad_norms"]))
    v = depth.verdict(rows)
    assert v.status in STATUSES and v.evidence["depths"] == [2, 4]
    assert len(depth.figure(rows).axes) == 2


def test_noise_floor_is_the_entropy_of_the_noisy_label_distribution():
    assert noise.noise_floor(0.0, 10) == 0.0
    p, k = 0.2, 10
    dist = np.array([1 - p] + [p / (k - 1)] * (k - 1))
    assert noise.noise_floor(p, k) == pytest.approx(-(dist * np.log(dist)).sum())
    # Uniform labels: the floor is log K.
    assert noise.noise_floor(0.9, 10) == pytest.approx(np.log(10))


@pytest.mark.slow
def test_quick_noise_study_stays_above_the_floor(quick_results):
    rows = noise.run(noise.quick(), str(quick_results))
    summary = noise.summarize(rows)
    for e in summary["noise"]:
        # No model beats the Bayes floor on held-out noisy labels (small slack for a finite validation set).
        assert e["best_val_loss"] > e["floor"] - 0.05
    imb = {(e["ratio"], e["loss"]) for e in summary["imbalance"]}
    assert imb == {(1.0, "cross_entropy"), (1.0, "focal"), (0.2, "cross_entropy"), (0.2, "focal")}
    v = noise.verdict(rows)
    assert v.status in STATUSES and v.evidence["imbalance_ratio"] == 0.2
    assert len(noise.figure(rows).axes) == 3
