"""The flat-minima study: quick run end to end, resume after a kill, config overrides."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import sharpness as exp
from experiments.common import STATUSES, parse_config
from losslab.results import RunStore
from losslab.sharpness import MEASURES


def test_star_and_grid_designs_have_the_expected_runs():
    cfg = exp.Config()
    runs = exp.sweep(cfg)
    # Per model: the base, then each axis's other values (3 batch sizes, 2 lrs, 3 losses, 2 wds, 1 seed).
    assert len(runs) == 2 * (1 + 3 + 2 + 3 + 2 + 1)
    assert len({json.dumps(r, sort_keys=True) for r in runs}) == len(runs)
    grid = dataclasses.replace(cfg, design="grid")
    assert len(exp.sweep(grid)) == 2 * 4 * 3 * 4 * 3 * 2
    base = runs[0]
    assert (base["batch_size"], base["learning_rate"], base["loss"]) == (64, 0.03, "cross_entropy")


def _flags(argv):
    return parse_config(exp.Config, argv, quick=exp.quick, full=exp.full)


def test_flags_override_any_field():
    cfg, out = _flags(["--quick", "--epoch_cap", "7", "--seeds", "0,1,2", "--losses", "mse,focal", "--rho", "0.1",
                       "--out", "x"])
    assert cfg.epoch_cap == 7 and cfg.seeds == (0, 1, 2) and cfg.losses == ("mse", "focal") and cfg.rho == 0.1
    assert cfg.models == exp.quick().models and out == "x"
    assert _flags(["--full"])[0].design == "grid"
    with pytest.raises(SystemExit):
        _flags(["--no_such_field", "1"])
    with pytest.raises(SystemExit):
        _flags(["--epoch_cap", "many"])
    # No prefix matching: --epoch is not --epoch_cap, --seed is not --seeds.
    for flag in ("--epoch", "--seed"):
        with pytest.raises(SystemExit):
            _flags([flag, "3"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"design": "random"}, "design must be"),
        ({"measures": ("sharpness_l2", "flatness")}, "unknown measure 'flatness'"),
        ({"losses": ("cross_entropy", "hinge")}, "unknown loss 'hinge'"),
        ({"models": ("resnet",)}, "models must be from"),
        ({"target_train_accuracy": 1.5}, "target_train_accuracy"),
        ({"learning_rates": (0.0,)}, "learning rates > 0"),
    ],
)
def test_bad_configs_fail_before_running(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        exp.run(dataclasses.replace(exp.quick(), **change), str(tmp_path))


def _fake_metrics(run, ds):
    rng = np.random.default_rng(abs(hash((run["batch_size"], run["seed"], run["loss"]))) % 2**32)
    gap = float(rng.uniform())
    return {
        "stop_epoch": 2, "reached_target": False, "stopping_rule": "fake",
        "train_loss": 0.1, "train_error": 0.1, "test_loss": 0.5, "test_error": 0.1 + gap,
        "measures": {m: float(rng.uniform()) for m in run["measures"]},
        "std_errors": {m: None for m in run["measures"]}, "measure_info": {}, "history": [],
        "train_seconds": 0.0, "total_seconds": 0.0,
    }


def test_killed_sweep_resumes_without_losing_or_recomputing_runs(tmp_path, monkeypatch):
    cfg = dataclasses.replace(exp.quick(), seeds=(0, 1, 2), batch_sizes=(16, 32, 0))
    total = len(exp.sweep(cfg))
    assert total == 5
    calls = []

    def dies_on_third(run, ds):
        calls.append(run)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return _fake_metrics(run, ds)

    monkeypatch.setattr(exp, "train_and_measure", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        exp.run(cfg, str(tmp_path))
    store = RunStore(str(tmp_path), exp.EXPERIMENT)
    finished = store.load_all()
    assert len(finished) == 2
    stamps = {r.run_id: os.path.getmtime(os.path.join(r.path, "metrics.json")) for r in finished}
    before = {r.run_id: r.metrics for r in finished}

    calls.clear()
    monkeypatch.setattr(exp, "train_and_measure", lambda run, ds: calls.append(run) or _fake_metrics(run, ds))
    summary = exp.run(cfg, str(tmp_path))
    assert len(calls) == total - 2
    assert {store.run_id(r) for r in calls}.isdisjoint(stamps)
    assert summary["num_runs"] == total
    for r in store.load_all():
        if r.run_id in stamps:
            assert os.path.getmtime(os.path.join(r.path, "metrics.json")) == stamps[r.run_id]
            assert r.metrics == before[r.run_id]

    calls.clear()
    exp.run(cfg, str(tmp_path))
    assert calls == []  # a finished sweep recomputes nothing


@pytest.mark.slow
def test_quick_run_end_to_end(quick_results):
    cfg = exp.quick()
    summary = exp.run(cfg, str(quick_results))
    folder = summary["folder"]
    for name in ("results.csv", "results.json", "tau.csv", "tau.json", "keskar.json"):
        assert os.path.getsize(os.path.join(folder, name)) > 0, name
    assert set(exp.extra_figures(summary)) == {"scatter", "tau", "keskar"}
    assert len(exp.figure(summary).axes) >= 3  # τ bars, the strongest measures, the Hessian ones
    v = exp.verdict(summary)
    assert v.status in STATUSES and v.evidence["num_runs"] == summary["num_runs"]
    with open(os.path.join(folder, "results.json")) as f:
        rows = json.load(f)
    assert len(rows) == len(exp.sweep(cfg)) == summary["num_runs"]
    for row in rows:
        for m in MEASURES:
            assert np.isfinite(row[m]), (m, row)
        assert row["stop_epoch"] <= cfg.epoch_cap
        assert row["gap_error"] == pytest.approx(row["test_error"] - row["train_error"], abs=1e-6)
    measured = {r["measure"] for r in summary["tau"]}
    assert measured == {m for m in MEASURES if not m.startswith("gap_")}
    assert all(-1 <= r["tau"] <= 1 for r in summary["tau"])
    (contrast,) = summary["keskar"]
    assert contrast["small_batch"] == 32 and contrast["large_batch"] == 384  # full batch: 600 samples → 480 train+val → 384 train
    assert isinstance(contrast["small_flatter"], bool) and isinstance(contrast["small_generalizes_better"], bool)
    with open(os.path.join(folder, "tau.json")) as f:
        assert [r["measure"] for r in json.load(f)] == [r["measure"] for r in summary["tau"]]
