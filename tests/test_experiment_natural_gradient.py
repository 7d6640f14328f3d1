"""The natural-gradient study's quick config runs end to end, draws its figures from the rows and resumes."""

import dataclasses

import pytest

from experiments import natural_gradient as study
from experiments.common import STATUSES
from losslab.results import RunStore


@pytest.mark.slow
def test_quick_study_writes_results_and_figures_and_resumes(quick_results):
    # The paper's quick configuration, in the session's shared folder (the quick paper test reuses it).
    tmp_path = quick_results
    config = study.quick()
    rows = study.run(config, str(tmp_path))
    assert len(rows["rows"]) == len(config.optimizers)
    assert all(r["curves"]["step"] for r in rows["rows"])
    fig = study.figure(rows)
    assert len(fig.axes) >= 3
    extra = study.extra_figures(rows)
    assert set(extra) >= {"natural_overlaps", "natural_densities", "natural_curves_mnist1d"}
    geo = rows["geometry"]["checkpoints"]
    assert set(geo) == {str(e) for e in config.analysis_epochs}
    for m in geo.values():
        ov = m["overlaps"]
        assert all(abs(ov[i][i] - 1.0) < 1e-3 for i in range(len(ov)))  # a subspace overlaps itself fully
        assert ov[0][2] > 0.99  # Fisher = GGN for softmax cross-entropy
        assert (
            -1.0 <= m["cos_natural_gradient"] <= 1.0 and m["cos_natural_gradient"] > 0
        )  # F^-1 g is a descent direction
    v = study.verdict(rows)
    assert v.status in STATUSES and set(v.evidence["fisher_hessian_overlap"]) == set(geo)
    with open(tmp_path / "natural_gradient" / "summary.md") as f:
        assert "steps / time / cost to train loss" in f.read()
    store = RunStore(str(tmp_path), study.EXPERIMENT)
    count = len(store)
    again = study.run(config, str(tmp_path))  # resumes: every run is loaded, none recomputed
    assert len(store) == count
    assert again["rows"] == rows["rows"]


def test_config_validation():
    config = dataclasses.replace(study.quick(), optimizers=("sgd", "lbfgs"))
    with pytest.raises(ValueError, match="lr_grid has no learning rates"):
        study.run(config, "/tmp/unused-natural-gradient")
