"""The Objective: exact chunked means, eval mode, validation of inputs, pytree behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import Objective, data, losses, models
from losslab.objective import chunked_sum

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def mixture():
    return data.load("gaussian_mixture", num_train=203, num_test=50, num_classes=3, seed=1)


def mlp(ds, **kw):
    return models.create("mlp", input_shape=ds.input_shape, output_dim=ds.output_dim, widths=(8,), seed=0, **kw)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 203, 1000])
def test_full_loss_is_exact_mean_of_per_example_losses(mixture, chunk_size):
    obj = Objective(mlp(mixture), "cross_entropy", mixture, chunk_size=chunk_size, dtype=jnp.float64)
    per_example = obj.per_example_loss(obj.params)
    assert per_example.shape == (obj.num_examples(),)
    np.testing.assert_allclose(obj.loss(obj.params), jnp.mean(per_example), rtol=1e-12)
    acc = np.mean(np.argmax(obj.outputs(obj.params, obj.batch()[0]), -1) == mixture.y_train)
    np.testing.assert_allclose(obj.accuracy(obj.params), acc, rtol=1e-7)


def test_chunked_sum_weights_padding():
    x = jnp.arange(10.0)[:, None]
    y = jnp.zeros((10,), jnp.int32)
    total = chunked_sum(lambda rows, w: jnp.sum(w * rows[0][:, 0]), (x, y), chunk_size=4)
    assert float(total) == 45.0


def test_regularizer_in_objective_not_in_metrics(mixture):
    reg = losses.l2(0.1)
    obj = Objective(mlp(mixture), "cross_entropy", mixture, regularizers=[reg], dtype=jnp.float64)
    np.testing.assert_allclose(obj.loss(obj.params) - obj.data_loss(obj.params), reg(obj.params), rtol=1e-10)
    np.testing.assert_allclose(obj.evaluate(obj.params, "train")["loss"], obj.data_loss(obj.params), rtol=1e-12)


def test_eval_mode_ignores_dropout_and_uses_running_stats(mixture):
    obj = Objective(mlp(mixture, dropout=0.5, batch_norm=True), "cross_entropy", mixture)
    a = obj.loss(obj.params)
    b = obj.loss(obj.params)
    assert float(a) == float(b)
    loss_train, new_state = obj.train_loss(obj.params, obj.state, obj.batch(), jax.random.key(0))
    assert jax.tree.structure(new_state) == jax.tree.structure(obj.state)
    changed = jax.tree.map(lambda u, v: bool(jnp.any(u != v)), new_state, obj.state)
    assert any(jax.tree.leaves(changed)), "train mode must update BatchNorm statistics"
    # Eval with the old statistics is unchanged by a train-mode call.
    assert float(obj.loss(obj.params)) == float(a)


def test_objective_is_a_pytree_argument_no_recompile(mixture):
    obj = Objective(mlp(mixture), "cross_entropy", mixture)
    traces = []

    @jax.jit
    def f(o, p):
        traces.append(1)
        return o.loss(p)

    f(obj, obj.params)
    p2 = jax.tree.map(lambda a: a * 1.1, obj.params)
    f(obj, p2)
    assert len(traces) == 1


def test_evaluate_splits(mixture):
    obj = Objective(mlp(mixture), "cross_entropy", mixture)
    for split in ("train", "val", "test"):
        out = obj.evaluate(obj.params, split)
        assert set(out) == {"loss", "accuracy", "error"}
        assert 0.0 <= float(out["accuracy"]) <= 1.0
    with pytest.raises(ValueError, match="unknown or empty split"):
        obj.evaluate(obj.params, "holdout")


def test_regression_objective():
    ds = data.load("teacher", num_train=64, num_test=32, input_dim=3, output_dim=2)
    m = models.create("mlp", input_shape=ds.input_shape, output_dim=2, widths=(4,))
    obj = Objective(m, "mse", ds)
    assert np.isnan(float(obj.accuracy(obj.params)))
    with pytest.raises(ValueError, match="does not apply to a regression task"):
        Objective(m, "cross_entropy", ds)


def test_model_output_width_mismatch(mixture):
    wrong = models.create("mlp", input_shape=mixture.input_shape, output_dim=5, widths=(4,))
    with pytest.raises(ValueError, match=r"outputs shape \(5,\).*needs \(3,\)"):
        Objective(wrong, "cross_entropy", mixture)


def test_input_shape_mismatch(mixture):
    wrong = models.create("mlp", input_shape=(7,), output_dim=3, widths=(4,))
    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        Objective(wrong, "cross_entropy", mixture)


class _Raw:
    """A duck-typed dataset that skipped Dataset validation, to test the Objective's own checks."""

    def __init__(self, y_train):
        self.x_train = np.zeros((len(y_train), 2), np.float32)
        self.y_train = np.asarray(y_train)
        self.x_val = self.y_val = None
        self.x_test = self.y_test = None
        self.task, self.num_classes, self.name = "classification", 3, "raw"


def test_bad_labels_caught_at_construction():
    m = models.create("mlp", input_shape=(2,), output_dim=3, widths=(4,))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        Objective(m, "cross_entropy", _Raw(np.array([0, 1, 3], np.int32)))
    with pytest.raises(ValueError, match="integer labels"):
        Objective(m, "cross_entropy", _Raw(np.array([0.0, 1.0, 2.0])))


def test_unknown_names():
    with pytest.raises(ValueError, match="valid model names: .*mlp"):
        models.create("transformer", input_shape=(2,), output_dim=2)
    with pytest.raises(ValueError, match="valid activation names"):
        models.create("mlp", input_shape=(2,), output_dim=2, activation="swishy")


@pytest.mark.parametrize(
    "name,shape,kw",
    [
        ("mlp", (40,), {"widths": (8, 8), "dropout": 0.1, "batch_norm": True}),
        ("mlp", (6,), {"widths": (5, 5), "residual": True}),
        ("cnn1d", (40,), {"channels": (4, 4), "hidden": 8}),
        ("cnn2d", (8, 8, 1), {"channels": (4,), "hidden": 8, "batch_norm": True}),
        ("resnet", (16,), {"widths": (4, 8)}),
        ("plain", (8, 8, 3), {"widths": (4,), "batch_norm": True}),
    ],
)
def test_models_shapes_and_modes(name, shape, kw):
    m = models.create(name, input_shape=shape, output_dim=3, **kw)
    x = jnp.ones((5, *shape), jnp.float32)  # the models are float32 (other modules enable x64)
    assert m(x).shape == (5, 3)
    assert m(x, train=True, key=jax.random.key(0)).shape == (5, 3)


def test_resnet_and_plain_twin_have_identical_parameter_shapes():
    r = models.create("resnet", input_shape=(16,), output_dim=3, widths=(4, 8), blocks_per_stage=2)
    p = models.create("plain", input_shape=(16,), output_dim=3, widths=(4, 8), blocks_per_stage=2)
    from flax import nnx

    shapes = lambda m: jax.tree.map(jnp.shape, nnx.split(m, nnx.Param, ...)[1].to_pure_dict())
    assert shapes(r) == shapes(p)
    x = jax.random.normal(jax.random.key(1), (2, 16))
    assert not np.allclose(r(x), p(x))


def test_dropout_needs_key_in_train_mode():
    m = models.create("mlp", input_shape=(3,), output_dim=2, widths=(4,), dropout=0.5)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        m(jnp.ones((2, 3)), train=True)


def test_a_plain_nnx_module_without_train_or_key_arguments_works():
    """Users' own modules with ``__call__(self, x)`` plug in unchanged (train and eval call it alike)."""
    from flax import nnx

    from losslab import data as data_lib

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.dense(x)

    ds = data_lib.load("digits", seed=0)
    obj = Objective(Net(nnx.Rngs(0)), "cross_entropy", ds)
    x, y = obj.batch("train")
    out = obj.outputs(obj.params, x[:5])
    assert out.shape == (5, 10)
    train_out, state = obj.apply(obj.params, x[:5], train=True, key=jax.random.key(0))
    np.testing.assert_allclose(train_out, out, rtol=1e-6)
    w, b = obj.params["dense"]["kernel"], obj.params["dense"]["bias"]
    np.testing.assert_allclose(out, x[:5] @ w + b, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(obj.loss(obj.params)))
