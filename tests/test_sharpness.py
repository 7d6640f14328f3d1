"""Sharpness measures against closed forms on quadratics with a known Hessian."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, models, sharpness
from losslab.sharpness import MEASURES

jax.config.update("jax_enable_x64", True)

# Deterministic measures and converged ascents on exact quadratics: float64 round-off only.
EXACT_RTOL = 1e-6
# Monte-Carlo estimates: within this many standard errors of the closed form
# (a factor-2 or sign bug moves the estimate by tens of standard errors).
NUM_SE = 4.0


@dataclasses.dataclass
class ArrayData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int | None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    name: str = "toy"


def quadratic(scales=(1.0, 2.0, 3.0), n=64, noise=0.3, seed=0):
    """Linear least squares with a diagonal Hessian H = diag(2, 2 s²) at its minimum θ*.

    Columns of X are orthogonal, zero-mean and scaled so XᵀX/n = diag(s²); the loss is
    (wᵀx + b − y)², hence H = 2 E[x̃ x̃ᵀ] with x̃ = (1, x): diagonal.
    """
    rng = np.random.default_rng(seed)
    d = len(scales)
    a = rng.normal(size=(n, d))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)
    x = math.sqrt(n) * q * np.asarray(scales)
    y = x @ rng.normal(size=d) + 0.7 + noise * rng.normal(size=n)
    ds = ArrayData(x, y[:, None], x[:8], y[:8, None], "regression", None)
    obj = Objective(models.create("mlp", input_shape=(d,), output_dim=1, widths=()), "mse", ds, dtype=jnp.float64)
    design = np.concatenate([x, np.ones((n, 1))], 1)
    sol = np.linalg.lstsq(design, y, rcond=None)[0]
    params = {"head": {"kernel": jnp.asarray(sol[:d, None]), "bias": jnp.asarray(sol[d:])}}
    return obj, params


def dense_hessian(obj, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda v: obj.data_loss(unravel(v)))(flat))


@pytest.fixture(scope="module")
def quad():
    obj, params = quadratic()
    return obj, params, dense_hessian(obj, params), np.asarray(ravel_pytree(params)[0])


def test_fixture_hessian_is_diagonal_and_params_are_the_minimum(quad):
    obj, params, h, _ = quad
    np.testing.assert_allclose(h, np.diag(np.diag(h)), atol=1e-10)
    np.testing.assert_allclose(sorted(np.diag(h)), [2.0, 2.0, 8.0, 18.0], rtol=1e-10)
    g = ravel_pytree(jax.grad(obj.data_loss)(params))[0]
    assert float(jnp.linalg.norm(g)) < 1e-10


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_sharpness_at_minimum_matches_closed_form(quad, norm, adaptive):
    obj, params, h, flat = quad
    rho, eta = 0.05, 0.5  # eta keeps the top two eigenvalues of THT well apart
    t = np.abs(flat) + eta if adaptive else np.ones_like(flat)
    tht = t[:, None] * h * t[None, :]
    expected = 0.5 * rho**2 * (np.linalg.eigvalsh(tht)[-1] if norm == "l2" else np.trace(tht))
    res = sharpness.worst_case_sharpness(
        obj, params, jax.random.key(0), rho=rho, norm=norm, adaptive=adaptive, eta=eta, num_steps=50
    )
    assert res.std_error is None
    np.testing.assert_allclose(res.value, expected, rtol=EXACT_RTOL)


def test_epsilon_sharpness_matches_keskar_closed_form(quad):
    obj, params, h, flat = quad
    eps = 1e-3
    base = float(obj.data_loss(params))
    expected = 100 * 0.5 * eps**2 * np.sum(np.diag(h) * (np.abs(flat) + 1) ** 2) / (1 + base)
    res = MEASURES["epsilon_sharpness"](obj, params, jax.random.key(1), epsilon=eps)
    np.testing.assert_allclose(res.value, expected, rtol=EXACT_RTOL)
    assert res.info["base_loss"] == pytest.approx(base)


def test_m_sharpness_with_m_one_matches_per_example_closed_form():
    # ℓ_i = (r_i + x̃_iᵀε)²: its worst case on the ρ-ball is (|r_i| + ρ‖x̃_i‖)² − r_i², at any θ.
    obj, params = quadratic(n=32)
    params = jax.tree.map(lambda v: v + 0.1, params)
    x, y = obj.batch("train")
    xt = np.concatenate([np.ones((32, 1)), np.asarray(x)], 1)
    r = np.asarray(obj.outputs(params, x))[:, 0] - np.asarray(y)[:, 0]
    rho = 0.02
    expected = np.mean((np.abs(r) + rho * np.linalg.norm(xt, axis=1)) ** 2 - r**2)
    res = MEASURES["m_sharpness"](obj, params, jax.random.key(2), m=1, rho=rho, num_steps=50)
    np.testing.assert_allclose(res.value, expected, rtol=EXACT_RTOL)
    assert res.std_error > 0 and res.info["m"] == 1


def test_m_sharpness_bounds_full_batch_and_equals_it_at_m_n(quad):
    obj, params, _, _ = quad
    params = jax.tree.map(lambda v: v + 0.05, params)
    key = jax.random.key(3)
    full = MEASURES["sharpness_l2"](obj, params, key, rho=0.05, num_steps=50).value
    m_n = MEASURES["m_sharpness"](obj, params, key, m=64, rho=0.05, num_steps=50).value
    m_8 = MEASURES["m_sharpness"](obj, params, key, m=8, rho=0.05, num_steps=50).value
    np.testing.assert_allclose(m_n, full, rtol=EXACT_RTOL)
    assert m_8 > 1.05 * full


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_sharpness_is_half_sigma_squared_trace(quad, adaptive):
    obj, params, h, flat = quad
    sigma, eta = 0.05, 0.2
    t = np.abs(flat) + eta if adaptive else np.ones_like(flat)
    expected = 0.5 * sigma**2 * np.sum(t**2 * np.diag(h))
    res = sharpness.average_sharpness(
        obj, params, jax.random.key(4), sigma=sigma, adaptive=adaptive, eta=eta, num_samples=256
    )
    assert abs(res.value - expected) < NUM_SE * res.std_error
    assert res.std_error < 0.2 * expected


@pytest.mark.parametrize("adaptive", [False, True])
def test_pacbayes_flatness_with_loss_metric_is_trace_over_two_d(quad, adaptive):
    obj, params, h, flat = quad
    d, eta = 0.01, 0.2
    t = np.abs(flat) + eta if adaptive else np.ones_like(flat)
    expected = np.sum(t**2 * np.diag(h)) / (2 * d)
    res = sharpness.pacbayes_flatness(
        obj, params, jax.random.key(5), target=d, metric="loss", adaptive=adaptive, eta=eta, num_samples=256
    )
    assert res.info["hit_bound"] is None
    assert res.info["deviation"] == pytest.approx(d, rel=1e-4)
    assert abs(res.value - expected) < NUM_SE * res.std_error
    assert res.std_error < 0.2 * expected


def test_hessian_trace_and_lambda_max_match_dense(quad):
    obj, params, h, _ = quad
    tr = MEASURES["data_hessian_trace"](obj, params, jax.random.key(6), num_probes=8)
    # Rademacher probes are exact for a diagonal matrix.
    np.testing.assert_allclose(tr.value, np.trace(h), rtol=EXACT_RTOL)
    lam = MEASURES["data_hessian_lambda_max"](obj, params, jax.random.key(7))
    np.testing.assert_allclose(lam.value, np.linalg.eigvalsh(h)[-1], rtol=EXACT_RTOL)


def test_hessian_trace_on_non_diagonal_hessian_within_error_bar():
    obj, params = quadratic()
    x, y = obj.batch("train")
    obj = obj.replace(data={"train": (x + 0.5 * x[:, ::-1], y)})
    h = dense_hessian(obj, params)
    assert np.abs(h - np.diag(np.diag(h))).max() > 0.1
    res = MEASURES["data_hessian_trace"](obj, params, jax.random.key(8), num_probes=400)
    assert abs(res.value - np.trace(h)) < NUM_SE * res.std_error and res.std_error > 0


def test_fisher_rao_norm_empirical_and_true(quad):
    obj, params, h, flat = quad
    params = jax.tree.map(lambda v: v * 1.1, params)
    x, y = obj.batch("train")
    f = np.asarray(obj.outputs(params, x))[:, 0]
    r = f - np.asarray(y)[:, 0]
    # ℓ_i = r_i², ⟨θ, ∇ℓ_i⟩ = 2 r_i f_i (the model is linear in θ).
    emp = MEASURES["fisher_rao_norm"](obj, params)
    np.testing.assert_allclose(emp.value, np.mean((2 * r * f) ** 2), rtol=EXACT_RTOL)
    # Gaussian likelihood with variance D/2 = 1/2: F = 2 E[x̃x̃ᵀ] = H.
    flat = np.asarray(ravel_pytree(params)[0])
    true = MEASURES["fisher_rao_norm"](obj, params, fisher="true")
    np.testing.assert_allclose(true.value, flat @ h @ flat, rtol=EXACT_RTOL)


@pytest.fixture(scope="module")
def relu_net():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = rng.integers(0, 2, size=40).astype(np.int32)
    ds = ArrayData(x, y, x[:20] + 0.3, y[::-1][:20].copy(), "classification", 2)
    obj = Objective(models.create("mlp", input_shape=(3,), output_dim=2, widths=(4,), seed=1), "cross_entropy", ds,
                    dtype=jnp.float64)
    return obj, obj.params


def test_path_norm_and_spectral_product_closed_forms(relu_net):
    obj, params = relu_net
    w1, b1 = np.asarray(params["layers"][0]["kernel"]), np.asarray(params["layers"][0]["bias"])
    w2, b2 = np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])
    paths = np.sum((np.ones(3) @ w1**2 + b1**2) @ w2**2 + b2**2)
    np.testing.assert_allclose(MEASURES["path_norm"](obj, params).value, np.sqrt(paths), rtol=EXACT_RTOL)
    spec = np.log(np.linalg.norm(w1, 2)) + np.log(np.linalg.norm(w2, 2))
    np.testing.assert_allclose(MEASURES["spectral_product"](obj, params).value, spec, rtol=EXACT_RTOL)
    np.testing.assert_allclose(sharpness.spectral_product(obj, params, log=False).value, np.exp(spec), rtol=EXACT_RTOL)


def test_norms_and_gaps(relu_net):
    obj, params = relu_net
    flat = np.asarray(ravel_pytree(params)[0])
    np.testing.assert_allclose(MEASURES["l2_norm"](obj, params).value, np.linalg.norm(flat), rtol=EXACT_RTOL)
    moved = jax.tree.map(lambda v: v + 0.5, params)
    dist = MEASURES["distance_from_init"](obj, moved, init_params=params).value
    np.testing.assert_allclose(dist, 0.5 * math.sqrt(flat.size), rtol=EXACT_RTOL)
    train, test = obj.evaluate(params, "train"), obj.evaluate(params, "test")
    gap = MEASURES["gap_error"](obj, params)
    assert gap.value == pytest.approx(float(test["error"] - train["error"]))
    assert MEASURES["gap_loss"](obj, params).value == pytest.approx(float(test["loss"] - train["loss"]))


def test_pacbayes_error_metric_on_classification(relu_net):
    obj, params = relu_net
    # A net that classifies y = [x_0 > 0] perfectly: hidden units relu(±x_0), logits ±5(h_0 − h_1).
    w1 = np.zeros((3, 4))
    w1[0, 0], w1[0, 1] = 1.0, -1.0
    w2 = np.zeros((4, 2))
    w2[0], w2[1] = [-5.0, 5.0], [5.0, -5.0]
    fitted = {"layers": {0: {"kernel": jnp.asarray(w1), "bias": jnp.zeros(4)}},
              "head": {"kernel": jnp.asarray(w2), "bias": jnp.zeros(2)}}
    x = obj.batch("train")[0]
    obj = obj.replace(data={**obj.data, "train": (x, (x[:, 0] > 0).astype(jnp.int32))})
    assert float(obj.accuracy(fitted)) == 1.0
    res = MEASURES["pacbayes_flatness"](obj, fitted, jax.random.key(9), num_samples=8, num_bisections=12)
    assert res.info["metric"] == "error" and res.info["hit_bound"] is None
    assert 0 < res.info["deviation"] <= 0.1
    # Doubling every weight makes the same classifier more robust to isotropic noise: flatter.
    doubled = jax.tree.map(lambda v: 2 * v, fitted)
    res2 = MEASURES["pacbayes_flatness"](obj, doubled, jax.random.key(9), num_samples=8, num_bisections=12)
    assert res2.value < res.value


def test_every_measure_runs_and_repeats_without_recompiling(relu_net):
    obj, params = relu_net
    key = jax.random.key(10)
    opts = {"distance_from_init": {"init_params": jax.tree.map(jnp.zeros_like, params)},
            "m_sharpness": {"m": 10}, "pacbayes_flatness": {"num_bisections": 4, "num_samples": 4},
            "pacbayes_flatness_mag": {"num_bisections": 4, "num_samples": 4}, "data_hessian_trace": {"num_probes": 4}}
    first = {name: m(obj, params, key, **opts.get(name, {})) for name, m in MEASURES.items()}
    for name in MEASURES:
        assert np.isfinite(first[name].value), name
    sizes = sharpness._worst_case_kernel._cache_size()
    for name in ("sharpness_l2", "m_sharpness", "average_sharpness_mag", "data_hessian_trace", "gap_error"):
        assert MEASURES[name](obj, params, key, **opts.get(name, {})).value == first[name].value, name
    # A different radius is a traced argument: no new compilation.
    MEASURES["sharpness_l2"](obj, params, key, rho=0.123)
    assert sharpness._worst_case_kernel._cache_size() == sizes


def test_bigger_radius_is_sharper(relu_net):
    obj, params = relu_net
    key = jax.random.key(11)
    small = MEASURES["sharpness_l2"](obj, params, key, rho=0.01).value
    big = MEASURES["sharpness_l2"](obj, params, key, rho=0.1).value
    assert 0 < small < big


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("sharpness_l2", {"rho": 0.0}, "rho must be a finite number > 0, got 0.0"),
        ("sharpness_l2", {"rho": -1.0}, "rho must be"),
        ("sharpness_linf", {"rho": float("nan")}, "rho must be"),
        ("adaptive_sharpness_l2", {"eta": -0.1}, "eta must be"),
        ("m_sharpness", {"m": 0}, "m must be an integer >= 1"),
        ("m_sharpness", {"m": 1000}, "exceeds the 40 examples"),
        ("sharpness_l2", {"num_steps": 0}, "num_steps must be"),
        ("epsilon_sharpness", {"epsilon": 0}, "epsilon must be"),
        ("average_sharpness", {"sigma": -0.01}, "sigma must be"),
        ("pacbayes_flatness", {"target": 0}, "target must be"),
        ("pacbayes_flatness", {"metric": "accuracy"}, "metric must be one of"),
        ("fisher_rao_norm", {"fisher": "exact"}, "fisher must be one of"),
        ("distance_from_init", {}, "needs init_params"),
        ("sharpness_l2", {"radius": 0.1}, "bad option for measure 'sharpness_l2'"),
        ("sharpness_l2", {"norm": "linf"}, "fixed by this measure"),
    ],
)
def test_bad_options_raise_clear_errors(relu_net, name, options, match):
    obj, params = relu_net
    with pytest.raises(ValueError, match=match):
        sharpness.compute(name, obj, params, jax.random.key(0), **options)


def test_unknown_measure_and_missing_key(relu_net):
    obj, params = relu_net
    with pytest.raises(ValueError, match="unknown measure 'sharpnes'; valid measure names: .*hessian_trace"):
        sharpness.compute("sharpnes", obj, params)
    with pytest.raises(ValueError, match="stochastic and needs a PRNG key"):
        sharpness.compute("sharpness_l2", obj, params)


def test_true_fisher_rao_refuses_non_likelihood_loss(relu_net):
    obj, params = relu_net
    with pytest.raises(ValueError, match="no Fisher information"):
        sharpness.fisher_rao_norm(obj.replace(loss_fn="focal"), params, fisher="true")
    assert np.isfinite(sharpness.fisher_rao_norm(obj.replace(loss_fn="focal"), params).value)
