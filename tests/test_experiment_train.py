"""The first study, end to end in its quick configuration."""

import json
import os

import pytest

from experiments import train as study


@pytest.mark.slow
def test_quick_train_study_runs_and_resumes(quick_results):
    config = study.quick_config()
    result = study.run(config, str(quick_results))
    names = [row["variant"] for row in result["table"]]
    assert names == ["adam", "sgd", "l2=0.01", "dropout=0.1"]
    for row in result["table"]:
        assert 0 < row["best_val_loss"] < 3 and 1 <= row["best_epoch"] <= config.epochs
    for path in result["figures"]:
        assert os.path.getsize(path) > 1000
    with open(quick_results / "train" / "summary.json") as f:
        assert json.load(f)["table"] == result["table"]
    # A rerun finds every run finished and recomputes nothing (same numbers).
    again = study.run(config, str(quick_results))
    assert again["table"] == result["table"]
