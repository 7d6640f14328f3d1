"""K-FAC: exact factors where K-FAC is exact, conv patches, eigenspace overlap, damping, refresh, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, curvature, data, losses, models
from losslab.kfac import find_layers, kfac, kfac_factors, kfac_operator, output_fisher_sqrt
from losslab.layers import inputs_matrix
from losslab.train import train

jax.config.update("jax_enable_x64", True)

EXACT = 1e-10  # float64, same sums in a different order
MC_TOL = 0.1  # 400 sampled labels per example: relative error ~ 1/sqrt(400) = 0.05
TOP_K = 10
# Measured top-k eigenspace overlap of K-FAC with the exact Fisher on the 39-parameter tanh MLP below:
# k=1: 0.65, 2: 0.76, 5: 0.54, 10: 0.74 (a random 10-dim subspace of 39 dims gives 10/39 = 0.26).
MIN_OVERLAP = 0.6


class Data:
    def __init__(self, x, y, task, num_classes=None):
        self.x_train, self.y_train = x, y
        self.x_val = self.y_val = self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = task, num_classes, "toy"


def linear_regression(n=50, d_in=4, d_out=3, chunk_size=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d_in)) + 0.5
    y = rng.normal(size=(n, d_out))
    model = models.create("mlp", input_shape=(d_in,), output_dim=d_out, widths=())
    return Objective(model, "mse", Data(x, y, "regression"), dtype=jnp.float64, chunk_size=chunk_size)


def blobs(n=90, widths=(6,), model="mlp", **opts):
    ds = data.load("gaussian_mixture", num_train=n, num_test=10, num_classes=3, seed=0, std=0.5)
    m = models.create(model, input_shape=ds.input_shape, output_dim=3, widths=widths, activation="tanh", seed=1, **opts)
    return Objective(m, "cross_entropy", ds, dtype=jnp.float64)


def overlap(a, b, k):
    """Mean squared cosine between the top-k eigenspaces: 1 = identical subspaces."""
    u = jnp.linalg.eigh(a)[1][:, -k:]
    v = jnp.linalg.eigh(b)[1][:, -k:]
    return float(jnp.sum((u.T @ v) ** 2) / k)


def test_linear_regression_factors_are_closed_form_and_kfac_equals_the_fisher():
    obj = linear_regression()
    p = obj.params
    x = obj.batch()[0]
    f = kfac_factors(obj, p)
    xb = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)
    assert jnp.allclose(f.a[0], xb.T @ xb / x.shape[0], atol=EXACT)
    # Gaussian likelihood with variance D/2 (the mse convention): G = (2/D) I.
    assert jnp.allclose(f.g[0], 2.0 / 3.0 * jnp.eye(3), atol=EXACT)
    dense_kfac = curvature.to_dense(kfac_operator(obj, p))
    assert jnp.allclose(dense_kfac, curvature.dense_fisher(obj, p), atol=EXACT)


def test_sampled_factors_converge_to_exact():
    obj = blobs(n=40)
    p = obj.params
    exact = kfac_factors(obj, p)
    sampled = kfac_factors(obj, p, key=jax.random.key(0), estimator="sampled", num_samples=400)
    for e, s in zip(exact.g, sampled.g):
        assert jnp.linalg.norm(e - s) / jnp.linalg.norm(e) < MC_TOL
    for e, s in zip(exact.a, sampled.a):
        assert jnp.allclose(e, s, atol=EXACT)  # A does not depend on the labels


def test_output_fisher_sqrt_squares_to_the_output_fisher():
    z = jax.random.normal(jax.random.key(0), (5, 4), jnp.float64)
    cols = output_fisher_sqrt(losses.get("cross_entropy").likelihood, z)
    lam = jnp.einsum("cbd,cbe->bde", cols, cols)
    p = jax.nn.softmax(z)
    assert jnp.allclose(lam, jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :], atol=EXACT)


def test_kfac_top_eigenspace_overlaps_the_exact_fisher():
    obj = blobs()
    p = obj.params
    fisher = curvature.dense_fisher(obj, p)
    dense_kfac = curvature.to_dense(kfac_operator(obj, p))
    ov = overlap(fisher, dense_kfac, TOP_K)
    print(f"K-FAC vs Fisher top-{TOP_K} overlap: {ov:.3f} (n={fisher.shape[0]})")
    assert ov > MIN_OVERLAP
    # and it is much better than a random subspace
    assert ov > 2 * TOP_K / fisher.shape[0]


def test_conv_patches_reproduce_the_convolution_and_conv_kfac_runs():
    rng = np.random.default_rng(0)
    ds = Data(rng.normal(size=(12, 10)), rng.integers(0, 3, 12), "classification", 3)
    m = models.create("cnn1d", input_shape=(10,), output_dim=3, channels=(2,), kernel_size=3, hidden=4)
    obj = Objective(m, "cross_entropy", ds, dtype=jnp.float64)
    layers = find_layers(obj)
    assert [layer.kind for layer in layers] == ["conv", "dense", "dense"]
    conv = layers[0]
    x = obj.batch()[0][..., None]
    node = obj.params["convs"][0]
    a = inputs_matrix(conv, x)
    w = jnp.concatenate([node["kernel"].reshape(-1, 2), node["bias"][None]])
    from flax import nnx

    module = nnx.merge(obj.graphdef, obj.params, obj.state).convs[0]
    assert jnp.allclose((a @ w).reshape(12, -1, 2), module(x), atol=EXACT)
    op = kfac_operator(obj, obj.params)
    dense = curvature.to_dense(op)
    assert jnp.allclose(dense, dense.T, atol=EXACT)
    assert float(jnp.linalg.eigvalsh(dense)[0]) > -1e-10


def test_kfac_with_huge_damping_is_scaled_gradient_descent():
    obj = blobs(n=32)
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    lam = 1e8
    tx = kfac(lam, damping=lam)
    step, _ = tx.update(g, tx.init(p), p, objective=obj, batch=batch, key=jax.random.key(0))
    gf = ravel_pytree(g)[0]
    assert jnp.linalg.norm(ravel_pytree(step)[0] + gf) / jnp.linalg.norm(gf) < 1e-3


def test_exact_kfac_step_on_linear_regression_is_the_newton_step():
    obj = linear_regression(chunk_size=1024)
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    tx = kfac(1.0, damping=1e-14, estimator="exact")
    step, _ = tx.update(g, tx.init(p), p, objective=obj, batch=batch, key=jax.random.key(0))
    newton = -jnp.linalg.solve(curvature.dense_hessian(obj, p, batch), ravel_pytree(g)[0])
    assert jnp.linalg.norm(ravel_pytree(step)[0] - newton) / jnp.linalg.norm(newton) < 1e-6


def test_inverses_refresh_every_t_steps_and_factors_average():
    obj = blobs(n=32)
    p, batch = obj.params, obj.batch()
    g = jax.grad(obj.loss)(p, batch)
    tx = kfac(0.1, inverse_every=3, ema_decay=0.5)
    update = jax.jit(lambda s, k: tx.update(g, s, p, objective=obj, batch=batch, key=k))
    s0 = tx.init(p)
    _, s1 = update(s0, jax.random.key(1))
    _, s2 = update(s1, jax.random.key(2))
    _, s3 = update(s2, jax.random.key(3))
    _, s4 = update(s3, jax.random.key(4))
    same = [bool(jnp.array_equal(a, b)) for a, b in zip(s1.inv_g, s2.inv_g)]
    assert all(same) and all(bool(jnp.array_equal(a, b)) for a, b in zip(s2.inv_g, s3.inv_g))
    assert not any(bool(jnp.array_equal(a, b)) for a, b in zip(s3.inv_g, s4.inv_g))  # refreshed at step 4
    # first step takes the batch factors, later ones average (A is label-free: stays equal here)
    assert all(bool(jnp.allclose(a, b, atol=EXACT)) for a, b in zip(s1.a, s4.a))
    assert not all(bool(jnp.allclose(a, b)) for a, b in zip(s1.g, s2.g))


def test_kfac_handles_parameters_outside_dense_layers_and_validates():
    ds = data.load("gaussian_mixture", num_train=32, num_test=8, num_classes=3, seed=0)
    m = models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(4,), batch_norm=True, seed=0)
    obj = Objective(m, "cross_entropy", ds, dtype=jnp.float64)
    with pytest.raises(ValueError, match="needs key="):
        kfac_factors(obj, obj.params)
    op = kfac_operator(obj, obj.params, key=jax.random.key(0))
    assert op.size == ravel_pytree(obj.params)[0].size
    with pytest.raises(ValueError, match="unknown K-FAC estimator"):
        kfac(0.1, estimator="monte")
    with pytest.raises(ValueError, match="inverse_every must be >= 1"):
        kfac(0.1, inverse_every=0)
    tx = kfac(0.1)
    with pytest.raises(ValueError, match="needs `key=`"):
        tx.update(obj.params, tx.init(obj.params), obj.params, objective=obj, batch=obj.batch())


@pytest.mark.slow
def test_kfac_lowers_the_loss_faster_per_step_than_sgd_on_mnist1d():
    ds = data.load("mnist1d", num_samples=1000)
    m = models.create("mlp", input_shape=ds.input_shape, output_dim=10, widths=(64, 64), seed=0)
    obj = Objective(m, "cross_entropy", ds)
    kw = dict(batch_size=64, epochs=4, key=0)
    sgd = min(train(obj, optimizer="sgd", learning_rate=lr, **kw).history.train_eval_loss[-1] for lr in (0.1, 0.3))
    kf = train(obj, optimizer="kfac", learning_rate=0.3, optimizer_options={"damping": 0.1}, **kw)
    print(f"after {kf.history.step[-1]} steps: kfac {kf.history.train_eval_loss[-1]:.3f}, best sgd {sgd:.3f}")
    assert kf.history.train_eval_loss[-1] < 0.8 * sgd
