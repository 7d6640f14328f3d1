r"""Function-preserving reparametrizations of ReLU MLPs/CNNs, and which measures they move.

Dinh et al. (2017), "Sharp Minima Can Generalize For Deep Nets": for a positively
homogeneous activation (ReLU), :math:`\mathrm{relu}(\alpha z) = \alpha\,\mathrm{relu}(z)`
for α > 0, so multiplying the weights and bias of layer k by α and dividing the
*incoming* weights of layer k+1 by α leaves the network function unchanged while
the Hessian changes (:math:`H \to D^{-1} H D^{-1}` with D the scaling), so trace
and λ_max can be made arbitrarily large or small. With one α per unit/channel this
is a *node-wise* rescaling. A layer followed by BatchNorm can be scaled by any α > 0
(in eval mode together with its running mean ×α and variance ×α²).

The harness works on the params of the MLP, 1-D CNN and 2-D CNN of
:mod:`losslab.models` (nested dicts whose layer groups are ``convs``, ``layers``,
``fc``, ``head``, in forward order); residual networks are refused.
:func:`compare_measures` computes measures before and after a transformation and
checks each against its declared invariances (:data:`losslab.sharpness.MEASURES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from losslab import display as fmt
from losslab import sharpness

LAYER_GROUPS = ("convs", "layers", "fc", "head")
_OTHER_GROUPS = ("norms",)


def _layer_dict(group) -> list[tuple[Any, ...]]:
    if "kernel" in group:
        return [()]
    return [(k,) for k in sorted(group)]


def layer_paths(params: Mapping) -> list[tuple]:
    """Key paths of the kernel-holding layers in forward order, e.g. ``[("layers", 0), ("head",)]``.

    Raises:
      ValueError: params with groups the harness does not know (e.g. ResNet blocks, where
        a skip connection breaks the layer-by-layer rescaling).
    """
    unknown = sorted(set(params) - set(LAYER_GROUPS) - set(_OTHER_GROUPS))
    if unknown:
        raise ValueError(
            f"the symmetry harness supports MLP/CNN params with groups {LAYER_GROUPS}; found {unknown} "
            "(residual networks are not rescaled layer by layer)"
        )
    paths = []
    for group in LAYER_GROUPS:
        if group in params:
            paths.extend((group, *sub) for sub in _layer_dict(params[group]))
    return paths


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    new = dict(tree)
    new[path[0]] = _set(tree[path[0]], path[1:], value)
    return new


def _norm_path(path) -> tuple | None:
    """The BatchNorm that follows layer ``path`` (``norms[k]`` for ``layers[k]``/``convs[k]``)."""
    if len(path) == 2 and path[0] in ("layers", "convs"):
        return ("norms", path[1])
    return None


def _check_alpha(alpha, units: int) -> jax.Array:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != units):
        raise ValueError(f"alpha must be a scalar or a vector of length {units} (one per unit), got shape {a.shape}")
    if not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise ValueError(f"alpha must be finite and > 0 (ReLU is only positively homogeneous), got {alpha!r}")
    return a


def rescale(params: Mapping, layer: int, alpha) -> dict:
    r"""Multiplies layer ``layer`` by α and divides the next layer's incoming weights by α.

    :math:`W_k \to W_k \operatorname{diag}(\alpha)`, :math:`b_k \to \alpha \odot b_k`,
    :math:`W_{k+1} \to \operatorname{diag}(\alpha)^{-1} W_{k+1}` (for a flattening
    convolution → dense boundary, α is repeated over the positions). Function-preserving
    for ReLU (and leaky ReLU) activations, pooling and flattening between the layers.

    Args:
      params: MLP/CNN params (see :func:`layer_paths`).
      layer: index k into :func:`layer_paths` (not the last layer).
      alpha: a scalar > 0 (layer-wise) or one value > 0 per unit/channel of layer k
        (node-wise).

    Returns:
      New params (the input is not modified).

    Raises:
      ValueError: bad index, alpha ≤ 0, or layer k feeds a BatchNorm (use
        :func:`rescale_before_batchnorm`).
    """
    paths = layer_paths(params)
    if not 0 <= layer < len(paths) - 1:
        raise ValueError(f"layer must be in [0, {len(paths) - 2}] (a layer with a successor), got {layer}")
    here, nxt = paths[layer], paths[layer + 1]
    npath = _norm_path(here)
    if npath is not None and "norms" in params and npath[1] in params["norms"] and params["norms"][npath[1]]:
        raise ValueError(
            f"layer {here} feeds a BatchNorm: the ReLU rescaling is not function-preserving there; "
            "use rescale_before_batchnorm"
        )
    cur = _get(params, here)
    units = cur["kernel"].shape[-1]
    a = _check_alpha(alpha, units)
    dtype = cur["kernel"].dtype
    out_scale = jnp.asarray(np.broadcast_to(a, (units,)), dtype)
    new = dict(cur)
    new["kernel"] = cur["kernel"] * out_scale
    if "bias" in cur:
        new["bias"] = cur["bias"] * out_scale
    params = _set(params, here, new)
    nxt_layer = _get(params, nxt)
    fan_in = nxt_layer["kernel"].shape[-2]
    if fan_in % units:
        raise ValueError(f"layer {nxt} takes {fan_in} inputs, not a multiple of the {units} units of layer {here}")
    in_scale = jnp.tile(out_scale, fan_in // units)
    new = dict(nxt_layer)
    new["kernel"] = nxt_layer["kernel"] / in_scale[:, None]
    return _set(params, nxt, new)


def random_rescaling(params: Mapping, key: jax.Array, *, log_std: float = 1.0, node_wise: bool = True) -> dict:
    r"""Rescales every hidden layer by random α = exp(s·z), z ~ N(0, 1) (per unit if ``node_wise``).

    The composition of :func:`rescale` over k = 0 … K−2; function-preserving for ReLU
    networks without BatchNorm (Dinh et al. 2017). With ``log_std`` = s the scales spread over
    about :math:`e^{\pm s}`, enough to move the Hessian trace and λ_max by large factors.

    Args:
      params: MLP/CNN params (see :func:`layer_paths`).
      key: PRNG key for the scales.
      log_std: s, the standard deviation of log α.
      node_wise: one α per unit/channel (node-wise) instead of one per layer (layer-wise).

    Returns:
      New params computing the same function.
    """
    paths = layer_paths(params)
    keys = jax.random.split(key, max(len(paths) - 1, 1))
    for k in range(len(paths) - 1):
        units = _get(params, paths[k])["kernel"].shape[-1]
        shape = (units,) if node_wise else ()
        alpha = np.exp(log_std * np.asarray(jax.random.normal(keys[k], shape)))
        params = rescale(params, k, alpha)
    return params


def rescale_before_batchnorm(params: Mapping, state: Mapping, layer: int, alpha) -> tuple[dict, dict]:
    r"""Scales a layer that feeds a BatchNorm by α > 0: :math:`W, b \to \alpha W, \alpha b`.

    BatchNorm removes the scale: with batch statistics exactly (up to its ε), in eval mode
    once the running mean is scaled by α and the running variance by α², which this does.
    The network function is then unchanged up to :math:`O(\epsilon_{BN}/\sigma^2)`.

    Returns:
      ``(params, state)``; use ``objective.replace(state=state)`` to evaluate.
    """
    paths = layer_paths(params)
    if not 0 <= layer < len(paths):
        raise ValueError(f"layer must be in [0, {len(paths) - 1}], got {layer}")
    here = paths[layer]
    npath = _norm_path(here)
    if npath is None or "norms" not in state or npath[1] not in state["norms"] or not state["norms"][npath[1]]:
        raise ValueError(f"layer {here} is not followed by a BatchNorm")
    cur = _get(params, here)
    a = _check_alpha(alpha, cur["kernel"].shape[-1])
    scale = jnp.asarray(np.broadcast_to(a, (cur["kernel"].shape[-1],)), cur["kernel"].dtype)
    new = {k: v * scale for k, v in cur.items()}
    params = _set(params, here, new)
    stats = dict(_get(state, npath))
    stats["mean"] = stats["mean"] * scale
    stats["var"] = stats["var"] * scale**2
    return params, _set(state, npath, stats)


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
    "LAYER_GROUPS",
    "SymmetryReport",
    "compare_measures",
    "layer_paths",
    "random_rescaling",
    "rescale",
    "rescale_before_batchnorm",
]
