"""The surfaces study runs end to end in quick mode, stores its runs, resumes and draws every figure."""

import glob
import os

import numpy as np
import pytest

from experiments import surfaces


@pytest.mark.slow
def test_quick_study_end_to_end_and_resume(quick_results):
    # The paper's quick configuration, in the session's shared folder (the quick paper test reuses it).
    out = str(quick_results)
    result = surfaces.main(["--quick", "--out", out])
    runs = result["runs"]
    assert {
        "train-sb",
        "train-lb",
        "plane-sb",
        "plane-lb",
        "lines",
        "interpolation",
        "trajectory",
        "plane-resnet",
        "plane-plain",
    } <= set(runs)
    # The stored plane is centred on the stored solution: its centre loss is the run's training loss.
    assert np.isclose(runs["plane-sb"]["centre_train_loss"], runs["train-sb"]["train_loss"], rtol=1e-5)
    ev = runs["trajectory"]["explained_variance_ratio"]
    assert len(ev) == 2 and 0 < ev[1] <= ev[0] <= 1
    names = {os.path.basename(p) for p in result["figures"]}
    for stem in (
        "surfaces_planes",
        "surfaces_planes_3d",
        "surfaces_interpolation",
        "surfaces_lines",
        "surfaces_trajectory",
        "surfaces_resnet_plain",
    ):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for path in result["figures"]:
        assert os.path.getsize(path) > 1000
    # The config reached the store: grid_points x grid_points planes are stored, and a flag overrides it.
    g = surfaces.quick().grid_points
    sb = [r for r in surfaces.RunStore(out, "surfaces") if r.config.get("name") == "plane-sb"]
    assert sb and sb[0].arrays()["train_loss"].shape == (g, g)
    config, _ = surfaces.parse_config(surfaces.Config, ["--quick", "--grid_points", "4"], quick=surfaces.quick)
    assert config.grid_points == 4 and config.trajectory_grid_points == surfaces.quick().trajectory_grid_points

    # Resume: a second run recomputes nothing (metrics files untouched) and redraws the figures.
    metrics = sorted(glob.glob(os.path.join(out, "surfaces", "*", "metrics.json")))
    stamps = [os.path.getmtime(p) for p in metrics]
    again = surfaces.run(surfaces.quick(), out)
    assert [os.path.getmtime(p) for p in metrics] == stamps
    assert again["runs"]["interpolation"] == runs["interpolation"]
