"""Streamed data: every full-data quantity equals the in-memory one (float64), memory bounded by a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import losslab as ll
from losslab import curvature, stream

EXACT = 1e-12  # float64, only the summation order differs


pytestmark = pytest.mark.usefixtures("x64_module")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = ll.data.load("gaussian_mixture", num_train=203, num_test=20, num_classes=3, seed=0, std=0.6)
    folder = tmp_path_factory.mktemp("memmap")
    xm = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=ds.x_train.shape)
    ym = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.int32, shape=ds.y_train.shape)
    xm[:], ym[:] = ds.x_train, ds.y_train
    xm.flush(), ym.flush()
    xm = np.load(folder / "x.npy", mmap_mode="r")
    ym = np.load(folder / "y.npy", mmap_mode="r")
    model = ll.models.create("mlp", input_shape=ds.input_shape, output_dim=3, widths=(6,), activation="tanh", seed=0)
    memory = ll.Objective(model, "cross_entropy", ds, dtype=jnp.float64, chunk_size=64)
    from_disk = stream.from_arrays(xm, ym, batch_size=50, num_classes=3, name="disk")  # 203 = 4 x 50 + 3

    def factory():
        for i in range(0, 203, 64):
            yield ds.x_train[i:i + 64], ds.y_train[i:i + 64]

    from_gen = stream.from_batches(factory, num_classes=3, name="generator")
    grain = pytest.importorskip("grain")
    loader = grain.MapDataset.source(list(zip(ds.x_train, ds.y_train))).batch(40)  # re-iterable (x, y) batches
    from_grain = stream.from_batches(loader, num_classes=3, name="grain")
    streamed = [ll.Objective(model, "cross_entropy", s, dtype=jnp.float64) for s in (from_disk, from_gen, from_grain)]
    return memory, streamed


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=EXACT, atol=EXACT)


def test_loss_gradient_and_every_operator_equal_in_memory(setup):
    memory, streamed = setup
    p = memory.params
    v = jax.random.normal(jax.random.key(0), (memory.num_params,), jnp.float64)
    key = jax.random.key(1)
    ref = {
        "loss": memory.loss(p), "grad": jax.flatten_util.ravel_pytree(jax.grad(memory.loss)(p))[0],
        "accuracy": memory.accuracy(p),
        **{name: curvature.make_operator(name, memory, p, key=key).matvec(v)
           for name in ("hessian", "ggn", "fisher", "empirical_fisher", "mc_fisher")},
    }
    for obj in streamed:
        assert obj.num_examples() == 203
        close(obj.loss(p), ref["loss"])
        close(obj.accuracy(p), ref["accuracy"])
        close(jax.flatten_util.ravel_pytree(jax.jit(jax.grad(obj.loss))(p))[0], ref["grad"])
        for name in ("hessian", "ggn", "fisher", "empirical_fisher", "mc_fisher"):
            close(curvature.make_operator(name, obj, p, key=key).matvec(v), ref[name])


def test_algorithms_one_liners_and_surfaces_equal_in_memory(setup):
    memory, streamed = setup
    key = jax.random.key(2)
    d1, d2 = ll.directions.random_plane(memory.params, key)
    ref_trace = curvature.hessian_trace(memory, key=key, method="hutchinson", num_matvecs=20).value
    ref_eig = curvature.hessian_eigenvalues(memory, key=key, k=2, num_steps=20).eigenvalues
    ref_diag = curvature.exact_diagonal(memory, operator="ggn").estimate
    ref_plane = ll.surface.plane(memory, memory.params, d1, d2, num_points=3, metrics=("train_loss",)).values["train_loss"]
    for obj in streamed[:1]:  # the memmap stream (the operators test covers the other readers)
        close(curvature.hessian_trace(obj, key=key, method="hutchinson", num_matvecs=20).value, ref_trace)
        close(curvature.hessian_eigenvalues(obj, key=key, k=2, num_steps=20).eigenvalues, ref_eig)
        close(curvature.exact_diagonal(obj, operator="ggn").estimate, ref_diag)
        plane = ll.surface.plane(obj, obj.params, d1, d2, num_points=3, metrics=("train_loss",)).values["train_loss"]
        close(plane, ref_plane)


def test_stream_errors_are_clear(setup, tmp_path):
    memory, streamed = setup
    x, y = np.zeros((10, 2), np.float32), np.arange(10) % 3
    with pytest.raises(ValueError, match=r"batch 1: labels must lie in \[0, 3\), found range \[0, 7\]"):
        stream.from_arrays(x, np.where(np.arange(10) == 7, 7, y), batch_size=5, num_classes=3)
    with pytest.raises(ValueError, match="batch 0: inputs contain NaN"):
        stream.from_arrays(np.full((4, 2), np.nan, np.float32), y[:4], batch_size=2, num_classes=3)
    with pytest.raises(ValueError, match="must yield \\(x, y\\) pairs"):
        stream.from_batches(lambda: iter([x]), num_classes=3)
    with pytest.raises(ValueError, match="only the last may be smaller"):
        stream.from_batches(lambda: iter([(x[:3], y[:3]), (x[:5], y[:5]), (x[:5], y[:5])]), num_classes=3)
    with pytest.raises(ValueError, match="no batches"):
        stream.from_batches(lambda: iter([]), num_classes=3)
    with pytest.raises(ValueError, match="train\\(\\) shuffles in-memory training data"):
        ll.train.train(streamed[0], epochs=1)
    with pytest.raises(ValueError, match="per_example_loss needs an in-memory batch"):
        streamed[0].per_example_loss(streamed[0].params)
    with pytest.raises(TypeError, match="a Stream is not an \\(x, y\\) pair"):
        x_, y_ = streamed[0].batch("train")
