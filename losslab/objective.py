"""The Objective: the one pure function every landscape tool looks at.

An :class:`Objective` binds a model (through the model protocol of
:mod:`losslab.adapters`: Flax NNX, linen, equinox, haiku or a plain
``apply_fn(params, x)``), a per-example loss, optional regularizers and a
dataset into pure, jit-able functions of ``params``:

.. math::  L(\\theta) = \\frac{1}{n} \\sum_{i=1}^n \\ell(f_\\theta(x_i), y_i) + R(\\theta)

It is itself a JAX pytree (data arrays and state are leaves; the model graph,
loss and sizes are static), so it can be passed *as an argument* to jitted
functions instead of being closed over: the dataset is never baked into a
compiled program as a constant.

``params`` is any pytree of float arrays: nested dicts for NNX (``nnx.State.to_pure_dict``,
e.g. ``params["layers"][0]["kernel"]``) and linen/haiku, the module itself for equinox.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from losslab import adapters
from losslab import losses as losses_lib
from losslab.stream import Stream, is_stream
from losslab.trees import path_str

Array = jax.Array
Batch = tuple[Array, Array]
SPLITS = ("train", "val", "test")


def check_mesh(mesh, axis: str, chunk_size: int, n: int) -> None:
    """Raises ``ValueError`` unless ``mesh`` (or None) has ``axis`` and a chunk of rows splits evenly over it."""
    if mesh is None:
        return
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    d = mesh.shape[axis]
    c = min(chunk_size, n)
    if c % d:
        raise ValueError(f"the chunk of {c} rows does not split evenly over the {d} devices of mesh axis {axis!r}")


def chunked_sum(fn: Callable[[Any, Array], Any], rows, chunk_size: int, *, mesh=None, axis: str = "data") -> Any:
    """Sums ``fn(rows_chunk, weights)`` over fixed-size chunks of ``rows`` in one ``lax.scan``.

    ``rows`` is a pytree of arrays sharing the leading dimension N (e.g. ``(x, y)``). The last
    chunk is padded with copies of row 0 at weight 0, so the sum is exact provided ``fn``
    weights each row's contribution by ``weights`` (1 for real rows, 0 for padding); memory is
    bounded by one chunk. With a ``mesh`` each chunk's rows are sharded over ``axis`` (the
    chunk must split evenly; see :func:`check_mesh`) and XLA inserts the reduction.

    Args:
      fn: ``(rows_chunk, weights) -> pytree`` for one chunk of at most ``chunk_size`` rows.
      rows: pytree of ``(N, ...)`` arrays.
      chunk_size: rows per chunk; N no larger than this is one call (no scan).
      mesh, axis: optional ``jax.sharding.Mesh`` and the axis that splits the rows.

    Returns:
      The pytree sum over all chunks.
    """
    if is_stream(rows):
        if mesh is not None:
            raise ValueError("a mesh with streamed data is not supported: shard the data at rest instead")
        return _stream_sum(fn, rows)
    n = jax.tree.leaves(rows)[0].shape[0]
    chunk_size = min(chunk_size, n)
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    dtype = jnp.result_type(
        *[a.dtype for a in jax.tree.leaves(rows) if jnp.issubdtype(a.dtype, jnp.floating)] or [float]
    )

    def prepare(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
        return a.reshape(num_chunks, chunk_size, *a.shape[1:])

    weights = jnp.concatenate([jnp.ones((n,), dtype), jnp.zeros((pad,), dtype)]).reshape(num_chunks, chunk_size)
    chunks = jax.tree.map(prepare, rows)
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, axis))
        chunks, weights = jax.lax.with_sharding_constraint((chunks, weights), sharding)
    if num_chunks == 1:
        return fn(jax.tree.map(lambda a: a[0], chunks), weights[0])
    first = jax.tree.map(lambda a: a[0], chunks)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first, weights[0]))

    def body(acc, chunk):
        r, w = chunk
        return jax.tree.map(jnp.add, acc, fn(r, w)), None

    total, _ = jax.lax.scan(body, init, (chunks, weights))
    return total


def check_params_pytree(params) -> None:
    """Raises ``TypeError`` unless ``params`` is a non-empty pytree whose leaves are all numeric arrays."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise TypeError("params is an empty pytree: the model has no trainable parameters")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
            raise TypeError(
                f"params leaf {path_str(path)!r} is {type(leaf).__name__} ({dtype}); params must be a pytree of float "
                "arrays (put integer or static values in the model, not in params)"
            )


def _stream_sum(fn, stream: Stream):
    """:func:`chunked_sum` over a :class:`~losslab.stream.Stream`: one host-fetched batch per scan step.

    Each chunk is ``(x, y, row_index)`` with padding weights. The step is rematerialised, so a
    reverse-mode derivative re-reads its batch instead of storing every batch's activations.
    """

    @jax.checkpoint
    def chunk(b):
        x, y, idx, w = stream.fetch(b)
        return fn((x, y, idx), w)

    init = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(chunk, jnp.int32(0)))

    def body(acc, b):
        return jax.tree.map(jnp.add, acc, chunk(b)), None

    total, _ = jax.lax.scan(body, init, jnp.arange(stream.num_batches, dtype=jnp.int32))
    return total


def num_rows(rows) -> int:
    """Rows of a batch pytree (leading dimension) or of a :class:`~losslab.stream.Stream`."""
    return rows.num_examples if is_stream(rows) else int(jax.tree.leaves(rows)[0].shape[0])


def indexed_rows(rows):
    """``(x, y)`` as ``(x, y, row_index)``; a stream already yields the row index with every batch."""
    if is_stream(rows):
        return rows
    x, y = rows[0], rows[1]
    return (x, y, jnp.arange(num_rows(rows), dtype=jnp.int32))


@jax.tree_util.register_pytree_node_class
class Objective:
    """A model + loss + regularizers + data, as pure functions of ``params``.

    The model comes through the model protocol (:mod:`losslab.adapters`): a Flax NNX module, or a
    :class:`~losslab.adapters.Bound` model from ``adapters.linen`` / ``adapters.equinox`` /
    ``adapters.haiku``; a plain ``apply_fn`` goes through :meth:`from_apply`.

    Args:
      model: a Flax NNX module mapping a batch ``x`` to outputs ``(batch, output_dim)`` (if its
        ``__call__`` takes ``train=`` (and ``key=`` for dropout), training calls it with
        ``train=True, key=...`` and everything else with ``train=False``, as losslab's models
        do; a plain ``__call__(self, x)`` works too), or an ``adapters.Bound`` model.
      loss: a loss name (see :data:`losslab.losses.LOSSES`) or a :class:`~losslab.losses.Loss`.
      data: a :class:`losslab.data.Dataset` (or anything with ``x_train``, ``y_train``,
        ``x_val``, ``y_val``, ``x_test``, ``y_test``, ``task``, ``num_classes``).
      regularizers: penalties added to :meth:`loss` (the training objective), never to
        :meth:`data_loss` or :meth:`evaluate`.
      chunk_size: rows per chunk for full-dataset evaluation; bounds memory.
      dtype: cast data and params to this float dtype (e.g. ``jnp.float64`` in exactness
        tests); None keeps them.

    Attributes:
      params: the model's initial parameters (any pytree; nested dicts for NNX).
      state: the non-trainable state (BatchNorm statistics), a pytree (``{}`` without one).
      model: the :class:`~losslab.adapters.Model` (static).
      loss_fn: the per-example :class:`~losslab.losses.Loss`.

    Raises:
      TypeError: the model is neither an NNX module nor an ``adapters.Bound`` model.
      ValueError: the loss does not fit the task, the model's output width does not match
        the number of classes/targets, or the data fail validation.
    """

    def __init__(
        self,
        model,
        loss: str | losses_lib.Loss,
        data,
        *,
        regularizers: Sequence[Callable] = (),
        chunk_size: int = 1024,
        dtype=None,
    ):
        bound = adapters.bind(model)
        params, state = bound.params, bound.state
        check_params_pytree(params)
        self.loss_fn = losses_lib.get(loss)
        self.model = bound.model
        self.regularizers = tuple(regularizers)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.task = data.task
        self.num_classes = data.num_classes
        self.name = getattr(data, "name", "data")
        if self.task not in self.loss_fn.tasks:
            raise ValueError(
                f"loss {self.loss_fn.name!r} does not apply to a {self.task} task; it supports {self.loss_fn.tasks}"
            )

        def cast(a, is_x):
            a = jnp.asarray(a)
            if dtype is not None and (is_x or jnp.issubdtype(a.dtype, jnp.floating)):
                a = a.astype(dtype)
            return a

        self.data = {}
        if is_stream(data):
            self.data["train"] = data if dtype is None else data.with_dtype(dtype)
        for split in SPLITS if not is_stream(data) else ():
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            if x is None or len(x) == 0:
                continue
            self._check_split(split, np.asarray(x), np.asarray(y))
            self.data[split] = (cast(x, True), cast(y, False))
        if "train" not in self.data:
            raise ValueError("the dataset has no training split")
        if dtype is not None:
            params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
            state = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, state)
        self.params = params
        self.state = state
        self.param_offset = None
        self.param_scale = None
        self._check_model()

    # -- pytree protocol ---------------------------------------------------
    def tree_flatten(self):
        """Pytree protocol: params, state and data are leaves; the model graph, loss and sizes are static."""
        children = (self.params, self.state, self.data, self.param_offset, self.param_scale)
        aux = (self.model, self.loss_fn, self.regularizers, self.chunk_size, self.task, self.num_classes, self.name)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        """Pytree protocol: rebuilds an Objective from :meth:`tree_flatten`'s output."""
        obj = object.__new__(cls)
        obj.params, obj.state, obj.data, obj.param_offset, obj.param_scale = children
        (obj.model, obj.loss_fn, obj.regularizers, obj.chunk_size, obj.task, obj.num_classes, obj.name) = aux
        return obj

    def replace(self, **changes) -> Objective:
        """A copy with some attributes replaced (e.g. ``state=``, ``data=``, ``loss_fn=``)."""
        children, aux = self.tree_flatten()
        new = Objective.tree_unflatten(aux, children)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise ValueError(f"Objective has no attribute {k!r}")
            setattr(new, k, losses_lib.get(v) if k == "loss_fn" else v)
        return new

    # -- validation ----------------------------------------------------------
    def _check_split(self, split, x, y):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{split} split: {x.shape[0]} inputs but {y.shape[0]} targets")
        if self.task == "classification":
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{split} split: classification targets must be integer labels of shape (n,), got {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"{split} split: labels must lie in [0, {self.num_classes}), found range [{y.min()}, {y.max()}]"
                )

    def _check_model(self):
        x = self.head(2)[0]
        try:
            out = jax.eval_shape(lambda p, s, xx: self.apply(p, xx, state=s), self.params, self.state, x[:2])
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {e}") from e
        expected = self.output_dim
        if out.ndim != 2 or out.shape[1] != expected:
            raise ValueError(
                f"the model outputs shape {tuple(out.shape[1:])} per example but the {self.task} data needs ({expected},)"
            )

    def check_batch(self, batch, name: str = "batch") -> Batch:
        """Validates a user-given ``(x, y)`` batch against the training split; returns it as a tuple.

        Checks (static, so also under ``jit``): a pair of arrays with the same positive number of rows,
        the per-example input shape and kind (float or integer) of the training inputs, integer labels
        of shape ``(n,)`` for classification or float targets of the training targets' shape for
        regression. Concrete labels (outside ``jit``) are also checked to lie in ``[0, num_classes)``.

        Raises:
          ValueError: naming ``name``, what was found and what was expected.
        """
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"{name} must be an (x, y) pair of arrays, got {type(batch).__name__}")
        x, y = batch
        for arr, part in ((x, "inputs x"), (y, "targets y")):
            if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
                raise ValueError(f"{name}: {part} must be an array, got {type(arr).__name__}")
        x_ref, y_ref = self._train_spec()
        n = x.shape[0] if x.ndim else 0
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"{name}: {n} inputs but targets of shape {tuple(y.shape)}")
        if n == 0:
            raise ValueError(f"{name} is empty: it needs at least one row")
        if tuple(x.shape[1:]) != tuple(x_ref.shape):
            raise ValueError(
                f"{name}: inputs have per-example shape {tuple(x.shape[1:])} but the model takes "
                f"{tuple(x_ref.shape)} (the training inputs' shape)"
            )
        if jnp.issubdtype(x.dtype, jnp.floating) != jnp.issubdtype(x_ref.dtype, jnp.floating):
            raise ValueError(f"{name}: inputs are {x.dtype} but the training inputs are {x_ref.dtype}")
        self._check_targets(name, y, y_ref)
        return x, y

    def _check_targets(self, name, y, y_ref):
        if self.task == "classification":
            if not jnp.issubdtype(y.dtype, jnp.integer) or tuple(y.shape[1:]) != tuple(y_ref.shape):
                raise ValueError(
                    f"{name}: classification targets must be integer labels of shape (n,), got {y.dtype} {tuple(y.shape)}"
                )
            if not isinstance(y, jax.core.Tracer):
                lo, hi = int(jnp.min(y)), int(jnp.max(y))
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(f"{name}: labels must lie in [0, {self.num_classes}), found range [{lo}, {hi}]")
        elif not jnp.issubdtype(y.dtype, jnp.floating) or tuple(y.shape[1:]) != tuple(y_ref.shape):
            raise ValueError(
                f"{name}: regression targets must be float with per-example shape {tuple(y_ref.shape)}, got "
                f"{y.dtype} {tuple(y.shape)}"
            )

    def check_params(self, params, name: str = "params"):
        """Raises ``ValueError`` unless ``params`` has the structure and leaf shapes of ``objective.params``.

        The message names the first leaf that differs (its path, its shape and the expected shape),
        or the paths missing from / unexpected in ``params``. Returns ``params``.
        """
        ref = jax.tree_util.tree_leaves_with_path(self.params)
        got = jax.tree_util.tree_leaves_with_path(params)
        ref_paths = [path_str(p) for p, _ in ref]
        got_paths = [path_str(p) for p, _ in got]
        if jax.tree.structure(params) != jax.tree.structure(self.params):
            missing = sorted(set(ref_paths) - set(got_paths))
            extra = sorted(set(got_paths) - set(ref_paths))
            raise ValueError(
                f"{name} does not have the model's structure: missing {missing or 'nothing'}, unexpected "
                f"{extra or 'nothing'} (expected the leaves {ref_paths})"
            )
        for (path, a), (_, b) in zip(got, ref):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(
                    f"{name} leaf {path_str(path)!r} has shape {tuple(jnp.shape(a))}, expected {tuple(jnp.shape(b))}"
                )
        return params

    def rows(self, batch=None):
        """``batch`` validated by :meth:`check_batch`, or the whole training split when None.

        The training split is an ``(x, y)`` pair, or a :class:`~losslab.stream.Stream` for streamed
        data (a stream passed as ``batch`` is taken as it is).
        """
        if batch is None:
            return self.data["train"]
        return batch if is_stream(batch) else self.check_batch(batch)

    def _train_spec(self):
        """Per-row ``ShapeDtypeStruct`` s of the training inputs and targets."""
        train = self.data["train"]
        if is_stream(train):
            return train.x_spec, train.y_spec
        x, y = train
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype), jax.ShapeDtypeStruct(y.shape[1:], y.dtype)

    def head(self, k: int) -> Batch:
        """The first ``k`` training rows as ``(x, y)`` arrays (of any split layout, streamed or not)."""
        train = self.data["train"]
        if is_stream(train):
            x, y = train.head(k)
            return jnp.asarray(x), jnp.asarray(y)
        return train[0][:k], train[1][:k]

    @property
    def output_dim(self) -> int:
        """Outputs per example: the number of classes, or of regression targets."""
        if self.task == "classification":
            return int(self.num_classes)
        y = self._train_spec()[1]
        return int(y.shape[-1]) if len(y.shape) >= 1 else 1

    @property
    def num_params(self) -> int:
        """The number of trainable parameters (scalars)."""
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self.params))

    def num_examples(self, split: str = "train") -> int:
        """Rows in a split ("train", "val" or "test")."""
        return num_rows(self.batch(split))

    # -- pure functions ------------------------------------------------------
    def batch(self, split: str = "train") -> Batch:
        """The full ``(x, y)`` arrays of a split ("train", "val" or "test")."""
        if split not in self.data:
            raise ValueError(f"unknown or empty split {split!r}; available: {sorted(self.data)}")
        return self.data[split]

    def affine(self, offset, scale) -> Objective:
        r"""The same objective as a function of ``p`` with :math:`\theta = \text{offset} + \text{scale}\cdot p`.

        Every pure function of the result (loss, outputs, curvature, optimizer steps) sees ``p``;
        the model is evaluated at θ. ``offset`` is a params pytree and ``scale`` a scalar (both may
        be traced), e.g. the quadratic Bezier curve
        :math:`(1-t)^2\theta_a + 2t(1-t)\,p + t^2\theta_b` as a function of its control point p.
        The layer tap scales its output perturbation by ``scale`` so that recorded gradients
        (K-FAC, backprop diagonals) are with respect to ``p``. Regularizers apply to θ.
        """
        if self.param_offset is not None:
            raise ValueError("the objective is already affinely reparametrised; compose the two maps into one")
        new = self.replace()
        new.param_offset = offset
        new.param_scale = jnp.asarray(scale)
        return new

    def effective_params(self, params):
        """The params the model is evaluated at: ``params``, or ``offset + scale·params`` after :meth:`affine`."""
        if self.param_offset is None:
            return params
        scale = self.param_scale
        return jax.tree.map(lambda o, p: o + scale.astype(p.dtype) * p, self.param_offset, params)

    @classmethod
    def from_apply(
        cls,
        apply_fn: Callable,
        params,
        loss: str | losses_lib.Loss,
        data,
        *,
        state=None,
        filter_axis: int = -1,
        **options,
    ) -> Objective:
        """An Objective over a plain JAX function: the model protocol without a framework.

        ``apply_fn(params, x) -> outputs``, or, with ``state``, ``apply_fn(params, state, x, *,
        train, key)`` returning the outputs in eval mode and ``(outputs, new_state)`` with
        ``train=True``. ``params`` is any pytree of arrays. ``filter_axis``: the kernel axis of
        output units for filter normalisation (-1: the Flax convention). ``options`` as for
        the constructor (``regularizers``, ``chunk_size``, ``dtype``).
        """
        model = adapters.FunctionModel(apply_fn, state is not None, filter_axis)
        return cls(adapters.Bound(model, params, {} if state is None else state), loss, data, **options)

    @property
    def graphdef(self):
        """The NNX graph definition (NNX models only)."""
        if not isinstance(self.model, adapters.NNXModel):
            raise ValueError(f"graphdef exists for Flax NNX models only; this is a {self.model.kind} model")
        return self.model.graphdef

    def module(self, params=None, state=None):
        """The framework module for ``(params, state)`` (defaults: the objective's own); NNX models only."""
        params = self.params if params is None else self.effective_params(params)
        state = self.state if state is None else state
        return self.model.module(params, state)

    def apply(self, params, x: Array, *, state=None, train: bool = False, key=None, module_hook=None):
        """Model outputs ``f_θ(x)``. With ``train=True`` returns ``(outputs, new_state)``.

        ``module_hook(module)``, if given, is called on the freshly merged module before it runs
        (the layer tap, :mod:`losslab.layers`, switches layers to recording ones there; NNX only).
        """
        state = self.state if state is None else state
        params = self.effective_params(params)
        if module_hook is not None:
            if not isinstance(self.model, adapters.NNXModel):
                self.model.module(params, state)  # raises: the layer tap needs an NNX model
            return self.model.apply(params, state, x, train=train, key=key, module_hook=module_hook)
        return self.model.apply(params, state, x, train=train, key=key)

    def outputs(self, params, x: Array) -> Array:
        """Eval-mode outputs ``(batch, output_dim)`` (no dropout, stored BatchNorm statistics)."""
        return self.apply(params, x)

    def per_example_loss(self, params, batch: Batch | None = None) -> Array:
        """Eval-mode per-example data loss ``ℓ(f_θ(x_i), y_i)``, shape ``(batch,)``.

        ``batch=None`` is the whole training set (in one call; use :meth:`data_loss`
        for a chunked mean).
        """
        rows = self.rows(batch)
        if is_stream(rows):
            raise ValueError("per_example_loss needs an in-memory batch; with streamed data use data_loss (the mean)")
        x, y = rows
        return self.loss_fn(self.outputs(params, x), y)

    def regularization(self, params) -> Array:
        """The sum of the regularizers R(θ) (0 without regularizers)."""
        params = self.effective_params(params)
        total = jnp.zeros((), jax.tree.leaves(params)[0].dtype)
        for reg in self.regularizers:
            total = total + reg(params)
        return total

    def _sums(self, params, batch: Batch):
        """(sum of losses, number correct) over a batch, chunked."""

        def fn(rows, w):
            x, y = rows[0], rows[1]
            out = self.outputs(params, x)
            lossv = jnp.sum(w * self.loss_fn(out, y))
            if self.task == "classification":
                correct = jnp.sum(w * (jnp.argmax(out, -1) == y))
            else:
                correct = jnp.zeros((), lossv.dtype)
            return lossv, correct

        return chunked_sum(fn, batch, self.chunk_size)

    def data_loss(self, params, batch: Batch | None = None) -> Array:
        """Exact mean data loss ``(1/n) Σ ℓ_i`` over ``batch`` (None: the training set), chunked."""
        batch = self.rows(batch)
        return self._sums(params, batch)[0] / num_rows(batch)

    def loss(self, params, batch: Batch | None = None) -> Array:
        """The training objective ``L(θ) = (1/n) Σ ℓ_i + R(θ)`` in eval mode; None = training set."""
        return self.data_loss(params, batch) + self.regularization(params)

    def accuracy(self, params, batch: Batch | None = None) -> Array:
        """Fraction of correctly classified examples (NaN for regression); None = training set."""
        if self.task != "classification":
            return jnp.asarray(jnp.nan)
        batch = self.rows(batch)
        return self._sums(params, batch)[1] / num_rows(batch)

    def evaluate(self, params, split: str = "test") -> dict[str, Array]:
        """Eval-mode ``{"loss", "accuracy", "error"}`` on a split; loss excludes regularizers."""
        batch = self.batch(split)
        total, correct = self._sums(params, batch)
        n = num_rows(batch)
        acc = correct / n if self.task == "classification" else jnp.asarray(jnp.nan)
        return {"loss": total / n, "accuracy": acc, "error": 1.0 - acc}

    def train_loss(self, params, state, batch: Batch, key) -> tuple[Array, Any]:
        """Train-mode minibatch objective (dropout on, BatchNorm batch statistics).

        Returns ``(loss, new_state)``; ``loss`` includes the regularizers.
        """
        x, y = batch
        out, new_state = self.apply(params, x, state=state, train=True, key=key)
        return jnp.mean(self.loss_fn(out, y)) + self.regularization(params), new_state

    def __repr__(self) -> str:
        regs = f", regularizers={list(self.regularizers)}" if self.regularizers else ""
        model = type(self.module()).__name__ if isinstance(self.model, adapters.NNXModel) else self.model.name()
        return (
            f"Objective({model}, "
            f"loss={self.loss_fn}, data={self.name!r} n_train={self.num_examples()}, "
            f"params={self.num_params}{regs})"
        )
