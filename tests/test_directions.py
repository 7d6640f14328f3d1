"""Directions: filter/layer/model normalisation, PCA of trajectories, planes, Hessian eigenvectors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, models
from losslab import directions as D

jax.config.update("jax_enable_x64", True)

# float64 throughout: norms and projections are exact to rounding.
EXACT = 1e-10


def conv_params():
    """A params pytree with Dense (in, out) and Conv (k, k, in, out) kernels, biases and BN params."""
    k = jax.random.split(jax.random.key(3), 4)
    return {
        "conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 5)), "bias": jax.random.normal(k[1], (5,))},
        "norm": {"scale": jnp.ones((5,)), "bias": jnp.zeros((5,))},
        "dense": {0: {"kernel": jax.random.normal(k[2], (7, 4)), "bias": jax.random.normal(k[3], (4,))}},
    }


def test_filter_normalisation_matches_each_filter_norm():
    params = conv_params()
    before = jax.tree.map(np.array, params)
    d = D.random_direction(params, jax.random.key(0))
    for name in ("conv",):
        dk, pk = d[name]["kernel"], params[name]["kernel"]
        np.testing.assert_allclose(
            np.linalg.norm(dk.reshape(-1, 5), axis=0), np.linalg.norm(pk.reshape(-1, 5), axis=0), rtol=EXACT
        )
    dk, pk = d["dense"][0]["kernel"], params["dense"][0]["kernel"]
    # Per output unit = per column of the (in, out) kernel, not per row.
    np.testing.assert_allclose(np.linalg.norm(dk, axis=0), np.linalg.norm(pk, axis=0), rtol=EXACT)
    assert not np.allclose(np.linalg.norm(dk, axis=1), np.linalg.norm(pk, axis=1))
    # Biases and BatchNorm params are zeroed by default (Li et al. 2018).
    for leaf in (d["conv"]["bias"], d["norm"]["scale"], d["norm"]["bias"], d["dense"][0]["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) == 0.0
    # Params untouched; structure preserved.
    jax.tree.map(np.testing.assert_array_equal, params, before)
    assert jax.tree.structure(d) == jax.tree.structure(params)


def test_keep_biases_layer_and_model_normalisation():
    params = conv_params()
    d = D.random_direction(params, jax.random.key(1), biases="keep")
    np.testing.assert_allclose(
        jnp.linalg.norm(d["dense"][0]["bias"]), jnp.linalg.norm(params["dense"][0]["bias"]), rtol=EXACT
    )
    assert float(jnp.linalg.norm(d["norm"]["bias"])) == 0.0  # zero params -> zero direction, not NaN
    assert np.all(np.isfinite(ravel_pytree(d)[0]))

    d = D.random_direction(params, jax.random.key(1), normalization="layer")
    np.testing.assert_allclose(
        jnp.linalg.norm(d["conv"]["kernel"]), jnp.linalg.norm(params["conv"]["kernel"]), rtol=EXACT
    )
    col = np.linalg.norm(d["conv"]["kernel"].reshape(-1, 5), axis=0)
    assert np.ptp(col / np.linalg.norm(params["conv"]["kernel"].reshape(-1, 5), axis=0)) > 1e-3

    d = D.random_direction(params, jax.random.key(1), normalization="model")
    kernels = [params["conv"]["kernel"], params["dense"][0]["kernel"]]
    target = np.sqrt(sum(float(jnp.sum(k**2)) for k in kernels))
    np.testing.assert_allclose(float(D.tree_norm(d)), target, rtol=EXACT)

    raw = D.random_direction(params, jax.random.key(1), normalization="none", biases="keep")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    expected = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
    jax.tree.map(np.testing.assert_array_equal, raw, expected)


def test_random_direction_is_deterministic_and_key_dependent():
    params = conv_params()
    a = D.random_direction(params, jax.random.key(5))
    b = D.random_direction(params, jax.random.key(5))
    c = D.random_direction(params, jax.random.key(6))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.allclose(ravel_pytree(a)[0], ravel_pytree(c)[0])
    d1, d2 = D.random_plane(params, jax.random.key(5))
    assert not np.allclose(ravel_pytree(d1)[0], ravel_pytree(d2)[0])


def test_bad_options_raise():
    params = conv_params()
    with pytest.raises(ValueError, match="normalization"):
        D.random_direction(params, jax.random.key(0), normalization="filterwise")
    with pytest.raises(ValueError, match="biases"):
        D.random_direction(params, jax.random.key(0), biases="drop")
    with pytest.raises(ValueError, match="structures differ"):
        D.segment(params, {"x": jnp.zeros(3)})


def test_trajectory_pca_recovers_known_plane():
    params = conv_params()
    n = ravel_pytree(params)[0].size
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, 2)))
    unravel = ravel_pytree(params)[1]
    final = ravel_pytree(params)[0]
    t = np.linspace(0, 1, 12)
    a, b = 3 * np.cos(4 * t) * (1 - t), 0.5 * np.sin(7 * t) * (1 - t)  # ends at (0, 0) = final params
    snaps = [(int(i), unravel(final + a_i * q[:, 0] + b_i * q[:, 1])) for i, (a_i, b_i) in enumerate(zip(a, b))]
    pca = D.trajectory_pca(snaps)
    comps = np.stack([ravel_pytree(d)[0] for d in pca.directions])
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-10)
    # Same subspace: the projector onto the recovered plane equals the true one.
    np.testing.assert_allclose(comps.T @ comps, q @ q.T, atol=1e-8)
    np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1.0, atol=1e-10)
    assert pca.explained_variance_ratio[0] > pca.explained_variance_ratio[1]
    # Projected path reproduces every snapshot exactly, the final one at the origin.
    recon = final + pca.coords @ comps
    np.testing.assert_allclose(recon, np.stack([ravel_pytree(p)[0] for _, p in snaps]), atol=1e-8)
    np.testing.assert_allclose(pca.coords[-1], 0.0, atol=1e-12)
    np.testing.assert_array_equal(pca.epochs, np.arange(12))
    # A third component of a planar trajectory explains nothing.
    pca3 = D.trajectory_pca(snaps, num_components=3)
    assert pca3.explained_variance_ratio[2] < 1e-12 or pca3.singular_values[2] < 1e-6
    with pytest.raises(ValueError, match="num_components"):
        D.trajectory_pca(snaps, num_components=12)
    with pytest.raises(ValueError, match="at least 2"):
        D.trajectory_pca(snaps[:1])


def test_plane_through_three_points_and_segment():
    params = conv_params()
    p1 = jax.tree.map(lambda x: x + 1.0, params)
    p2 = D.tree_add(params, D.random_direction(params, jax.random.key(2), normalization="none", biases="keep"))
    basis = D.plane_through(params, p1, p2)
    u, v = basis.directions
    np.testing.assert_allclose([float(D.tree_vdot(u, u)), float(D.tree_vdot(v, v))], 1.0, atol=EXACT)
    assert abs(float(D.tree_vdot(u, v))) < EXACT
    for point, (x, y) in zip((params, p1, p2), basis.coords):
        recon = D.tree_add(basis.origin, D.tree_add(D.tree_scale(u, x), D.tree_scale(v, y)))
        np.testing.assert_allclose(ravel_pytree(recon)[0], ravel_pytree(point)[0], atol=1e-9)
    seg = D.segment(params, p1)
    np.testing.assert_allclose(ravel_pytree(seg)[0], 1.0)
    with pytest.raises(ValueError, match="collinear"):
        D.plane_through(params, p1, jax.tree.map(lambda x: x + 2.0, params))


def test_hessian_directions_are_top_eigenvectors():
    curvature = pytest.importorskip("losslab.curvature")
    if not hasattr(curvature, "top_eigenpairs"):
        pytest.skip("losslab.curvature.top_eigenpairs not written yet")
    rng = np.random.default_rng(0)

    class Tiny:  # duck-typed regression dataset
        x_train = rng.normal(size=(40, 3))
        y_train = rng.normal(size=(40, 2))
        x_val = y_val = x_test = y_test = None
        task, num_classes, name = "regression", None, "tiny"

    model = models.create("mlp", input_shape=(3,), output_dim=2, widths=(4,), activation="tanh", seed=1)
    obj = Objective(model, "mse", Tiny(), dtype=jnp.float64)
    flat, unravel = ravel_pytree(obj.params)
    hess = jax.hessian(lambda f: obj.loss(unravel(f)))(flat)
    evals, evecs = np.linalg.eigh(np.asarray(hess))
    order = np.argsort(evals)[::-1]
    res = D.hessian_directions(obj, obj.params, jax.random.key(0), k=2)
    # Eigensolver tolerance: iterative, converged to ~1e-6 relative on this 34-parameter problem.
    np.testing.assert_allclose(res.eigenvalues, evals[order[:2]], rtol=1e-4)
    for d, i in zip(res.directions, order[:2]):
        assert jax.tree.structure(d) == jax.tree.structure(obj.params)
        cos = abs(float(ravel_pytree(d)[0] @ evecs[:, i])) / float(np.linalg.norm(ravel_pytree(d)[0]))
        assert cos > 1 - 1e-4
