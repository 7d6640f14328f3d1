"""Datasets: one immutable container, loaders by name, transforms and batches.

A :class:`Dataset` holds train / validation / test arrays and says what task
they pose. :func:`load` builds one by name from the ``DATASETS`` registry:

* built in, offline: ``digits`` (scikit-learn's 8x8 digits), ``mnist1d``
  (generated locally with the ``mnist1d`` package, Greydanus 2020), and the
  synthetic ``teacher`` (teacher-student regression), ``gaussian_mixture`` and
  ``spirals`` sets;
* local files, never downloaded: ``mnist`` (IDX files, LeCun et al. 1998),
  ``cifar10`` (the python pickle batches, Krizhevsky 2009) and ``npz``.

Transforms (:func:`label_noise`, :func:`class_imbalance`,
:func:`regression_outliers`) are pure: they return a new :class:`Dataset` and
record what they did in its ``info``. Everything is numpy with an explicit
``np.random.default_rng(seed)``; only :func:`batches` uses JAX, for its key.

Conventions: ``x`` is floating point with shape ``(n, *input_shape)``; for
classification ``y`` holds integer labels of shape ``(n,)`` in
``[0, num_classes)``; for regression ``y`` is floating point of shape
``(n, output_dim)``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import inspect
import itertools
import json
import os
import pickle
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

from losslab.registry import lookup

TASKS = ("classification", "regression")
SPLITS = ("train", "val", "test")

# Info entries that hold one value per training sample: transforms that subsample
# the training set subsample these too, and validation checks their length.
_PER_TRAIN_SAMPLE = ("flipped", "y_train_clean", "outliers")

# Features whose training std is below this are constant (e.g. the border pixels
# of ``digits``); they are centred but not scaled, as in sklearn's StandardScaler.
_MIN_STD = 1e-8


# --------------------------------------------------------------------------- #
# The container
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test arrays of one supervised task.

    Construction validates everything (see :meth:`validate`) and stores the
    arrays as read-only views, so a ``Dataset`` cannot be changed in place;
    transforms build a new one with :func:`dataclasses.replace`.

    Attributes:
      name: dataset name, e.g. ``"digits"``.
      task: ``"classification"`` or ``"regression"``.
      num_classes: number of classes C for classification, ``None`` for regression.
      x_train: inputs, floating point, shape ``(n_train, *input_shape)``.
      y_train: int labels ``(n_train,)`` in ``[0, C)``, or float targets
        ``(n_train, output_dim)``.
      x_val: validation inputs, same layout.
      y_val: validation targets, same layout.
      x_test: test inputs, same layout.
      y_test: test targets, same layout.
      info: metadata: loader arguments, normalisation statistics, and the record
        of applied transforms (``"flipped"``, ``"noise_rate"``, ``"class_counts"``,
        ``"outliers"``, ``"transforms"``, ...).
    """

    name: str
    task: str
    num_classes: int | None
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for split in SPLITS:
            for prefix in ("x", "y"):
                field = f"{prefix}_{split}"
                object.__setattr__(self, field, _readonly(getattr(self, field)))
        object.__setattr__(self, "info", dict(self.info))
        self.validate()

    def validate(self) -> None:
        """Checks the arrays against the task; raises ``ValueError`` if they disagree.

        Checked: the task name; ``num_classes`` (a positive int for classification,
        ``None`` for regression); per split, non-empty, equal x/y lengths, floating
        and finite x, the same input shape in every split; for classification
        integer labels of shape ``(n,)`` in ``[0, num_classes)``; for regression
        finite floating targets of shape ``(n, output_dim)`` with one
        ``output_dim``; per-training-sample ``info`` masks of length ``n_train``.

        Raises:
          ValueError: naming the split, the bad value and what was expected.
        """
        if self.task not in TASKS:
            raise ValueError(f"dataset {self.name!r}: unknown task {self.task!r}; expected one of {TASKS}")
        if self.task == "classification":
            if not _is_int(self.num_classes) or self.num_classes < 1:
                raise ValueError(
                    f"dataset {self.name!r}: num_classes={self.num_classes!r}; "
                    "expected a positive int for classification"
                )
        elif self.num_classes is not None:
            raise ValueError(f"dataset {self.name!r}: num_classes={self.num_classes!r}; expected None for regression")
        input_shape = self.x_train.shape[1:]
        output_dim = None
        for split in SPLITS:
            x, y = self.split(split)
            where = f"dataset {self.name!r}, split {split!r}"
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(f"{where}: x has shape {x.shape}; expected at least one sample")
            if y.ndim < 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{where}: y has shape {y.shape} but x has {x.shape[0]} samples; expected equal lengths"
                )
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"{where}: x has dtype {x.dtype}; expected floating point (float32)")
            if x.shape[1:] != input_shape:
                raise ValueError(
                    f"{where}: x has input shape {x.shape[1:]}; expected {input_shape} as in split 'train'"
                )
            bad = ~np.isfinite(x)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"{where}: x{list(index)} = {x[index]}; expected finite inputs ({int(bad.sum())} non-finite values)"
                )
            if self.task == "classification":
                if y.ndim != 1 or not _is_int_dtype(y.dtype):
                    raise ValueError(
                        f"{where}: y has shape {y.shape} and dtype {y.dtype}; expected integer labels "
                        "of shape (n,) for classification"
                    )
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= self.num_classes:
                    value = low if low < 0 else high
                    raise ValueError(
                        f"{where}: label {value} is outside [0, {self.num_classes}); expected labels in "
                        f"0..{self.num_classes - 1} for num_classes={self.num_classes}"
                    )
            else:
                if y.ndim != 2 or not np.issubdtype(y.dtype, np.floating):
                    raise ValueError(
                        f"{where}: y has shape {y.shape} and dtype {y.dtype}; expected floating targets "
                        "of shape (n, output_dim) for regression (use y[:, None] for scalar targets)"
                    )
                output_dim = y.shape[1] if output_dim is None else output_dim
                if y.shape[1] != output_dim:
                    raise ValueError(
                        f"{where}: y has output_dim {y.shape[1]}; expected {output_dim} as in split 'train'"
                    )
                if not np.isfinite(y).all():
                    raise ValueError(f"{where}: y has non-finite targets; expected finite values")
        for key in _PER_TRAIN_SAMPLE:
            if key in self.info and len(self.info[key]) != self.num_train:
                raise ValueError(
                    f"dataset {self.name!r}: info[{key!r}] has length {len(self.info[key])}; "
                    f"expected one entry per training sample ({self.num_train})"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``x_train.shape[1:]``."""
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        """Model output size: ``num_classes`` for classification, ``y.shape[-1]`` for regression."""
        if self.task == "classification":
            return self.num_classes
        return int(self.y_train.shape[-1])

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(x, y)`` of split ``name``.

        Args:
          name: ``"train"``, ``"val"`` or ``"test"``.

        Raises:
          ValueError: for any other name.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid split names: {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def __repr__(self) -> str:
        # One line instead of the dataclass default, which prints every array.
        sizes = ", ".join(f"{s}={getattr(self, f'x_{s}').shape[0]}" for s in SPLITS)
        target = f"num_classes={self.num_classes}" if self.task == "classification" else f"output_dim={self.output_dim}"
        transforms = [t.get("transform") for t in self.info.get("transforms", ()) if isinstance(t, Mapping)]
        extra = f", transforms={transforms}" if transforms else ""
        return f"Dataset({self.name!r}, {self.task}, input_shape={self.input_shape}, {target}, {sizes}{extra})"


def _readonly(array) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_int_dtype(dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


# --------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------- #


def load(name: str, *, seed: int = 0, val_fraction: float = 0.2, **options) -> Dataset:
    """Loads dataset ``name`` from the ``DATASETS`` registry.

    Every loader is offline: the built-in sets are bundled or generated, and the
    file formats read only the local ``path`` they are given.

    ========================  ==================================================
    name                      options (defaults)
    ========================  ==================================================
    ``digits``                ``test_fraction=0.2``
    ``mnist1d``               ``num_samples=5000``, ``generator_seed=42``,
                              ``generator_args=None``, ``cache_dir="~/.cache/losslab"``
    ``teacher``               ``num_train=1000``, ``num_val=None``, ``num_test=1000``,
                              ``input_dim=10``, ``output_dim=1``, ``hidden=(32,)``,
                              ``noise_std=0.1``
    ``gaussian_mixture``      ``num_train=1000``, ``num_val=None``, ``num_test=1000``,
                              ``num_classes=3``, ``dim=2``, ``radius=2.0``, ``std=0.5``
    ``spirals``               ``num_train=1000``, ``num_val=None``, ``num_test=1000``,
                              ``num_classes=2``, ``turns=1.5``, ``noise=0.1``
    ``mnist``                 ``path`` (required)
    ``cifar10``               ``path`` (required)
    ``npz``                   ``path`` (required), ``task=None``, ``num_classes=None``,
                              ``test_fraction=0.2``
    ========================  ==================================================

    The validation split is a seeded random ``val_fraction`` of the data that is
    not test data (for the synthetic sets: ``num_val`` samples, by default the
    number that makes validation ``val_fraction`` of train + validation).

    Args:
      name: a key of ``DATASETS``.
      seed: seed of ``np.random.default_rng`` for splits and synthetic draws.
      val_fraction: fraction of the non-test data held out for validation, in (0, 1).
      **options: loader-specific options, see the table and the loader docstrings.

    Returns:
      A validated :class:`Dataset`; ``info`` records ``dataset``, ``seed``,
      ``val_fraction`` and ``options`` besides the loader's own metadata.

    Raises:
      ValueError: unknown name (listing the valid ones), unknown or missing
        options, bad fractions, or data that fail :meth:`Dataset.validate`.
      FileNotFoundError: a file-based loader cannot find its files.
    """
    loader = lookup(DATASETS, name, "dataset")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}; expected a number in (0, 1)")
    params = {key: p for key, p in inspect.signature(loader).parameters.items() if key not in ("seed", "val_fraction")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(params) or "(none)"
        raise ValueError(f"dataset {name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")
    missing = [key for key, p in params.items() if p.default is inspect.Parameter.empty and key not in options]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s) {', '.join(missing)}")
    ds = loader(seed=seed, val_fraction=val_fraction, **options)
    info = {
        "dataset": name,
        "seed": seed,
        "val_fraction": val_fraction,
        "options": dict(options),
        **ds.info,
    }
    return dataclasses.replace(ds, info=info)


def _split_off(x, y, fraction, rng, what):
    """Randomly splits (x, y) into a (1 - fraction) part and a fraction part."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}; expected equal lengths")
    n = len(x)
    num_out = round(fraction * n)
    if not 0 < num_out < n:
        raise ValueError(f"{what}={fraction!r} of {n} samples leaves an empty split; choose a fraction in (0, 1)")
    perm = rng.permutation(n)
    keep, out = perm[num_out:], perm[:num_out]
    return x[keep], y[keep], x[out], y[out]


def _default_num_val(num_train, num_val, val_fraction):
    if num_val is not None:
        return num_val
    return round(num_train * val_fraction / (1.0 - val_fraction))


def _check_counts(**counts):
    for key, value in counts.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key}={value!r}; expected a positive int")


# --------------------------------------------------------------------------- #
# Built-in datasets
# --------------------------------------------------------------------------- #


def _load_digits(*, seed: int, val_fraction: float, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes), offline.

    The UCI optical digits test set (Alpaydin & Kaynak 1998), bundled with sklearn.

    The data are split at random into test (``test_fraction``), validation
    (``val_fraction`` of the rest) and train, then standardised per feature with
    the TRAIN mean and std only: x ← (x − μ_train) / σ_train, where features with
    σ_train < 1e-8 (constant border pixels) are only centred. x has shape (n, 64).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    x_pool, y_pool, x_test, y_test = _split_off(x, y, test_fraction, rng, "test_fraction")
    x_train, y_train, x_val, y_val = _split_off(x_pool, y_pool, val_fraction, rng, "val_fraction")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std < _MIN_STD, 1.0, std)

    def standardise(a):
        return ((a - mean) / std).astype(np.float32)

    return Dataset(
        name="digits",
        task="classification",
        num_classes=10,
        x_train=standardise(x_train),
        y_train=y_train,
        x_val=standardise(x_val),
        y_val=y_val,
        x_test=standardise(x_test),
        y_test=y_test,
        info={"test_fraction": test_fraction, "mean": mean, "std": std},
    )


def _load_mnist1d(
    *,
    seed: int,
    val_fraction: float,
    num_samples: int = 5000,
    generator_seed: int = 42,
    generator_args: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = "~/.cache/losslab",
) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline with ``mnist1d.data.make_dataset``.

    The defaults reproduce the standard 5000-sample set: 4000 train+val and 1000
    test sequences of length 40, 10 classes; validation is a seeded
    ``val_fraction`` of the 4000 (default 3200 / 800 / 1000). x has shape (n, 40).
    The package's download path is never used. Generation (~3 s at the default
    size) is cached as ``mnist1d-<hash>.npz`` in ``cache_dir``, keyed by the
    generator arguments and the package version; ``cache_dir=None`` disables the
    cache. The generator seeds Python's and numpy's global RNGs; their states are
    restored afterwards, so loading leaves global randomness untouched.

    Args:
      seed: seed of the train/validation split (not of the generator).
      val_fraction: validation fraction of the generator's training part.
      num_samples: total samples generated (``num_samples // 10`` per class).
      generator_seed: the generator's own seed (42 is the standard set).
      generator_args: overrides of other ``mnist1d.data.get_dataset_args()``
        fields, e.g. ``{"iid_noise_scale": 0.05, "train_split": 0.9}``.
      cache_dir: cache directory, ``None`` for no cache.
    """
    from importlib.metadata import version

    from mnist1d.data import get_dataset_args

    _check_counts(num_samples=num_samples)
    args = get_dataset_args(as_dict=True)
    del args["url"]  # only used by the download path
    overrides = dict(generator_args or {})
    reserved = sorted({"num_samples", "seed"} & set(overrides))
    if reserved:
        raise ValueError(f"generator_args may not set {reserved}; use num_samples= and generator_seed= instead")
    unknown = sorted(set(overrides) - set(args))
    if unknown:
        raise ValueError(f"unknown mnist1d generator_args {unknown}; valid fields: {', '.join(sorted(args))}")
    args.update(overrides, num_samples=num_samples, seed=generator_seed)

    record = json.dumps({"args": args, "mnist1d": version("mnist1d")}, sort_keys=True)
    digest = hashlib.sha256(record.encode()).hexdigest()[:16]
    cache_path = None if cache_dir is None else Path(cache_dir).expanduser() / f"mnist1d-{digest}.npz"
    if cache_path is not None and cache_path.exists():
        with np.load(cache_path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in ("x", "y", "x_test", "y_test")}
    else:
        arrays = _generate_mnist1d(args)
        if cache_path is not None:
            _atomic_savez(cache_path, arrays)

    rng = np.random.default_rng(seed)
    x = arrays["x"].astype(np.float32)
    y = arrays["y"].astype(np.int32)
    x_train, y_train, x_val, y_val = _split_off(x, y, val_fraction, rng, "val_fraction")
    return Dataset(
        name="mnist1d",
        task="classification",
        num_classes=10,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=arrays["x_test"].astype(np.float32),
        y_test=arrays["y_test"].astype(np.int32),
        info={
            "generator_args": args,
            "cache_path": None if cache_path is None else str(cache_path),
        },
    )


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test")}


def _atomic_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load_teacher(
    *,
    seed: int,
    val_fraction: float,
    num_train: int = 1000,
    num_val: int | None = None,
    num_test: int = 1000,
    input_dim: int = 10,
    output_dim: int = 1,
    hidden: Sequence[int] = (32,),
    noise_std: float = 0.1,
) -> Dataset:
    """Teacher–student regression: targets from a random tanh MLP plus noise.

    x ~ N(0, I_d) with d = ``input_dim``; the teacher is
    f(x) = W_L tanh(… tanh(W_1 x + b_1) …) + b_L with widths ``hidden``,
    W_l ~ N(0, 1/fan_in) and b_l ~ N(0, 0.1²); targets y = f(x) + σ ε, ε ~ N(0, I),
    σ = ``noise_std`` (in every split, so σ² · output_dim is the Bayes risk under
    the summed squared error). ``info["teacher"]`` holds the (W, b) pairs with W
    of shape (fan_in, fan_out).
    """
    num_val = _default_num_val(num_train, num_val, val_fraction)
    hidden = tuple(hidden)
    _check_counts(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        input_dim=input_dim,
        output_dim=output_dim,
    )
    for width in hidden:
        _check_counts(hidden_width=width)
    if not noise_std >= 0.0:
        raise ValueError(f"noise_std={noise_std!r}; expected a number >= 0")
    rng = np.random.default_rng(seed)
    widths = (input_dim, *hidden, output_dim)
    teacher = [
        (
            rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in),
            0.1 * rng.normal(size=fan_out),
        )
        for fan_in, fan_out in itertools.pairwise(widths)
    ]
    n = num_train + num_val + num_test
    x = rng.normal(size=(n, input_dim))
    h = x
    for i, (w, b) in enumerate(teacher):
        h = h @ w + b
        if i < len(teacher) - 1:
            h = np.tanh(h)
    y = h + noise_std * rng.normal(size=h.shape)
    x, y = x.astype(np.float32), y.astype(np.float32)
    a, b = num_train, num_train + num_val
    return Dataset(
        name="teacher",
        task="regression",
        num_classes=None,
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[a:b],
        y_val=y[a:b],
        x_test=x[b:],
        y_test=y[b:],
        info={
            "input_dim": input_dim,
            "output_dim": output_dim,
            "hidden": hidden,
            "noise_std": noise_std,
            "teacher": teacher,
        },
    )


def _balanced_labels(n, num_classes, rng):
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def _load_gaussian_mixture(
    *,
    seed: int,
    val_fraction: float,
    num_train: int = 1000,
    num_val: int | None = None,
    num_test: int = 1000,
    num_classes: int = 3,
    dim: int = 2,
    radius: float = 2.0,
    std: float = 0.5,
) -> Dataset:
    """Classification of ``num_classes`` isotropic Gaussian blobs in ``dim`` dimensions.

    Class k has mean μ_k = radius · (cos 2πk/C, sin 2πk/C, 0, …, 0) (equally
    spaced on a circle in the first two coordinates) and covariance std² I;
    classes are balanced (sizes differ by at most one). ``dim`` must be ≥ 2.
    """
    num_val = _default_num_val(num_train, num_val, val_fraction)
    _check_counts(num_train=num_train, num_val=num_val, num_test=num_test, num_classes=num_classes)
    if not _is_int(dim) or dim < 2:
        raise ValueError(f"dim={dim!r}; expected an int >= 2")
    if not std > 0.0:
        raise ValueError(f"std={std!r}; expected a number > 0")
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    means = np.zeros((num_classes, dim))
    means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
    n = num_train + num_val + num_test
    y = _balanced_labels(n, num_classes, rng)
    x = (means[y] + std * rng.normal(size=(n, dim))).astype(np.float32)
    info = {"dim": dim, "radius": radius, "std": std, "means": means}
    return _synthetic_classification("gaussian_mixture", x, y, num_classes, num_train, num_val, info)


def _load_spirals(
    *,
    seed: int,
    val_fraction: float,
    num_train: int = 1000,
    num_val: int | None = None,
    num_test: int = 1000,
    num_classes: int = 2,
    turns: float = 1.5,
    noise: float = 0.1,
) -> Dataset:
    """Interleaved 2-D spirals, one arm per class.

    For class k and t ~ U(0, 1): x = t · (cos θ, sin θ) + noise · ε with
    θ = 2π (turns · t + k / C) and ε ~ N(0, I), so the arms reach radius 1 and
    are rotated copies of each other. Classes are balanced.
    """
    num_val = _default_num_val(num_train, num_val, val_fraction)
    _check_counts(num_train=num_train, num_val=num_val, num_test=num_test, num_classes=num_classes)
    if not noise >= 0.0:
        raise ValueError(f"noise={noise!r}; expected a number >= 0")
    rng = np.random.default_rng(seed)
    n = num_train + num_val + num_test
    y = _balanced_labels(n, num_classes, rng)
    t = rng.uniform(size=n)
    theta = 2 * np.pi * (turns * t + y / num_classes)
    x = t[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1) + noise * rng.normal(size=(n, 2))
    info = {"turns": turns, "noise": noise}
    return _synthetic_classification("spirals", x.astype(np.float32), y, num_classes, num_train, num_val, info)


def _synthetic_classification(name, x, y, num_classes, num_train, num_val, info):
    a, b = num_train, num_train + num_val
    return Dataset(
        name=name,
        task="classification",
        num_classes=num_classes,
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[a:b],
        y_val=y[a:b],
        x_test=x[b:],
        y_test=y[b:],
        info=info,
    )


# --------------------------------------------------------------------------- #
# Local files (never downloaded)
# --------------------------------------------------------------------------- #

_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes (third magic byte) and their big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _load_mnist(*, seed: int, val_fraction: float, path: str | os.PathLike) -> Dataset:
    """MNIST from the four standard IDX files in directory ``path``.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or with a
    ``.gz`` suffix (the format of LeCun et al. 1998: a big-endian magic number,
    2051 for images and 2049 for labels, then the dimensions as big-endian
    uint32). Pixels are scaled to [0, 1]; x has shape (n, rows, cols, 1), i.e.
    (n, 28, 28, 1) for MNIST (Fashion-MNIST, same format, loads too).
    Validation is a seeded ``val_fraction`` of the 60000 training images.
    """
    directory = Path(path).expanduser()
    arrays = {}
    for key, filename in _MNIST_FILES.items():
        candidates = [directory / filename, directory / f"{filename}.gz"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(
                f"MNIST {key} not found: expected {candidates[0]} or {candidates[1]} "
                "(IDX format, as distributed by LeCun et al.); losslab never downloads data"
            )
        arrays[key] = _read_idx(found[0], ndim=3 if key.startswith("x") else 1)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ValueError(
                f"MNIST split {split!r}: {len(x)} images but {len(y)} labels in {directory}; expected equal counts"
            )
    x_pool = _scale_pixels(arrays["x_train"])[..., None]
    y_pool = arrays["y_train"].astype(np.int32)
    rng = np.random.default_rng(seed)
    x_train, y_train, x_val, y_val = _split_off(x_pool, y_pool, val_fraction, rng, "val_fraction")
    return Dataset(
        name="mnist",
        task="classification",
        num_classes=10,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=_scale_pixels(arrays["x_test"])[..., None],
        y_test=arrays["y_test"].astype(np.int32),
        info={"path": str(directory)},
    )


def _scale_pixels(x: np.ndarray) -> np.ndarray:
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {x.dtype}")
    return x.astype(np.float32) / np.float32(255.0)


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) and checks its number of dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: bad magic number {raw[:4].hex()}")
    if raw[3] != ndim:
        magic = int.from_bytes(raw[:4], "big")
        raise ValueError(f"{path}: IDX magic {magic} declares {raw[3]} dimensions; expected {ndim}")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes of data) but the file has "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _load_cifar10(*, seed: int, val_fraction: float, path: str | os.PathLike) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009) from the python pickle batches in ``path``.

    Expects ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` in ``path`` or
    in ``path/cifar-10-batches-py``; each a pickled dict with ``b"data"`` (n, 3072)
    uint8 in channel-major order and ``b"labels"``. The pickles are read with an
    unpickler that only admits numpy arrays and builtins, so a tampered file
    cannot run code. x is (n, 32, 32, 3) float32 in [0, 1]; validation is a
    seeded ``val_fraction`` of the 50000 training images.
    """
    root = Path(path).expanduser()
    candidates = [root, root / "cifar-10-batches-py"]
    directory = next((c for c in candidates if (c / _CIFAR_TRAIN[0]).is_file()), None)
    if directory is None:
        raise FileNotFoundError(
            f"CIFAR-10 not found: expected {candidates[0] / _CIFAR_TRAIN[0]} or {candidates[1] / _CIFAR_TRAIN[0]} "
            f"(the python pickle batches {', '.join(_CIFAR_TRAIN)}, {_CIFAR_TEST}); losslab never downloads data"
        )
    train = [_read_cifar_batch(directory / name) for name in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(directory / _CIFAR_TEST)
    x_pool = np.concatenate([x for x, _ in train])
    y_pool = np.concatenate([y for _, y in train])
    rng = np.random.default_rng(seed)
    x_train, y_train, x_val, y_val = _split_off(x_pool, y_pool, val_fraction, rng, "val_fraction")
    return Dataset(
        name="cifar10",
        task="classification",
        num_classes=10,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        info={"path": str(directory)},
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler admitting only what the CIFAR batches contain: numpy arrays."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a numpy array component")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch missing: expected {path} (python pickle batch)")
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a pickled dict with keys b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(
            f"{path}: data has shape {data.shape} and dtype {data.dtype} with {len(labels)} labels; "
            "expected uint8 (n, 3072) and n labels"
        )
    x = _scale_pixels(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels


def _npz_task(file, arrays, task, num_classes):
    """The task of an npz dataset (given, or inferred from y's dtype) and the cast for its targets."""
    y_kind = arrays["y"].dtype.kind
    if task is None:
        if y_kind in "iu":
            task = "classification"
        elif y_kind == "f":
            task = "regression"
        else:
            raise ValueError(f"{file}: y has dtype {arrays['y'].dtype}; expected integer labels or float targets")
    if task == "classification":
        for key in ("y", "y_val", "y_test"):
            if key in arrays and arrays[key].dtype.kind not in "iu":
                raise ValueError(f"{file}: {key} has dtype {arrays[key].dtype}; expected integer class labels")
        cast_y = _cast_labels
    elif task == "regression":
        cast_y = _cast_targets
    else:
        raise ValueError(f"task={task!r}; expected one of {TASKS} or None (inferred from y)")
    if num_classes is not None and task == "regression":
        raise ValueError(f"num_classes={num_classes!r} given for a regression dataset; expected None")

    return task, cast_y


def _load_npz(
    *,
    seed: int,
    val_fraction: float,
    path: str | os.PathLike,
    task: str | None = None,
    num_classes: int | None = None,
    test_fraction: float = 0.2,
) -> Dataset:
    """Any dataset stored as a ``.npz`` file with arrays ``x`` and ``y``.

    Optional arrays ``x_val``/``y_val`` and ``x_test``/``y_test`` give fixed
    splits (each pair complete or absent); missing splits are carved at random
    from ``x``/``y``, first the test split (``test_fraction``), then validation
    (``val_fraction`` of the rest). x is cast to float32 (no rescaling).

    ``task`` defaults from the dtype of ``y``: integer → ``"classification"``
    (labels cast to int32; ``num_classes`` defaults to max label + 1), floating
    → ``"regression"`` (targets cast to float32, 1-D targets become (n, 1)).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"npz dataset not found: expected {file} (a .npz with arrays x, y and optionally "
            "x_val, y_val, x_test, y_test); losslab never downloads data"
        )
    with np.load(file, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{file}: missing array {key!r}; found {sorted(arrays)}")
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            raise ValueError(f"{file}: has only one of x_{split}, y_{split}; expected both or neither")

    task, cast_y = _npz_task(file, arrays, task, num_classes)
    x = arrays["x"].astype(np.float32)
    y = cast_y(arrays["y"])
    rng = np.random.default_rng(seed)
    if "x_test" in arrays:
        x_test, y_test = arrays["x_test"].astype(np.float32), cast_y(arrays["y_test"])
    else:
        x, y, x_test, y_test = _split_off(x, y, test_fraction, rng, "test_fraction")
    if "x_val" in arrays:
        x_val, y_val = arrays["x_val"].astype(np.float32), cast_y(arrays["y_val"])
        x_train, y_train = x, y
    else:
        x_train, y_train, x_val, y_val = _split_off(x, y, val_fraction, rng, "val_fraction")
    inferred = task == "classification" and num_classes is None
    if inferred:
        num_classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    return Dataset(
        name=file.stem,
        task=task,
        num_classes=num_classes,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        info={"path": str(file), "num_classes_inferred": inferred},
    )


def _cast_labels(y: np.ndarray) -> np.ndarray:
    return y.astype(np.int32)


def _cast_targets(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float32)
    return y[:, None] if y.ndim == 1 else y


# --------------------------------------------------------------------------- #
# Transforms
# --------------------------------------------------------------------------- #


def _require_classification(ds: Dataset, what: str) -> None:
    if ds.task != "classification":
        raise ValueError(f"{what} needs a classification dataset; {ds.name!r} is {ds.task}")


def _record(ds: Dataset, transform: str, **args) -> dict:
    info = dict(ds.info)
    info["transforms"] = (*info.get("transforms", ()), {"transform": transform, **args})
    return info


def label_noise(ds: Dataset, rate: float, *, seed: int, splits: Sequence[str] = ("train",)) -> Dataset:
    """Symmetric label noise: each label is, with probability ``rate``, replaced by a different class.

    Convention: a corrupted label is drawn uniformly from the C − 1 OTHER classes,
    so ``rate`` is exactly the expected fraction of wrong labels (the flip
    probability to each other class is rate / (C − 1)); with the other common
    convention (uniform over all C classes) the wrong fraction would be
    rate · (C − 1) / C. Flips are independent Bernoulli(rate) per sample
    (Zhang et al. 2017, "Understanding deep learning requires rethinking
    generalization"). Test labels are never corrupted.

    Args:
      ds: a classification dataset with at least two classes.
      rate: flip probability, in [0, 1].
      seed: seed of ``np.random.default_rng``.
      splits: which of ``"train"`` and ``"val"`` to corrupt.

    Returns:
      A new dataset; ``info`` gains ``"flipped"`` (bool mask over training
      samples), ``"y_train_clean"`` (original labels), ``"noise_rate"``, and for
      a corrupted validation split ``"flipped_val"`` and ``"y_val_clean"``.

    Raises:
      ValueError: rate outside [0, 1], regression data, fewer than two classes,
        a split other than train/val, or label noise applied twice.
    """
    _require_classification(ds, "label_noise")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate!r}; expected a probability in [0, 1]")
    if ds.num_classes < 2:
        raise ValueError(f"label_noise needs at least 2 classes; {ds.name!r} has {ds.num_classes}")
    splits = tuple(splits)
    bad = [s for s in splits if s not in ("train", "val")]
    if bad or not splits:
        raise ValueError(f"splits={splits!r}; expected a non-empty subset of ('train', 'val')")
    if "noise_rate" in ds.info:
        raise ValueError(
            f"label noise was already applied to {ds.name!r} (rate={ds.info['noise_rate']}); "
            "apply label_noise once, to the clean dataset"
        )
    rng = np.random.default_rng(seed)
    info = _record(ds, "label_noise", rate=rate, seed=seed, splits=splits)
    info["noise_rate"] = rate
    info["flipped"] = np.zeros(ds.num_train, dtype=bool)
    info["y_train_clean"] = ds.y_train
    changes = {}
    for split in ("train", "val"):
        if split not in splits:
            continue
        y = getattr(ds, f"y_{split}")
        flipped = rng.random(len(y)) < rate
        # Adding an offset in 1..C-1 mod C lands uniformly on one of the other classes.
        offset = rng.integers(1, ds.num_classes, size=len(y))
        changes[f"y_{split}"] = np.where(flipped, (y + offset) % ds.num_classes, y).astype(y.dtype)
        info["flipped" if split == "train" else "flipped_val"] = flipped
        info[f"y_{split}_clean"] = y
    return dataclasses.replace(ds, info=info, **changes)


def class_imbalance(ds: Dataset, ratio: float, *, seed: int) -> Dataset:
    """Subsamples the training set into a long-tailed, geometrically imbalanced one.

    Class k (k = 0 … C − 1) keeps n_k = round(n_max · ratio^(k / (C − 1)))
    training samples (at least 1), drawn without replacement, where n_max is the
    size of the smallest training class; so class 0 is the largest, class C − 1
    the smallest, and n_{C−1} / n_0 = ratio up to rounding (Cui et al. 2019,
    "Class-balanced loss based on effective number of samples"). ``ratio = 1``
    balances the classes. Validation and test sets are left unchanged. Apply it
    before :func:`label_noise` so the imbalance is of the clean classes.

    Args:
      ds: a classification dataset with at least two classes, each present in
        the training set.
      ratio: smallest / largest class size, in (0, 1].
      seed: seed of ``np.random.default_rng``.

    Returns:
      A new dataset; ``info`` gains ``"class_counts"`` (int array of the new
      per-class training sizes), ``"imbalance_ratio"`` and ``"train_indices"``
      (the kept rows of the previous training set, in their original order).

    Raises:
      ValueError: ratio outside (0, 1], regression data, fewer than two classes,
        or a class without training samples.
    """
    _require_classification(ds, "class_imbalance")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio!r}; expected smallest/largest class size in (0, 1]")
    num_classes = ds.num_classes
    if num_classes < 2:
        raise ValueError(f"class_imbalance needs at least 2 classes; {ds.name!r} has {num_classes}")
    counts = np.bincount(ds.y_train, minlength=num_classes)
    if counts.min() == 0:
        raise ValueError(
            f"class {int(counts.argmin())} has no training samples in {ds.name!r}; expected every class present"
        )
    n_max = int(counts.min())
    targets = np.maximum(1, np.round(n_max * ratio ** (np.arange(num_classes) / (num_classes - 1)))).astype(int)
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(ds.y_train == k), size=targets[k], replace=False) for k in range(num_classes)]
        )
    )
    info = _record(ds, "class_imbalance", ratio=ratio, seed=seed)
    for key in _PER_TRAIN_SAMPLE:
        if key in info:
            info[key] = np.asarray(info[key])[keep]
    info.update(class_counts=targets, imbalance_ratio=ratio, train_indices=keep)
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep], info=info)


def regression_outliers(ds: Dataset, fraction: float, *, scale: float = 10.0, seed: int) -> Dataset:
    """Replaces a fraction of training targets with large-noise outliers.

    Exactly m = round(fraction · n_train) training samples, chosen without
    replacement, get y_i ← y_i + scale · σ ⊙ ε_i with ε_i ~ N(0, I) and σ the
    per-output standard deviation of the clean training targets (so ``scale`` is
    in units of the target spread). Validation and test sets stay clean.

    Args:
      ds: a regression dataset.
      fraction: fraction of training targets to corrupt, in [0, 1].
      scale: outlier noise in units of the target standard deviation, > 0.
      seed: seed of ``np.random.default_rng``.

    Returns:
      A new dataset; ``info`` gains ``"outliers"`` (bool mask over training
      samples), ``"y_train_clean"``, ``"outlier_fraction"`` and ``"outlier_scale"``.

    Raises:
      ValueError: fraction outside [0, 1], scale ≤ 0, classification data, or
        outliers applied twice.
    """
    if ds.task != "regression":
        raise ValueError(f"regression_outliers needs a regression dataset; {ds.name!r} is {ds.task}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r}; expected a number in [0, 1]")
    if not scale > 0.0:
        raise ValueError(f"scale={scale!r}; expected a number > 0")
    if "outliers" in ds.info:
        raise ValueError(f"regression_outliers was already applied to {ds.name!r}; apply it once")
    rng = np.random.default_rng(seed)
    n = ds.num_train
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(fraction * n), replace=False)] = True
    sigma = ds.y_train.std(axis=0)
    noise = scale * sigma * rng.normal(size=ds.y_train.shape)
    y = np.where(mask[:, None], ds.y_train + noise, ds.y_train).astype(ds.y_train.dtype)
    info = _record(ds, "regression_outliers", fraction=fraction, scale=scale, seed=seed)
    info.update(
        outliers=mask,
        y_train_clean=ds.y_train,
        outlier_fraction=fraction,
        outlier_scale=scale,
    )
    return dataclasses.replace(ds, y_train=y, info=info)


# --------------------------------------------------------------------------- #
# Batches
# --------------------------------------------------------------------------- #


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches per epoch: ⌊n / b⌋ with ``drop_last``, else ⌈n / b⌉.

    Args:
      n: number of samples, ≥ 1.
      batch_size: samples per batch, in [1, n].
      drop_last: drop the final partial batch.

    Raises:
      ValueError: non-positive sizes or ``batch_size > n``.
    """
    if not _is_int(n) or n < 1:
        raise ValueError(f"n={n!r}; expected a positive int")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} samples; expected batch_size <= {n}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(x, y, batch_size: int, key: jax.Array, *, drop_last: bool = True) -> Iterator[tuple[Any, Any]]:
    """One epoch of shuffled mini-batches in the order ``jax.random.permutation(key, n)``.

    The same key gives the same order; split a fresh key per epoch. Batches are
    numpy arrays for numpy inputs and JAX arrays for JAX inputs. Arguments are
    checked when this is called, not at the first ``next``.

    Args:
      x: inputs, shape (n, ...).
      y: targets, shape (n, ...).
      batch_size: samples per batch, in [1, n].
      key: a ``jax.random`` key.
      drop_last: drop the final partial batch (then every batch has
        ``batch_size`` rows, which avoids recompiling a jitted step); with
        ``False`` every sample appears exactly once.

    Returns:
      An iterator over ``(x_batch, y_batch)``, :func:`num_batches` of them.

    Raises:
      ValueError: mismatched lengths or a bad ``batch_size``.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}; expected equal lengths")
    count = num_batches(n, batch_size, drop_last)
    order = np.asarray(jax.random.permutation(key, n))

    def generate():
        for i in range(count):
            index = order[i * batch_size : (i + 1) * batch_size]
            yield x[index], y[index]

    return generate()


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "teacher": _load_teacher,
    "gaussian_mixture": _load_gaussian_mixture,
    "spirals": _load_spirals,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "npz": _load_npz,
}
