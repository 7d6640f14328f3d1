"""The first study, end to end in its quick configuration."""

import json

import pytest

from experiments import train as study
from experiments.common import STATUSES


@pytest.mark.slow
def test_quick_train_study_runs_and_resumes(quick_results):
    config = study.quick()
    rows = study.run(config, str(quick_results))
    table = study.summarize(rows)
    names = [row["variant"] for row in table]
    assert names == ["adam", "sgd", "l2=0.01", "dropout=0.1"]
    for row in table:
        assert 0 < row["best_val_loss"] < 3 and 1 <= row["best_epoch"] <= config.epochs
    with open(quick_results / "train" / "summary.json") as f:
        assert json.load(f)["table"] == table
    fig = study.figure(rows)
    assert len(fig.axes) == 3 and all(ax.get_ylabel() for ax in fig.axes)
    v = study.verdict(rows)
    assert v.status in STATUSES and "to val loss 0.15: Adam" in v.evidence["summary"]
    # One L2 and one Dropout value: the optimum cannot be resolved.
    assert v.evidence["parts"]["l2_optimum_resolved"] is None
    # A rerun finds every run finished and recomputes nothing (same numbers).
    again = study.run(config, str(quick_results))
    assert study.summarize(again) == table
