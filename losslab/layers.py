r"""The layer tap: finding Dense/Conv layers of a model and recording their inputs and output gradients.

K-FAC (:mod:`losslab.curvature.kfac`) and the exact backprop diagonals
(:mod:`losslab.curvature.backprop`) need, for every Dense or Conv layer
:math:`s = W^\top a + b`, the layer input :math:`a` and the gradient of the loss with respect
to the layer output :math:`g = \partial\ell/\partial s`. Both come from one forward pass in which each
tapped layer stores its input and adds a zero perturbation :math:`\epsilon` to its output: the
VJP with respect to :math:`\epsilon` is :math:`g` for every example at once.

The tap goes through the :class:`~losslab.Objective`: the model is merged from its params inside
the pure function (``Objective.apply(..., module_hook=...)``) and the hook switches each tapped
``nnx.Linear`` / ``nnx.Conv`` of that fresh copy to a recording subclass of the same layout.
Nothing outside the traced function is mutated. When the objective reparametrises its params
affinely (``θ = offset + scale·p``, e.g. a point on a Bezier curve), the perturbation enters as
``scale·ε``, so the recorded gradients are those with respect to ``p``.

Covered: ``nnx.Linear`` and ungrouped, unmasked ``nnx.Conv`` (1–3 spatial dimensions), each called
once per forward pass. :func:`find_layers` raises for any other module holding a ``kernel``
(``strict=True``) or skips it (``strict=False``).
"""

from __future__ import annotations

import contextvars
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from losslab.adapters import NNXModel
from losslab.trees import get_path, key_tuple

Array = jax.Array
KINDS = ("dense", "conv")


class Layer(NamedTuple):
    """A tapped layer (static description).

    Attributes:
      path: the module's path in the params tree, e.g. ``("layers", 0)``.
      kind: "dense" or "conv".
      has_bias: whether the layer has a bias (folded into K-FAC's ``A`` as a constant-1 input).
      kernel_shape: ``(d_in, d_out)`` or ``(*kernel_size, c_in, c_out)``.
      conv: for conv layers ``(strides, padding, input_dilation, kernel_dilation)``, else None.
    """

    path: tuple
    kind: str
    has_bias: bool
    kernel_shape: tuple
    conv: tuple | None = None

    @property
    def a_dim(self) -> int:
        """Size of the input factor: fan-in (kernel size × input channels for a conv) + 1 with a bias."""
        return math.prod(self.kernel_shape[:-1]) + int(self.has_bias)

    @property
    def g_dim(self) -> int:
        """Size of the output-gradient factor: the layer's output units / channels."""
        return self.kernel_shape[-1]


class Tape:
    """What one tapped forward pass records: per layer index, its input and its (perturbed) output."""

    def __init__(self, index: dict[int, int], eps, scale):
        self.index = index
        self.eps = eps
        self.scale = scale
        self.inputs: dict[int, Array] = {}
        self.outputs: dict[int, Array] = {}


_TAPE: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("losslab_layer_tape", default=None)


def _recording_call(self, inputs, *args, **kwargs):
    out = type(self).__mro__[1].__call__(self, inputs, *args, **kwargs)
    tape = _TAPE.get()
    if tape is None or id(self) not in tape.index:
        return out
    i = tape.index[id(self)]
    if i in tape.inputs:
        raise ValueError("the layer tap supports each Dense/Conv layer being called once per forward pass (no weight sharing)")
    tape.inputs[i] = inputs
    if tape.eps is not None:
        eps = tape.eps[i] if tape.scale is None else tape.scale * tape.eps[i]
        out = out + eps.astype(out.dtype)
    tape.outputs[i] = out
    return out


# Same-layout subclasses (a mixin base would change the object layout and forbid the class switch).
class RecordingLinear(nnx.Linear):
    """``nnx.Linear`` that records its input and output on the active :class:`Tape`."""

    __call__ = _recording_call


class RecordingConv(nnx.Conv):
    """``nnx.Conv`` that records its input and output on the active :class:`Tape`."""

    __call__ = _recording_call


_RECORDING = {nnx.Linear: RecordingLinear, nnx.Conv: RecordingConv}


def kernel_paths(params) -> tuple[tuple, ...]:
    """Module paths of every ``kernel`` leaf in the params tree, in flatten order."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = key_tuple(path)
        if keys and keys[-1] == "kernel":
            out.append(keys[:-1])
    return tuple(out)


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def conv_config(m: nnx.Conv) -> tuple:
    """``(strides, padding, input_dilation, kernel_dilation)`` of a convolution, padding made explicit."""
    nd = len(m.kernel_size)
    pad = m.padding
    if isinstance(pad, str):
        if pad not in ("SAME", "VALID"):
            raise ValueError(f"the layer tap supports conv padding SAME, VALID or explicit pads, got {pad!r}")
    elif isinstance(pad, int):
        pad = ((pad, pad),) * nd
    else:
        pad = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
    if m.feature_group_count != 1 or getattr(m, "mask", None) is not None:
        raise ValueError("the layer tap supports ungrouped, unmasked convolutions only")
    return (_tuple(m.strides or 1, nd), pad, _tuple(m.input_dilation or 1, nd), _tuple(m.kernel_dilation or 1, nd))


def find_layers(objective, params=None, *, kinds: tuple[str, ...] = KINDS, strict: bool = True) -> tuple[Layer, ...]:
    """The Dense and Conv layers of the objective's model, one per ``kernel`` in ``params``.

    Args:
      objective: the :class:`~losslab.Objective`.
      params: a params pytree (defaults to ``objective.params``).
      kinds: which layer kinds to return ("dense", "conv").
      strict: raise for a ``kernel`` held by any other module, or for a model that is not Flax
        NNX (else skip them: no layers).

    Raises:
      ValueError: (``strict``) a ``kernel`` belongs to a module other than ``nnx.Linear`` /
        ``nnx.Conv``, or to a convolution the tap does not handle (grouped, masked, circular padding).
    """
    params = objective.params if params is None else params
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown layer kind {kind!r}; valid: {KINDS}")
    if not isinstance(objective.model, NNXModel):
        if strict:
            objective.module()  # raises, naming the model kind and the alternative
        return ()
    model = objective.module()
    layers = []
    for path in kernel_paths(params):
        m = get_path(model, path)
        node = get_path(params, path)
        kernel_shape = tuple(node["kernel"].shape)
        has_bias = "bias" in node
        if type(m) is nnx.Linear:
            if "dense" in kinds:
                layers.append(Layer(path, "dense", has_bias, kernel_shape))
        elif type(m) is nnx.Conv:
            if "conv" in kinds:
                layers.append(Layer(path, "conv", has_bias, kernel_shape, conv_config(m)))
        elif strict:
            raise ValueError(
                f"the layer tap (K-FAC, backprop diagonals) covers nnx.Linear and nnx.Conv; the kernel at "
                f"{'/'.join(map(str, path))} belongs to {type(m).__name__}"
            )
    return tuple(layers)


def covered_mask(params, layers) -> list[bool]:
    """Per params leaf (flatten order): whether it is the kernel or bias of one of ``layers``."""
    covered = {layer.path + (name,) for layer in layers for name in ("kernel", "bias")}
    return [key_tuple(path) in covered for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def record(objective, params, x, layers, eps=None):
    """Eval-mode outputs with every layer of ``layers`` recording its input (and adding ``eps`` to its output).

    Returns:
      ``(outputs, inputs, layer_outputs)``: the model outputs and, per layer, its input and output.
    """
    index = {}

    def hook(model):
        for i, layer in enumerate(layers):
            m = get_path(model, layer.path)
            m.__class__ = _RECORDING[type(m)]
            index[id(m)] = i

    tape = Tape(index, eps, objective.param_scale)
    token = _TAPE.set(tape)
    try:
        out = objective.apply(params, x, module_hook=hook)
    finally:
        _TAPE.reset(token)
    missing = [layers[i].path for i in range(len(layers)) if i not in tape.inputs]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    return out, [tape.inputs[i] for i in range(len(layers))], [tape.outputs[i] for i in range(len(layers))]


def inputs_matrix(layer: Layer, a: Array) -> Array:
    """Layer inputs as ``(B, T, a_dim)``: im2col patches for conv, a trailing 1 for the bias."""
    if layer.kind == "conv":
        strides, pad, in_dil, k_dil = layer.conv
        ks = layer.kernel_shape[:-2]
        nd = len(ks)
        if not 1 <= nd <= 3:
            raise ValueError(f"the layer tap supports convolutions with 1-3 spatial dims, got {nd}")
        spatial = "DHW"[3 - nd :]
        spec = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        p = jax.lax.conv_general_dilated_patches(
            a, ks, strides, pad, lhs_dilation=in_dil, rhs_dilation=k_dil, dimension_numbers=spec
        )
        c = layer.kernel_shape[-2]
        # patches come channel-major (C, *k); the kernel flattens as (*k, C).
        p = jnp.moveaxis(p.reshape(*p.shape[:-1], c, *ks), -nd - 1, -1)
        a = p.reshape(*p.shape[: nd + 1], -1)
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    if layer.has_bias:
        a = jnp.concatenate([a, jnp.ones((*a.shape[:-1], 1), a.dtype)], axis=-1)
    return a


def layer_grad_matrix(layer: Layer, node) -> Array:
    """A layer's ``{"kernel", "bias"}`` node as the ``(a_dim, g_dim)`` matrix ``[W; bᵀ]``."""
    k = node["kernel"].reshape(-1, layer.g_dim)
    return jnp.concatenate([k, node["bias"][None]], axis=0) if layer.has_bias else k


def layer_from_matrix(layer: Layer, mat: Array) -> dict:
    """Inverse of :func:`layer_grad_matrix`: ``(a_dim, g_dim)`` back to ``{"kernel", "bias"}``."""
    if layer.has_bias:
        return {"kernel": mat[:-1].reshape(layer.kernel_shape), "bias": mat[-1]}
    return {"kernel": mat.reshape(layer.kernel_shape)}


__all__ = [
    "KINDS",
    "Layer",
    "RecordingConv",
    "RecordingLinear",
    "Tape",
    "conv_config",
    "covered_mask",
    "find_layers",
    "inputs_matrix",
    "kernel_paths",
    "layer_from_matrix",
    "layer_grad_matrix",
    "record",
]
