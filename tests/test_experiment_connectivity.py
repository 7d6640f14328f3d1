"""The mode-connectivity study (paper figure 11): barrier helpers, and the quick run end to end."""

import numpy as np
import pytest

from experiments import connectivity
from experiments.common import STATUSES

# Both paths start and end exactly at the stored endpoints; float32 evaluation of the same
# params in a differently shaped program may differ in the last bits only.
ENDPOINT_RTOL = 1e-5
# The quick run trains the bend point for a few dozen minibatch steps from the straight line
# (a Bezier curve with its control at the midpoint *is* the segment), so its barrier can only
# move by minibatch noise; 0.05 nats is ~2 % of the quick endpoints' loss (≈ 2.3).
BARRIER_SLACK = 0.05


def test_barrier_heights_of_a_known_path():
    t = np.linspace(0, 1, 5)
    values = {"train_loss": np.array([1.0, 2.0, 4.0, 2.0, 3.0]), "test_loss": np.full(5, 2.0),
              "train_accuracy": np.array([0.9, 0.5, 0.4, 0.6, 0.7]), "test_accuracy": np.full(5, 0.5)}
    h = connectivity.barrier_heights(t, values)
    assert h["train_loss"]["height"] == pytest.approx(4.0 - 2.0)  # max minus the endpoints' mean
    assert h["train_loss"]["chord"] == pytest.approx(4.0 - 2.0)  # the chord is 2.0 at t = 0.5
    assert h["train_loss"]["endpoints"] == [1.0, 3.0]
    assert h["train_error"]["height"] == pytest.approx(0.6 - 0.2)  # errors are 1 - accuracy
    assert h["test_loss"]["height"] == 0.0 and h["test_error"]["height"] == 0.0


def test_plane_span_pads_the_points():
    x_span, y_span = connectivity.plane_span([[0, 0], [10, 0], [5, 4]], 0.1)
    assert x_span == pytest.approx((-1, 11)) and y_span == pytest.approx((-1, 5))


def _heights(train_loss, test_loss, test_error):
    return {"train_loss": {"height": train_loss}, "test_loss": {"height": test_loss},
            "test_error": {"height": test_error}, "train_error": {"height": 0.0}}


def test_barrier_reading_follows_the_data_either_way():
    lower = connectivity.barrier_reading(_heights(4.4, 2.9, 0.37), _heights(0.03, 0.9, 0.0045))
    assert lower.startswith("the Bezier path lowers the train loss barrier from 4.4 to 0.03")
    assert "test error barrier from 37 pp to 0.45 pp" in lower
    assert "connected by a low-loss curve" in lower
    higher = connectivity.barrier_reading(_heights(0.1, 0.1, 0.01), _heights(0.2, 0.3, 0.02))
    assert "does not lower the train loss barrier (0.1 linear vs 0.2 Bezier)" in higher
    assert "connected" not in higher


def test_configs_need_two_different_seeds():
    with pytest.raises(ValueError, match="two different seeds"):
        connectivity._configs(connectivity.Config(seeds=(0, 0)))
    assert connectivity._configs(connectivity.Config(plane_points=0))["plane"] is None


@pytest.mark.slow
def test_quick_connectivity_paths_start_and_end_at_the_minima(quick_results):
    config = connectivity.quick()
    runs = connectivity.run(config, str(quick_results))
    ends = [r.metrics for r in runs["endpoints"]]
    arrays = runs["paths"].arrays
    for path in ("linear", "bezier"):
        for split in ("train", "test"):
            values = arrays[f"{path}_{split}_loss"]
            assert values.shape == (config.num_points,)
            assert values[0] == pytest.approx(ends[0][f"{split}_loss"], rel=ENDPOINT_RTOL)
            assert values[-1] == pytest.approx(ends[1][f"{split}_loss"], rel=ENDPOINT_RTOL)
            assert np.all(np.isfinite(values))
    m = runs["paths"].metrics
    assert m["bezier"]["train_loss"]["height"] <= m["linear"]["train_loss"]["height"] + BARRIER_SLACK
    assert arrays["bezier_train_losses"].shape == (config.bezier_steps,)
    # The plane holds the three points: θ_A at the origin, θ_B on the first axis.
    coords = runs["plane"].arrays["coords"]
    assert coords[0] == pytest.approx([0.0, 0.0]) and coords[1][1] == pytest.approx(0.0, abs=1e-6)
    assert coords[1][0] == pytest.approx(m["distance"], rel=1e-4)
    v = connectivity.verdict(runs)
    assert v.status in STATUSES and set(v.evidence["barriers"]) == {"linear", "bezier"}
    assert v.evidence["summary"].startswith("the Bezier path")
    fig = connectivity.figure(runs)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4  # two path panels, two plane panels
