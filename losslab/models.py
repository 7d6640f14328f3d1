"""Flax NNX models: MLP, 1-D CNN, small 2-D CNN and a small ResNet with a plain twin.

Every model is called as ``model(x, train=False, key=None)`` on a batch
``x`` of shape ``(batch, *input_shape)`` and returns ``(batch, output_dim)``.
``train=True`` turns on dropout (which then needs ``key``) and BatchNorm batch
statistics; the landscape tools always use ``train=False`` (eval mode).

Build one by name with :func:`create`; the split into a params pytree and the
rest of the state happens in :class:`losslab.Objective`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from losslab.registry import lookup

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "identity": lambda x: x,
}


class _Regularised(nnx.Module):
    """Shared optional BatchNorm / Dropout plumbing."""

    def _norm(self, features: int, batch_norm: bool, rngs: nnx.Rngs):
        return nnx.BatchNorm(features, momentum=0.9, rngs=rngs) if batch_norm else None

    @staticmethod
    def _apply_norm(norm, x, train: bool):
        return x if norm is None else norm(x, use_running_average=not train)

    @staticmethod
    def _apply_dropout(dropout, x, train: bool, key):
        if dropout is None or not train:
            return x
        if key is None:
            raise ValueError("training with dropout needs a PRNG key: call model(x, train=True, key=key)")
        return dropout(x, deterministic=False, rngs=key)


class MLP(_Regularised):
    """Multilayer perceptron ``in -> widths... -> out`` with optional BatchNorm and Dropout.

    Each hidden layer is Dense -> [BatchNorm] -> activation -> [Dropout].

    Args:
      in_features: flattened input size.
      widths: hidden layer widths (may be empty: a linear model).
      out_features: output size.
      activation: a key of :data:`ACTIVATIONS`.
      dropout: dropout rate after each hidden activation (0 disables).
      batch_norm: BatchNorm before each hidden activation.
      residual: add ``x + layer(x)`` around hidden layers of equal width (a residual MLP).
      rngs: NNX random streams for initialisation.
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        residual: bool = False,
        rngs: nnx.Rngs,
    ):
        self.activation = lookup(ACTIVATIONS, activation, "activation")
        self.residual = residual
        sizes = [in_features, *widths]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([self._norm(b, batch_norm, rngs) for b in widths])
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(sizes[-1], out_features, rngs=rngs)

    def __call__(self, x, *, train: bool = False, key=None):
        x = x.reshape(x.shape[0], -1)
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, max(len(self.layers), 1)))
        for layer, norm, k in zip(self.layers, self.norms, keys):
            h = self.activation(self._apply_norm(norm, layer(x), train))
            h = self._apply_dropout(self.dropout, h, train, k)
            x = x + h if self.residual and h.shape == x.shape else h
        return self.head(x)


class CNN1D(_Regularised):
    """1-D convolutional network for sequences such as MNIST-1D (Greydanus 2020).

    ``len(channels)`` Conv1D(kernel, stride 2) -> [BatchNorm] -> activation blocks,
    flatten, Dense(hidden) -> activation -> [Dropout] -> Dense(out).
    Inputs ``(batch, length)`` or ``(batch, length, in_channels)``.
    """

    def __init__(
        self,
        length: int,
        out_features: int,
        *,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        hidden: int = 64,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.activation = lookup(ACTIVATIONS, activation, "activation")
        sizes = [in_channels, *channels]
        self.convs = nnx.List(
            [nnx.Conv(a, b, kernel_size=(kernel_size,), strides=(2,), rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.norms = nnx.List([self._norm(b, batch_norm, rngs) for b in channels])
        out_len = length
        for _ in channels:
            out_len = -(-out_len // 2)
        self.fc = nnx.Linear(out_len * sizes[-1], hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(hidden, out_features, rngs=rngs)

    def __call__(self, x, *, train: bool = False, key=None):
        if x.ndim == 2:
            x = x[..., None]
        for conv, norm in zip(self.convs, self.norms):
            x = self.activation(self._apply_norm(norm, conv(x), train))
        x = self.activation(self.fc(x.reshape(x.shape[0], -1)))
        x = self._apply_dropout(self.dropout, x, train, key)
        return self.head(x)


class CNN2D(_Regularised):
    """Small 2-D CNN: Conv3x3 -> [BN] -> act -> 2x2 avg-pool blocks, then Dense layers.

    Inputs ``(batch, height, width, channels)`` (or ``(batch, height, width)``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        *,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        height, width, in_ch = (*input_shape, 1)[:3] if len(input_shape) == 2 else input_shape
        self.activation = lookup(ACTIVATIONS, activation, "activation")
        sizes = [in_ch, *channels]
        self.convs = nnx.List([nnx.Conv(a, b, kernel_size=(3, 3), rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([self._norm(b, batch_norm, rngs) for b in channels])
        for _ in channels:
            height, width = height // 2, width // 2
        self.fc = nnx.Linear(height * width * sizes[-1], hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(hidden, out_features, rngs=rngs)

    def __call__(self, x, *, train: bool = False, key=None):
        if x.ndim == 3:
            x = x[..., None]
        for conv, norm in zip(self.convs, self.norms):
            x = self.activation(self._apply_norm(norm, conv(x), train))
            x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = self.activation(self.fc(x.reshape(x.shape[0], -1)))
        x = self._apply_dropout(self.dropout, x, train, key)
        return self.head(x)


class _Block(_Regularised):
    """conv -> [BN] -> act -> conv -> [BN] (+ shortcut) -> act."""

    def __init__(self, channels: int, kernel: tuple[int, ...], *, skip: bool, batch_norm: bool, activation, rngs):
        self.conv1 = nnx.Conv(channels, channels, kernel_size=kernel, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, kernel_size=kernel, rngs=rngs)
        self.norm1 = self._norm(channels, batch_norm, rngs)
        self.norm2 = self._norm(channels, batch_norm, rngs)
        self.skip = skip
        self.activation = activation

    def __call__(self, x, train: bool):
        h = self.activation(self._apply_norm(self.norm1, self.conv1(x), train))
        h = self._apply_norm(self.norm2, self.conv2(h), train)
        return self.activation(x + h if self.skip else h)


class ResNet(_Regularised):
    """A small ResNet (He et al. 2016) for 1-D or 2-D inputs, with a plain twin.

    Stem conv -> for each stage width: a strided conv changing width, then
    ``blocks_per_stage`` two-conv blocks -> global average pool -> Dense.
    ``skip=False`` gives the plain network of identical depth and parameter
    shapes (Li et al. 2018's skip-connection contrast).

    Args:
      input_shape: ``(length,)``/``(length, C)`` for 1-D, ``(H, W)``/``(H, W, C)`` for 2-D.
      out_features: output size.
      spatial_dims: 1 or 2 (inferred by :func:`create` from the data).
      widths: channel width per stage.
      blocks_per_stage: residual blocks per stage (depth = 2 + len(widths) * (1 + 2 * blocks)).
      skip: residual connections on (ResNet) or off (plain twin).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        *,
        spatial_dims: int = 2,
        widths: Sequence[int] = (16, 32),
        blocks_per_stage: int = 1,
        skip: bool = True,
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (1, 2):
            raise ValueError(f"ResNet spatial_dims must be 1 or 2, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        in_ch = input_shape[spatial_dims] if len(input_shape) > spatial_dims else 1
        kernel = (3,) * spatial_dims
        self.activation = lookup(ACTIVATIONS, activation, "activation")
        self.stem = nnx.Conv(in_ch, widths[0], kernel_size=kernel, rngs=rngs)
        self.stem_norm = self._norm(widths[0], batch_norm, rngs)
        prev = widths[0]
        self.downs = nnx.List()
        self.down_norms = nnx.List()
        self.blocks = nnx.List()
        for i, w in enumerate(widths):
            stride = (1 if i == 0 else 2,) * spatial_dims
            self.downs.append(nnx.Conv(prev, w, kernel_size=kernel, strides=stride, rngs=rngs))
            self.down_norms.append(self._norm(w, batch_norm, rngs))
            self.blocks.append(
                nnx.List(
                    [
                        _Block(w, kernel, skip=skip, batch_norm=batch_norm, activation=self.activation, rngs=rngs)
                        for _ in range(blocks_per_stage)
                    ]
                )
            )
            prev = w
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.head = nnx.Linear(prev, out_features, rngs=rngs)

    def __call__(self, x, *, train: bool = False, key=None):
        if x.ndim == self.spatial_dims + 1:
            x = x[..., None]
        x = self.activation(self._apply_norm(self.stem_norm, self.stem(x), train))
        for down, norm, blocks in zip(self.downs, self.down_norms, self.blocks):
            x = self.activation(self._apply_norm(norm, down(x), train))
            for block in blocks:
                x = block(x, train)
        x = jnp.mean(x, axis=tuple(range(1, 1 + self.spatial_dims)))
        x = self._apply_dropout(self.dropout, x, train, key)
        return self.head(x)


# --------------------------------------------------------------------------
# Registry


def _mlp(input_shape, output_dim, rngs, *, widths=(64,), **kw):
    size = 1
    for d in input_shape:
        size *= d
    return MLP(size, tuple(widths), output_dim, rngs=rngs, **kw)


def _cnn1d(input_shape, output_dim, rngs, **kw):
    in_ch = input_shape[1] if len(input_shape) > 1 else 1
    return CNN1D(input_shape[0], output_dim, in_channels=in_ch, rngs=rngs, **kw)


def _cnn2d(input_shape, output_dim, rngs, **kw):
    return CNN2D(tuple(input_shape), output_dim, rngs=rngs, **kw)


def _resnet(input_shape, output_dim, rngs, *, skip=True, **kw):
    spatial = kw.pop("spatial_dims", 1 if len(input_shape) == 1 or (len(input_shape) == 2 and input_shape[1] <= 4) else 2)
    return ResNet(tuple(input_shape), output_dim, spatial_dims=spatial, skip=skip, rngs=rngs, **kw)


def _plain(input_shape, output_dim, rngs, **kw):
    return _resnet(input_shape, output_dim, rngs, skip=False, **kw)


MODELS = {
    "mlp": _mlp,
    "cnn1d": _cnn1d,
    "cnn2d": _cnn2d,
    "resnet": _resnet,
    "plain": _plain,
}


def create(name: str, *, input_shape: Sequence[int], output_dim: int, seed: int = 0, **options) -> nnx.Module:
    """Builds a model by name.

    Args:
      name: a key of :data:`MODELS` (``mlp``, ``cnn1d``, ``cnn2d``, ``resnet``, ``plain``;
        ``plain`` is the ResNet with ``skip=False``).
      input_shape: one example's shape, e.g. ``dataset.input_shape``.
      output_dim: number of outputs (classes, or regression targets).
      seed: initialisation seed (``nnx.Rngs(seed)``).
      **options: the model's keyword arguments (``widths``, ``activation``, ``dropout``,
        ``batch_norm``, ...).

    Raises:
      ValueError: unknown model name, listing the valid ones; bad options.
    """
    factory = lookup(MODELS, name, "model")
    try:
        return factory(tuple(input_shape), int(output_dim), nnx.Rngs(seed), **options)
    except TypeError as e:
        raise ValueError(f"bad options for model {name!r}: {e}") from None
