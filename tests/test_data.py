"""Tests for losslab.data: loaders, validation, local file formats, transforms, batches."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import data

# Bernoulli(rate) flips over n samples have std sqrt(rate (1 - rate) / n); with the
# sizes used below that is ~0.003, so 0.02 is > 6 standard deviations.
RATE_TOL = 0.02
# Train statistics after standardisation are exact up to float32 rounding.
STANDARDISE_TOL = 1e-4


def _tiny(**overrides) -> data.Dataset:
    """A valid 3-class dataset with 6/2/2 samples of 2 features."""
    rng = np.random.default_rng(0)
    fields = {
        "name": "tiny",
        "task": "classification",
        "num_classes": 3,
        "x_train": rng.normal(size=(6, 2)).astype(np.float32),
        "y_train": np.array([0, 1, 2, 0, 1, 2], np.int32),
        "x_val": rng.normal(size=(2, 2)).astype(np.float32),
        "y_val": np.array([0, 1], np.int32),
        "x_test": rng.normal(size=(2, 2)).astype(np.float32),
        "y_test": np.array([2, 1], np.int32),
    }
    fields.update(overrides)
    return data.Dataset(**fields)


# --------------------------------------------------------------------------- #
# Built-in datasets
# --------------------------------------------------------------------------- #

SMALL = {"num_train": 60, "num_test": 30}


@pytest.mark.parametrize(
    "name, options, task, input_shape, output_dim",
    [
        ("digits", {}, "classification", (64,), 10),
        ("teacher", dict(SMALL, input_dim=5, output_dim=3), "regression", (5,), 3),
        (
            "gaussian_mixture",
            dict(SMALL, num_classes=4, dim=3),
            "classification",
            (3,),
            4,
        ),
        ("spirals", dict(SMALL, num_classes=3), "classification", (2,), 3),
    ],
)
def test_builtin_shapes_and_dtypes(name, options, task, input_shape, output_dim):
    ds = data.load(name, seed=1, **options)
    assert ds.task == task
    assert ds.input_shape == input_shape
    assert ds.output_dim == output_dim
    for split in data.SPLITS:
        x, y = ds.split(split)
        assert x.dtype == np.float32 and x.shape[1:] == input_shape
        assert len(x) == len(y) > 0
        if task == "classification":
            assert y.dtype == np.int32 and y.shape == (len(x),)
            assert 0 <= y.min() and y.max() < ds.num_classes
        else:
            assert ds.num_classes is None
            assert y.dtype == np.float32 and y.shape == (len(x), output_dim)
    assert ds.info["dataset"] == name and ds.info["seed"] == 1


def test_synthetic_split_sizes_follow_val_fraction():
    ds = data.load("spirals", num_train=80, num_test=30, val_fraction=0.2)
    # validation is 20 % of train + validation: 80 / 0.8 * 0.2 = 20
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (80, 20, 30)
    ds = data.load("teacher", num_train=50, num_val=7, num_test=9)
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (50, 7, 9)


def test_same_seed_same_data_different_seed_different_data():
    a, b = (
        data.load("gaussian_mixture", seed=3, **SMALL),
        data.load("gaussian_mixture", seed=3, **SMALL),
    )
    c = data.load("gaussian_mixture", seed=4, **SMALL)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_digits_splits_and_train_statistics():
    ds = data.load("digits", seed=0)
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (1150, 288, 359)
    assert sorted(np.unique(ds.y_train)) == list(range(10))
    mean, std = ds.x_train.mean(axis=0), ds.x_train.std(axis=0)
    np.testing.assert_allclose(mean, 0.0, atol=STANDARDISE_TOL)
    varying = ds.info["std"] != 1.0  # constant border pixels are only centred
    assert varying.sum() > 50
    np.testing.assert_allclose(std[varying], 1.0, atol=STANDARDISE_TOL)
    # Test data are standardised with the train statistics, so are not exactly centred.
    assert np.abs(ds.x_test.mean(axis=0)).max() > 1e-2
    assert np.isfinite(ds.x_test).all()


def test_teacher_targets_are_teacher_plus_noise():
    ds = data.load("teacher", num_train=400, num_test=10, hidden=(8, 8), noise_std=0.0)
    h = ds.x_train.astype(np.float64)
    for i, (w, b) in enumerate(ds.info["teacher"]):
        h = h @ w + b
        h = np.tanh(h) if i < 2 else h
    np.testing.assert_allclose(ds.y_train, h, rtol=1e-5, atol=1e-5)
    noisy = data.load("teacher", num_train=4000, num_test=10, noise_std=0.5)
    clean = data.load("teacher", num_train=4000, num_test=10, noise_std=0.0)
    residual = noisy.y_train - clean.y_train
    assert abs(residual.std() - 0.5) < 0.05


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d-cache")


def test_mnist1d_default_sizes_and_global_rng_untouched(mnist1d_cache):
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    ds = data.load("mnist1d", cache_dir=mnist1d_cache)
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (3200, 800, 1000)
    assert ds.input_shape == (40,) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_mnist1d_cache_is_reused(mnist1d_cache, monkeypatch):
    before = set(mnist1d_cache.glob("mnist1d-*.npz"))
    first = data.load("mnist1d", num_samples=500, cache_dir=mnist1d_cache, seed=2)
    assert (first.num_train, len(first.x_val), len(first.x_test)) == (320, 80, 100)
    assert len(set(mnist1d_cache.glob("mnist1d-*.npz")) - before) == 1  # one new file, whatever ran before

    def fail(args):
        raise AssertionError("mnist1d regenerated despite the cache")

    monkeypatch.setattr(data, "_generate_mnist1d", fail)
    second = data.load("mnist1d", num_samples=500, cache_dir=mnist1d_cache, seed=2)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    with pytest.raises(AssertionError, match="regenerated"):
        data.load("mnist1d", num_samples=500, cache_dir=None)


def test_mnist1d_rejects_unknown_generator_args():
    with pytest.raises(ValueError, match="valid fields"):
        data.load("mnist1d", generator_args={"bogus": 1}, cache_dir=None)
    with pytest.raises(ValueError, match="num_samples="):
        data.load("mnist1d", generator_args={"num_samples": 10}, cache_dir=None)


# --------------------------------------------------------------------------- #
# Registry and validation errors
# --------------------------------------------------------------------------- #


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        data.load("imagenet")
    for name in data.DATASETS:
        assert name in str(err.value)


def test_unknown_and_missing_options():
    with pytest.raises(ValueError, match="valid options: test_fraction"):
        data.load("digits", bogus=1)
    with pytest.raises(ValueError, match="needs option"):
        data.load("mnist")
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", val_fraction=1.0)


def test_split_names():
    ds = _tiny()
    assert ds.split("val")[0] is ds.x_val
    with pytest.raises(ValueError, match="valid split names: train, val, test"):
        ds.split("validation")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"y_train": np.array([0, 1, 2, 0, 1], np.int32)},
            "split 'train'.*expected equal lengths",
        ),
        (
            {"y_val": np.array([0, 3], np.int32)},
            "split 'val'.*label 3 is outside \\[0, 3\\)",
        ),
        ({"y_test": np.array([-1, 0], np.int32)}, "split 'test'.*label -1"),
        ({"y_train": np.zeros(6, np.float32)}, "expected integer labels"),
        (
            {"x_val": np.array([[0.0, np.nan], [1, 1]], np.float32)},
            "split 'val'.*expected finite",
        ),
        (
            {"x_test": np.zeros((0, 2), np.float32), "y_test": np.zeros(0, np.int32)},
            "split 'test'.*at least one",
        ),
        ({"x_test": np.zeros((2, 3), np.float32)}, "expected \\(2,\\)"),
        ({"x_train": np.zeros((6, 2), np.int32)}, "expected floating"),
        ({"num_classes": None}, "positive int"),
        ({"task": "ranking"}, "unknown task"),
    ],
)
def test_dataset_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**overrides)


def test_regression_targets_must_be_two_dimensional():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="y\\[:, None\\]"):
        data.Dataset(
            "r",
            "regression",
            None,
            x,
            np.zeros(4, np.float32),
            x,
            np.zeros((4, 1)),
            x,
            np.zeros((4, 1)),
        )


def test_dataset_is_read_only():
    ds = _tiny()
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"


# --------------------------------------------------------------------------- #
# Local files
# --------------------------------------------------------------------------- #


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_classification_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 2))
    y = np.arange(50) % 4
    path = _write_npz(tmp_path / "toy.npz", x=x, y=y)
    ds = data.load("npz", path=path, test_fraction=0.2, val_fraction=0.25)
    assert ds.task == "classification" and ds.num_classes == 4 and ds.info["num_classes_inferred"]
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (30, 10, 10)
    assert ds.input_shape == (3, 2) and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32


def test_npz_regression_with_fixed_test_split(tmp_path):
    path = _write_npz(
        tmp_path / "reg.npz",
        x=np.ones((20, 2)),
        y=np.arange(20.0),
        x_test=np.zeros((5, 2)),
        y_test=np.zeros(5),
    )
    ds = data.load("npz", path=path)
    assert ds.task == "regression" and ds.num_classes is None
    assert ds.y_train.shape == (16, 1) and ds.y_test.shape == (5, 1)
    np.testing.assert_array_equal(ds.x_test, 0.0)


@pytest.mark.parametrize(
    "arrays, options, message",
    [
        (
            {
                "x": np.ones((20, 2)),
                "y": np.arange(20) % 10,
                "x_test": np.ones((3, 2)),
                "y_test": np.array([1, 10, 2]),
            },
            {"num_classes": 10},
            "split 'test'.*label 10 is outside \\[0, 10\\)",
        ),
        ({"x": np.ones((20, 2)), "y": np.arange(20) % 10 - 1}, {}, "label -1"),
        (
            {"x": np.ones((20, 2)), "y": np.arange(19) % 10},
            {},
            "x has 20 samples but y has 19",
        ),
        (
            {"x": np.ones((20, 2)), "y": np.arange(20.0)},
            {"task": "classification"},
            "integer class labels",
        ),
        (
            {"x": np.ones((20, 2)), "y": np.arange(20), "x_test": np.ones((2, 2))},
            {},
            "both or neither",
        ),
    ],
)
def test_npz_bad_contents_raise_at_load(tmp_path, arrays, options, message):
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        data.load("npz", path=path, **options)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The real IDX layout: magic (0, 0, type 0x08, ndim), big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory, *, compress, num_train=20, num_test=10):
    # Pixel (0, 0) encodes the label so the pairing of images and labels can be checked.
    files = {}
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = (np.arange(n) * 7) % 10
        images = np.random.default_rng(n).integers(0, 256, size=(n, 28, 28))
        images[:, 0, 0] = labels * 20
        files[f"{prefix}-images-idx3-ubyte"] = _idx_bytes(images)
        files[f"{prefix}-labels-idx1-ubyte"] = _idx_bytes(labels)
    for name, payload in files.items():
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / name).write_bytes(payload)
    assert int.from_bytes(files["train-images-idx3-ubyte"][:4], "big") == 2051
    assert int.from_bytes(files["train-labels-idx1-ubyte"][:4], "big") == 2049


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    _write_mnist(tmp_path, compress=compress)
    ds = data.load("mnist", path=tmp_path, val_fraction=0.2)
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (16, 4, 10)
    assert ds.input_shape == (28, 28, 1) and ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    for split in data.SPLITS:
        x, y = ds.split(split)
        np.testing.assert_array_equal(np.round(x[:, 0, 0, 0] * 255), y * 20)


def test_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*IDX format"):
        data.load("mnist", path=tmp_path)
    _write_mnist(tmp_path, compress=False)
    raw = (tmp_path / "t10k-labels-idx1-ubyte").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.load("mnist", path=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.load("mnist", path=tmp_path)


def _write_cifar(directory, *, per_batch=4):
    """Pickle batches in the real format; the first uses the python-2 era module names."""
    directory.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        labels = [(i + j) % 10 for j in range(per_batch)]
        pixels = np.zeros((per_batch, 3, 32, 32), np.uint8)
        # The red plane encodes the label so the channel layout can be checked.
        pixels[:, 0] = np.array(labels)[:, None, None] * 20
        pixels[:, 2] = 255  # blue plane saturated
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": pixels.reshape(per_batch, 3072),
        }
        payload = pickle.dumps(batch, protocol=2)
        if i == 0:
            payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (directory / name).write_bytes(payload)


def test_cifar10_pickle_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = data.load("cifar10", path=tmp_path, val_fraction=0.2)
    assert (ds.num_train, len(ds.x_val), len(ds.x_test)) == (16, 4, 4)
    assert ds.input_shape == (32, 32, 3) and ds.x_train.dtype == np.float32
    for split in data.SPLITS:
        x, y = ds.split(split)
        np.testing.assert_array_equal(
            np.round(x[..., 0] * 255),
            np.broadcast_to(y[:, None, None] * 20, x.shape[:3]),
        )
        np.testing.assert_array_equal(x[..., 2], 1.0)
        np.testing.assert_array_equal(x[..., 1], 0.0)


def test_cifar10_missing_files_and_unsafe_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*cifar-10-batches-py"):
        data.load("cifar10", path=tmp_path)
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load("cifar10", path=tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": random.Random}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load("cifar10", path=tmp_path / "c")


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        data.load("npz", path=tmp_path / "nothing.npz")


# --------------------------------------------------------------------------- #
# Transforms
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def blobs():
    return data.load("gaussian_mixture", num_classes=5, num_train=20000, num_test=50, seed=0)


def test_label_noise_flips_rate_fraction_to_other_classes(blobs):
    noisy = data.label_noise(blobs, 0.3, seed=1)
    flipped = noisy.info["flipped"]
    assert abs(flipped.mean() - 0.3) < RATE_TOL
    assert noisy.info["noise_rate"] == 0.3
    np.testing.assert_array_equal(flipped, noisy.y_train != blobs.y_train)
    assert (noisy.y_train[flipped] != blobs.y_train[flipped]).all()
    np.testing.assert_array_equal(noisy.y_train[~flipped], blobs.y_train[~flipped])
    # Uniform over the C - 1 other classes: each offset 1..4 gets about a quarter.
    offsets = (noisy.y_train[flipped] - blobs.y_train[flipped]) % 5
    np.testing.assert_allclose(np.bincount(offsets, minlength=5)[1:] / flipped.sum(), 0.25, atol=RATE_TOL)
    np.testing.assert_array_equal(noisy.y_val, blobs.y_val)
    np.testing.assert_array_equal(noisy.y_test, blobs.y_test)
    again = data.label_noise(blobs, 0.3, seed=1)
    np.testing.assert_array_equal(again.y_train, noisy.y_train)


def test_label_noise_edges_and_val_split(blobs):
    assert not data.label_noise(blobs, 0.0, seed=0).info["flipped"].any()
    assert data.label_noise(blobs, 1.0, seed=0).info["flipped"].all()
    both = data.label_noise(blobs, 0.5, seed=0, splits=("train", "val"))
    np.testing.assert_array_equal(both.info["flipped_val"], both.y_val != blobs.y_val)
    assert both.info["flipped_val"].any()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ds: data.label_noise(ds, 1.5, seed=0), "rate=1.5"),
        (lambda ds: data.label_noise(ds, 0.1, seed=0, splits=("test",)), "subset of"),
        (
            lambda ds: data.label_noise(data.label_noise(ds, 0.1, seed=0), 0.1, seed=1),
            "already applied",
        ),
        (lambda ds: data.class_imbalance(ds, 0.0, seed=0), "ratio=0.0"),
        (lambda ds: data.class_imbalance(ds, 1.5, seed=0), "ratio=1.5"),
        (
            lambda ds: data.regression_outliers(ds, 0.1, seed=0),
            "needs a regression dataset",
        ),
    ],
)
def test_classification_transform_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(_tiny())


def test_classification_transforms_refuse_regression():
    ds = data.load("teacher", num_train=20, num_test=5)
    with pytest.raises(ValueError, match="needs a classification dataset"):
        data.label_noise(ds, 0.1, seed=0)
    with pytest.raises(ValueError, match="needs a classification dataset"):
        data.class_imbalance(ds, 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction=-0.1"):
        data.regression_outliers(ds, -0.1, seed=0)


def test_class_imbalance_geometric_counts(blobs):
    ds = data.class_imbalance(blobs, 0.1, seed=0)
    counts = np.bincount(ds.y_train, minlength=5)
    np.testing.assert_array_equal(counts, ds.info["class_counts"])
    assert counts[0] == np.bincount(blobs.y_train).min()
    assert (np.diff(counts) < 0).all()
    assert abs(counts[-1] / counts[0] - 0.1) < 1e-3
    np.testing.assert_allclose(counts[1:] / counts[:-1], 0.1**0.25, rtol=1e-2)
    np.testing.assert_array_equal(ds.x_train, blobs.x_train[ds.info["train_indices"]])
    assert len(ds.x_val) == len(blobs.x_val)


def test_class_imbalance_keeps_noise_masks_aligned(blobs):
    noisy = data.class_imbalance(data.label_noise(blobs, 0.2, seed=0), 0.5, seed=1)
    np.testing.assert_array_equal(noisy.info["flipped"], noisy.y_train != noisy.info["y_train_clean"])


def test_regression_outliers():
    ds = data.load("teacher", num_train=500, num_test=10)
    out = data.regression_outliers(ds, 0.1, scale=20.0, seed=0)
    mask = out.info["outliers"]
    assert mask.sum() == 50 and out.info["outlier_fraction"] == 0.1
    np.testing.assert_array_equal(out.y_train[~mask], ds.y_train[~mask])
    assert (out.y_train[mask] != ds.y_train[mask]).all()
    # Outliers are ~20 target standard deviations off; clean residuals are zero.
    assert np.abs(out.y_train[mask] - ds.y_train[mask]).mean() > 5 * ds.y_train.std()
    np.testing.assert_array_equal(out.y_val, ds.y_val)
    with pytest.raises(ValueError, match="already applied"):
        data.regression_outliers(out, 0.1, seed=1)


def test_transforms_do_not_touch_the_input(blobs):
    before = blobs.y_train.copy()
    data.label_noise(blobs, 0.5, seed=0)
    data.class_imbalance(blobs, 0.5, seed=0)
    np.testing.assert_array_equal(blobs.y_train, before)
    assert "flipped" not in blobs.info and "transforms" not in blobs.info


# --------------------------------------------------------------------------- #
# Batches
# --------------------------------------------------------------------------- #


def _orders(key, n=23, batch_size=5, drop_last=True):
    x = np.arange(n)
    return [xb for xb, _ in data.batches(x, x * 10, batch_size, key, drop_last=drop_last)]


def test_batches_same_key_same_order_different_key_different_order():
    key = jax.random.key(0)
    a, b = _orders(key), _orders(key)
    c = _orders(jax.random.key(1))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_batches_cover_every_sample_once():
    parts = _orders(jax.random.key(2), drop_last=False)
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(23))
    dropped = _orders(jax.random.key(2), drop_last=True)
    assert [len(p) for p in dropped] == [5] * 4
    for xb, yb in data.batches(np.arange(23), np.arange(23) * 10, 5, jax.random.key(2)):
        np.testing.assert_array_equal(yb, xb * 10)


def test_batches_keep_jax_arrays_and_check_arguments():
    x = jnp.arange(12.0).reshape(6, 2)
    xb, yb = next(data.batches(x, jnp.arange(6), 3, jax.random.key(0)))
    assert isinstance(xb, jax.Array) and xb.shape == (3, 2) and yb.shape == (3,)
    with pytest.raises(ValueError, match="batch_size=7 exceeds the 6 samples"):
        data.batches(x, jnp.arange(6), 7, jax.random.key(0))
    with pytest.raises(ValueError, match="equal lengths"):
        data.batches(x, jnp.arange(5), 2, jax.random.key(0))


@pytest.mark.parametrize(
    "n, batch_size, drop_last, expected",
    [(10, 3, True, 3), (10, 3, False, 4), (9, 3, False, 3)],
)
def test_num_batches(n, batch_size, drop_last, expected):
    assert data.num_batches(n, batch_size, drop_last) == expected


def test_num_batches_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size=0"):
        data.num_batches(10, 0)
