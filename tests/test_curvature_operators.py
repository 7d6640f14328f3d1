"""Curvature operators against exact answers (float64): jax.hessian, closed forms, known identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, losses, models
from losslab import curvature as cv

jax.config.update("jax_enable_x64", True)

# Operators are exact up to float64 round-off of sums over ~40 examples.
EXACT_RTOL = 1e-6
EXACT_ATOL = 1e-10


class Toy:
    """A duck-typed dataset (the Objective only needs these attributes)."""

    def __init__(self, x, y, task, num_classes=None):
        self.x_train, self.y_train = x, y
        self.x_val = self.y_val = self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = task, num_classes, "toy"


def classification(n=37, d=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return Toy(rng.normal(size=(n, d)), rng.integers(0, c, n), "classification", c)


def regression(n=40, d=3, out=2, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, out)) + 0.5 + noise * rng.normal(size=(n, out))
    return Toy(x, y, "regression")


def mlp_objective(loss="cross_entropy", *, chunk_size=8, regularizers=(), ds=None, widths=(5,)):
    ds = classification() if ds is None else ds
    out = ds.num_classes if ds.task == "classification" else ds.y_train.shape[1]
    model = models.create("mlp", input_shape=(ds.x_train.shape[1],), output_dim=out, widths=widths, activation="tanh")
    return Objective(model, loss, ds, chunk_size=chunk_size, regularizers=regularizers, dtype=jnp.float64)


def jax_hessian(fn, params):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: fn(unravel(f)))(flat)


@pytest.fixture(scope="module")
def tiny():
    return mlp_objective(regularizers=[losses.l2(0.1)])


def test_tiny_mlp_is_under_100_params(tiny):
    assert tiny.num_params < 100


@pytest.mark.parametrize("chunk_size", [8, 37, 1000])
def test_hessian_to_dense_equals_jax_hessian(chunk_size):
    obj = mlp_objective(chunk_size=chunk_size, regularizers=[losses.l2(0.1)])
    expected = jax_hessian(obj.loss, obj.params)
    op = cv.hessian_operator(obj, obj.params)
    assert op.size == obj.num_params and op.symmetric and not op.psd
    np.testing.assert_allclose(op.to_dense(), expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    data_only = cv.dense_hessian(obj, obj.params, include_regularizer=False)
    np.testing.assert_allclose(data_only, jax_hessian(obj.data_loss, obj.params), rtol=EXACT_RTOL, atol=EXACT_ATOL)
    # The L2 term contributes exactly 0.1 on the kernel diagonal: the two differ.
    assert np.abs(np.asarray(expected - data_only)).max() == pytest.approx(0.1)


def test_hessian_on_a_given_batch_is_of_its_mean_loss(tiny):
    x, y = tiny.batch()
    batch = (x[:11], y[:11])
    np.testing.assert_allclose(
        cv.dense_hessian(tiny, tiny.params, batch),
        jax_hessian(lambda p: tiny.loss(p, batch), tiny.params),
        rtol=EXACT_RTOL,
        atol=EXACT_ATOL,
    )


def test_linear_least_squares_closed_form():
    ds = regression()
    obj = mlp_objective("mse", ds=ds, widths=())
    x = np.asarray(ds.x_train)
    n, d = x.shape
    out = ds.y_train.shape[1]
    # loss = mean_i (1/D) ||W^T x_i + b - y_i||^2; params ravel as head/bias (D,), head/kernel (d, D) row-major.
    eye = np.eye(out)
    xx = x.T @ x / n
    mx = x.mean(0)
    h_bb = 2 / out * eye
    h_bw = 2 / out * np.kron(mx[None, :], eye)
    h_ww = 2 / out * np.kron(xx, eye)
    closed = np.block([[h_bb, h_bw], [h_bw.T, h_ww]])
    for build in (cv.hessian_operator, cv.ggn_operator, cv.fisher_operator):
        np.testing.assert_allclose(cv.to_dense(build(obj, obj.params)), closed, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_ggn_equals_hessian_for_linear_model_under_mse():
    obj = mlp_objective("mse", ds=classification(), widths=())  # integer labels, one-hot targets
    np.testing.assert_allclose(cv.dense_ggn(obj), cv.dense_hessian(obj), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_ggn_differs_from_hessian_for_nonlinear_model(tiny):
    diff = np.abs(np.asarray(cv.dense_ggn(tiny) - cv.dense_hessian(tiny, include_regularizer=False))).max()
    assert diff > 1e-3, "a tanh MLP has a nonzero residual (second-order) term"


def test_ggn_closed_form_composition(tiny):
    """G = (1/N) sum_i J_i^T H_L,i J_i, assembled from per-example Jacobians."""
    x, y = tiny.batch()
    flat, unravel = ravel_pytree(tiny.params)
    jac = jax.jacobian(lambda f: tiny.outputs(unravel(f), x))(flat)  # (N, C, n)
    z = tiny.outputs(tiny.params, x)
    p = jax.nn.softmax(z)
    h_out = jax.vmap(lambda pi: jnp.diag(pi) - jnp.outer(pi, pi))(p)
    expected = jnp.einsum("icn,icd,idm->nm", jac, h_out, jac) / x.shape[0]
    np.testing.assert_allclose(cv.dense_ggn(tiny), expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_ggn_equals_true_fisher_for_likelihood_losses(loss):
    obj = mlp_objective(loss)
    np.testing.assert_allclose(cv.dense_fisher(obj), cv.dense_ggn(obj), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_fisher_operators_are_psd_and_symmetric(tiny):
    for op in (cv.ggn_operator(tiny), cv.fisher_operator(tiny), cv.empirical_fisher_operator(tiny)):
        dense = np.asarray(op.to_dense())
        assert op.psd
        np.testing.assert_allclose(dense, dense.T, atol=EXACT_ATOL)
        assert np.linalg.eigvalsh(dense).min() > -1e-12


def test_mc_fisher_converges_to_true_fisher(tiny):
    fisher = np.asarray(cv.dense_fisher(tiny))

    def rel_error(num_samples):
        op = cv.mc_fisher_operator(tiny, tiny.params, jax.random.key(3), num_samples=num_samples)
        return np.linalg.norm(np.asarray(op.to_dense()) - fisher) / np.linalg.norm(fisher)

    errors = [rel_error(s) for s in (4, 64, 1024)]
    # Monte-Carlo error falls like 1/sqrt(S): 16x more samples -> ~4x smaller; allow 2x slack.
    assert errors[1] < errors[0] / 2 and errors[2] < errors[1] / 2, errors
    assert errors[2] < 0.05, errors


def test_mc_fisher_is_a_fixed_matrix_for_a_key(tiny):
    a = cv.mc_fisher_operator(tiny, tiny.params, jax.random.key(0), num_samples=2).to_dense()
    b = cv.mc_fisher_operator(tiny, tiny.params, jax.random.key(0), num_samples=2).to_dense()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, a.T, atol=EXACT_ATOL)


def test_empirical_fisher_is_mean_outer_product_of_per_example_gradients(tiny):
    x, y = tiny.batch()
    flat, unravel = ravel_pytree(tiny.params)
    grads = jax.vmap(
        jax.grad(lambda f, xi, yi: tiny.loss_fn(tiny.outputs(unravel(f), xi[None]), yi[None])[0]), (None, 0, 0)
    )(flat, x, y)
    expected = grads.T @ grads / x.shape[0]
    np.testing.assert_allclose(
        cv.to_dense(cv.empirical_fisher_operator(tiny)), expected, rtol=EXACT_RTOL, atol=EXACT_ATOL
    )


def test_empirical_fisher_differs_from_fisher_as_kunstner_et_al_say():
    """Kunstner et al. 2019: the empirical Fisher is not the Fisher.

    At an interpolating least-squares solution every per-example gradient is 0, so the
    empirical Fisher vanishes, while the true Fisher (= Hessian = (2/D) X^T X / N) is the
    same as anywhere else: the EF calls the model flat exactly where it is curved. Away from
    such points the two differ by a large factor too.
    """
    ds = regression(noise=0.0)
    obj = mlp_objective("mse", ds=ds, widths=())
    x1 = np.concatenate([np.ones((len(ds.x_train), 1)), ds.x_train], 1)
    coef = np.linalg.lstsq(x1, ds.y_train, rcond=None)[0]
    fit = {"head": {"bias": jnp.asarray(coef[0]), "kernel": jnp.asarray(coef[1:])}}
    assert float(obj.loss(fit)) < 1e-20
    ef = np.asarray(cv.to_dense(cv.empirical_fisher_operator(obj, fit)))
    fisher = np.asarray(cv.dense_fisher(obj, fit))
    assert np.abs(ef).max() < 1e-12
    assert np.linalg.eigvalsh(fisher).min() > 0.05

    noisy = mlp_objective("cross_entropy")
    ef, fisher = np.asarray(cv.to_dense(cv.empirical_fisher_operator(noisy))), np.asarray(cv.dense_fisher(noisy))
    assert np.linalg.norm(ef - fisher) / np.linalg.norm(fisher) > 0.3


@pytest.mark.parametrize("loss", ["focal", "multiclass_hinge", "mae"])
def test_fisher_of_non_likelihood_loss_raises_clearly(loss):
    obj = mlp_objective(loss)
    for build in (cv.fisher_operator, cv.empirical_fisher_operator):
        with pytest.raises(ValueError, match="no Fisher information"):
            build(obj)
    with pytest.raises(ValueError, match="no Fisher information"):
        cv.mc_fisher_operator(obj, obj.params, jax.random.key(0))
    cv.ggn_operator(obj)  # the GGN exists for any twice-differentiable loss


@pytest.mark.parametrize("select", ["layers/0", "head/kernel", lambda path, leaf: leaf.ndim == 1])
def test_parameter_blocks_equal_dense_sub_blocks(tiny, select):
    full = np.asarray(jax_hessian(tiny.loss, tiny.params))
    leaves, treedef = jax.tree.flatten(tiny.params)
    paths = [cv.operators.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tiny.params)]
    chosen = [(select in s) if isinstance(select, str) else select(s, leaf) for s, leaf in zip(paths, leaves)]
    mask = ravel_pytree(jax.tree.unflatten(treedef, [np.full(leaf.shape, c) for leaf, c in zip(leaves, chosen)]))[0]
    mask = np.asarray(mask, bool)
    op = cv.hessian_operator(tiny, tiny.params, select=select)
    assert op.size == mask.sum()
    np.testing.assert_allclose(op.to_dense(), full[np.ix_(mask, mask)], rtol=EXACT_RTOL, atol=EXACT_ATOL)
    block = np.asarray(cv.dense_ggn(tiny, select=select))
    np.testing.assert_allclose(
        block, np.asarray(cv.dense_ggn(tiny))[np.ix_(mask, mask)], rtol=EXACT_RTOL, atol=EXACT_ATOL
    )
    # unravel puts zeros outside the selection; ravel picks the selection back out.
    vec = jnp.arange(op.size, dtype=jnp.float64)
    tree = op.unravel(vec)
    np.testing.assert_array_equal(op.ravel(tree), vec)
    np.testing.assert_array_equal(ravel_pytree(tree)[0][~mask], 0.0)


def test_select_matching_nothing_raises(tiny):
    with pytest.raises(ValueError, match="matches no parameter"):
        cv.hessian_operator(tiny, select="nonexistent")


def test_pytree_matvec_and_flat_matvec_agree_and_nothing_accumulates(tiny):
    op = cv.hessian_operator(tiny)
    vec = jax.random.normal(jax.random.key(0), (op.size,), jnp.float64)
    first = op.matvec(vec)
    tree_out = op.pytree_matvec(op.unravel(vec))
    assert jax.tree.structure(tree_out) == jax.tree.structure(tiny.params)
    np.testing.assert_allclose(ravel_pytree(tree_out)[0], first, rtol=1e-12)
    # A second operator on the same objective returns H, not 2H (PyHessian's accumulation bug).
    again = cv.hessian_operator(tiny).matvec(vec)
    np.testing.assert_array_equal(first, again)


def test_operator_inside_jit_matches_eager_and_does_not_recompile(tiny):
    @jax.jit
    def hv(objective, params, vec):
        return cv.hessian_operator(objective, params).matvec(vec)

    vec = jnp.ones((tiny.num_params,), jnp.float64)
    np.testing.assert_allclose(hv(tiny, tiny.params, vec), cv.hessian_operator(tiny).matvec(vec), rtol=1e-12)
    shifted = jax.tree.map(lambda a: a + 0.1, tiny.params)
    hv(tiny, shifted, vec)
    assert hv._cache_size() == 1
