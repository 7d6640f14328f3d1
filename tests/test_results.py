"""The results store: hashing, atomic writes, resume; experiment flag parsing and sweeps."""

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments.common import parse_config, run_sweep
from losslab import results
from losslab.results import RunStore, config_hash, load_table, provenance


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_save_load_and_skip(tmp_path):
    store = RunStore(str(tmp_path), "exp")
    cfg = {"name": "r", "lr": 0.1, "seed": 3}
    assert not store.is_done(cfg)
    path = store.save(cfg, {"loss": 0.5, "nan": float("nan")}, arrays={"w": np.arange(3)}, seed=3, wall_time=1.0)
    assert store.is_done(cfg) and os.path.basename(path).startswith("r-")
    run = store.load(cfg)
    assert run.config == cfg and run.metrics["loss"] == 0.5 and run.metrics["nan"] is None
    np.testing.assert_array_equal(run.arrays()["w"], np.arange(3))
    prov = run.provenance
    assert prov["seed"] == 3 and "jax" in prov and "backend" in prov and "git_commit" in prov
    assert [r.run_id for r in store] == [run.run_id]
    rows = load_table(str(tmp_path), "exp")
    assert rows[0]["config.lr"] == 0.1 and rows[0]["metrics.loss"] == 0.5
    # No temporary files are left behind.
    assert not [f for f in os.listdir(path) if f.startswith(".tmp")]


def test_unfinished_run_is_not_done(tmp_path):
    store = RunStore(str(tmp_path), "exp")
    cfg = {"name": "r"}
    os.makedirs(store.path(cfg))
    with open(os.path.join(store.path(cfg), "config.json"), "w") as f:
        json.dump(cfg, f)
    assert not store.is_done(cfg) and len(store) == 0
    with pytest.raises(FileNotFoundError, match="no finished run"):
        store.load(cfg)


def test_sweep_resumes_after_a_kill_without_recomputing(tmp_path):
    store = RunStore(str(tmp_path), "sweep")
    calls = []

    def fn(cfg):
        calls.append(cfg["seed"])
        if cfg["seed"] == 2 and len(calls) < 4:
            raise KeyboardInterrupt  # simulated kill in the middle of the third run
        return {"value": cfg["seed"] * 10}

    runs = [({"name": "s", "seed": s}, fn) for s in range(4)]
    with pytest.raises(KeyboardInterrupt):
        run_sweep(store, runs)
    assert calls == [0, 1, 2] and len(store) == 2
    metrics = run_sweep(store, runs)
    assert calls == [0, 1, 2, 2, 3], "finished runs must not be recomputed"
    assert [m["value"] for m in metrics] == [0, 10, 20, 30]


def _two_runs(root):
    store = RunStore(root, "exp")
    for lr in (0.1, 0.01):
        store.save({"name": "r", "lr": lr, "model": {"widths": [8, 8]}}, {"loss": lr * 2, "curve": [1, 2]}, seed=0)
    return store


def test_load_in_one_call_as_flat_dicts(tmp_path):
    _two_runs(str(tmp_path))
    rows = results.load(str(tmp_path), "exp")
    assert rows == load_table(str(tmp_path), "exp") and len(rows) == 2
    row = next(r for r in rows if r["config.lr"] == 0.1)
    assert row["metrics.loss"] == 0.2 and row["config.model.widths"] == [8, 8] and row["metrics.curve"] == [1, 2]
    assert row["run_id"].startswith("r-") and not any(k.startswith("provenance.") for k in row)
    with_prov = results.load(str(tmp_path), "exp", provenance=True)
    assert with_prov[0]["provenance.seed"] == 0 and "provenance.jax" in with_prov[0]
    with pytest.raises(FileNotFoundError, match=r"no experiment 'exq'.*found: \['exp'\]"):
        results.load(str(tmp_path), "exq")


def test_load_as_dataframe(tmp_path):
    pandas = pytest.importorskip("pandas")
    _two_runs(str(tmp_path))
    df = results.load(str(tmp_path), "exp", as_dataframe=True)
    assert isinstance(df, pandas.DataFrame) and len(df) == 2
    assert {"run_id", "config.lr", "metrics.loss"} <= set(df.columns)
    assert df.set_index("config.lr").loc[0.01, "metrics.loss"] == pytest.approx(0.02)


def test_to_frame_without_pandas_says_how_to_install(monkeypatch):
    real = results.importlib.util.find_spec
    monkeypatch.setattr(results.importlib.util, "find_spec", lambda name: None if name == "pandas" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'losslab\[pandas\]'"):
        results.to_frame([{"a": 1}])


def test_provenance_fields():
    p = provenance(seed=1)
    assert set(p) >= {"jax", "flax", "optax", "numpy", "backend", "seed", "git_commit", "time"}


@dataclasses.dataclass(frozen=True)
class _Cfg:
    lr: float = 0.1
    epochs: int = 3
    seeds: tuple[int, ...] = (0, 1)
    name: str = "x"
    flag: bool = False


def test_parse_config_overrides_and_quick():
    cfg, out = parse_config(_Cfg, ["--lr", "0.5", "--seeds", "3,4,5", "--flag", "true", "--out", "o"])
    assert cfg == _Cfg(lr=0.5, seeds=(3, 4, 5), flag=True) and out == "o"
    cfg, _ = parse_config(_Cfg, ["--quick", "--epochs", "9"], quick=lambda: _Cfg(epochs=1, name="q"))
    assert cfg.epochs == 9 and cfg.name == "q"
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--learning-rate", "0.1"])
