"""Surfaces: grids equal a Python loop, centre = objective.loss, sharding, BatchNorm, mode connectivity."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, data, losses, models
from losslab import directions as D
from losslab import surface as S

jax.config.update("jax_enable_x64", True)

# The grid and the loop run the same float64 arithmetic in a different order (vmapped,
# chunked): agreement to 1e-6 relative is the bar; a factor or sign slip is O(1).
GRID_RTOL = 1e-6


@pytest.fixture(scope="module")
def mixture():
    return data.load("gaussian_mixture", num_train=150, num_test=40, num_classes=3, seed=2)


@pytest.fixture(scope="module")
def objective(mixture):
    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(6,), seed=0)
    return Objective(model, "cross_entropy", mixture, regularizers=[losses.l2(0.01)], chunk_size=64, dtype=jnp.float64)


def test_plane_equals_python_loop_and_centre_equals_loss(objective):
    params = objective.params
    d1, d2 = D.random_plane(params, jax.random.key(0))
    res = S.plane(objective, params, d1, d2, num_points=(5, 4), x_span=(-1.0, 0.5), points_per_chunk=3)
    assert res.values["train_loss"].shape == (5, 4)
    assert set(res.values) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    # The reference is a Python loop over points, each point one jitted call of the Objective.
    reference = jax.jit(lambda obj, p: (obj.loss(p), obj.evaluate(p, "test")))
    for i, a in enumerate(res.x):
        for j, b in enumerate(res.y):
            p = jax.tree.map(lambda o, u, v: o + (a * u + b * v), params, d1, d2)
            loss, ev = reference(objective, p)
            np.testing.assert_allclose(res.values["train_loss"][i, j], loss, rtol=GRID_RTOL)
            np.testing.assert_allclose(res.values["test_loss"][i, j], ev["loss"], rtol=GRID_RTOL)
            np.testing.assert_allclose(res.values["test_accuracy"][i, j], ev["accuracy"], rtol=GRID_RTOL)
    # The default grid is 51 x 51 on [-1, 1]^2 with the centre exactly at params.
    full = S.plane(objective, params, d1, d2, metrics=("train_loss",), points_per_chunk=64)
    assert full.values["train_loss"].shape == (51, 51)
    assert full.x[25] == 0.0 and full.y[25] == 0.0
    np.testing.assert_allclose(full.values["train_loss"][25, 25], objective.loss(params), rtol=1e-12)
    # Grid points are exactly the reported coordinates: row 0 of the small grid appears in the big one.
    np.testing.assert_allclose(
        full.values["train_loss"][0, 50],
        S.plane(objective, params, d1, d2, x=[-1.0], y=[1.0], metrics=("train_loss",)).values["train_loss"][0, 0],
        rtol=GRID_RTOL,
    )


def test_line_and_no_recompile(objective):
    params = objective.params
    d = D.random_direction(params, jax.random.key(1))
    first = S.line(objective, params, d, num_points=9, metrics=("train_loss",))
    size = S._grid_program._cache_size()
    again = S.line(
        objective, params, D.random_direction(params, jax.random.key(2)), num_points=9, metrics=("train_loss",)
    )
    assert S._grid_program._cache_size() == size, "a second call with the same shapes must not recompile"
    assert not np.allclose(first.values["train_loss"], again.values["train_loss"])
    reference = jax.jit(lambda obj, p: obj.loss(p))
    for t, v in zip(first.t, first.values["train_loss"]):
        p = jax.tree.map(lambda o, u: o + t * u, params, d)
        np.testing.assert_allclose(v, reference(objective, p), rtol=GRID_RTOL)
    before = jax.tree.map(np.array, params)
    S.line(objective, params, d, num_points=3)
    jax.tree.map(np.testing.assert_array_equal, params, before)


def test_validation_errors(objective):
    d = D.random_direction(objective.params, jax.random.key(1))
    with pytest.raises(ValueError, match="unknown metric"):
        S.line(objective, objective.params, d, metrics=("valid_loss",))
    with pytest.raises(ValueError, match="batch_norm"):
        S.line(objective, objective.params, d, batch_norm="running")
    with pytest.raises(ValueError, match="coords"):
        S.evaluate_points(objective, objective.params, (d, d), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="structures differ"):
        S.line(objective, objective.params, {"w": jnp.zeros(2)})


def test_batch_norm_stored_and_recomputed(mixture):
    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(5,), batch_norm=True, seed=1)
    obj = Objective(model, "cross_entropy", mixture, dtype=jnp.float64)
    # Stored statistics: a state that differs from the batch statistics (as after training).
    obj = obj.replace(state=jax.tree.map(lambda s: s + 0.3, obj.state))
    d = D.random_direction(obj.params, jax.random.key(3))
    stored = S.line(obj, obj.params, d, t=[0.0, 0.5], metrics=("train_loss",))
    np.testing.assert_allclose(stored.values["train_loss"][0], obj.loss(obj.params), rtol=1e-12)

    recomputed = S.line(
        obj, obj.params, d, t=[0.0, 0.5], metrics=("train_loss",), batch_norm="recompute", bn_examples=100
    )
    x = obj.batch("train")[0][:100]
    for t, v in zip((0.0, 0.5), recomputed.values["train_loss"]):
        p = jax.tree.map(lambda o, u: o + t * u, obj.params, d)
        h = x @ p["layers"][0]["kernel"] + p["layers"][0]["bias"]
        state = {"norms": {0: {"mean": h.mean(0), "var": h.var(0)}}}
        # The statistics are recovered by dividing by (1 - momentum) = 0.1: ~1e-15 * 10.
        np.testing.assert_allclose(v, obj.replace(state=state).loss(p), rtol=1e-10)
    assert abs(recomputed.values["train_loss"][0] - stored.values["train_loss"][0]) > 1e-3


def test_linear_barrier_of_a_solution_with_itself_is_zero(objective):
    res = S.linear_barrier(objective, objective.params, objective.params, num_points=7)
    assert res.barrier == 0.0 and res.frankle_barrier == 0.0
    # Equal to each other exactly; to the eager loss up to summation order.
    assert np.ptp(res.values["train_loss"]) == 0.0
    np.testing.assert_allclose(res.values["train_loss"], objective.loss(objective.params), rtol=1e-14)


def test_interpolation_barrier_formula():
    t = np.linspace(0, 1, 5)
    values = np.array([1.0, 2.5, 3.0, 2.5, 2.0])
    barrier, frankle = S.interpolation_barrier(t, values)
    np.testing.assert_allclose(barrier, 3.0 - 1.5)  # chord at t=0.5 is 1.5
    np.testing.assert_allclose(frankle, 3.0 - 1.5)  # mean of endpoints is 1.5
    barrier, frankle = S.interpolation_barrier(t, 1.0 + t)  # linear: no barrier above the chord
    assert abs(barrier) < 1e-12 and frankle == 0.5
    with pytest.raises(ValueError, match="from 0 to 1"):
        S.interpolation_barrier(t * 2, values)


@pytest.mark.slow
def test_bezier_curve_lowers_the_barrier(mixture):
    from losslab.train import train

    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(16,), seed=0)
    obj = Objective(model, "cross_entropy", mixture, dtype=jnp.float64)
    sols = []
    for seed in (1, 2):
        start = Objective(
            models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(16,), seed=seed),
            "cross_entropy",
            mixture,
            dtype=jnp.float64,
        ).params
        sols.append(
            train(obj, start, optimizer="adam", learning_rate=0.05, batch_size=None, epochs=150, key=seed).params
        )
    lin = S.linear_barrier(obj, sols[0], sols[1], num_points=11, metrics=("train_loss",))
    curve = S.bezier_curve(
        obj,
        sols[0],
        sols[1],
        jax.random.key(0),
        num_steps=300,
        learning_rate=0.02,
        batch_size=64,
        num_points=11,
        metrics=("train_loss",),
    )
    # Endpoint losses are ~2e-4: a barrier of 1e-3 is a real bump between the solutions.
    assert lin.barrier > 1e-3, "two independent solutions should have a linear barrier on this problem"
    assert curve.barrier < 0.5 * lin.barrier
    # The curve's ends are the solutions themselves.
    np.testing.assert_allclose(curve.values["train_loss"][[0, -1]], [obj.loss(sols[0]), obj.loss(sols[1])], rtol=1e-12)
    assert curve.train_losses.shape == (300,)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from losslab import Objective, data, models, directions as D, surface as S
    from losslab.train import make_mesh
    assert len(jax.devices()) == 4, jax.devices()
    ds = data.load("gaussian_mixture", num_train=120, num_test=30, num_classes=3, seed=2)
    obj = Objective(models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(6,), seed=0),
                    "cross_entropy", ds, chunk_size=50, dtype=jnp.float64)
    d1, d2 = D.random_plane(obj.params, jax.random.key(0))
    one = S.plane(obj, obj.params, d1, d2, num_points=(7, 5), points_per_chunk=3, mesh=make_mesh(1))
    four = S.plane(obj, obj.params, d1, d2, num_points=(7, 5), points_per_chunk=3, mesh=make_mesh(4))
    auto = S.plane(obj, obj.params, d1, d2, num_points=(7, 5), points_per_chunk=3)
    for k in one.values:
        np.testing.assert_allclose(four.values[k], one.values[k], rtol=1e-12)
        np.testing.assert_allclose(auto.values[k], one.values[k], rtol=1e-12)
    print("SHARDED-OK")
    """
)


def test_sharded_grid_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert "SHARDED-OK" in out.stdout, out.stderr[-3000:]
