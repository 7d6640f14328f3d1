r"""Data that does not fit in memory: a finite, re-readable source of batches, read inside compiled loops.

A :class:`Stream` stands for the training split of an :class:`~losslab.Objective` when the data
live on disk (a ``numpy.memmap``), in a ``grain`` loader, or behind any re-iterable factory of
``(x, y)`` batches. Every full-data quantity — the loss, its gradient, every curvature operator,
surfaces — is then the exact mean over all N examples:

.. math::  L(\theta) = \frac1N \sum_{b} \sum_{i \in b} \ell_i(\theta),

visited batch by batch inside the same ``lax.scan`` that chunks in-memory data. Each step fetches
batch b from the host (``jax.pure_callback``; padded to the batch size with weight-0 rows, so the
sum is exact) and the scan body is rematerialised (``jax.checkpoint``), so reverse-mode
derivatives re-read a batch instead of keeping every batch's activations: device memory is
bounded by one batch, host memory by one batch plus the reader's buffers.

Readers:

* :func:`from_arrays` — ``x``, ``y`` arrays or ``numpy.memmap`` s (memmaps are read with
  ``os.pread`` into fresh buffers, so the file's pages do not stay mapped in the process);
* :func:`from_batches` — ``factory() -> iterable of (x, y)``, re-iterable and the same every time
  (a ``grain`` ``DataLoader`` / ``MapDataset`` or a generator function); batches are read in order,
  the iterator restarting when a pass begins again.

Construction reads the source once to count rows and validate every batch (shapes, dtypes,
finite inputs, label ranges) before any compute.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("classification", "regression")


class _MemmapReader:
    """Row slices of a C-contiguous ``numpy.memmap`` read with ``os.pread`` (no lasting page mapping)."""

    def __init__(self, arr: np.memmap):
        if not arr.flags.c_contiguous:
            raise ValueError("a memmap stream needs a C-contiguous array")
        self.path = arr.filename
        self.offset = int(arr.offset)
        self.dtype = arr.dtype
        self.row_shape = arr.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * arr.dtype.itemsize
        self.length = arr.shape[0]

    def __call__(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            raw = os.pread(f.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(raw, self.dtype).reshape(stop - start, *self.row_shape)


def _slicer(arr) -> Callable[[int, int], np.ndarray]:
    if isinstance(arr, np.memmap):
        return _MemmapReader(arr)
    arr = np.asarray(arr)
    return lambda start, stop: arr[start:stop]


class Stream:
    """A finite source of ``(x, y)`` batches that compiled loops read one batch at a time.

    Static: it is a pytree with no leaves, so it travels inside an Objective through ``jit``
    (a different stream means a different compiled program). Build one with :func:`from_arrays` or
    :func:`from_batches`.

    Attributes:
      num_examples: N, the rows over all batches.
      batch_size: rows per batch (the last batch is padded with weight-0 rows).
      num_batches: batches per pass.
      x_spec, y_spec: per-row shape and dtype of inputs and targets (``jax.ShapeDtypeStruct``).
      task, num_classes, name: as for a :class:`~losslab.data.Dataset`.
    """

    def __init__(self, read: Callable[[int], tuple], *, num_examples, batch_size, x_spec, y_spec, task,
                 num_classes, name, dtype=None):
        self._read = read
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.num_batches = -(-self.num_examples // self.batch_size)
        self.x_spec, self.y_spec = x_spec, y_spec
        self.task, self.num_classes, self.name = task, num_classes, name
        self.dtype = dtype

    # The stream is static: no leaves, itself as the treedef's auxiliary data.
    def tree_flatten(self):
        """Pytree protocol: no leaves; the stream itself is the static part."""
        return (), self

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Pytree protocol: the stream is its own static part."""
        return aux

    def __iter__(self):
        raise TypeError(
            "a Stream is not an (x, y) pair: use objective.num_examples(), objective.head(k) for a few rows, "
            "or stream.batches() to iterate on the host"
        )

    def with_dtype(self, dtype) -> Stream:
        """The same stream, its float inputs and targets cast to ``dtype`` when read."""
        x_dtype = dtype if jnp.issubdtype(self.x_spec.dtype, jnp.floating) else self.x_spec.dtype
        y_dtype = dtype if jnp.issubdtype(self.y_spec.dtype, jnp.floating) else self.y_spec.dtype
        return Stream(self._read, num_examples=self.num_examples, batch_size=self.batch_size,
                      x_spec=jax.ShapeDtypeStruct(self.x_spec.shape, x_dtype),
                      y_spec=jax.ShapeDtypeStruct(self.y_spec.shape, y_dtype), task=self.task,
                      num_classes=self.num_classes, name=self.name, dtype=dtype)

    @property
    def weight_dtype(self):
        """The dtype of the padding weights: the inputs' float dtype (float32 for integer inputs)."""
        return self.x_spec.dtype if jnp.issubdtype(self.x_spec.dtype, jnp.floating) else np.dtype(np.float32)

    def read(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Batch ``b`` as host arrays ``(x, y, row_index, weight)``, padded to ``batch_size`` rows."""
        x, y = self._read(int(b))
        n = x.shape[0]
        pad = self.batch_size - n
        start = int(b) * self.batch_size
        x = np.asarray(x, self.x_spec.dtype)
        y = np.asarray(y, self.y_spec.dtype)
        if pad:
            x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
            y = np.concatenate([y, np.repeat(y[:1], pad, axis=0)])
        idx = np.arange(start, start + self.batch_size, dtype=np.int32)
        w = np.concatenate([np.ones(n, self.weight_dtype), np.zeros(pad, self.weight_dtype)])
        return x, y, idx, w

    def fetch(self, b) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Batch ``b`` (a traced index) on the device: ``(x, y, row_index, weight)`` from a host callback."""
        bs = self.batch_size
        shapes = (
            jax.ShapeDtypeStruct((bs, *self.x_spec.shape), self.x_spec.dtype),
            jax.ShapeDtypeStruct((bs, *self.y_spec.shape), self.y_spec.dtype),
            jax.ShapeDtypeStruct((bs,), jnp.int32),
            jax.ShapeDtypeStruct((bs,), self.weight_dtype),
        )
        return jax.pure_callback(self.read, shapes, b, vmap_method="sequential")

    def head(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``min(k, N)`` rows as host arrays (shape checks, BatchNorm calibration)."""
        xs, ys, got = [], [], 0
        for b in range(self.num_batches):
            x, y, _, w = self.read(b)
            take = min(int(w.sum()), k - got)
            xs.append(x[:take])
            ys.append(y[:take])
            got += take
            if got >= k:
                break
        return np.concatenate(xs), np.concatenate(ys)

    def batches(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Iterates over the (unpadded) batches on the host."""
        for b in range(self.num_batches):
            x, y, _, w = self.read(b)
            n = int(w.sum())
            yield x[:n], y[:n]

    def __repr__(self) -> str:
        return (f"Stream({self.name!r}, {self.num_examples} rows in {self.num_batches} batches of {self.batch_size}, "
                f"x {self.x_spec.shape} {self.x_spec.dtype}, y {self.y_spec.shape} {self.y_spec.dtype})")


jax.tree_util.register_pytree_node(Stream, Stream.tree_flatten, Stream.tree_unflatten)


def _check_batch(b, x, y, x_spec, y_spec, task, num_classes):
    where = f"batch {b}"
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} inputs but {y.shape[0]} targets")
    if x.shape[1:] != x_spec.shape or y.shape[1:] != y_spec.shape:
        raise ValueError(
            f"{where}: rows of shape x {x.shape[1:]}, y {y.shape[1:]} differ from the first batch's "
            f"x {x_spec.shape}, y {y_spec.shape}"
        )
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"{where}: inputs contain NaN or Inf")
    if task == "classification":
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ValueError(f"{where}: classification targets must be integer labels of shape (n,), got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{where}: labels must lie in [0, {num_classes}), found range [{y.min()}, {y.max()}]")
    elif not np.all(np.isfinite(y)):
        raise ValueError(f"{where}: regression targets contain NaN or Inf")


def _task(task, num_classes):
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "classification" and (not isinstance(num_classes, (int, np.integer)) or num_classes < 2):
        raise ValueError(f"a classification stream needs num_classes >= 2, got {num_classes!r}")
    if task == "regression" and num_classes is not None:
        raise ValueError(f"num_classes={num_classes!r} given for a regression stream; expected None")


def from_arrays(x, y, *, batch_size: int, task: str = "classification", num_classes: int | None = None,
                name: str = "stream") -> Stream:
    """A stream over ``x``, ``y`` arrays (e.g. ``numpy.memmap`` s of a dataset on disk), ``batch_size`` rows a batch.

    Raises:
      ValueError: mismatched lengths, bad batch size, task or labels (every batch is checked once).
    """
    _task(task, num_classes)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n = len(x)
    if len(y) != n or n == 0:
        raise ValueError(f"x and y must have the same positive number of rows, got {n} and {len(y)}")
    read_x, read_y = _slicer(x), _slicer(y)

    def read(b):
        start = b * batch_size
        stop = min(start + batch_size, n)
        return read_x(start, stop), read_y(start, stop)

    x_spec = jax.ShapeDtypeStruct(tuple(x.shape[1:]), np.dtype(x.dtype))
    y_spec = jax.ShapeDtypeStruct(tuple(y.shape[1:]), np.dtype(y.dtype))
    stream = Stream(read, num_examples=n, batch_size=min(batch_size, n), x_spec=x_spec, y_spec=y_spec, task=task,
                    num_classes=num_classes, name=name)
    for b in range(stream.num_batches):
        _check_batch(b, *read(b), x_spec, y_spec, task, num_classes)
    return stream


class _Batches:
    """Random access to the i-th batch of a re-iterable factory, cheap when read in order."""

    def __init__(self, factory):
        self.factory = factory
        self.iterator = None
        self.next = 0

    def __call__(self, b: int):
        if self.iterator is None or b < self.next:
            self.iterator, self.next = iter(self.factory()), 0
        while self.next < b:
            next(self.iterator)
            self.next += 1
        x, y = next(self.iterator)
        self.next += 1
        return np.asarray(x), np.asarray(y)


def from_batches(source: Callable[[], Iterable] | Iterable, *, task: str = "classification",
                 num_classes: int | None = None, name: str = "stream") -> Stream:
    """A stream over a re-iterable source of ``(x, y)`` batches: a factory ``() -> iterable`` or an iterable.

    Every pass must yield the same batches in the same order (a ``grain`` loader with a fixed seed,
    a generator function over files, ...). All batches but the last must have the same size.

    Raises:
      ValueError: a source that is empty, yields something other than ``(x, y)`` pairs, changes
        batch size before the last batch, or holds bad rows (every batch is checked once).
    """
    _task(task, num_classes)
    factory = source if callable(source) else (lambda: source)
    sizes, x_spec, y_spec = [], None, None
    for b, item in enumerate(factory()):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"batch {b}: the source must yield (x, y) pairs, got {type(item).__name__}")
        x, y = np.asarray(item[0]), np.asarray(item[1])
        if x_spec is None:
            x_spec = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
            y_spec = jax.ShapeDtypeStruct(y.shape[1:], y.dtype)
        _check_batch(b, x, y, x_spec, y_spec, task, num_classes)
        if sizes and sizes[-1] != sizes[0]:
            raise ValueError(f"batch {b - 1} has {sizes[-1]} rows but batch 0 has {sizes[0]}: only the last may be smaller")
        sizes.append(x.shape[0])
    if not sizes:
        raise ValueError("the source yielded no batches")
    return Stream(_Batches(factory), num_examples=sum(sizes), batch_size=sizes[0], x_spec=x_spec, y_spec=y_spec,
                  task=task, num_classes=num_classes, name=name)


def is_stream(rows: Any) -> bool:
    """Whether ``rows`` is a :class:`Stream` (else an in-memory pytree of arrays)."""
    return isinstance(rows, Stream)


__all__ = ["TASKS", "Stream", "from_arrays", "from_batches", "is_stream"]
