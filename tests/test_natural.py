"""Natural-gradient optimizers against exact dense answers: CG, Newton step, damping limit, invariance, LM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, curvature, models, optim
from losslab.natural import (
    batch_fisher_operator,
    cg_solve,
    diag_fisher,
    natural_gradient,
    ngd,
    ngd_empirical,
    per_example_fisher_grads,
)
from losslab.train import train

jax.config.update("jax_enable_x64", True)

EXACT = 1e-9  # float64 solves of well-conditioned systems: only round-off remains
CG_TOL = 1e-7  # CG run to a 1e-12 relative residual on systems with condition number < 1e4
MC_TOL = 0.15  # relative error of a 4000-sample Monte-Carlo mean of squared gradients (~1/sqrt(4000) per entry, summed)


class Data:
    """A duck-typed dataset (x/y splits, task, classes)."""

    def __init__(self, x, y, task, num_classes=None):
        self.x_train, self.y_train = x, y
        self.x_val = self.y_val = self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = task, num_classes, "toy"


def regression_objective(widths=(), activation="relu", n=40, d_in=3, d_out=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in))
    y = rng.normal(size=(n, d_out))
    model = models.create("mlp", input_shape=(d_in,), output_dim=d_out, widths=widths, activation=activation, seed=seed)
    return Objective(model, "mse", Data(x, y, "regression"), dtype=jnp.float64)


def classification_objective(n=30, seed=0, widths=(4,)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = rng.integers(0, 3, n)
    model = models.create("mlp", input_shape=(3,), output_dim=3, widths=widths, activation="tanh", seed=seed)
    return Objective(model, "cross_entropy", Data(x, y, "classification", 3), dtype=jnp.float64)


def flat(tree):
    return ravel_pytree(tree)[0]


def spd(n, cond, seed=0):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n), jnp.float64))
    return q @ jnp.diag(jnp.geomspace(1.0, cond, n)) @ q.T


# --------------------------------------------------------------------------
# CG


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_cg_matches_dense_solve(damping):
    a = spd(30, 1e3)
    b = jax.random.normal(jax.random.key(1), (30,), jnp.float64)
    res = cg_solve(lambda v: a @ v, b, damping=damping, max_steps=200, tol=1e-12)
    exact = jnp.linalg.solve(a + damping * jnp.eye(30), b)
    assert bool(res.converged)
    assert jnp.linalg.norm(res.x - exact) / jnp.linalg.norm(exact) < CG_TOL
    assert int(res.num_matvecs) == int(res.num_steps) <= 200


def test_cg_iteration_cap_and_warm_start():
    a = spd(50, 1e4)
    b = jax.random.normal(jax.random.key(2), (50,), jnp.float64)
    capped = cg_solve(lambda v: a @ v, b, max_steps=3, tol=1e-12)
    assert int(capped.num_steps) == 3 and not bool(capped.converged)
    exact = jnp.linalg.solve(a, b)
    warm = cg_solve(lambda v: a @ v, b, x0=exact, max_steps=5, tol=1e-8)
    assert int(warm.num_steps) == 0 and int(warm.num_matvecs) == 1 and bool(warm.converged)


def test_cg_does_not_recompile():
    a = spd(10, 10.0)
    traces = []

    @jax.jit
    def solve(b, lam):
        traces.append(1)
        return cg_solve(lambda v: a @ v, b, damping=lam, max_steps=20).x

    solve(jnp.ones(10), 0.1)
    solve(2 * jnp.ones(10), 0.2)
    assert len(traces) == 1


# --------------------------------------------------------------------------
# Minibatch Fisher operators


def test_batch_fisher_equals_dense_fisher_and_empirical_fisher():
    obj = classification_objective()
    p = obj.params
    batch = obj.batch()
    fisher = curvature.to_dense(batch_fisher_operator(obj, p, batch))
    assert jnp.allclose(fisher, curvature.dense_fisher(obj, p, batch), atol=EXACT)
    # Empirical Fisher: (1/B) sum_i g_i g_i^T from the per-example Jacobian.
    jac = jax.jacobian(lambda f: obj.per_example_loss(ravel_pytree(p)[1](f), batch))(flat(p))
    ef = jac.T @ jac / batch[0].shape[0]
    assert jnp.allclose(curvature.to_dense(batch_fisher_operator(obj, p, batch, curvature="empirical")), ef, atol=EXACT)
    assert not jnp.allclose(ef, fisher, atol=1e-3)  # they differ away from a perfect fit


# --------------------------------------------------------------------------
# NGD steps


def test_undamped_ngd_step_on_linear_gaussian_model_is_the_newton_step():
    obj = regression_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    hess = curvature.dense_hessian(obj, p, batch)
    newton = -jnp.linalg.solve(hess, flat(g))
    tx = ngd(1.0, damping=1e-14, max_cg_steps=50, cg_tol=1e-13)
    step, state = tx.update(g, tx.init(p), p, objective=obj, batch=batch)
    assert jnp.linalg.norm(flat(step) - newton) / jnp.linalg.norm(newton) < EXACT * 1e3
    # One Newton step solves least squares: the gradient vanishes afterwards.
    after = jax.grad(obj.loss)(jax.tree.map(jnp.add, p, step), batch)
    assert jnp.linalg.norm(flat(after)) < 1e-9
    assert int(state.cg_steps) <= flat(p).size


def test_ngd_cg_solution_matches_dense_damped_solve():
    obj = classification_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    lam = 1e-2
    exact = jnp.linalg.solve(curvature.dense_fisher(obj, p, batch) + lam * jnp.eye(flat(p).size), flat(g))
    tx = ngd(1.0, damping=lam, max_cg_steps=200, cg_tol=1e-12)
    step, state = tx.update(g, tx.init(p), p, objective=obj, batch=batch)
    assert jnp.linalg.norm(-flat(step) - exact) / jnp.linalg.norm(exact) < CG_TOL
    assert float(state.cg_residual) < 1e-11


@pytest.mark.parametrize("name", ["ngd", "ngd_empirical"])
def test_infinite_damping_recovers_scaled_gradient_descent(name):
    obj = classification_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    lam = 1e7
    tx = natural_gradient(lam, curvature="fisher" if name == "ngd" else "empirical", damping=lam, max_cg_steps=5)
    step, _ = tx.update(g, tx.init(p), p, objective=obj, batch=batch)
    # (F + lam I)^{-1} g = g / lam + O(|F| / lam^2): with lr = lam the step is -g up to ~|F|/lam.
    assert jnp.linalg.norm(flat(step) + flat(g)) / jnp.linalg.norm(flat(g)) < 1e-5


def test_ngd_is_invariant_to_a_function_preserving_rescaling_and_sgd_is_not():
    obj = regression_objective(widths=(5,), n=60, d_in=3, d_out=3)
    p, batch = obj.params, obj.batch()
    c = 7.0  # relu(c z) = c relu(z): scale layer 0 by c and the head's kernel by 1/c
    q = jax.tree.map(lambda a: a, p)
    q["layers"][0] = {k: c * v for k, v in p["layers"][0].items()}
    q["head"] = {"kernel": p["head"]["kernel"] / c, "bias": p["head"]["bias"]}
    assert jnp.allclose(obj.outputs(p, batch[0]), obj.outputs(q, batch[0]), atol=1e-12)

    def output_change(params, tx):
        g = jax.grad(obj.loss)(params, batch)
        step, _ = tx.update(g, tx.init(params), params, objective=obj, batch=batch)
        return jax.jvp(lambda w: obj.outputs(w, batch[0]), (params,), (step,))[1]

    nat = ngd(1.0, damping=1e-10, max_cg_steps=500, cg_tol=1e-13)
    dp, dq = output_change(p, nat), output_change(q, nat)
    assert jnp.linalg.norm(dp - dq) / jnp.linalg.norm(dp) < 1e-4
    sgd = optim.sgd(0.1)
    sp, sq = output_change(p, sgd), output_change(q, sgd)
    assert jnp.linalg.norm(sp - sq) / jnp.linalg.norm(sp) > 0.5


def test_levenberg_marquardt_shrinks_damping_on_good_model_and_grows_it_on_bad_steps():
    obj = regression_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    lam = 1e-3
    good = ngd(1.0, damping=lam, adapt_damping=True, max_cg_steps=50, cg_tol=1e-12)
    _, s = good.update(g, good.init(p), p, objective=obj, batch=batch)
    assert abs(float(s.rho) - 1.0) < 1e-6  # the quadratic model is exact for least squares
    assert float(s.damping) == pytest.approx(lam * 2 / 3)
    # Three Newton steps overshoot: the quadratic model predicts an increase -> rho < 1/4.
    bad = ngd(3.0, damping=lam, adapt_damping=True, max_cg_steps=50, cg_tol=1e-12)
    _, s = bad.update(g, bad.init(p), p, objective=obj, batch=batch)
    assert float(s.rho) < 0.25 and float(s.damping) == pytest.approx(lam * 1.5)
    assert int(s.num_matvecs) == int(s.cg_steps) + 1


def test_momentum_accumulates_the_natural_direction():
    obj = classification_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    tx = ngd(1.0, damping=0.1, momentum=0.5, max_cg_steps=100, cg_tol=1e-12)
    s1, st = tx.update(g, tx.init(p), p, objective=obj, batch=batch)
    s2, _ = tx.update(g, st, p, objective=obj, batch=batch)
    assert jnp.allclose(flat(s2), 1.5 * flat(s1), rtol=1e-8)


# --------------------------------------------------------------------------
# Diagonal Fisher


def test_sampled_fisher_diagonal_is_unbiased_and_empirical_is_exact():
    obj = classification_objective(n=20)
    p, batch = obj.params, obj.batch()
    keys = jax.random.split(jax.random.key(0), 4000)
    sq = jax.lax.map(
        lambda k: flat(jax.tree.map(lambda a: jnp.mean(a**2, 0), per_example_fisher_grads(obj, p, batch, k))), keys
    )
    exact = jnp.diag(curvature.dense_fisher(obj, p, batch))
    assert jnp.linalg.norm(sq.mean(0) - exact) / jnp.linalg.norm(exact) < MC_TOL
    emp = per_example_fisher_grads(obj, p, batch, None, curvature="empirical")
    ef_diag = flat(jax.tree.map(lambda a: jnp.mean(a**2, 0), emp))
    ef = curvature.to_dense(batch_fisher_operator(obj, p, batch, curvature="empirical"))
    assert jnp.allclose(ef_diag, jnp.diag(ef), atol=EXACT)


def test_diag_fisher_first_step_divides_by_the_diagonal():
    obj = classification_objective()
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    tx = diag_fisher(0.5, curvature="empirical", decay=0.9, damping=1e-3)
    step, _ = tx.update(g, tx.init(p), p, objective=obj, batch=batch)
    ef = jnp.diag(curvature.to_dense(batch_fisher_operator(obj, p, batch, curvature="empirical")))
    # Bias correction makes the first moving average equal the batch diagonal.
    assert jnp.allclose(flat(step), -0.5 * flat(g) / (ef + 1e-3), rtol=1e-8)


# --------------------------------------------------------------------------
# Validation and the training engine


def test_bad_options_and_missing_extra_args_raise():
    with pytest.raises(ValueError, match="unknown curvature 'ggn'"):
        natural_gradient(0.1, curvature="ggn")
    with pytest.raises(ValueError, match="damping must be > 0"):
        ngd(0.1, damping=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        ngd_empirical(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="exponent must be > 0"):
        diag_fisher(0.1, exponent=0.0)
    obj = classification_objective()
    tx = ngd(0.1)
    with pytest.raises(ValueError, match="needs `objective=`"):
        tx.update(obj.params, tx.init(obj.params), obj.params, batch=obj.batch())
    with pytest.raises(ValueError, match="has no Fisher information"):
        batch_fisher_operator(obj.replace(loss_fn="multiclass_hinge"), obj.params, obj.batch())


def test_ngd_update_does_not_recompile():
    obj = classification_objective()
    tx = ngd(0.1, max_cg_steps=5)
    traces = []

    @jax.jit
    def step(params, state, batch, objective):
        traces.append(1)
        g = jax.grad(objective.loss)(params, batch)
        return tx.update(g, state, params, objective=objective, batch=batch)

    state = tx.init(obj.params)
    upd, state = step(obj.params, state, obj.batch(), obj)
    step(jax.tree.map(jnp.add, obj.params, upd), state, obj.batch(), obj)
    assert len(traces) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ngd", "ngd_empirical", "diag_fisher"])
def test_natural_optimizers_train_by_name(name):
    obj = classification_objective(n=64, widths=(8,))
    before = float(obj.loss(obj.params))
    lr = {"ngd": 0.5, "ngd_empirical": 0.5, "diag_fisher": 0.05}[name]
    result = train(
        obj, optimizer=name, learning_rate=lr, batch_size=32, epochs=5, key=0, optimizer_options={"damping": 1e-2}
    )
    assert result.history.train_eval_loss[-1] < 0.8 * before
