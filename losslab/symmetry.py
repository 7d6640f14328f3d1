r"""Function-preserving reparametrizations of ReLU networks, and which measures they move.

Dinh et al. (2017), "Sharp Minima Can Generalize For Deep Nets": for a positively
homogeneous activation (ReLU), :math:`\mathrm{relu}(\alpha z) = \alpha\,\mathrm{relu}(z)`
for α > 0, so multiplying the weights and bias of layer k by α and dividing the
*incoming* weights of layer k+1 by α leaves the network function unchanged while
the Hessian changes (:math:`H \to D^{-1} H D^{-1}` with D the scaling), so trace
and λ_max can be made arbitrarily large or small. With one α per unit/channel this
is a *node-wise* rescaling. A layer followed by BatchNorm can be scaled by any α > 0
(in eval mode together with its running mean ×α and variance ×α²).

**Which leaves are layers** is told by a *layer spec*: a sequence of :class:`Layer` s in
forward order, each naming its kernel (and bias) by its ``path_str`` leaf path in params
(:func:`losslab.trees.leaf_paths` lists them) and the kernel axes that index output units
(``out_axis``) and input units (``in_axis``). Every function here takes ``spec=``; None means
:func:`default_spec`, which knows the MLP, 1-D CNN and 2-D CNN of :mod:`losslab.models` (nested
dicts whose layer groups are ``convs``, ``layers``, ``fc``, ``head``; residual networks are
refused). :func:`dense_spec` builds the spec of a plain feed-forward stack in any framework.
Writing one by hand, for a network ``Dense/Linear(8) → relu → Dense/Linear(8) → relu → Dense/Linear(3)``:

.. code-block:: python

    from losslab.symmetry import Layer
    # Flax linen (losslab.adapters.linen(module, variables)); kernels (in, out)
    spec = [Layer("Dense_0/kernel", "Dense_0/bias"), Layer("Dense_1/kernel", "Dense_1/bias"),
            Layer("Dense_2/kernel", "Dense_2/bias")]
    # haiku (hk.nets.MLP([8, 8, 3])); kernels (in, out)
    spec = [Layer(f"mlp/~/linear_{i}/w", f"mlp/~/linear_{i}/b") for i in range(3)]
    # equinox (eqx.nn.MLP; params = eqx.partition(model, eqx.is_inexact_array)[0]); kernels (out, in)
    spec = [Layer(f"layers/{i}/weight", f"layers/{i}/bias", out_axis=0, in_axis=1) for i in range(3)]
    # plain functions (Objective.from_apply) with params {"w1": (4, 8), "b1": (8,), ...}
    spec = [Layer("w1", "b1"), Layer("w2", "b2"), Layer("w3", "b3")]

    new_params = symmetry.random_rescaling(params, key, spec=spec)   # or spec=dense_spec(params, ...)

Convolution kernels follow the same rule: Flax/haiku ``(..., in, out)`` are the defaults
(``out_axis=-1, in_axis=-2``); equinox ``(out, in, ...)`` is ``out_axis=0, in_axis=1``.
Biases may have any singleton layout (``(out,)``, equinox conv ``(out, 1)``, ...).

Where a convolution is flattened into a dense layer, the dense layer's fan-in is a multiple
of the channels and α is repeated over the positions in the order its :attr:`Layer.flatten`
names: ``"channels_last"`` (the default: Flax/haiku ``(..., H, W, C)`` reshaped, input index
position·C + c, α tiled) or ``"channels_first"`` (equinox/PyTorch ``(C, H, W)`` reshaped,
index c·P + position, each α repeated P times). Other layouts (a transpose before the
reshape) are not expressible: a wrong order silently breaks function preservation, so check
the outputs; a fan-in that is not a multiple of the units raises ``ValueError``.

A layer that feeds a BatchNorm names the running mean and variance leaves of the *state* in
:attr:`Layer.norm` (the norm's own scale and bias in params are left alone): for linen e.g.
``norm=("batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var")``, for haiku and
equinox the leaves its eval-mode forward pass reads (:func:`losslab.trees.leaf_paths` of the
state lists them).

:func:`compare_measures` computes measures before and after a transformation and
checks each against its declared invariances (:data:`losslab.sharpness.MEASURES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from losslab import display as fmt
from losslab import sharpness
from losslab.trees import get_path, key_tuple, path_str

LAYER_GROUPS = ("convs", "layers", "fc", "head")
_OTHER_GROUPS = ("norms",)
# How a convolution's output was flattened into the next layer's inputs (see Layer.flatten).
FLATTEN_ORDERS = ("channels_last", "channels_first")
# Error messages list at most this many valid leaf paths.
_MAX_LISTED = 40


@dataclasses.dataclass(frozen=True)
class Layer:
    """One kernel-holding layer of a feed-forward ReLU network, named by leaf paths.

    Attributes:
      kernel: ``path_str`` of the kernel in params, e.g. ``"layers/0/kernel"``, ``"d1/weight"``.
      bias: ``path_str`` of its bias (any singleton layout with one entry per unit), or None.
      out_axis: the kernel axis of the output units / filters: -1 for Flax and haiku
        (``(in, out)``, ``(..., in, out)``), 0 for equinox (``(out, in)``, ``(out, in, ...)``).
      in_axis: the kernel axis of the input units: -2 for Flax and haiku, 1 for equinox.
      norm: ``(mean_path, var_path)``, the running statistics in the *state* of the BatchNorm this
        layer feeds, or None when no BatchNorm follows.
      flatten: when this layer's fan-in is a multiple of the previous layer's units (a flattened
        convolution), how the channels were laid out: ``"channels_last"`` (input index
        position·C + c, Flax/haiku) or ``"channels_first"`` (c·P + position, equinox/PyTorch).
    """

    kernel: str
    bias: str | None = None
    out_axis: int = -1
    in_axis: int = -2
    norm: tuple[str, str] | None = None
    flatten: str = "channels_last"

    def __post_init__(self):
        if not isinstance(self.kernel, str) or not self.kernel:
            raise ValueError(f"Layer.kernel must be a leaf path string like 'layers/0/kernel', got {self.kernel!r}")
        if self.bias is not None and not isinstance(self.bias, str):
            raise ValueError(f"Layer.bias must be a leaf path string or None, got {self.bias!r}")
        for name in ("out_axis", "in_axis"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"Layer.{name} must be an int, got {value!r}")
        if self.norm is not None:
            norm = () if isinstance(self.norm, str) else tuple(self.norm)
            if len(norm) != 2 or not all(isinstance(p, str) for p in norm):
                raise ValueError(f"Layer.norm must be (mean_path, var_path) in the state, got {self.norm!r}")
            object.__setattr__(self, "norm", norm)
        if self.flatten not in FLATTEN_ORDERS:
            raise ValueError(f"Layer.flatten must be one of {FLATTEN_ORDERS}, got {self.flatten!r}")


LayerSpec = Sequence[Layer]


class _Resolved(NamedTuple):
    """A validated :class:`Layer` with its kernel axes normalised and its sizes."""

    layer: Layer
    out_axis: int
    in_axis: int
    ndim: int
    units: int
    fan_in: int


# ----------------------------------------------------------------------------
# losslab's own models and plain stacks


def _layer_dict(group) -> list[tuple[Any, ...]]:
    if "kernel" in group:
        return [()]
    return [(k,) for k in sorted(group)]


def layer_paths(params: Mapping) -> list[tuple]:
    """Key paths of the kernel-holding layers of losslab's MLP/CNN params in forward order.

    E.g. ``[("layers", 0), ("head",)]``; :func:`default_spec` turns them into a spec.

    Raises:
      ValueError: params with groups the harness does not know (e.g. ResNet blocks, where
        a skip connection breaks the layer-by-layer rescaling).
    """
    unknown = sorted(set(params) - set(LAYER_GROUPS) - set(_OTHER_GROUPS))
    if unknown:
        raise ValueError(
            f"the default spec supports losslab's MLP/CNN params with groups {LAYER_GROUPS}; found {unknown} "
            "(residual networks are not rescaled layer by layer); for other models pass spec= "
            "(e.g. symmetry.dense_spec(params) or a list of symmetry.Layer)"
        )
    paths = []
    for group in LAYER_GROUPS:
        if group in params:
            paths.extend((group, *sub) for sub in _layer_dict(params[group]))
    return paths


def _has_norm(tree, k) -> bool:
    norms = tree.get("norms") if isinstance(tree, Mapping) else None
    return isinstance(norms, Mapping) and bool(norms.get(k))


def default_spec(params, state=None) -> tuple[Layer, ...]:
    """The spec of losslab's own MLP / 1-D CNN / 2-D CNN params (:mod:`losslab.models`).

    The layers of :func:`layer_paths` (groups ``convs``, ``layers``, ``fc``, ``head`` in forward
    order) with kernels ``(..., in, out)`` and their biases; ``layers[k]`` / ``convs[k]`` feed a
    BatchNorm when ``norms[k]`` is non-empty in params or state, whose statistics are
    ``norms/k/mean`` and ``norms/k/var`` in the state.

    Raises:
      ValueError: params that are not such nested dicts (residual networks, other frameworks).
    """
    if not isinstance(params, Mapping):
        raise ValueError(
            f"the default spec knows losslab's own MLP/CNN params (nested dicts), got {type(params).__name__}; "
            "pass spec= (symmetry.dense_spec(params, out_axis=...) or a list of symmetry.Layer)"
        )
    spec = []
    for path in layer_paths(params):
        name = "/".join(str(k) for k in path)
        bias = f"{name}/bias" if "bias" in get_path(params, path) else None
        norm = None
        if len(path) == 2 and path[0] in ("layers", "convs"):
            if _has_norm(params, path[1]) or (state is not None and _has_norm(state, path[1])):
                norm = (f"norms/{path[1]}/mean", f"norms/{path[1]}/var")
        spec.append(Layer(f"{name}/kernel", bias, norm=norm))
    return tuple(spec)


_DEFAULT_IN_AXIS = {-1: -2, 0: 1}
_DEFAULT_FLATTEN = {-1: "channels_last", 0: "channels_first"}


def dense_spec(
    params,
    *,
    kernel_names: Sequence[str] = ("kernel", "w", "weight"),
    bias_names: Sequence[str] = ("bias", "b"),
    out_axis: int = -1,
    in_axis: int | None = None,
    flatten: str | None = None,
) -> tuple[Layer, ...]:
    """The spec of a plain feed-forward stack: every leaf named like a kernel, in flatten order.

    A leaf whose last path entry is in ``kernel_names`` and has rank >= 2 is a layer; its sibling
    named in ``bias_names`` (if any) is its bias. Convolutions count as layers too. No BatchNorm is
    attached (add one with ``dataclasses.replace(spec[k], norm=(mean_path, var_path))``).

    **Flatten order must be forward order.** It is for linen's ``Dense_0, Dense_1, ...`` and haiku's
    ``linear, linear_1, ...`` / ``linear_0, linear_1, ...`` up to ten layers, and for equinox modules
    whose fields (or ``layers`` tuple) are declared in forward order (``eqx.nn.MLP``). It is not
    when dict keys sort otherwise: ``Dense_10`` sorts before ``Dense_2``, losslab's own
    ``{"head", "layers"}`` put the head first (use :func:`default_spec`), and named layers such as
    ``{"encoder", "decoder"}`` sort alphabetically; write the spec by hand there. A misordered
    spec is often, but not always (equal widths), caught by the fan-in check of the rescalings.

    Args:
      params: the params pytree.
      kernel_names, bias_names: leaf names of kernels and biases.
      out_axis: the output-unit axis of every kernel: -1 (Flax, haiku) or 0 (equinox).
      in_axis: the input-unit axis; default -2 for ``out_axis=-1``, 1 for ``out_axis=0``.
      flatten: :attr:`Layer.flatten`; default ``"channels_last"`` for ``out_axis=-1`` (NHWC),
        ``"channels_first"`` for ``out_axis=0`` (equinox CHW).

    Returns:
      A tuple of :class:`Layer`.

    Raises:
      ValueError: no kernel-like leaf, or ``in_axis`` / ``flatten`` needed but not given.
    """
    if in_axis is None or flatten is None:
        if out_axis not in _DEFAULT_IN_AXIS:
            raise ValueError(f"give in_axis= and flatten= for out_axis={out_axis} (defaults exist for -1 and 0)")
        in_axis = _DEFAULT_IN_AXIS[out_axis] if in_axis is None else in_axis
        flatten = _DEFAULT_FLATTEN[out_axis] if flatten is None else flatten
    table = _leaf_table(params)
    spec = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = key_tuple(path)
        if names and names[-1] in kernel_names and jnp.ndim(leaf) >= 2:
            siblings = ("/".join(str(k) for k in (*names[:-1], b)) for b in bias_names)
            bias = next((s for s in siblings if s in table), None)
            spec.append(Layer(path_str(path), bias, out_axis, in_axis, flatten=flatten))
    if not spec:
        raise ValueError(f"no leaf named one of {tuple(kernel_names)} with rank >= 2; leaf paths: {_listing(table)}")
    return tuple(spec)


# ----------------------------------------------------------------------------
# Validation


def _leaf_table(tree) -> dict[str, Any]:
    """``{path_str: leaf}`` of a pytree."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _listing(table) -> str:
    names = list(table)
    more = f" ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(repr(n) for n in names[:_MAX_LISTED]) + more


def _leaf(table, path: str, where: str, what: str):
    if path not in table:
        raise ValueError(f"{what} {path!r} is not a leaf path of the {where}; valid leaf paths: {_listing(table)}")
    return table[path]


def _per_unit(leaf, units: int, path: str, what: str) -> None:
    """A bias or statistic must hold one entry per unit, in any singleton layout."""
    shape = tuple(jnp.shape(leaf))
    if int(np.prod(shape)) != units or (units > 1 and units not in shape):
        raise ValueError(f"{what} {path!r} has shape {shape}; expected {units} entries (one per unit, other axes 1)")


def _resolve_layer(layer: Layer, table, state_table) -> _Resolved:
    kernel = _leaf(table, layer.kernel, "params", "kernel")
    ndim = jnp.ndim(kernel)
    if ndim < 2:
        raise ValueError(f"kernel {layer.kernel!r} has shape {jnp.shape(kernel)}; kernels have rank >= 2")
    axes = []
    for name in ("out_axis", "in_axis"):
        axis = getattr(layer, name)
        if not -ndim <= axis < ndim:
            raise ValueError(f"{name}={axis} is out of range for kernel {layer.kernel!r} of shape {jnp.shape(kernel)}")
        axes.append(axis % ndim)
    if axes[0] == axes[1]:
        raise ValueError(f"out_axis and in_axis name the same axis {axes[0]} of kernel {layer.kernel!r}")
    units, fan_in = jnp.shape(kernel)[axes[0]], jnp.shape(kernel)[axes[1]]
    if layer.bias is not None:
        _per_unit(_leaf(table, layer.bias, "params", "bias"), units, layer.bias, "bias")
    if layer.norm is not None and state_table is not None:
        for path in layer.norm:
            _per_unit(_leaf(state_table, path, "state", "BatchNorm statistic"), units, path, "BatchNorm statistic")
    return _Resolved(layer, axes[0], axes[1], ndim, units, fan_in)


def _resolve(params, spec: LayerSpec, state=None) -> list[_Resolved]:
    """Validates ``spec`` against params (and state): paths, ranks, axes, bias sizes, fan-ins."""
    if isinstance(spec, Layer) or not isinstance(spec, Sequence) or not spec:
        raise ValueError(f"spec must be a non-empty sequence of symmetry.Layer in forward order, got {spec!r}")
    bad = [s for s in spec if not isinstance(s, Layer)]
    if bad:
        raise ValueError(f"spec entries must be symmetry.Layer, got {bad[0]!r}")
    kernels = [s.kernel for s in spec]
    repeated = sorted({k for k in kernels if kernels.count(k) > 1})
    if repeated:
        raise ValueError(f"spec names kernels {repeated} more than once")
    table = _leaf_table(params)
    state_table = None if state is None else _leaf_table(state)
    resolved = [_resolve_layer(s, table, state_table) for s in spec]
    for here, nxt in zip(resolved[:-1], resolved[1:]):
        if nxt.fan_in % here.units:
            raise ValueError(
                f"kernel {nxt.layer.kernel!r} takes {nxt.fan_in} inputs (in_axis={nxt.layer.in_axis}), not a multiple of "
                f"the {here.units} units of {here.layer.kernel!r} (out_axis={here.layer.out_axis}): check the axes "
                "(equinox kernels are out_axis=0, in_axis=1) and that the spec is in forward order"
            )
    return resolved


def check_spec(params, spec: LayerSpec | None = None, *, state=None) -> tuple[Layer, ...]:
    """Validates a layer spec against params (and, for BatchNorm statistics, state); returns it.

    Checks that every path is a leaf (kernels and biases in params, norm statistics in state),
    kernels have rank >= 2 and distinct in-range ``out_axis`` / ``in_axis``, biases and statistics
    hold one entry per unit, and each layer's fan-in is the previous layer's units or a multiple
    of them (a flattened convolution). None checks :func:`default_spec`.

    Raises:
      ValueError: naming the bad path (and listing the valid leaf paths) or the mismatched sizes.
    """
    spec = default_spec(params, state) if spec is None else spec
    _resolve(params, spec, state)
    return tuple(spec)


def _check_alpha(alpha, units: int) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != units):
        raise ValueError(f"alpha must be a scalar or a vector of length {units} (one per unit), got shape {a.shape}")
    if not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise ValueError(f"alpha must be finite and > 0 (ReLU is only positively homogeneous), got {alpha!r}")
    return np.broadcast_to(a, (units,))


def _check_index(layer: int, num: int, what: str) -> None:
    if not 0 <= layer < num:
        raise ValueError(f"layer must be in [0, {num - 1}]{what}, got {layer}")


# ----------------------------------------------------------------------------
# The rescalings


def _along(vec, ndim: int, axis: int):
    shape = [1] * ndim
    shape[axis] = -1
    return vec.reshape(shape)


def _scale_out(table, r: _Resolved, a: np.ndarray, dtype) -> dict:
    """``{path: new leaf}`` with layer r's kernel (along its out axis) and bias multiplied by α."""
    scale = jnp.asarray(a, dtype)
    updates = {r.layer.kernel: table[r.layer.kernel] * _along(scale, r.ndim, r.out_axis)}
    if r.layer.bias is not None:
        bias = table[r.layer.bias]
        updates[r.layer.bias] = bias * scale.reshape(jnp.shape(bias))
    return updates


def _divide_in(table, here: _Resolved, nxt: _Resolved, a: np.ndarray) -> dict:
    """``{path: new leaf}`` with the next kernel's inputs divided by α (repeated over flattened positions)."""
    kernel = table[nxt.layer.kernel]
    repeats = nxt.fan_in // here.units
    if nxt.layer.flatten == "channels_last":
        per_input = np.tile(a, repeats)
    elif nxt.layer.flatten == "channels_first":
        per_input = np.repeat(a, repeats)
    else:
        raise ValueError(f"Layer.flatten must be one of {FLATTEN_ORDERS}, got {nxt.layer.flatten!r}")
    return {nxt.layer.kernel: kernel / _along(jnp.asarray(per_input, kernel.dtype), nxt.ndim, nxt.in_axis)}


def _rescale_step(table, resolved: list[_Resolved], k: int, alpha) -> dict:
    """The leaves :func:`rescale` changes for layer k, read from (and not written to) ``table``."""
    here, nxt = resolved[k], resolved[k + 1]
    if here.layer.norm is not None:
        raise ValueError(
            f"layer {k} ({here.layer.kernel!r}) feeds a BatchNorm: the ReLU rescaling is not function-preserving "
            "there; use rescale_before_batchnorm"
        )
    a = _check_alpha(alpha, here.units)
    updates = _scale_out(table, here, a, table[here.layer.kernel].dtype)
    return updates | _divide_in(table, here, nxt, a)


def _replace_leaves(tree, updates: Mapping[str, Any]):
    """A copy of ``tree`` (any pytree) with the leaves at the ``path_str`` keys of ``updates`` replaced."""
    return jax.tree_util.tree_map_with_path(lambda p, leaf: updates.get(path_str(p), leaf), tree)


def rescale(params, layer: int, alpha, *, spec: LayerSpec | None = None):
    r"""Multiplies layer ``layer`` by α and divides the next layer's incoming weights by α.

    :math:`W_k \to W_k \operatorname{diag}(\alpha)` along the out axis,
    :math:`b_k \to \alpha \odot b_k`, :math:`W_{k+1} \to \operatorname{diag}(\alpha)^{-1} W_{k+1}`
    along its in axis (for a flattening convolution → dense boundary, α is repeated over the
    positions in the order of :attr:`Layer.flatten`). Function-preserving for ReLU (and leaky
    ReLU) activations, pooling and flattening between the layers.

    Args:
      params: the params pytree (nested dicts, an equinox module, ...).
      layer: index k into the spec (not the last layer).
      alpha: a scalar > 0 (layer-wise) or one value > 0 per unit/channel of layer k
        (node-wise).
      spec: the layers in forward order (:class:`Layer`); None: :func:`default_spec`.

    Returns:
      New params of the same structure (the input is not modified).

    Raises:
      ValueError: a bad spec (see :func:`check_spec`), bad index, alpha ≤ 0, or layer k feeds a
        BatchNorm (use :func:`rescale_before_batchnorm`).
    """
    resolved = _resolve(params, default_spec(params) if spec is None else spec)
    _check_index(layer, len(resolved) - 1, " (a layer with a successor)")
    return _replace_leaves(params, _rescale_step(_leaf_table(params), resolved, layer, alpha))


def random_rescaling(
    params, key: jax.Array, *, log_std: float = 1.0, node_wise: bool = True, spec: LayerSpec | None = None
):
    r"""Rescales every hidden layer by random α = exp(s·z), z ~ N(0, 1) (per unit if ``node_wise``).

    The composition of :func:`rescale` over k = 0 … K−2; function-preserving for ReLU
    networks without BatchNorm (Dinh et al. 2017). With ``log_std`` = s the scales spread over
    about :math:`e^{\pm s}`, enough to move the Hessian trace and λ_max by large factors.

    Args:
      params: the params pytree.
      key: PRNG key for the scales.
      log_std: s, the standard deviation of log α.
      node_wise: one α per unit/channel (node-wise) instead of one per layer (layer-wise).
      spec: the layers in forward order (:class:`Layer`); None: :func:`default_spec`.

    Returns:
      New params computing the same function.
    """
    resolved = _resolve(params, default_spec(params) if spec is None else spec)
    keys = jax.random.split(key, max(len(resolved) - 1, 1))
    table = _leaf_table(params)
    changed = {}
    for k in range(len(resolved) - 1):
        shape = (resolved[k].units,) if node_wise else ()
        alpha = np.exp(log_std * np.asarray(jax.random.normal(keys[k], shape)))
        step = _rescale_step(table, resolved, k, alpha)
        table |= step
        changed |= step
    return _replace_leaves(params, changed)


def rescale_before_batchnorm(params, state, layer: int, alpha, *, spec: LayerSpec | None = None):
    r"""Scales a layer that feeds a BatchNorm by α > 0: :math:`W, b \to \alpha W, \alpha b`.

    BatchNorm removes the scale: with batch statistics exactly (up to its ε), in eval mode
    once the running mean is scaled by α and the running variance by α², which this does
    (the leaves of :attr:`Layer.norm` in ``state``). The network function is then unchanged up
    to :math:`O(\epsilon_{BN}/\sigma^2)`.

    Args:
      params, state: the params and state pytrees.
      layer: index k into the spec of a layer with a :attr:`Layer.norm`.
      alpha: a scalar > 0 or one value > 0 per unit.
      spec: the layers in forward order; None: :func:`default_spec` of ``(params, state)``.

    Returns:
      ``(params, state)``; use ``objective.replace(state=state)`` to evaluate.
    """
    resolved = _resolve(params, default_spec(params, state) if spec is None else spec, state)
    _check_index(layer, len(resolved), "")
    here = resolved[layer]
    if here.layer.norm is None:
        raise ValueError(
            f"layer {layer} ({here.layer.kernel!r}) is not followed by a BatchNorm (its Layer.norm is None)"
        )
    table = _leaf_table(params)
    dtype = table[here.layer.kernel].dtype
    a = _check_alpha(alpha, here.units)
    stats = _leaf_table(state)
    (mean_path, var_path), scale = here.layer.norm, jnp.asarray(a, dtype)
    new_stats = {
        mean_path: stats[mean_path] * scale.reshape(jnp.shape(stats[mean_path])),
        var_path: stats[var_path] * (scale**2).reshape(jnp.shape(stats[var_path])),
    }
    return _replace_leaves(params, _scale_out(table, here, a, dtype)), _replace_leaves(state, new_stats)


class SymmetryReport(NamedTuple):
    """One measure before and after a function-preserving transformation.

    Attributes:
      before, after: the values.
      relative_change: :math:`|a - b| / \\max(|b|, \\text{tiny})`.
      declared_invariant: the measure is tagged invariant to the symmetry.
      changed: relative_change > ``rtol``.
    """

    before: float
    after: float
    relative_change: float
    declared_invariant: bool
    changed: bool

    @property
    def consistent(self) -> bool:
        """False when a measure declared invariant changed."""
        return not (self.declared_invariant and self.changed)

    def __repr__(self) -> str:
        verdict = "consistent" if self.consistent else "INCONSISTENT: declared invariant but changed"
        return (
            f"SymmetryReport(before={fmt.num(self.before)}, after={fmt.num(self.after)}, "
            f"change={100 * self.relative_change:.3g}%, declared_invariant={self.declared_invariant}, "
            f"changed={self.changed}, {verdict})"
        )


def compare_measures(
    objective,
    params,
    new_params,
    key: jax.Array,
    *,
    symmetry: str,
    names: Sequence[str] | None = None,
    options: Mapping[str, Mapping] | None = None,
    new_objective=None,
    rtol: float = 1e-4,
) -> dict[str, SymmetryReport]:
    """Each measure at ``params`` and at the transformed ``new_params`` (same key), with its tag.

    The invariance check of Dinh et al. (2017): a measure tagged invariant to ``symmetry``
    (:attr:`losslab.sharpness.Measure.invariances`) must not move under a function-preserving
    transformation; one that is not tagged typically does. Cost: two evaluations of every
    measure.

    Args:
      objective: the :class:`losslab.Objective`.
      params, new_params: the point and its transformation.
      key: PRNG key, shared by both evaluations (common random numbers).
      symmetry: the tag to check, e.g. ``"layer_rescaling"`` or ``"node_rescaling"``.
      names: measures (default: every entry of :data:`losslab.sharpness.MEASURES`).
      options: per-measure keyword options.
      new_objective: objective for ``new_params`` (e.g. with rescaled BatchNorm state).
      rtol: relative change counted as "changed".

    Returns:
      ``{name: SymmetryReport}``.
    """
    names = list(sharpness.MEASURES) if names is None else list(names)
    options = dict(options or {})
    new_objective = objective if new_objective is None else new_objective
    report = {}
    for name in names:
        measure = sharpness.get(name)
        before = measure(objective, params, key, **options.get(name, {})).value
        after = measure(new_objective, new_params, key, **options.get(name, {})).value
        rel = abs(after - before) / max(abs(before), 1e-12)
        report[name] = SymmetryReport(before, after, rel, measure.invariant_to(symmetry), rel > rtol)
    return report


__all__ = [
    "FLATTEN_ORDERS",
    "LAYER_GROUPS",
    "Layer",
    "LayerSpec",
    "SymmetryReport",
    "check_spec",
    "compare_measures",
    "default_spec",
    "dense_spec",
    "layer_paths",
    "random_rescaling",
    "rescale",
    "rescale_before_batchnorm",
]
