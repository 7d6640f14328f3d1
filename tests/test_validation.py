"""Bad input gets one clear error before any compute: batches, params pytrees, keys."""

import jax
import numpy as np
import pytest

import losslab as ll


@pytest.fixture(scope="module")
def obj():
    ds = ll.data.load("gaussian_mixture", num_train=64, num_test=16, num_classes=3, seed=0)
    model = ll.models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(8,), seed=0)
    return ll.Objective(model, "cross_entropy", ds)


def test_batch_arguments_are_validated_everywhere(obj):
    x, y = obj.batch()
    calls = {
        "loss": lambda b: obj.loss(obj.params, b),
        "accuracy": lambda b: obj.accuracy(obj.params, b),
        "trace": lambda b: ll.curvature.hessian_trace(obj, batch=b, exact=True),
        "eigenvalues": lambda b: ll.curvature.hessian_eigenvalues(obj, batch=b),
        "density": lambda b: ll.curvature.hessian_density(obj, batch=b),
        "backprop": lambda b: ll.curvature.exact_trace(obj, batch=b),
        "operator": lambda b: ll.curvature.hessian_operator(obj, batch=b),
        "measure": lambda b: ll.sharpness.compute("data_hessian_trace", obj, obj.params, jax.random.key(0), batch=b),
    }
    bad = {
        r"labels must lie in \[0, 3\), found range \[5, 7\]": (x, y + 5),
        r"inputs have per-example shape \(1,\) but the model takes \(2,\)": (x[:, :1], y),
        r"classification targets must be integer labels of shape \(n,\), got float32": (x, y.astype(np.float32)),
        "64 inputs but targets of shape": (x, y[:3]),
        "must be an \\(x, y\\) pair": x,
        "is empty": (x[:0], y[:0]),
    }
    for what, call in calls.items():
        for message, batch in bad.items():
            with pytest.raises(ValueError, match=message):
                call(batch)
            assert what  # every call site refuses every bad batch


def test_params_pytrees_are_checked_against_the_model(obj):
    missing = {"layers": obj.params["layers"]}
    with pytest.raises(ValueError, match=r"missing \['head/bias', 'head/kernel'\]"):
        ll.curvature.hessian_trace(obj, missing)
    narrow = jax.tree.map(lambda a: a[..., :1], obj.params)
    with pytest.raises(ValueError, match=r"params leaf 'head/bias' has shape \(1,\), expected \(3,\)"):
        ll.curvature.hessian_eigenvalues(obj, narrow)
    with pytest.raises(ValueError, match="params leaf 'head/bias' has shape"):
        ll.train.train(obj, narrow, epochs=1)
    with pytest.raises(ValueError, match="params leaf 'head/bias' has shape"):
        ll.curvature.exact_trace(obj, narrow)


def test_keys_ints_are_seeds_anything_else_is_named(obj):
    a = ll.curvature.hessian_trace(obj, obj.params, 3, num_matvecs=8)
    b = ll.curvature.hessian_trace(obj, obj.params, jax.random.key(3), num_matvecs=8)
    assert a.value == b.value
    with pytest.raises(ValueError, match="key must be a jax.random.key"):
        ll.curvature.hessian_trace(obj, obj.params, "abc")
    with pytest.raises(ValueError, match="key must be a jax.random.key"):
        ll.curvature.hessian_eigenvalues(obj, obj.params, 1.5)
