"""Every loss against its written formula and its known gradients; regularizers; errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import losses

jax.config.update("jax_enable_x64", True)

# Losses are computed in float64 here; formulas are written independently in numpy.
RTOL = 1e-10

rng = np.random.default_rng(0)
LOGITS = jnp.asarray(rng.normal(size=(6, 4)) * 2.0)
LABELS = jnp.asarray([0, 1, 2, 3, 1, 2], dtype=jnp.int32)
REG_OUT = jnp.asarray(rng.normal(size=(6, 3)))
REG_Y = jnp.asarray(rng.normal(size=(6, 3)))


def np_softmax(z):
    z = np.asarray(z)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def onehot(y, c=4):
    return np.eye(c)[np.asarray(y)]


def ce_formula(z, y):
    p = np_softmax(z)
    return -np.log(p[np.arange(len(y)), y])


FORMULAS = {
    "cross_entropy": ({}, lambda z, y: ce_formula(z, y)),
    "label_smoothing": (
        {"smoothing": 0.2},
        lambda z, y: -np.sum((0.8 * onehot(y) + 0.2 / 4) * np.log(np_softmax(z)), -1),
    ),
    "focal": (
        {"gamma": 2.0, "alpha": 0.25},
        lambda z, y: -0.25 * (1 - np_softmax(z)[np.arange(6), y]) ** 2 * np.log(np_softmax(z)[np.arange(6), y]),
    ),
    "multiclass_hinge": (
        {},
        lambda z, y: np.maximum(
            0, 1 + np.max(np.where(onehot(y) > 0, -np.inf, np.asarray(z)), -1) - np.asarray(z)[np.arange(6), y]
        ),
    ),
    "mse": ({}, lambda z, y: np.mean((np.asarray(z) - onehot(y)) ** 2, -1)),
    "mae": ({}, lambda z, y: np.mean(np.abs(np.asarray(z) - onehot(y)), -1)),
    "huber": (
        {"delta": 0.5},
        lambda z, y: np.mean(
            np.where(
                np.abs(np.asarray(z) - onehot(y)) <= 0.5,
                0.5 * (np.asarray(z) - onehot(y)) ** 2,
                0.5 * (np.abs(np.asarray(z) - onehot(y)) - 0.25),
            ),
            -1,
        ),
    ),
    "log_cosh": ({}, lambda z, y: np.mean(np.log(np.cosh(np.asarray(z) - onehot(y))), -1)),
    "normalized_cross_entropy": ({}, lambda z, y: ce_formula(z, y) / math.log(4)),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_loss_matches_formula(name):
    options, formula = FORMULAS[name]
    loss = losses.get(name, **options)
    value = loss(LOGITS, LABELS)
    assert value.shape == (6,)
    np.testing.assert_allclose(value, formula(LOGITS, np.asarray(LABELS)), rtol=RTOL, atol=1e-12)


def test_every_registered_loss_is_tested():
    assert set(FORMULAS) == set(losses.LOSSES)


def test_regression_losses_on_real_targets():
    np.testing.assert_allclose(losses.get("mse")(REG_OUT, REG_Y), np.mean((REG_OUT - REG_Y) ** 2, -1), rtol=RTOL)
    np.testing.assert_allclose(losses.get("mae")(REG_OUT, REG_Y), np.mean(np.abs(REG_OUT - REG_Y), -1), rtol=RTOL)


def test_cross_entropy_gradient_is_p_minus_y():
    grad = jax.grad(lambda z: jnp.sum(losses.get("cross_entropy")(z, LABELS)))(LOGITS)
    np.testing.assert_allclose(grad, np_softmax(LOGITS) - onehot(LABELS), rtol=1e-9, atol=1e-12)


def test_cross_entropy_hessian_is_diag_p_minus_ppT_and_psd():
    for i in range(3):
        z = LOGITS[i]
        hess = jax.hessian(lambda v: losses.get("cross_entropy")(v[None], LABELS[i : i + 1])[0])(z)
        p = np_softmax(z)
        np.testing.assert_allclose(hess, np.diag(p) - np.outer(p, p), rtol=1e-9, atol=1e-12)
        assert np.linalg.eigvalsh(np.asarray(hess)).min() > -1e-12


def test_mse_gradient_and_focal_gamma_zero_is_ce():
    grad = jax.grad(lambda z: jnp.sum(losses.get("mse")(z, REG_Y)))(REG_OUT)
    np.testing.assert_allclose(grad, 2.0 / 3.0 * (REG_OUT - REG_Y), rtol=1e-10)
    np.testing.assert_allclose(
        losses.get("focal", gamma=0.0)(LOGITS, LABELS), losses.get("cross_entropy")(LOGITS, LABELS), rtol=1e-12
    )


def test_hinge_gradient_at_a_point():
    z = jnp.asarray([[2.0, 1.5, -1.0]])
    g = jax.grad(lambda v: losses.get("multiclass_hinge")(v, jnp.asarray([0]))[0])(z)
    # margin 1 + 1.5 - 2 = 0.5 > 0: gradient +1 on the runner-up, -1 on the true class
    np.testing.assert_allclose(g, [[-1.0, 1.0, 0.0]])


def test_huber_gradient_is_clipped_residual():
    r = jnp.asarray([[-3.0, -0.2, 0.3, 4.0]])
    g = jax.grad(lambda v: jnp.sum(losses.get("huber", delta=1.0)(v, jnp.zeros_like(v))))(r)
    np.testing.assert_allclose(g, np.clip(np.asarray(r), -1, 1) / 4.0)


def test_likelihood_consistency():
    lik = losses.get("mse").require_likelihood()
    # The Gaussian NLL with variance D/2 equals MSE (no constant with this convention).
    np.testing.assert_allclose(lik.nll(REG_OUT, REG_Y), losses.get("mse")(REG_OUT, REG_Y), rtol=1e-12)
    cat = losses.get("cross_entropy").require_likelihood()
    v = jnp.asarray(rng.normal(size=(6, 4)))
    p = np_softmax(LOGITS)
    expected = np.stack([(np.diag(p[i]) - np.outer(p[i], p[i])) @ np.asarray(v[i]) for i in range(6)])
    np.testing.assert_allclose(cat.fisher_matvec(LOGITS, v), expected, rtol=1e-10, atol=1e-12)
    samples = cat.sample(jax.random.key(0), LOGITS)
    assert samples.shape == (6,) and samples.dtype in (jnp.int32, jnp.int64)


@pytest.mark.parametrize("name", ["focal", "multiclass_hinge", "mae", "huber"])
def test_fisher_of_non_likelihood_raises(name):
    with pytest.raises(ValueError, match="no Fisher information"):
        losses.get(name).require_likelihood()


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid loss names: .*cross_entropy.*mse"):
        losses.get("crossentropy")


def test_bad_options():
    with pytest.raises(ValueError, match="unknown option"):
        losses.get("cross_entropy", gamma=2.0)
    with pytest.raises(ValueError, match="smoothing"):
        losses.get("label_smoothing", smoothing=1.5)
    with pytest.raises(ValueError, match="integer class labels"):
        losses.get("cross_entropy")(LOGITS, jnp.zeros((6,)))


def test_losses_are_hashable_values():
    a = losses.get("focal", gamma=2.0, alpha=0.5)
    b = losses.get("focal", alpha=0.5, gamma=2.0)
    assert a == b and hash(a) == hash(b) and str(a) == "focal(alpha=0.5, gamma=2.0)"


def test_regularizers():
    params = {"layers": {0: {"kernel": jnp.asarray([[1.0, -2.0]]), "bias": jnp.asarray([5.0])}}, "head": {"kernel": jnp.asarray([[3.0]])}}
    np.testing.assert_allclose(losses.l1(0.1)(params), 0.1 * (1 + 2 + 3))
    np.testing.assert_allclose(losses.l2(0.1)(params), 0.05 * (1 + 4 + 9))
    np.testing.assert_allclose(losses.l2(0.1, include="layers/0")(params), 0.05 * 5)
    np.testing.assert_allclose(losses.l2(0.1, weights_only=False)(params), 0.05 * (1 + 4 + 9 + 25))
    np.testing.assert_allclose(losses.elastic_net(0.1, 0.2)(params), 0.1 * 6 + 0.1 * 14)
    with pytest.raises(ValueError, match=">= 0"):
        losses.l2(-1.0)
