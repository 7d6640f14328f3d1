"""Directions in parameter space for loss-surface slices.

A direction is a params pytree with the same structure, shapes and dtypes as
``objective.params`` (nested dicts). Nothing here knows which model it looks
at: kernels are recognised by their rank alone. The conventions follow Flax,
where a Dense kernel is ``(in, out)`` and a Conv kernel ``(..., in, out)``, so
an *output unit / filter* is a slice along the **last** axis; leaves of rank
0 or 1 are biases or normalisation parameters (BatchNorm/LayerNorm scale and
shift).

Directions provided:

* :func:`random_direction` / :func:`random_plane`: Gaussian directions with
  filter, layer, model or no normalisation (Li et al. 2018).
* :func:`hessian_directions`: top Hessian eigenvectors (via
  :mod:`losslab.curvature`).
* :func:`trajectory_pca`: principal directions of a training trajectory
  (Li et al. 2018, Sec. 7), with explained variance and the projected path.
* :func:`segment`: the difference between two solutions (linear interpolation,
  Goodfellow et al. 2015; Keskar et al. 2017).
* :func:`plane_through`: an orthonormal basis of the plane through three
  solutions (Gram–Schmidt; Garipov et al. 2018).

Params are never mutated: every function returns new pytrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from losslab import display as fmt
from losslab.curvature.eigen import top_eigenpairs
from losslab.curvature.operators import make_operator
from losslab.trees import check_same_structure, tree_add, tree_norm, tree_scale, tree_sub, tree_vdot

Array = jax.Array
PyTree = Any

NORMALIZATIONS = ("filter", "layer", "model", "none")
BIAS_MODES = ("zero", "keep")


def _check_option(value: str, valid: Sequence[str], name: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


# --------------------------------------------------------------------------
# Normalisation


def _safe_ratio(num: Array, den: Array) -> Array:
    # A zero-norm direction slice stays zero instead of becoming NaN.
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def normalize_direction(
    direction: PyTree,
    params: PyTree,
    *,
    normalization: str = "filter",
    biases: str = "zero",
    filter_axis: int = -1,
) -> PyTree:
    r"""Rescales a direction to the scale of the parameters (Li et al. 2018).

    For every kernel leaf (rank >= 2) with slices :math:`d_j, \theta_j` along the
    output axis ``filter_axis`` (-1, the last axis, for Flax NNX / linen / haiku kernels
    ``(in, out)`` and ``(..., in, out)``; 0 for equinox's ``(out, in)`` and ``(out, in, ...)``;
    ``objective.model.filter_axis`` holds the convention of an Objective's model):

    * ``"filter"``: :math:`d_j \leftarrow d_j \, \lVert\theta_j\rVert / \lVert d_j\rVert`
      for each output unit / conv filter j (Li et al. 2018, eq. 1);
    * ``"layer"``: :math:`d \leftarrow d \, \lVert\theta\rVert / \lVert d\rVert` per leaf;
    * ``"model"``: the whole direction scaled to :math:`\lVert\theta\rVert` (all leaves,
      after the bias rule);
    * ``"none"``: unchanged.

    Leaves with at most one non-singleton axis (biases, BatchNorm/LayerNorm scale and shift, also
    in layouts such as equinox's ``(out, 1)`` conv bias or haiku's ``(1, 1, C)`` scale) are set to
    zero with ``biases="zero"`` (Li et al.'s default, "biasbn" ignored), or with
    ``biases="keep"`` normalised as one unit each (``filter``/``layer``: the leaf gets
    the norm of the matching params leaf; ``model``/``none``: kept as drawn).

    Args:
      direction: a pytree shaped like ``params``.
      params: the parameters whose scale the direction takes.
      normalization: one of :data:`NORMALIZATIONS`.
      biases: one of :data:`BIAS_MODES`.
      filter_axis: the kernel axis that indexes output units / filters (see above).

    Returns:
      The normalised direction (new pytree; inputs untouched). Cost: O(#params).
    """
    if not isinstance(filter_axis, (int, np.integer)) or filter_axis not in (-1, 0):
        raise ValueError(f"filter_axis must be -1 (Flax, haiku: kernels (in, out)) or 0 (equinox: (out, in)), "
                         f"got {filter_axis!r}")
    _check_option(normalization, NORMALIZATIONS, "normalization")
    _check_option(biases, BIAS_MODES, "biases mode")
    check_same_structure(direction, params, "normalize_direction")

    def leaf(d, p):
        d = jnp.asarray(d)
        p = jnp.asarray(p, d.dtype)
        if sum(n > 1 for n in d.shape) <= 1:  # one value per unit: a bias or norm parameter (any singleton layout)
            if biases == "zero":
                return jnp.zeros_like(d)
            if normalization in ("filter", "layer"):
                return d * _safe_ratio(jnp.linalg.norm(p), jnp.linalg.norm(d))
            return d
        if normalization == "filter":
            keep = d.ndim - 1 if filter_axis == -1 else 0
            axes = tuple(a for a in range(d.ndim) if a != keep)
            dn = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
            pn = jnp.sqrt(jnp.sum(p * p, axis=axes, keepdims=True))
            return d * _safe_ratio(pn, dn)
        if normalization == "layer":
            return d * _safe_ratio(jnp.linalg.norm(p), jnp.linalg.norm(d))
        return d

    out = jax.tree.map(leaf, direction, params)
    if normalization == "model":
        # With biases zeroed, the target is the norm of the kernels the direction moves.
        target = (
            params
            if biases == "keep"
            else jax.tree.map(lambda p: p if sum(n > 1 for n in jnp.shape(p)) > 1 else jnp.zeros_like(p), params)
        )
        out = tree_scale(out, _safe_ratio(tree_norm(target), tree_norm(out)))
    return out


def random_direction(
    params: PyTree,
    key: Array,
    *,
    normalization: str = "filter",
    biases: str = "zero",
    filter_axis: int = -1,
) -> PyTree:
    r"""A Gaussian direction :math:`d \sim \mathcal N(0, I)` normalised to the params' scale.

    Each leaf gets an independent key (split from ``key``), so the draw is
    deterministic for a given key and independent of the other leaves' shapes.
    Then :func:`normalize_direction` applies (Li et al. 2018: ``normalization="filter"``,
    ``biases="zero"``).

    Args:
      params: the parameters (a pytree of float arrays); not modified.
      key: a PRNG key (required: no global randomness).
      normalization: one of :data:`NORMALIZATIONS`.
      biases: ``"zero"`` or ``"keep"`` (see :func:`normalize_direction`).
      filter_axis: the kernels' output axis (see :func:`normalize_direction`).

    Returns:
      A direction pytree shaped and typed like ``params``.
    """
    _check_option(normalization, NORMALIZATIONS, "normalization")
    _check_option(biases, BIAS_MODES, "biases mode")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    raw = [jax.random.normal(k, jnp.shape(p), jnp.asarray(p).dtype) for k, p in zip(keys, leaves)]
    return normalize_direction(
        jax.tree.unflatten(treedef, raw), params, normalization=normalization, biases=biases, filter_axis=filter_axis
    )


def random_plane(
    params: PyTree,
    key: Array,
    *,
    normalization: str = "filter",
    biases: str = "zero",
    filter_axis: int = -1,
) -> tuple[PyTree, PyTree]:
    """Two independent normalised Gaussian directions ``(d1, d2)`` (Li et al. 2018).

    In high dimension two Gaussian draws are nearly orthogonal (cosine ~ 1/sqrt(n)),
    so, as in Li et al., they are not orthogonalised. Options as :func:`random_direction`.
    """
    k1, k2 = jax.random.split(key)
    opts = {"normalization": normalization, "biases": biases, "filter_axis": filter_axis}
    return random_direction(params, k1, **opts), random_direction(params, k2, **opts)


# --------------------------------------------------------------------------
# Directions between solutions


def segment(params_a: PyTree, params_b: PyTree) -> PyTree:
    r"""The direction :math:`d = \theta_b - \theta_a`: ``params_a + t d`` is the linear
    interpolation, ``t = 0`` at a and ``t = 1`` at b (Goodfellow et al. 2015; Keskar et al. 2017).
    """
    check_same_structure(params_a, params_b, "segment")
    return tree_sub(params_b, params_a)


class PlaneBasis(NamedTuple):
    """A plane in parameter space with an orthonormal basis.

    Attributes:
      origin: the params at coordinates (0, 0).
      directions: ``(u, v)``, orthonormal params pytrees (Euclidean inner product).
      coords: ``(m, 2)`` NumPy coordinates of the points that defined the plane.
    """

    origin: PyTree
    directions: tuple[PyTree, PyTree]
    coords: np.ndarray

    def __repr__(self) -> str:
        pts = "; ".join(f"({fmt.num(x)}, {fmt.num(y)})" for x, y in np.asarray(self.coords).reshape(-1, 2))
        return f"PlaneBasis(2 orthonormal directions, defining points at {pts})"


def plane_through(params_0: PyTree, params_1: PyTree, params_2: PyTree) -> PlaneBasis:
    r"""The plane through three solutions, by Gram–Schmidt (Garipov et al. 2018, Sec. 5).

    With :math:`a = \theta_1 - \theta_0`, :math:`b = \theta_2 - \theta_0`:
    :math:`u = a / \lVert a\rVert`, :math:`v = (b - \langle b, u\rangle u) / \lVert\cdot\rVert`.
    The origin is :math:`\theta_0`; the three points sit at
    ``(0, 0)``, ``(||a||, 0)`` and ``(<b,u>, <b,v>)`` (parameter-space distances).

    Raises:
      ValueError: if the three points are (numerically) collinear or coincide.
    """
    check_same_structure(params_0, params_1, "plane_through")
    check_same_structure(params_0, params_2, "plane_through")
    a = tree_sub(params_1, params_0)
    b = tree_sub(params_2, params_0)
    na = float(tree_norm(a))
    if not na > 0:
        raise ValueError("plane_through: params_0 and params_1 coincide; the plane is undefined")
    u = tree_scale(a, 1.0 / na)
    bu = float(tree_vdot(b, u))
    w = tree_sub(b, tree_scale(u, bu))
    # Re-orthogonalise once: one Gram–Schmidt pass loses orthogonality in float32.
    w = tree_sub(w, tree_scale(u, tree_vdot(w, u)))
    nw = float(tree_norm(w))
    if not nw > 1e-6 * max(na, float(tree_norm(b))):
        raise ValueError("plane_through: the three points are collinear; the plane is undefined")
    v = tree_scale(w, 1.0 / nw)
    coords = np.array([[0.0, 0.0], [na, 0.0], [bu, float(tree_vdot(b, v))]])
    return PlaneBasis(params_0, (u, v), coords)


# --------------------------------------------------------------------------
# Trajectory PCA


class TrajectoryPCA(NamedTuple):
    """Principal directions of a training trajectory.

    Attributes:
      origin: the params the plane is centred on (the final snapshot by default).
      directions: tuple of ``k`` orthonormal params pytrees (principal axes).
      explained_variance_ratio: ``(k,)`` fraction of the trajectory's variance along each axis.
      singular_values: ``(k,)`` singular values of the (centred) difference matrix.
      coords: ``(T, k)`` projection ``<θ_t - origin, d_i>`` of every snapshot.
      epochs: ``(T,)`` the snapshot epochs.
    """

    origin: PyTree
    directions: tuple
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    coords: np.ndarray
    epochs: np.ndarray

    def __repr__(self) -> str:
        epochs = np.asarray(self.epochs)
        when = f", epochs {epochs.min()}–{epochs.max()}" if epochs.size else ""
        return (
            f"TrajectoryPCA({len(self.directions)} components, explained variance "
            f"{fmt.values(self.explained_variance_ratio, 3)}, {len(epochs)} snapshots{when})"
        )


def trajectory_pca(
    snapshots: Sequence[tuple[int, PyTree]] | Sequence[PyTree],
    *,
    num_components: int = 2,
    origin: PyTree | None = None,
    center: bool = True,
) -> TrajectoryPCA:
    r"""PCA of a training trajectory (Li et al. 2018, Sec. 7).

    Builds :math:`M = [\theta_0 - \theta^*; \dots; \theta_{T-1} - \theta^*]` (``T x n``,
    :math:`\theta^*` = ``origin``, default the last snapshot), optionally subtracts the
    column mean (``center``, as sklearn's PCA in Li et al.'s code), and takes the top
    right singular vectors of M as directions. ``explained_variance_ratio`` is
    :math:`\sigma_i^2 / \sum_j \sigma_j^2`. The path is projected onto the directions
    (not centred), so the origin sits at (0, 0) and the trajectory can be drawn over a
    plane evaluated with these directions.

    Cost: one thin SVD of a ``T x n`` matrix, O(T^2 n) — via the ``T x T`` Gram matrix.

    Args:
      snapshots: ``TrainResult.snapshots`` (a list of ``(epoch, params)``) or a list of params.
      num_components: k, the number of directions (<= T - 1 when centring, <= T otherwise).
      origin: the plane's centre; None uses the last snapshot.
      center: subtract the mean difference before the SVD.

    Returns:
      A :class:`TrajectoryPCA`.

    Raises:
      ValueError: fewer than 2 snapshots, or ``num_components`` too large.
    """
    snapshots = list(snapshots)
    if len(snapshots) < 2:
        raise ValueError(f"trajectory_pca needs at least 2 snapshots, got {len(snapshots)}")
    if all(isinstance(s, tuple) and len(s) == 2 and np.ndim(s[0]) == 0 for s in snapshots):
        epochs = np.array([int(e) for e, _ in snapshots])
        trees = [p for _, p in snapshots]
    else:
        epochs = np.arange(len(snapshots))
        trees = snapshots
    rank = len(trees) - 1 if center else len(trees)
    if not 1 <= num_components <= rank:
        raise ValueError(f"num_components must be in [1, {rank}] for {len(trees)} snapshots, got {num_components}")
    origin = trees[-1] if origin is None else origin
    flat_origin, unravel = ravel_pytree(origin)
    # Host float64: the SVD of a few long vectors is cheap and we want exact ratios.
    dtype = np.float64
    m = np.stack([np.asarray(ravel_pytree(t)[0], dtype) for t in trees]) - np.asarray(flat_origin, dtype)
    mc = m - m.mean(axis=0, keepdims=True) if center else m
    gram = mc @ mc.T
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    total = evals.sum()
    sing = np.sqrt(evals[:num_components])
    if not (sing > 0).all():
        raise ValueError("the trajectory spans fewer than num_components directions")
    raw = (evecs[:, :num_components].T @ mc) / sing[:, None]
    # Re-orthonormalise (the Gram route squares the condition number), keeping each sign.
    q, _ = np.linalg.qr(raw.T)
    comps = q.T * np.sign(np.sum(q.T * raw, axis=1))[:, None]
    coords = m @ comps.T
    out_dtype = flat_origin.dtype
    directions = tuple(unravel(jnp.asarray(c, out_dtype)) for c in comps)
    ratio = evals[:num_components] / total if total > 0 else np.zeros(num_components)
    return TrajectoryPCA(origin, directions, ratio, sing, coords, epochs)


# --------------------------------------------------------------------------
# Hessian eigenvectors


class HessianDirections(NamedTuple):
    """Top Hessian eigenvectors as directions.

    Attributes:
      directions: tuple of ``k`` unit-norm params pytrees, largest eigenvalue first.
      eigenvalues: ``(k,)`` the matching eigenvalues of the Hessian of the mean loss.
    """

    directions: tuple
    eigenvalues: np.ndarray

    def __repr__(self) -> str:
        return f"HessianDirections({len(self.directions)} directions, eigenvalues={fmt.values(self.eigenvalues)})"


def hessian_directions(
    objective, params: PyTree, key: Array, *, k: int = 2, batch=None, **eigen_options
) -> HessianDirections:
    r"""The top-k eigenvectors of :math:`H = \nabla^2_\theta L(\theta)` as directions.

    :math:`L` is the Objective's mean training loss (or the loss on ``batch``). The
    eigenpairs come from :func:`losslab.curvature.top_eigenpairs` on
    :func:`losslab.curvature.hessian_operator` (matrix-free Hessian-vector products;
    cost as reported by that algorithm, a few dozen matvecs per eigenvector).
    Eigenvectors are unit-norm in the flat Euclidean metric and are not rescaled:
    a slice ``params + a d1 + b d2`` then moves a distance :math:`\sqrt{a^2+b^2}`.

    Args:
      objective: a :class:`losslab.Objective`.
      params: the point at which H is taken.
      key: PRNG key for the eigensolver's start vectors.
      k: number of directions.
      batch: ``(x, y)`` to take the Hessian on; None = the full training set.
      **eigen_options: passed to ``top_eigenpairs`` (e.g. ``num_steps``).

    Returns:
      A :class:`HessianDirections`.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    op = make_operator("hessian", objective, params, batch)
    res = top_eigenpairs(op, key, k=k, **eigen_options)
    vecs = jnp.asarray(res.eigenvectors)
    directions = tuple(op.unravel(vecs[i]) for i in range(k))
    return HessianDirections(directions, np.asarray(res.eigenvalues))


__all__ = [
    "BIAS_MODES",
    "NORMALIZATIONS",
    "HessianDirections",
    "PlaneBasis",
    "TrajectoryPCA",
    "hessian_directions",
    "normalize_direction",
    "plane_through",
    "random_direction",
    "random_plane",
    "segment",
    "trajectory_pca",
    "tree_add",
    "tree_norm",
    "tree_scale",
    "tree_sub",
    "tree_vdot",
]
