"""The smaller paper studies (spectrum, depth, noise), end to end in their quick configurations."""

import os

import numpy as np
import pytest

from experiments import depth, noise, spectrum


@pytest.mark.slow
def test_quick_spectrum_study_matches_the_exact_spectrum(quick_results):
    result = spectrum.run(spectrum.quick_config(), str(quick_results))
    small = result["metrics"][1]
    for stage in ("init", "end"):
        m = small[stage]
        # Lanczos' top Ritz value converges to the exact top eigenvalue on a 200-parameter model.
        assert m["lambda_max"] == pytest.approx(m["exact_lambda_max"], rel=1e-3)
        # Two Hutchinson probes: within 5 standard errors of the exact trace (a factor-2 bug is far outside).
        assert abs(m["trace"] - m["exact_trace"]) < 5 * m["trace_std_error"] + 1e-3 * abs(m["exact_trace"])
    assert all(os.path.getsize(p) > 1000 for p in result["figures"])


@pytest.mark.slow
def test_quick_depth_study_measures_both_architectures(quick_results):
    result = depth.run(depth.quick_config(), str(quick_results))
    summary = {(e["depth"], e["residual"]): e for e in result["summary"]}
    assert set(summary) == {(2, False), (2, True), (4, False), (4, True)}
    for e in summary.values():
        assert 0 < e["sv_min"] <= e["sv_median"] <= e["sv_max"]
    for cfg, m in result["rows"]:
        assert len(m["layer_grad_norms"]) == cfg["depth"]
        assert all(np.isfinite(m["layer_grad_norms"]))
    assert all(os.path.getsize(p) > 1000 for p in result["figures"])


def test_noise_floor_is_the_entropy_of_the_noisy_label_distribution():
    assert noise.noise_floor(0.0, 10) == 0.0
    p, k = 0.2, 10
    dist = np.array([1 - p] + [p / (k - 1)] * (k - 1))
    assert noise.noise_floor(p, k) == pytest.approx(-(dist * np.log(dist)).sum())
    # Uniform labels: the floor is log K.
    assert noise.noise_floor(0.9, 10) == pytest.approx(np.log(10))


@pytest.mark.slow
def test_quick_noise_study_stays_above_the_floor(quick_results):
    result = noise.run(noise.quick_config(), str(quick_results))
    for e in result["summary"]["noise"]:
        # No model beats the Bayes floor on held-out noisy labels (small slack for a finite validation set).
        assert e["best_val_loss"] > e["floor"] - 0.05
    imb = {(e["ratio"], e["loss"]) for e in result["summary"]["imbalance"]}
    assert imb == {(1.0, "cross_entropy"), (1.0, "focal"), (0.2, "cross_entropy"), (0.2, "focal")}
    assert all(os.path.getsize(p) > 1000 for p in result["figures"])
