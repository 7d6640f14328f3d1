"""Function-preserving rescalings: outputs unchanged, curvature changes, invariant measures do not."""

import dataclasses

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, adapters, curvature, data, models, symmetry
from losslab.sharpness import LAYER_RESCALING, MEASURES, NODE_RESCALING
from losslab.symmetry import Layer

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


# --------------------------------------------------------------------------- layer specs: any model kind

# The frameworks' rescaled outputs agree to float64 round-off.
FRAMEWORK_RTOL = 1e-10
# A node-wise rescaling with log_std = 1 moves the Hessian trace by far more than this.
TRACE_MOVES = 0.05


def gaussian_mixture():
    return data.load("gaussian_mixture", num_train=64, num_test=16, num_classes=3, dim=4, seed=0)


def eqx_mlp():
    model = eqx.nn.MLP(4, 3, width_size=8, depth=2, activation=jax.nn.relu, key=jax.random.key(0))
    spec = [Layer(f"layers/{i}/weight", f"layers/{i}/bias", out_axis=0, in_axis=1) for i in range(3)]
    obj = Objective(adapters.equinox(model), "cross_entropy", gaussian_mixture(), dtype=jnp.float64)
    return obj, spec, dict(out_axis=0)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for width in (8, 8):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(3)(x)


def linen_mlp():
    module = LinenMLP()
    variables = module.init(jax.random.key(0), jnp.ones((1, 4)))
    spec = [Layer(f"Dense_{i}/kernel", f"Dense_{i}/bias") for i in range(3)]
    obj = Objective(adapters.linen(module, variables), "cross_entropy", gaussian_mixture(), dtype=jnp.float64)
    return obj, spec, {}


def haiku_mlp():
    transformed = hk.transform(lambda x: hk.nets.MLP([8, 8, 3])(x))
    params = transformed.init(jax.random.key(0), jnp.ones((1, 4)))
    spec = [Layer(f"mlp/~/linear_{i}/w", f"mlp/~/linear_{i}/b") for i in range(3)]
    obj = Objective(adapters.haiku(transformed, params), "cross_entropy", gaussian_mixture(), dtype=jnp.float64)
    return obj, spec, {}


FRAMEWORKS = {"equinox": eqx_mlp, "linen": linen_mlp, "haiku": haiku_mlp}


def fields(spec):
    """A spec without its flatten orders (moot without a convolution)."""
    return [(s.kernel, s.bias, s.out_axis, s.in_axis, s.norm) for s in spec]


def hessian_trace(obj, params):
    return float(jnp.trace(curvature.dense_hessian(obj, params)))


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_user_spec_rescaling_preserves_outputs_and_moves_the_trace(framework):
    obj, spec, dense_options = FRAMEWORKS[framework]()
    assert fields(symmetry.dense_spec(obj.params, **dense_options)) == fields(spec)
    assert symmetry.check_spec(obj.params, spec) == tuple(spec)
    new = symmetry.random_rescaling(obj.params, jax.random.key(0), node_wise=True, spec=spec)
    assert jax.tree.structure(new) == jax.tree.structure(obj.params)
    x = obj.batch("test")[0]
    np.testing.assert_allclose(obj.outputs(new, x), obj.outputs(obj.params, x), rtol=FRAMEWORK_RTOL, atol=1e-12)
    before, after = hessian_trace(obj, obj.params), hessian_trace(obj, new)
    assert abs(after - before) / before > TRACE_MOVES, (before, after)


def test_equinox_kernels_are_scaled_along_rows():
    obj, spec, _ = eqx_mlp()
    alpha = np.linspace(0.5, 4.0, 8)
    new = symmetry.rescale(obj.params, 0, alpha, spec=spec)
    old = obj.params
    np.testing.assert_allclose(new.layers[0].weight, alpha[:, None] * old.layers[0].weight)  # (out, in): rows
    np.testing.assert_allclose(new.layers[0].bias, alpha * old.layers[0].bias)
    np.testing.assert_allclose(new.layers[1].weight, old.layers[1].weight / alpha[None, :])  # inputs: columns
    np.testing.assert_array_equal(new.layers[1].bias, old.layers[1].bias)
    np.testing.assert_array_equal(new.layers[2].weight, old.layers[2].weight)


class EqxCNN(eqx.Module):
    """Conv1d (channels first, bias (out, 1)) -> relu -> flatten (C, L) -> Linear -> relu -> Linear."""

    conv: eqx.nn.Conv1d
    d1: eqx.nn.Linear
    d2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv1d(2, 3, 3, key=k1)
        self.d1 = eqx.nn.Linear(3 * 4, 5, key=k2)
        self.d2 = eqx.nn.Linear(5, 3, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv(x))
        return self.d2(jax.nn.relu(self.d1(h.reshape(-1))))


def test_equinox_conv_to_dense_boundary_repeats_alpha_channels_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 2, 6))
    y = rng.integers(0, 3, size=24).astype(np.int32)
    obj = Objective(
        adapters.equinox(EqxCNN(jax.random.key(1))),
        "cross_entropy",
        ArrayData(x[:16], y[:16], x[16:], y[16:]),
        dtype=jnp.float64,
    )
    assert obj.params.conv.bias.shape == (3, 1)
    spec = symmetry.dense_spec(obj.params, out_axis=0)
    assert spec == (
        Layer("conv/weight", "conv/bias", 0, 1, flatten="channels_first"),
        Layer("d1/weight", "d1/bias", 0, 1, flatten="channels_first"),
        Layer("d2/weight", "d2/bias", 0, 1, flatten="channels_first"),
    )
    xt = obj.batch("test")[0]
    new = symmetry.random_rescaling(obj.params, jax.random.key(2), spec=spec)
    np.testing.assert_allclose(obj.outputs(new, xt), obj.outputs(obj.params, xt), rtol=FRAMEWORK_RTOL, atol=1e-12)
    # The flattening order matters: the Flax order (tiled α) is not function-preserving here.
    wrong = [dataclasses.replace(s, flatten="channels_last") for s in spec]
    moved = symmetry.random_rescaling(obj.params, jax.random.key(2), spec=wrong)
    assert not np.allclose(obj.outputs(moved, xt), obj.outputs(obj.params, xt), rtol=1e-3)


def test_default_spec_is_the_losslab_layout(mlp, cnn):
    assert symmetry.default_spec(mlp.params) == (
        Layer("layers/0/kernel", "layers/0/bias"),
        Layer("layers/1/kernel", "layers/1/bias"),
        Layer("head/kernel", "head/bias"),
    )
    assert [s.kernel for s in symmetry.default_spec(cnn.params)] == [
        "convs/0/kernel",
        "convs/1/kernel",
        "fc/kernel",
        "head/kernel",
    ]
    spec = symmetry.default_spec(mlp.params)
    by_spec, by_default = symmetry.rescale(mlp.params, 0, 3.0, spec=spec), symmetry.rescale(mlp.params, 0, 3.0)
    for a, b in zip(jax.tree.leaves(by_spec), jax.tree.leaves(by_default)):
        np.testing.assert_array_equal(a, b)
    bn = make("mlp", widths=(6,), batch_norm=True)
    assert symmetry.default_spec(bn.params, bn.state)[0].norm == ("norms/0/mean", "norms/0/var")


def test_batchnorm_rescale_through_an_explicit_spec():
    obj = make("mlp", widths=(6,), batch_norm=True)
    obj = obj.replace(state=jax.tree.map(lambda v: v + 0.3, obj.state))
    spec = [
        Layer("layers/0/kernel", "layers/0/bias", norm=("norms/0/mean", "norms/0/var")),
        Layer("head/kernel", "head/bias"),
    ]
    new_params, new_state = symmetry.rescale_before_batchnorm(obj.params, obj.state, 0, 10.0, spec=spec)
    x = obj.batch("test")[0]
    np.testing.assert_allclose(
        obj.replace(state=new_state).outputs(new_params, x), obj.outputs(obj.params, x), atol=BN_ATOL
    )
    np.testing.assert_array_equal(new_params["norms"][0]["scale"], obj.params["norms"][0]["scale"])  # the norm's own
    with pytest.raises(ValueError, match=r"BatchNorm statistic 'norms/0/mu' is not a leaf path of the state"):
        symmetry.rescale_before_batchnorm(
            obj.params,
            obj.state,
            0,
            2.0,
            spec=[dataclasses.replace(spec[0], norm=("norms/0/mu", "norms/0/var")), spec[1]],
        )


def test_bad_specs_raise_naming_the_path():
    obj, spec, _ = eqx_mlp()
    params = obj.params
    with pytest.raises(
        ValueError,
        match=r"kernel 'layers/5/weight' is not a leaf path of the params; valid leaf paths: "
        r"'layers/0/weight', 'layers/0/bias'",
    ):
        symmetry.rescale(params, 0, 2.0, spec=[spec[0], Layer("layers/5/weight", out_axis=0, in_axis=1)])
    # Flax axes on equinox (out, in) kernels: caught where the fan-ins stop matching.
    flax_axes = [Layer(s.kernel) for s in spec]
    with pytest.raises(ValueError, match=r"kernel 'layers/2/weight' takes 3 inputs .* not a multiple of the 8 units"):
        symmetry.random_rescaling(params, jax.random.key(0), spec=flax_axes)
    with pytest.raises(ValueError, match=r"bias 'layers/2/bias' has shape \(3,\); expected 8 entries"):
        symmetry.rescale(params, 0, 2.0, spec=[dataclasses.replace(spec[0], bias="layers/2/bias"), *spec[1:]])
    with pytest.raises(ValueError, match=r"kernel 'layers/0/bias' has shape \(8,\); kernels have rank >= 2"):
        symmetry.check_spec(params, [Layer("layers/0/bias"), *spec[1:]])
    with pytest.raises(ValueError, match="same axis"):
        symmetry.check_spec(params, [Layer("layers/0/weight", out_axis=0, in_axis=-2), *spec[1:]])
    with pytest.raises(ValueError, match="out_axis=2 is out of range"):
        symmetry.check_spec(params, [Layer("layers/0/weight", out_axis=2, in_axis=1), *spec[1:]])
    with pytest.raises(ValueError, match="more than once"):
        symmetry.check_spec(params, [spec[0], spec[0]])
    with pytest.raises(ValueError, match="non-empty sequence"):
        symmetry.rescale(params, 0, 2.0, spec=spec[0])
    with pytest.raises(ValueError, match=r"Layer.flatten must be one of \('channels_last', 'channels_first'\)"):
        Layer("layers/0/weight", flatten="nchw")
    with pytest.raises(ValueError, match="pass spec="):
        symmetry.rescale(params, 0, 2.0)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\]"):
        symmetry.rescale(params, 2, 2.0, spec=spec)


def test_dense_spec_needs_forward_flatten_order(mlp):
    # losslab's own {"head", "layers"} flatten head first: the fan-in check catches the misorder.
    spec = symmetry.dense_spec(mlp.params)
    assert spec[0].kernel == "head/kernel"
    with pytest.raises(ValueError, match=r"'layers/0/kernel' takes 4 inputs .* forward order"):
        symmetry.random_rescaling(mlp.params, jax.random.key(0), spec=spec)
    with pytest.raises(ValueError, match="no leaf named one of"):
        symmetry.dense_spec(mlp.params, kernel_names=("w",))
