"""Function-preserving rescalings: outputs unchanged, curvature changes, invariant measures do not."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, models, symmetry
from losslab.sharpness import LAYER_RESCALING, MEASURES, NODE_RESCALING

jax.config.update("jax_enable_x64", True)

# Rescaled outputs agree to float64 round-off.
OUTPUT_RTOL = 1e-9
# A measure "changed" when it moved by more than this (invariant ones move only by round-off).
CHANGE_RTOL = 1e-5
# Eval-mode BatchNorm is invariant only up to its epsilon (1e-5) relative to unit-scale variances.
BN_ATOL = 1e-4


@dataclasses.dataclass
class ArrayData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "classification"
    num_classes: int = 3
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    name: str = "toy"


def make(model_name, **opts):
    rng = np.random.default_rng(0)
    shape = (12,) if model_name == "cnn1d" else (4,)
    x = rng.normal(size=(48, *shape))
    y = rng.integers(0, 3, size=48).astype(np.int32)
    ds = ArrayData(x[:32], y[:32], x[32:], y[32:])
    model = models.create(model_name, input_shape=shape, output_dim=3, seed=2, **opts)
    return Objective(model, "cross_entropy", ds, dtype=jnp.float64)


@pytest.fixture(scope="module")
def mlp():
    return make("mlp", widths=(6, 5))


@pytest.fixture(scope="module")
def cnn():
    return make("cnn1d", channels=(3, 4), kernel_size=3, hidden=5)


def test_layer_paths_are_in_forward_order(mlp, cnn):
    assert symmetry.layer_paths(mlp.params) == [("layers", 0), ("layers", 1), ("head",)]
    assert symmetry.layer_paths(cnn.params) == [("convs", 0), ("convs", 1), ("fc",), ("head",)]


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("node_wise", [False, True])
def test_rescaling_preserves_outputs_and_moves_params(request, which, node_wise):
    obj = request.getfixturevalue(which)
    new = symmetry.random_rescaling(obj.params, jax.random.key(0), node_wise=node_wise)
    x = obj.batch("test")[0]
    np.testing.assert_allclose(obj.outputs(new, x), obj.outputs(obj.params, x), rtol=OUTPUT_RTOL, atol=1e-12)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(obj.params)))
    assert moved > 0.05


def test_single_layer_rescale_is_exactly_alpha(mlp):
    new = symmetry.rescale(mlp.params, 1, 4.0)
    np.testing.assert_allclose(new["layers"][1]["kernel"], 4.0 * mlp.params["layers"][1]["kernel"])
    np.testing.assert_allclose(new["layers"][1]["bias"], 4.0 * mlp.params["layers"][1]["bias"])
    np.testing.assert_allclose(new["head"]["kernel"], mlp.params["head"]["kernel"] / 4.0)
    np.testing.assert_array_equal(new["head"]["bias"], mlp.params["head"]["bias"])
    np.testing.assert_array_equal(new["layers"][0]["kernel"], mlp.params["layers"][0]["kernel"])


INVARIANCE_OPTIONS = {
    "data_hessian_trace": {"num_probes": 4},
    "pacbayes_flatness": {"num_samples": 4, "num_bisections": 6},
    "pacbayes_flatness_mag": {"num_samples": 4, "num_bisections": 6},
    "m_sharpness": {"m": 8},
}


@pytest.mark.parametrize("sym", [LAYER_RESCALING, NODE_RESCALING])
def test_invariant_measures_do_not_change_and_curvature_does(mlp, sym):
    params = mlp.params
    if sym == LAYER_RESCALING:
        new = symmetry.rescale(params, 0, 5.0)
    else:
        new = symmetry.random_rescaling(params, jax.random.key(1), node_wise=True, log_std=0.7)
    names = [n for n in MEASURES if n != "distance_from_init"]  # needs θ₀, not a property of θ
    opts = {k: v for k, v in INVARIANCE_OPTIONS.items() if v}
    report = symmetry.compare_measures(
        mlp, params, new, jax.random.key(3), symmetry=sym, names=names, options=opts, rtol=CHANGE_RTOL
    )
    for name, r in report.items():
        assert r.consistent, (name, r)
    assert report["data_hessian_trace"].changed and report["data_hessian_lambda_max"].changed
    assert report["data_hessian_lambda_max"].relative_change > 0.1
    assert report["sharpness_l2"].changed and report["l2_norm"].changed
    declared = {n for n, r in report.items() if r.declared_invariant}
    assert {"adaptive_sharpness_l2", "adaptive_sharpness_linf", "path_norm", "fisher_rao_norm", "gap_error"} <= declared
    assert ("spectral_product" in declared) == (sym == LAYER_RESCALING)
    if sym == NODE_RESCALING:
        assert report["spectral_product"].changed


def test_batchnorm_rescale_preserves_eval_outputs():
    obj = make("mlp", widths=(6,), batch_norm=True)
    # Non-trivial running statistics, as after training.
    state = jax.tree.map(lambda v: v + 0.3, obj.state)
    obj = obj.replace(state=state)
    new_params, new_state = symmetry.rescale_before_batchnorm(obj.params, obj.state, 0, 10.0)
    x = obj.batch("test")[0]
    out = obj.replace(state=new_state).outputs(new_params, x)
    np.testing.assert_allclose(out, obj.outputs(obj.params, x), atol=BN_ATOL)
    np.testing.assert_allclose(new_state["norms"][0]["var"], 100.0 * state["norms"][0]["var"])
    with pytest.raises(ValueError, match="feeds a BatchNorm"):
        symmetry.rescale(obj.params, 0, 2.0)
    with pytest.raises(ValueError, match="not followed by a BatchNorm"):
        symmetry.rescale_before_batchnorm(obj.params, obj.state, 1, 2.0)


def test_bad_rescalings_raise(mlp):
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        symmetry.rescale(mlp.params, 0, -1.0)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        symmetry.rescale(mlp.params, 0, np.array([1, 1, 0, 1, 1, 1.0]))
    with pytest.raises(ValueError, match="one per unit"):
        symmetry.rescale(mlp.params, 0, np.ones(3))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\]"):
        symmetry.rescale(mlp.params, 2, 2.0)
    resnet = models.create("resnet", input_shape=(12,), output_dim=3, widths=(4,))
    from flax import nnx

    params = nnx.split(resnet, nnx.Param, ...)[1].to_pure_dict()
    with pytest.raises(ValueError, match="residual networks"):
        symmetry.layer_paths(params)
