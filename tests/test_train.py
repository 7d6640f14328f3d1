"""The training engine: convergence, determinism, early stopping, divergence, probes, resume, data parallel."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import EarlyStopping, History, Objective, ReduceOnPlateau, data, diagnose, models, optim
from losslab.train import TrainingDivergedError, grad_norm_probe, train


@pytest.fixture(scope="module")
def mixture():
    return data.load("gaussian_mixture", num_train=256, num_test=64, num_classes=3, seed=0, std=0.3)


@pytest.fixture(scope="module")
def objective(mixture):
    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(16,), seed=0)
    return Objective(model, "cross_entropy", mixture)


def test_tiny_problem_reaches_near_zero_loss(objective):
    result = train(objective, optimizer="adam", learning_rate=0.05, batch_size=64, epochs=60, key=0)
    assert result.history.train_eval_loss[-1] < 0.02
    assert result.history.train_accuracy[-1] == 1.0
    assert len(result.history) == 60 and result.history.stop_reason.startswith("reached the epoch cap")


def test_same_seed_identical_history_different_seed_differs(objective):
    a = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=32, epochs=3, key=7)
    b = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=32, epochs=3, key=7)
    c = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=32, epochs=3, key=8)
    assert a.history.train_loss == b.history.train_loss
    assert a.history.val_loss == b.history.val_loss
    assert a.history.train_loss != c.history.train_loss


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_optimizer_lowers_the_loss(objective, name):
    lr = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "sam": 0.5, "ngd": 0.3, "ngd_empirical": 0.3, "kfac": 0.1, "diag_fisher": 0.1}.get(name, 0.02)
    before = float(objective.loss(objective.params))
    result = train(objective, optimizer=name, learning_rate=lr, batch_size=64, epochs=3, key=0)
    assert result.history.train_eval_loss[-1] < 0.8 * before, name


def test_unknown_optimizer_and_schedule_names(objective):
    with pytest.raises(ValueError, match="valid optimizer names: .*adam.*sgd"):
        train(objective, optimizer="adamax", epochs=1)
    with pytest.raises(ValueError, match="valid schedule names: .*cosine"):
        train(objective, schedule="linear", epochs=1)
    with pytest.raises(ValueError, match="bad options for optimizer 'adam'"):
        train(objective, optimizer="adam", optimizer_options={"rho": 0.1}, epochs=1)
    with pytest.raises(ValueError, match="rho must be > 0"):
        train(objective, optimizer="sam", optimizer_options={"rho": 0.0}, epochs=1)


def test_early_stopping_restores_best_epoch(mixture):
    noisy = data.label_noise(mixture, 0.4, seed=0)
    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(128,), seed=0)
    obj = Objective(model, "cross_entropy", noisy)
    result = train(
        obj, optimizer="adam", learning_rate=0.03, batch_size=16, epochs=60, key=0,
        early_stopping=EarlyStopping(patience=3, restore_best=True),
    )
    h = result.history
    assert h.best_epoch is not None and h.stopped_epoch < 60, "noisy labels should trigger early stopping"
    assert h.stopped_epoch == h.best_epoch + 3
    best_val = min(h.val_loss)
    assert h.val_loss[h.best_epoch - 1] == best_val
    np.testing.assert_allclose(obj.evaluate(result.params, "val")["loss"], best_val, rtol=1e-5)


def test_nan_loss_stops_with_step_and_config(objective):
    with pytest.raises(TrainingDivergedError, match=r"at step \d+ \(epoch 1.*Config: .*'optimizer': 'sgd'.*'learning_rate': 1e\+?30"):
        train(objective, optimizer="sgd", learning_rate=1e30, batch_size=32, epochs=2, key=0)


def test_cosine_and_plateau_schedules_record_learning_rate(objective):
    r = train(objective, optimizer="sgd", learning_rate=0.1, schedule="cosine", batch_size=64, epochs=4, key=0)
    lrs = r.history.learning_rate
    assert lrs[0] < 0.1 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-3
    r = train(
        objective, optimizer="sgd", learning_rate=1e-6, schedule="plateau", batch_size=64, epochs=6, key=0,
        plateau=ReduceOnPlateau(factor=0.5, patience=1, min_delta=1.0),
    )
    assert r.history.learning_rate[-1] < 1e-6 / 2 - 1e-12


def test_probes_run_inside_the_compiled_loop(objective):
    r = train(
        objective, optimizer="sgd", learning_rate=0.1, batch_size=32, epochs=2, key=0,
        probes={"grad_norm": grad_norm_probe()}, probe_every=3,
    )
    rec = r.history.probes["grad_norm"]
    assert rec["step"] == [3, 6, 9, 12, 15]  # 8 steps per epoch, every 3rd step
    assert all(np.isfinite(rec["value"])) and all(v > 0 for v in rec["value"])


def test_snapshots_and_full_batch(objective):
    r = train(objective, optimizer="sgd", learning_rate=0.5, batch_size=None, epochs=4, key=0, snapshot_every=2)
    assert [e for e, _ in r.snapshots] == [0, 2, 4]
    assert r.history.step == [1, 2, 3, 4]  # full batch: one step per epoch
    np.testing.assert_allclose(r.snapshots[-1][1]["head"]["kernel"], r.params["head"]["kernel"])


def test_checkpoint_resume_equals_uninterrupted_run(objective, tmp_path):
    kw = dict(optimizer="adam", learning_rate=0.01, batch_size=32, key=3)
    full = train(objective, epochs=4, **kw)
    train(objective, epochs=2, checkpoint_dir=str(tmp_path), **kw)
    resumed = train(objective, epochs=4, checkpoint_dir=str(tmp_path), **kw)
    assert resumed.history.epoch == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history.train_loss, full.history.train_loss, rtol=1e-6)
    np.testing.assert_allclose(resumed.params["head"]["kernel"], full.params["head"]["kernel"], rtol=1e-5)


def test_stop_below(objective):
    r = train(objective, optimizer="adam", learning_rate=0.05, batch_size=64, epochs=100, key=0, stop_below=0.1)
    assert r.history.train_eval_loss[-1] < 0.1 and r.history.stopped_epoch < 100
    assert "below" in r.history.stop_reason


def test_batchnorm_dropout_model_trains(mixture):
    m = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(16,), dropout=0.2, batch_norm=True)
    obj = Objective(m, "cross_entropy", mixture)
    r = train(obj, optimizer="adam", learning_rate=0.02, batch_size=32, epochs=5, key=0)
    assert r.history.train_eval_loss[-1] < r.history.train_eval_loss[0]
    # The returned objective carries the trained BatchNorm statistics.
    np.testing.assert_allclose(r.objective.evaluate(r.params, "train")["loss"], r.history.train_eval_loss[-1], rtol=1e-5)


def _hist(train_losses, val_losses):
    n = len(train_losses)
    return History(
        epoch=list(range(1, n + 1)), step=list(range(1, n + 1)), train_loss=list(train_losses),
        train_eval_loss=list(train_losses), train_accuracy=[0.0] * n, val_loss=list(val_losses),
        val_accuracy=[0.0] * n, learning_rate=[0.1] * n, wall_time=[0.0] * n,
    )


def test_diagnose_rules():
    over = diagnose(_hist([1.0, 0.5, 0.3, 0.2, 0.1, 0.05], [1.0, 0.6, 0.5, 0.55, 0.65, 0.8]))
    assert over.label == "over-fitting" and over.turn_epoch == 3
    improving = diagnose(_hist(np.linspace(1, 0.5, 10), np.linspace(1.1, 0.6, 10)))
    assert improving.label == "still improving"
    under = diagnose(_hist([1.0, 0.9] + [0.85] * 8, [1.0, 0.92] + [0.86] * 8))
    assert under.label == "under-fitting"
    good = diagnose(_hist([1.0, 0.2] + [0.05] * 8, [1.0, 0.25] + [0.07] * 8))
    assert good.label == "good fit"
    with pytest.raises(ValueError):
        diagnose(History())


DATA_PARALLEL = textwrap.dedent(
    """
    import json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    from losslab import Objective, data, models
    from losslab.train import make_mesh, train
    assert len(jax.devices()) == 4
    ds = data.load("gaussian_mixture", num_train=256, num_test=64, num_classes=3, seed=0)
    m = models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(16,), seed=0)
    obj = Objective(m, "cross_entropy", ds)
    kw = dict(optimizer="adam", learning_rate=0.01, batch_size=32, epochs=3, key=0)
    one = train(obj, **kw)
    four = train(obj, mesh=make_mesh(4), **kw)
    shard = four.params["head"]["kernel"].sharding
    print(json.dumps({"one": one.history.train_loss, "four": four.history.train_loss,
                      "replicated": bool(shard.is_fully_replicated)}))
    """
)


def test_data_parallel_equals_single_device():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", DATA_PARALLEL], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["replicated"]
    # Only the summation order of the gradient all-reduce differs: float32 rounding.
    np.testing.assert_allclose(res["four"], res["one"], rtol=1e-5)


def test_mesh_validation(objective):
    from losslab.train import make_mesh

    with pytest.raises(ValueError, match="devices"):
        make_mesh(1000)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match="'data' axis"):
        train(objective, mesh=mesh, epochs=1)


def test_history_round_trips_through_json(objective):
    r = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=64, epochs=2, key=0)
    again = History.from_dict(json.loads(json.dumps(r.history.as_dict())))
    assert again == r.history
    assert jnp.isfinite(jnp.asarray(again.train_loss)).all()


def test_eval_every_period_and_validation(objective):
    r = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=64, epochs=5, key=0, eval_every=2)
    evaluated = [np.isfinite(v) for v in r.history.val_loss]
    assert evaluated == [False, True, False, True, True]  # every 2nd epoch and the last
    with pytest.raises(ValueError, match="need evaluations"):
        train(objective, epochs=2, eval_every=0, early_stopping=EarlyStopping())
