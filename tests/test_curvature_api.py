"""Notebook one-liners, in-training probes and the density plot."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from losslab import Objective, models, train
from losslab import curvature as cv
from losslab import probes as probes_lib
from losslab.plot.spectrum import density as plot_density

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)

# Lanczos with k = n is exact up to round-off; 1e-4 relative is the eigen tolerance.
EIG_RTOL = 1e-4
NUM_SE = 4.0


class Toy:
    def __init__(self, n=48, d=4, c=3, seed=0):
        rng = np.random.default_rng(seed)
        self.x_train, self.y_train = rng.normal(size=(n, d)), rng.integers(0, c, n)
        self.x_val = self.y_val = self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = "classification", c, "toy"


@pytest.fixture(scope="module")
def obj():
    model = models.create("mlp", input_shape=(4,), output_dim=3, widths=(6,), activation="tanh", seed=1)
    return Objective(model, "cross_entropy", Toy(), chunk_size=16, dtype=jnp.float64)


@pytest.fixture(scope="module")
def exact(obj):
    flat, unravel = ravel_pytree(obj.params)
    return np.linalg.eigvalsh(np.asarray(jax.hessian(lambda f: obj.loss(unravel(f)))(flat)))


def test_hessian_trace_one_liner(obj, exact):
    est = cv.hessian_trace(obj, obj.params, jax.random.key(0), method="hutchinson", num_matvecs=200)
    assert abs(est.value - exact.sum()) < NUM_SE * est.std_error
    assert est.num_matvecs == 200 and est.compiled
    text = str(est)
    assert "Hessian trace" in text and "±" in text and "200 matvecs" in text and "\n" not in text
    assert repr(est).startswith("TraceEstimate(trace=") and "200 matvecs" in repr(est)
    assert est._repr_markdown_().startswith("**Hessian trace**")
    again = cv.hessian_trace(
        obj, jax.tree.map(lambda a: a * 1.01, obj.params), jax.random.key(1), method="hutchinson", num_matvecs=200
    )
    assert not again.compiled, "a second call with the same shapes must not recompile"
    ex = cv.hessian_trace(obj, exact=True)
    assert ex.value == pytest.approx(exact.sum(), rel=1e-8) and ex.std_error == 0.0
    pp = cv.hessian_trace(obj)  # default Hutch++
    assert abs(pp.value - exact.sum()) < NUM_SE * pp.std_error + 1e-9


def test_hessian_eigenvalues_one_liner(obj, exact):
    top = cv.hessian_eigenvalues(obj, k=2, num_steps=obj.num_params)
    np.testing.assert_allclose(top.eigenvalues, exact[::-1][:2], rtol=EIG_RTOL)
    assert "λ" in str(top) and "lanczos" in str(top)
    assert repr(top).startswith("EigenvalueEstimate(top-2 λ=[") and "\n" not in repr(top)
    assert top._repr_markdown_().count("\n| ") == 3  # header + one row per eigenvalue
    bottom = cv.hessian_eigenvalues(obj, k=1, which="smallest", exact=True)
    np.testing.assert_allclose(bottom.eigenvalues, exact[:1], rtol=1e-8)
    direction = top.direction(0)
    assert jax.tree.structure(direction) == jax.tree.structure(obj.params)
    np.testing.assert_allclose(ravel_pytree(direction)[0], top.eigenvectors[0])
    power = cv.hessian_eigenvalues(obj, method="power", num_steps=3000)
    np.testing.assert_allclose(power.eigenvalues[0], np.abs(exact).max(), rtol=1e-3)
    with pytest.raises(ValueError, match="which must be one of"):
        cv.hessian_eigenvalues(obj, which="middle")


def test_hessian_density_one_liner_and_plot(obj, exact):
    dens = cv.hessian_density(obj, num_steps=obj.num_params, num_probes=2)
    np.testing.assert_allclose(np.trapezoid(dens.density, dens.grid), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sort(dens.result.nodes[0]), exact, atol=1e-8)
    assert "spectral density" in str(dens) and "negative fraction" in str(dens)
    assert repr(dens).startswith("DensityEstimate(λ ∈ [") and "\n" not in repr(dens)
    ggn = cv.hessian_density(obj, operator="ggn", exact=True)
    assert float(ggn.result.negative_mass) < 1e-12  # PSD: "negative" eigenvalues are round-off zeros only
    fig = plot_density(dens, label="Hessian")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_legend() is not None
    import matplotlib.pyplot as plt

    fig2, ax2 = plt.subplots()
    assert plot_density(dens, ax=ax2) is fig2
    plt.close("all")


def test_api_validates_eagerly(obj):
    with pytest.raises(ValueError, match="method must be one of"):
        cv.hessian_trace(obj, method="magic")
    with pytest.raises(ValueError, match="operator must be one of"):
        cv.hessian_trace(obj, operator="jacobian")
    with pytest.raises(ValueError, match="k must be in"):
        cv.hessian_eigenvalues(obj, k=10_000)


@pytest.mark.slow
def test_probes_run_inside_training(obj):
    probes = {
        "lambda_max": probes_lib.lambda_max_probe(num_steps=6, full_batch=True),
        "lambda_max_power": probes_lib.lambda_max_probe(num_steps=6, method="power", full_batch=True),
        "trace": probes_lib.trace_probe(num_probes=8, full_batch=True, with_std_error=True),
        "grad_norm": probes_lib.grad_norm_probe(),
    }
    result = train.train(
        obj, optimizer="sgd", learning_rate=0.05, batch_size=16, epochs=2, key=0, probes=probes, probe_every=3
    )
    hist = result.history.probes
    assert hist["lambda_max"]["step"] == [3, 6]
    assert set(hist) == {"lambda_max", "lambda_max_power", "trace/value", "trace/std_error", "grad_norm"}
    # Warm-started Lanczos with 6 steps tracks λ_max of the final full-batch Hessian closely.
    final = cv.hessian_eigenvalues(obj, result.params, exact=True).eigenvalues[0]
    assert abs(hist["lambda_max"]["value"][-1] - final) < 0.05 * abs(final)
    assert all(np.isfinite(hist["trace/value"]["value"]))
