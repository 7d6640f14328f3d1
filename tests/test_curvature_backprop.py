"""Exact backprop diagonals and traces (losslab.curvature.backprop) against dense matrices (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, losses, models
from losslab import curvature as cv
from losslab import probes as probes_lib
from losslab.curvature import backprop as bp

jax.config.update("jax_enable_x64", True)

RTOL, ATOL = 1e-9, 1e-12


class Toy:
    def __init__(self, x, y, task, num_classes=None):
        self.x_train, self.y_train = x, y
        self.x_val = self.y_val = self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = task, num_classes, "toy"


def classification(n=37, shape=(4,), c=3, seed=0):
    rng = np.random.default_rng(seed)
    return Toy(rng.normal(size=(n, *shape)), rng.integers(0, c, n), "classification", c)


def regression(n=30, d=3, out=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return Toy(x, x @ rng.normal(size=(d, out)) + 0.3 * rng.normal(size=(n, out)), "regression")


def objective(loss="cross_entropy", *, activation="relu", ds=None, regularizers=(), chunk_size=8, **model_kw):
    ds = classification() if ds is None else ds
    out = ds.num_classes if ds.task == "classification" else ds.y_train.shape[1]
    model = models.create(
        "mlp", input_shape=ds.x_train.shape[1:], output_dim=out, widths=(5, 4), activation=activation, **model_kw
    )
    return Objective(model, loss, ds, chunk_size=chunk_size, regularizers=regularizers, dtype=jnp.float64)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "loss, regularizers",
    [
        ("cross_entropy", [losses.l2(0.1)]),
        ("focal", [losses.elastic_net(0.01, 0.2, weights_only=False)]),
        ("multiclass_hinge", []),
        ("label_smoothing", [losses.l1(0.05)]),
    ],
)
def test_hessian_diagonal_and_trace_of_a_relu_mlp_equal_jax_hessian(loss, regularizers):
    obj = objective(loss, regularizers=regularizers)
    h = cv.dense_hessian(obj)  # jax.hessian of the flat mean loss + regularizer
    d = bp.exact_diagonal(obj)
    close(d.estimate, jnp.diag(h))
    assert float(jnp.max(d.std_error)) == 0.0 and int(d.num_matvecs) == 0
    t = bp.exact_trace(obj)
    close(t.estimate, jnp.trace(h))
    # Not a tautology: the GGN alone misses the regularizer, and the Hessian is not diagonal.
    assert float(jnp.max(jnp.abs(h - jnp.diag(jnp.diag(h))))) > 1e-3


@pytest.mark.parametrize("loss", ["mse", "huber", "mae"])
def test_regression_losses(loss):
    obj = objective(loss, ds=regression(), chunk_size=7)
    close(bp.exact_diagonal(obj).estimate, jnp.diag(cv.dense_hessian(obj)))
    close(bp.exact_diagonal(obj, operator="ggn").estimate, jnp.diag(cv.dense_ggn(obj)))


def test_every_operator_of_a_smooth_model_equals_its_dense_matrix():
    obj = objective(activation="tanh", regularizers=[losses.l2(0.1)])
    key = jax.random.key(3)
    dense = {
        "ggn": cv.dense_ggn(obj),
        "fisher": cv.dense_fisher(obj),
        "empirical_fisher": cv.to_dense(cv.empirical_fisher_operator(obj)),
        "mc_fisher": cv.to_dense(cv.mc_fisher_operator(obj, key=key, num_samples=3)),
    }
    for name, m in dense.items():
        d = bp.exact_diagonal(obj, operator=name, key=key, num_samples=3).estimate
        close(d, jnp.diag(m))
        close(bp.exact_trace(obj, operator=name, key=key, num_samples=3).estimate, jnp.trace(m))
    # The empirical Fisher's diagonal really differs from the Fisher's (Kunstner et al. 2019).
    assert float(jnp.max(jnp.abs(jnp.diag(dense["fisher"]) - jnp.diag(dense["empirical_fisher"])))) > 1e-3


def test_smooth_model_hessian_is_refused_with_the_curved_tensors_named():
    obj = objective(activation="tanh")
    check = bp.piecewise_linear_check(obj)
    assert check["head/kernel"] == 0.0  # the outputs are linear in the last layer
    assert check["layers/0/kernel"] > 0.0
    with pytest.raises(ValueError, match="piecewise linear.*layers/0/kernel.*hutchinson_diagonal"):
        bp.exact_diagonal(obj)
    with pytest.raises(ValueError, match="piecewise linear"):
        cv.hessian_trace(obj, method="backprop")
    # A smooth model's Hessian diagonal is not the GGN's: the check guards a real difference.
    gap = jnp.diag(cv.dense_hessian(obj)) - jnp.diag(cv.dense_ggn(obj))
    assert float(jnp.max(jnp.abs(gap))) > 1e-4


def test_relu_check_passes_and_the_gauss_newton_identity_holds_there():
    obj = objective()
    assert set(bp.piecewise_linear_check(obj).values()) == {0.0}
    h, g = cv.dense_hessian(obj), cv.dense_ggn(obj)
    close(jnp.diag(h), jnp.diag(g))  # ReLU: the residual term has a zero diagonal...
    assert float(jnp.max(jnp.abs(h - g))) > 1e-3  # ...but is not zero


def test_cnn_uses_per_example_gradients_and_matches(monkeypatch):
    ds = classification(n=13, shape=(10, 1))
    model = models.create("cnn1d", input_shape=(10, 1), output_dim=3, seed=1, channels=(2, 3), hidden=6, kernel_size=3, batch_norm=True)
    obj = Objective(model, "cross_entropy", ds, chunk_size=8, dtype=jnp.float64)
    plan = bp._plan(obj, obj.params, jnp.asarray(ds.x_train))
    assert not all(plan.covered) and any(plan.covered)  # convs (and norms) take the per-example path
    monkeypatch.setattr(bp, "PER_EXAMPLE_BUDGET", 300)  # forces several per-example sub-chunks
    close(bp.exact_diagonal(obj).estimate, jnp.diag(cv.dense_hessian(obj)))
    close(bp.exact_trace(obj, operator="fisher").estimate, jnp.trace(cv.dense_fisher(obj)))


def test_select_batch_and_one_liner():
    obj = objective(regularizers=[losses.l2(0.1)])
    close(bp.exact_diagonal(obj, select="head").estimate, jnp.diag(cv.dense_hessian(obj, select="head")))
    close(bp.exact_trace(obj, select="layers/1").estimate, jnp.trace(cv.dense_hessian(obj, select="layers/1")))
    x, y = obj.batch("train")
    batch = (x[:11], y[:11])
    close(bp.exact_trace(obj, batch=batch).estimate, jnp.trace(cv.dense_hessian(obj, batch=batch)))
    t = cv.hessian_trace(obj, method="backprop")
    assert t.std_error == 0.0 and t.method == "backprop"
    np.testing.assert_allclose(t.value, float(jnp.trace(cv.dense_hessian(obj))), rtol=1e-9)
    tm = cv.hessian_trace(obj, key=jax.random.key(5), method="backprop", operator="mc_fisher")
    te = cv.hessian_trace(obj, key=jax.random.key(5), method="exact", operator="mc_fisher")
    np.testing.assert_allclose(tm.value, te.value, rtol=1e-9)  # the same sampled labels


def test_no_recompilation_on_a_second_call():
    obj = objective()
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_a, **_k: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
    p2 = jax.tree.map(lambda a: a * 1.01, obj.params)
    bp.exact_trace(obj)
    before = len(compiles)
    bp.exact_trace(obj, p2)
    assert len(compiles) == before
    assert not cv.hessian_trace(obj, p2, method="backprop").compiled


def test_bad_input_is_refused():
    obj = objective("multiclass_hinge")
    with pytest.raises(ValueError, match="no Fisher"):
        bp.exact_diagonal(obj, operator="fisher")
    with pytest.raises(ValueError, match="no exact backprop diagonal for operator 'kfac'; valid: .*ggn"):
        bp.exact_trace(objective(), operator="kfac")
    with pytest.raises(ValueError, match="unknown operator 'hesian'; valid operator names: .*hessian"):
        bp.exact_trace(objective(), operator="hesian")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        bp.exact_trace(objective(), operator="mc_fisher")


def test_exact_trace_probe_inside_training():
    from losslab import train

    obj = objective(regularizers=[losses.l2(0.01)])
    probes = {"trace": probes_lib.trace_probe(method="backprop", full_batch=True, with_std_error=True)}
    result = train.train(obj, optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=2, key=0, probes=probes,
                         probe_every=1)
    hist = result.history.probes
    assert hist["trace/std_error"]["value"][-1] == 0.0
    # The last recorded value is the exact trace of the final full-batch Hessian (history stores float32).
    np.testing.assert_allclose(hist["trace/value"]["value"][-1], float(jnp.trace(cv.dense_hessian(obj, result.params))),
                               rtol=1e-6)
    # A smooth model is refused before the first step.
    with pytest.raises(ValueError, match="piecewise linear"):
        train.train(objective(activation="tanh"), optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=1,
                    key=0, probes={"trace": probes_lib.trace_probe(method="backprop")}, probe_every=1)
