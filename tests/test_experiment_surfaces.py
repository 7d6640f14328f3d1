"""The surfaces study runs end to end in quick mode, stores its runs, resumes and draws every figure."""

import glob
import os

import numpy as np
import pytest

from experiments import surfaces
from experiments.common import STATUSES, parse_config


@pytest.mark.slow
def test_quick_study_end_to_end_and_resume(quick_results):
    # The paper's quick configuration, in the session's shared folder (the quick paper test reuses it).
    out = str(quick_results)
    rows = surfaces.run(surfaces.quick(), out)
    assert set(rows) == {"train-sb", "train-lb", "train-resnet", "train-plain", "plane-sb", "plane-lb", "lines",
                         "interpolation", "trajectory", "plane-resnet", "plane-plain"}
    # The stored plane is centred on the stored solution: its centre loss is the run's training loss.
    assert np.isclose(rows["plane-sb"].metrics["centre_train_loss"], rows["train-sb"].metrics["train_loss"], rtol=1e-5)
    ev = rows["trajectory"].metrics["explained_variance_ratio"]
    assert len(ev) == 2 and 0 < ev[1] <= ev[0] <= 1
    # The config reached the store: grid_points x grid_points planes are stored, and a flag overrides it.
    g = surfaces.quick().grid_points
    assert rows["plane-sb"].arrays["train_loss"].shape == (g, g)
    config, _ = parse_config(surfaces.Config, ["--quick", "--grid_points", "4"], quick=surfaces.quick)
    assert config.grid_points == 4 and config.trajectory_grid_points == surfaces.quick().trajectory_grid_points
    v = surfaces.verdict(rows)
    assert v.status in STATUSES and set(v.evidence["edge_rise"]) == {"sb", "lb"}

    # main: resumes (recomputes nothing: metrics files untouched) and writes every figure from the rows.
    metrics = sorted(glob.glob(os.path.join(out, "surfaces", "*", "metrics.json")))
    stamps = [os.path.getmtime(p) for p in metrics]
    paths = surfaces.main(["--quick", "--out", out])
    assert [os.path.getmtime(p) for p in metrics] == stamps
    names = {os.path.basename(p) for p in paths}
    for stem in ("sb_lb_surfaces", "surfaces_planes_3d", "surfaces_trajectory", "surfaces_resnet_plain"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for path in paths:
        assert os.path.getsize(path) > 1000
