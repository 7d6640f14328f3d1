"""The training engine's contracts: continuation is exact, hooks are objects, one step function everywhere,
affine reparametrisation (the Bezier curve) seen correctly by every tool, operators' declared properties read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, curvature, data, models, optim, surface
from losslab.curvature import backprop
from losslab.train import Loop, TrainResult, train

EXACT = 1e-10  # float64 identities (rounding only)


@pytest.fixture(scope="module")
def mixture():
    return data.load("gaussian_mixture", num_train=96, num_test=32, num_classes=3, seed=0, std=0.4)


@pytest.fixture(scope="module")
def objective(mixture):
    model = models.create("mlp", input_shape=mixture.input_shape, output_dim=3, widths=(8,), seed=0)
    return Objective(model, "cross_entropy", mixture)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_two_calls_of_ten_epochs_equal_one_call_of_twenty_bitwise(objective, optimizer):
    kw = dict(optimizer=optimizer, learning_rate=0.02, batch_size=16, key=5)
    full = train(objective, epochs=20, **kw)
    first = train(objective, epochs=10, **kw)
    assert isinstance(first, TrainResult) and first.epoch == 10 and first.opt_state is not None
    second = train(objective, epochs=20, resume=first, **kw)
    assert second.epoch == 20 and second.history.epoch == list(range(1, 21))
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(second.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(full.opt_state), jax.tree.leaves(second.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert full.history.train_loss == second.history.train_loss


def test_resume_checks(objective):
    first = train(objective, optimizer="adam", learning_rate=0.01, batch_size=32, epochs=2, key=0)
    with pytest.raises(ValueError, match="epochs=2 is the total to reach; the run to resume already has 2"):
        train(objective, optimizer="adam", epochs=2, resume=first)
    with pytest.raises(ValueError, match="optimizer state does not match"):
        train(objective, optimizer="sgd", epochs=4, resume=first)
    with pytest.raises(ValueError, match="resume= takes the TrainResult"):
        train(objective, epochs=4, resume={"params": first.params})


def test_user_hooks_see_the_loop_and_can_stop_training(objective):
    seen = []

    class StopAtThree:
        def after_epoch(self, loop: Loop) -> None:
            seen.append((loop.epoch, loop.evaluated, len(loop.history)))
            if loop.epoch == 3:
                loop.stop = "user rule: epoch 3"

    r = train(objective, optimizer="sgd", learning_rate=0.1, batch_size=32, epochs=10, key=0, hooks=[StopAtThree()])
    assert seen == [(1, True, 1), (2, True, 2), (3, True, 3)]
    assert r.history.stop_reason == "user rule: epoch 3" and r.epoch == 3


def test_affine_objective_is_the_base_objective_at_offset_plus_scale_p():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        ds = data.load("gaussian_mixture", num_train=24, num_test=8, num_classes=3, seed=1, std=0.5)
        model = models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(5,), seed=0)
        obj = Objective(model, "cross_entropy", ds, dtype=jnp.float64)
        offset = jax.tree.map(lambda a: 0.3 * a, obj.params)
        p = jax.tree.map(lambda a: a + 0.1, obj.params)
        scale = 0.7
        aff = obj.affine(offset, scale)
        theta = jax.tree.map(lambda o, q: o + scale * q, offset, p)
        assert abs(float(aff.loss(p)) - float(obj.loss(theta))) < EXACT
        # Exact GGN diagonal through the layer tap equals the dense GGN of the reparametrised loss:
        # the tap scales its output perturbation, so recorded gradients are with respect to p.
        diag = backprop.exact_diagonal(aff, p, operator="ggn").estimate
        dense = curvature.dense_ggn(aff, p)
        np.testing.assert_allclose(np.asarray(diag), np.diag(np.asarray(dense)), rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(np.diag(np.asarray(dense)), scale**2 * np.diag(np.asarray(curvature.dense_ggn(obj, theta))), rtol=1e-9)
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("optimizer", ["ngd", "kfac", "sam"])
def test_bezier_curve_runs_with_every_kind_of_optimizer(objective, optimizer):
    a = objective.params
    b = jax.tree.map(lambda x: -x, a)
    res = surface.bezier_curve(objective, a, b, jax.random.key(0), num_steps=20, learning_rate=0.05, batch_size=16,
                               optimizer=optimizer, num_points=5)
    assert np.all(np.isfinite(res.train_losses)) and res.control is not None
    moved = sum(float(jnp.sum((c - 0.5 * (x + y)) ** 2)) for c, x, y in
                zip(jax.tree.leaves(res.control), jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved > 0


def test_one_step_function_is_what_train_takes(objective):
    tx, _ = optim.create("sgd", 0.1)
    batch = objective.batch("train")
    batch = (batch[0][:32], batch[1][:32])
    out = optim.step(tx, objective, objective.params, objective.state, tx.init(objective.params), batch, jax.random.key(0))
    grads = jax.grad(lambda p: objective.train_loss(p, objective.state, batch, None)[0])(objective.params)
    for new, old, g in zip(jax.tree.leaves(out.params), jax.tree.leaves(objective.params), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(new), np.asarray(old - 0.1 * g), rtol=1e-6, atol=1e-7)


def test_algorithms_read_operator_properties():
    sym = curvature.from_matrix(jnp.array([[2.0, 0.0], [0.0, -1.0]]), name="indefinite")
    with pytest.raises(ValueError, match="cg_solve needs a positive semi-definite operator; 'indefinite'"):
        curvature.cg_solve(sym, jnp.ones(2))
    psd = curvature.from_matrix(jnp.array([[2.0, 0.0], [0.0, 1.0]]), psd=True)
    np.testing.assert_allclose(curvature.cg_solve(psd, jnp.ones(2), tol=1e-8).x, [0.5, 1.0], rtol=1e-6)
    with pytest.raises(TypeError, match="cg_solve takes a LinearOperator"):
        curvature.cg_solve(lambda v: v, jnp.ones(2))
    general = curvature.LinearOperator(lambda v: v, 2, jnp.float32, symmetric=False, name="general")
    with pytest.raises(ValueError, match="lanczos needs a symmetric operator; 'general'"):
        curvature.lanczos(general, jax.random.key(0), num_steps=2)
    with pytest.raises(ValueError, match="power_iteration needs a symmetric operator"):
        curvature.power_iteration(general, jax.random.key(0))


def test_one_registry_serves_every_consumer(objective):
    names = sorted(curvature.OPERATORS)
    assert names == ["empirical_fisher", "fisher", "ggn", "hessian", "kfac", "mc_fisher"]
    for bad_call in (
        lambda: curvature.make_operator("hesian", objective),
        lambda: curvature.hessian_trace(objective, operator="hesian"),
        lambda: backprop.exact_trace(objective, operator="hesian"),
    ):
        with pytest.raises(ValueError, match="hesian"):
            bad_call()
    v = jnp.ones(objective.num_params, jnp.float32) / 10
    for name in ("hessian", "ggn", "fisher", "empirical_fisher"):
        op = curvature.make_operator(name, objective)
        direct = getattr(curvature, f"{name}_operator")(objective)
        np.testing.assert_allclose(op.matvec(v), direct.matvec(v), rtol=1e-6)
        assert op.psd == curvature.OPERATORS[name].psd
    with pytest.raises(ValueError, match="no exact backprop diagonal for operator 'kfac'"):
        backprop.exact_trace(objective, operator="kfac")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        curvature.make_operator("mc_fisher", objective)


def test_linearized_fisher_equals_the_chunked_one(objective):
    batch = tuple(a[:40] for a in objective.batch("train"))
    v = jax.random.normal(jax.random.key(1), (objective.num_params,), jnp.float32)
    for name in ("fisher", "empirical_fisher", "ggn"):
        lin = curvature.make_operator(name, objective, None, batch, linearize=True)
        plain = curvature.make_operator(name, objective, None, batch)
        np.testing.assert_allclose(lin.matvec(v), plain.matvec(v), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="linearize=True needs the batch in one chunk"):
        curvature.make_operator("fisher", objective.replace(chunk_size=16), None, batch, linearize=True)


def test_deprecated_names_warn(objective):
    from losslab import natural, sharpness

    batch = tuple(a[:16] for a in objective.batch("train"))
    with pytest.warns(DeprecationWarning, match="batch_fisher_operator is deprecated"):
        op = natural.batch_fisher_operator(objective, objective.params, batch)
    with pytest.warns(DeprecationWarning, match="cg_solve"):
        natural.cg_solve(op.matvec, jnp.ones(op.size, op.dtype), max_steps=2)
    with pytest.warns(DeprecationWarning, match="data_hessian_trace"):
        assert sharpness.get("hessian_trace").name == "data_hessian_trace"
