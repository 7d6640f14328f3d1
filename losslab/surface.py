"""Loss surfaces: 1-D lines, 2-D planes and mode-connecting paths.

Every slice is the same computation: for grid coordinates :math:`c \\in \\mathbb R^K`,
evaluate the Objective's metrics at

.. math::  \\theta(c) = \\theta_0 + \\sum_{k=1}^K c_k d_k

(Goodfellow et al. 2015; Li et al. 2018). :func:`evaluate_points` does it for
all points as **one compiled program**: the points are cut into chunks of
``points_per_chunk``, each chunk is ``vmap``-ed, the chunks are visited with
``lax.map`` (so memory is bounded by one chunk times the Objective's data
chunk), and when the mesh has several devices the chunks are split over them
with ``jax.shard_map`` (each device evaluates its own points; results equal
the single-device ones). The Objective is a pytree passed as an argument, so
the dataset is never baked into the program and a second call with the same
shapes does not recompile.

Metrics: ``train_loss`` is the training objective :math:`L(\\theta)` (mean data
loss plus regularizers, as ``objective.loss``); ``<split>_loss`` and
``<split>_accuracy`` for ``val``/``test`` (and ``train_accuracy``) are
``objective.evaluate`` (data loss only).

BatchNorm: ``batch_norm="stored"`` evaluates every point in eval mode with the
Objective's stored running statistics (``objective.loss`` at the centre).
``batch_norm="recompute"`` re-estimates the statistics at every point from a
fixed subset of the training set (one train-mode forward pass per point, as
SWA's ``update_bn``, Izmailov et al. 2018), which is what a network moved in
weight space would have after re-calibration and what makes BN networks
invariant to filter rescaling (the premise of filter normalisation).

Mode connectivity: :func:`linear_barrier` (Frankle et al. 2020) and
:func:`bezier_curve` (a trained quadratic Bezier curve, Garipov et al. 2018).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from losslab import display as fmt
from losslab import optim
from losslab.stream import is_stream
from losslab.trees import check_same_structure, tree_sub, tree_vdot

Array = jax.Array
PyTree = Any

BATCH_NORM_MODES = ("stored", "recompute")
_SPLIT_METRICS = ("loss", "accuracy")


def available_metrics(objective) -> tuple[str, ...]:
    """The metric names :func:`evaluate_points` accepts for this Objective's splits."""
    names = ["train_loss", "train_accuracy"]
    for split in ("val", "test"):
        if split in objective.data:
            names += [f"{split}_loss", f"{split}_accuracy"]
    return tuple(names)


def default_metrics(objective) -> tuple[str, ...]:
    """Train loss and accuracy, plus test loss and accuracy when there is a test split."""
    return tuple(m for m in available_metrics(objective) if not m.startswith("val_"))


def _check_metrics(objective, metrics) -> tuple[str, ...]:
    metrics = default_metrics(objective) if metrics is None else tuple(metrics)
    valid = available_metrics(objective)
    if not metrics:
        raise ValueError(f"metrics must not be empty; valid: {list(valid)}")
    for m in metrics:
        if m not in valid:
            raise ValueError(f"unknown metric {m!r} for this objective; valid: {list(valid)}")
    return metrics


# --------------------------------------------------------------------------
# BatchNorm statistics


def _is_float(a) -> bool:
    return jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)


def _state_momentum(objective, params, x, key):
    """Per-entry momentum m of the running-statistics update new = m * old + (1 - m) * batch.

    Train mode normalises with batch statistics, so the batch term does not depend on the
    stored state; two passes from state 0 and state 1 give m = new(1) - new(0).
    """
    state = objective.state
    zeros = jax.tree.map(lambda s: jnp.zeros_like(s) if _is_float(s) else s, state)
    ones = jax.tree.map(lambda s: jnp.ones_like(s) if _is_float(s) else s, state)
    _, from0 = objective.apply(params, x, state=zeros, train=True, key=key)
    _, from1 = objective.apply(params, x, state=ones, train=True, key=key)
    return jax.tree.map(lambda a, b: b - a if _is_float(a) else None, from0, from1)


def recompute_state(objective, params, x, momentum, key=None):
    """BatchNorm statistics of ``params`` on inputs ``x``: one train-mode forward pass.

    From a zero state the update gives ``(1 - m) * batch_stat``; dividing by ``1 - m``
    recovers the batch statistic exactly for any momentum. Entries the train pass does
    not update (m = 1) and non-float state keep their stored values.

    Args:
      objective: the Objective (its ``state`` is the stored state).
      params: the point.
      x: the fixed calibration inputs ``(m, ...)``.
      momentum: from :func:`_state_momentum` (a pytree like the state).
      key: PRNG key for train-mode randomness (dropout), or None.
    """
    zeros = jax.tree.map(lambda s: jnp.zeros_like(s) if _is_float(s) else s, objective.state)
    _, fresh = objective.apply(params, x, state=zeros, train=True, key=key)

    def leaf(stored, new, m):
        if not _is_float(stored):
            return stored
        gap = 1.0 - m
        ok = jnp.abs(gap) > 1e-6
        return jnp.where(ok, new / jnp.where(ok, gap, 1.0), stored)

    return jax.tree.map(leaf, objective.state, fresh, momentum)


# --------------------------------------------------------------------------
# The grid engine


def _combine(origin, stacked, c):
    """origin + sum_k c[k] * stacked[k] for every leaf."""
    return jax.tree.map(lambda o, d: o + jnp.tensordot(c.astype(d.dtype), d, axes=1), origin, stacked)


def _point_metrics(objective, params, metrics):
    out = {}
    splits = {m.rsplit("_", 1)[0] for m in metrics}
    for split in sorted(splits):
        ev = objective.evaluate(params, split)
        if f"{split}_loss" in metrics:
            loss = ev["loss"]
            if split == "train":
                loss = loss + objective.regularization(params)
            out[f"{split}_loss"] = loss
        if f"{split}_accuracy" in metrics:
            out[f"{split}_accuracy"] = ev["accuracy"]
    return out


@functools.partial(jax.jit, static_argnames=("metrics", "batch_norm", "mesh"))
def _grid_program(objective, origin, stacked, chunks, bn_x, bn_key, *, metrics, batch_norm, mesh):
    """chunks: (num_chunks, points_per_chunk, K) -> {metric: (num_chunks, points_per_chunk)}."""
    if batch_norm == "recompute":
        momentum = _state_momentum(objective, origin, bn_x, bn_key)

    def point(obj, org, dirs, c, bx, bk, mom):
        params = _combine(org, dirs, c)
        if batch_norm == "recompute":
            obj = obj.replace(state=recompute_state(obj, params, bx, mom, bk))
        return _point_metrics(obj, params, metrics)

    mom = momentum if batch_norm == "recompute" else None

    def local(obj, org, dirs, cs, bx, bk, mm):
        one = lambda c: point(obj, org, dirs, c, bx, bk, mm)
        if cs.shape[1] == 1:  # one point per chunk: no vmap (a size-1 batch axis costs layout copies)
            return jax.lax.map(lambda c: jax.tree.map(lambda v: v[None], one(c[0])), cs)
        return jax.lax.map(jax.vmap(one), cs)

    if mesh is None:
        return local(objective, origin, stacked, chunks, bn_x, bn_key, mom)
    axes = tuple(mesh.axis_names)
    rep = P()
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rep, rep, rep, P(axes), rep, rep, rep),
        out_specs=P(axes),
        check_vma=False,
    )
    return sharded(objective, origin, stacked, chunks, bn_x, bn_key, mom)


def default_points_per_chunk() -> int:
    """Points per vmapped chunk when none is given: 1 on CPU, 8 on accelerators (measured on CPU)."""
    return 1 if jax.default_backend() == "cpu" else 8


def _default_mesh(mesh):
    if mesh is not None:
        return mesh
    devices = jax.devices()
    if len(devices) == 1:
        return None
    return jax.sharding.Mesh(np.array(devices), ("points",))


def _check_points(origin, directions, coords, batch_norm, points_per_chunk):
    """Eager checks of :func:`evaluate_points`; returns ``(directions, coords (P, k) float64, points per chunk)``."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"unknown batch_norm mode {batch_norm!r}; valid: {list(BATCH_NORM_MODES)}")
    points_per_chunk = default_points_per_chunk() if points_per_chunk is None else points_per_chunk
    if points_per_chunk < 1:
        raise ValueError(f"points_per_chunk must be >= 1, got {points_per_chunk}")
    directions = tuple(directions)
    if not directions:
        raise ValueError("need at least one direction")
    for d in directions:
        check_same_structure(origin, d, "evaluate_points(origin, direction)")
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != len(directions):
        raise ValueError(f"coords must have shape (P, {len(directions)}), got {coords.shape}")
    if coords.shape[0] == 0:
        raise ValueError("coords is empty")
    return directions, coords, points_per_chunk


def evaluate_points(
    objective,
    origin: PyTree,
    directions: Sequence[PyTree],
    coords,
    *,
    metrics: Sequence[str] | None = None,
    points_per_chunk: int | None = None,
    batch_norm: str = "stored",
    bn_examples: int = 1024,
    bn_key: Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
    r"""Metrics at :math:`\theta_0 + \sum_k c_{pk} d_k` for every row ``c_p`` of ``coords``.

    One compiled program: ``vmap`` over ``points_per_chunk`` points, ``lax.map`` over
    chunks, ``shard_map`` over the devices of ``mesh``. Memory is bounded by
    ``points_per_chunk`` copies of the params plus ``points_per_chunk`` times one
    data chunk of activations (``objective.chunk_size`` rows). Cost: one full pass over
    every needed split per point (plus one forward pass over ``bn_examples`` rows per
    point with ``batch_norm="recompute"``).

    Args:
      objective: a :class:`losslab.Objective` (passed to the program as an argument).
      origin: the centre :math:`\theta_0` (params pytree); never modified.
      directions: K params pytrees :math:`d_k`.
      coords: ``(P, K)`` array of coordinates (host or device).
      metrics: names from :func:`available_metrics`; None = :func:`default_metrics`.
      points_per_chunk: points evaluated together by ``vmap``. None: :func:`default_points_per_chunk`
        (1 on CPU, where one point's forward pass already saturates the cores and larger
        chunks measured slower: 260 vs 205 points/s at 8 on the MNIST-1D MLP; 8 on GPU/TPU).
      batch_norm: ``"stored"`` (eval mode with the Objective's running statistics) or
        ``"recompute"`` (statistics re-estimated at every point from the first
        ``bn_examples`` training rows; see the module docstring).
      bn_examples: calibration rows for ``"recompute"``.
      bn_key: PRNG key for train-mode randomness during recomputation (needed only
        if the model has dropout).
      mesh: a ``jax.sharding.Mesh``; points are split over all its devices. None uses
        every device of ``jax.devices()`` when there are several.

    Returns:
      ``{metric: (P,) float64 NumPy array}``.

    Raises:
      ValueError: bad metric or mode names, coordinate shape or directions structure.
    """
    metrics = _check_metrics(objective, metrics)
    directions, coords, points_per_chunk = _check_points(origin, directions, coords, batch_norm, points_per_chunk)
    num_points = coords.shape[0]
    if batch_norm == "recompute":
        if bn_examples < 1:
            raise ValueError(f"bn_examples must be >= 1, got {bn_examples}")
        bn_x = objective.head(bn_examples)[0]
    else:
        bn_x = None
    mesh = _default_mesh(mesh)
    num_devices = 1 if mesh is None else int(mesh.devices.size)
    ppc = min(points_per_chunk, -(-num_points // num_devices))
    num_chunks = -(-num_points // (ppc * num_devices)) * num_devices
    padded = np.zeros((num_chunks * ppc, coords.shape[1]))
    padded[:num_points] = coords
    dtype = jax.tree.leaves(origin)[0].dtype
    chunks = jnp.asarray(padded.reshape(num_chunks, ppc, -1), dtype)
    stacked = jax.tree.map(lambda *ds: jnp.stack(ds), *directions)
    out = _grid_program(
        objective, origin, stacked, chunks, bn_x, bn_key, metrics=metrics, batch_norm=batch_norm, mesh=mesh
    )
    return {k: np.asarray(v, np.float64).reshape(-1)[:num_points] for k, v in out.items()}


# --------------------------------------------------------------------------
# Lines and planes


class LineSlice(NamedTuple):
    """A 1-D slice ``θ0 + t d``.

    Attributes:
      t: ``(n,)`` coordinates.
      values: ``{metric: (n,)}``.
    """

    t: np.ndarray
    values: dict

    def __repr__(self) -> str:
        ranges = "".join(f", {k} ∈ {fmt.span(v)}" for k, v in self.values.items())
        return f"LineSlice({np.size(self.t)} points, t ∈ {fmt.span(self.t)}{ranges})"


class PlaneSlice(NamedTuple):
    """A 2-D slice ``θ0 + x d1 + y d2``.

    Attributes:
      x: ``(nx,)`` coordinates along d1.
      y: ``(ny,)`` coordinates along d2.
      values: ``{metric: (nx, ny)}``, ``values[m][i, j]`` at ``(x[i], y[j])`` ("ij" indexing;
        transpose for ``matplotlib.contour(x, y, z)``).
    """

    x: np.ndarray
    y: np.ndarray
    values: dict

    def __repr__(self) -> str:
        ranges = "".join(f", {k} ∈ {fmt.span(v)}" for k, v in self.values.items())
        return (
            f"PlaneSlice({np.size(self.x)}×{np.size(self.y)} grid, x ∈ {fmt.span(self.x)}, "
            f"y ∈ {fmt.span(self.y)}{ranges})"
        )


def _axis(values, span, num, name):
    if values is not None:
        arr = np.asarray(values, np.float64).reshape(-1)
        if arr.size == 0:
            raise ValueError(f"{name} coordinates are empty")
        return arr
    lo, hi = span
    if num < 1:
        raise ValueError(f"number of {name} points must be >= 1, got {num}")
    if not hi >= lo:
        raise ValueError(f"{name} range must have lo <= hi, got {span}")
    return np.linspace(lo, hi, num)


def line(
    objective,
    params: PyTree,
    direction: PyTree,
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    num_points: int = 51,
    t=None,
    **kwargs,
) -> LineSlice:
    r"""Metrics along the line :math:`\theta_0 + t\,d`, ``t`` in ``linspace(*span, num_points)``.

    With ``direction = segment(a, b)`` and ``params = a`` this is the linear
    interpolation of Goodfellow et al. 2015 / Keskar et al. 2017 (Fig. 3) — use
    ``span=(-1, 2)`` to see past both ends. ``t`` overrides the grid. Other keyword
    arguments go to :func:`evaluate_points`. Cost: ``num_points`` full evaluations in one
    compiled program. Returns a :class:`LineSlice` (``values[m]`` of shape ``(num_points,)``).
    """
    t = _axis(t, span, num_points, "t")
    values = evaluate_points(objective, params, (direction,), t[:, None], **kwargs)
    return LineSlice(t, values)


def plane(
    objective,
    params: PyTree,
    d1: PyTree,
    d2: PyTree,
    *,
    x_span: tuple[float, float] = (-1.0, 1.0),
    y_span: tuple[float, float] = (-1.0, 1.0),
    num_points: int | tuple[int, int] = 51,
    x=None,
    y=None,
    **kwargs,
) -> PlaneSlice:
    r"""Metrics on the plane :math:`\theta_0 + x\,d_1 + y\,d_2` (Li et al. 2018).

    Default: a 51 x 51 grid on :math:`[-1, 1]^2`. The grid is exactly the reported
    coordinates (no shifted rows). ``x``/``y`` override the grid. Cost: ``nx * ny``
    full evaluations in one compiled program (see :func:`evaluate_points`, which
    receives the other keyword arguments: ``metrics``, ``points_per_chunk``,
    ``batch_norm``, ``mesh`` ...).
    """
    nx, ny = (num_points, num_points) if np.ndim(num_points) == 0 else tuple(num_points)
    x = _axis(x, x_span, nx, "x")
    y = _axis(y, y_span, ny, "y")
    gx, gy = np.meshgrid(x, y, indexing="ij")
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    values = evaluate_points(objective, params, (d1, d2), coords, **kwargs)
    return PlaneSlice(x, y, {k: v.reshape(x.size, y.size) for k, v in values.items()})


# --------------------------------------------------------------------------
# Mode connectivity


def interpolation_barrier(t, values) -> tuple[float, float]:
    r"""Barrier heights of a path from its values at ``t`` (``t[0]=0``, ``t[-1]=1``).

    Returns ``(barrier, frankle)``:

    * ``barrier`` :math:`= \max_t [L(t) - ((1-t) L(0) + t L(1))]` (Entezari et al. 2022):
      the height above the chord; 0 for a path whose loss is linear in t.
    * ``frankle`` :math:`= \max_t L(t) - \tfrac12 (L(0) + L(1))` (Frankle et al. 2020).

    Both are 0 for a constant path (a solution connected with itself).
    """
    t = np.asarray(t, np.float64)
    v = np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape or t.size < 2:
        raise ValueError(f"t and values must be 1-D of equal length >= 2, got {t.shape} and {v.shape}")
    if not (np.isclose(t[0], 0.0) and np.isclose(t[-1], 1.0)):
        raise ValueError(f"t must run from 0 to 1, got [{t[0]}, {t[-1]}]")
    chord = (1.0 - t) * v[0] + t * v[-1]
    return float(np.max(v - chord)), float(np.max(v) - 0.5 * (v[0] + v[-1]))


class PathResult(NamedTuple):
    """Metrics along a path between two solutions.

    Attributes:
      t: ``(n,)`` path parameter in [0, 1].
      values: ``{metric: (n,)}``.
      barrier: height above the chord of ``metric`` (see :func:`interpolation_barrier`).
      frankle_barrier: max minus the endpoints' mean (Frankle et al. 2020).
      metric: the metric the barriers refer to.
      control: the Bezier control point (params pytree), or None for a straight line.
      train_losses: ``(num_steps,)`` minibatch losses while training the curve (empty for a line).
    """

    t: np.ndarray
    values: dict
    barrier: float
    frankle_barrier: float
    metric: str
    control: PyTree | None = None
    train_losses: np.ndarray = np.zeros(0)

    def __repr__(self) -> str:
        kind = "linear" if self.control is None else f"Bezier, trained {np.size(self.train_losses)} steps"
        return (
            f"PathResult({kind}, {np.size(self.t)} points, {self.metric} barrier={fmt.num(self.barrier)}, "
            f"frankle_barrier={fmt.num(self.frankle_barrier)})"
        )


def linear_barrier(
    objective,
    params_a: PyTree,
    params_b: PyTree,
    *,
    num_points: int = 25,
    metric: str = "train_loss",
    **kwargs,
) -> PathResult:
    r"""The loss along :math:`\theta(t) = \theta_a + t(\theta_b - \theta_a)`, ``t in [0, 1]``,
    and its barrier height (Frankle et al. 2020, linear mode connectivity).

    The path starts exactly at ``params_a`` (``t = 0``) and, when ``params_b`` equals
    ``params_a``, stays there: the barrier of a solution with itself is exactly 0.
    Cost: ``num_points`` evaluations (see :func:`evaluate_points`, which receives the
    other keyword arguments).
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    metrics = kwargs.pop("metrics", None)
    metrics = _check_metrics(objective, metrics)
    if metric not in metrics:
        metrics = (metric, *metrics)
    check_same_structure(params_a, params_b, "linear_barrier")
    t = np.linspace(0.0, 1.0, num_points)
    direction = jax.tree.map(jnp.subtract, params_b, params_a)
    values = evaluate_points(objective, params_a, (direction,), t[:, None], metrics=metrics, **kwargs)
    barrier, frankle = interpolation_barrier(t, values[metric])
    return PathResult(t, values, barrier, frankle, metric)


def bezier_point(params_a: PyTree, control: PyTree, params_b: PyTree, t) -> PyTree:
    r"""The quadratic Bezier curve :math:`\phi(t) = (1-t)^2\theta_a + 2t(1-t)\theta_c + t^2\theta_b`."""
    return jax.tree.map(lambda a, c, b: (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b, params_a, control, params_b)


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float, num_steps: int):
    # Cached so that the same settings give the same (hashable, static) transformation
    # and a second call does not recompile.
    return optim.create(name, learning_rate, total_steps=num_steps)[0]


def _in_memory(objective, tool: str):
    train = objective.batch("train")
    if is_stream(train):
        raise ValueError(f"{tool} draws random minibatches and needs in-memory training data, not a stream")
    return train


def bezier_objective(objective, params_a: PyTree, params_b: PyTree, t):
    r"""The objective as a function of the control point at curve position ``t``.

    :math:`\phi(t) = (1-t)^2\theta_a + t^2\theta_b + 2t(1-t)\,\theta_c` is affine in
    :math:`\theta_c` (:meth:`~losslab.Objective.affine`), so every optimizer, natural-gradient
    and K-FAC included, sees the curve's own Fisher and layer gradients.
    """
    t = jnp.asarray(t)
    offset = jax.tree.map(lambda a, b: ((1 - t) ** 2).astype(a.dtype) * a + (t**2).astype(b.dtype) * b, params_a, params_b)
    return objective.affine(offset, 2 * t * (1 - t))


@functools.partial(jax.jit, static_argnames=("tx", "num_steps", "batch_size"))
def _train_bezier(objective, params_a, params_b, control, key, *, tx, num_steps, batch_size):
    x, y = _in_memory(objective, "bezier_curve")
    n = x.shape[0]

    def body(carry, k):
        ctrl, opt_state = carry
        kt, kb, kd = jax.random.split(k, 3)
        t = jax.random.uniform(kt, (), x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
        idx = jax.random.randint(kb, (batch_size,), 0, n)
        curve = bezier_objective(objective, params_a, params_b, t)
        ctrl, _, opt_state, loss = optim.step(tx, curve, ctrl, objective.state, opt_state, (x[idx], y[idx]), kd)
        return (ctrl, opt_state), loss

    (control, _), losses = jax.lax.scan(body, (control, tx.init(control)), jax.random.split(key, num_steps))
    return control, losses


def bezier_curve(
    objective,
    params_a: PyTree,
    params_b: PyTree,
    key: Array,
    *,
    num_steps: int = 1000,
    learning_rate: float = 1e-2,
    batch_size: int = 128,
    optimizer: str = "adam",
    control: PyTree | None = None,
    num_points: int = 25,
    metric: str = "train_loss",
    **kwargs,
) -> PathResult:
    r"""Trains a quadratic Bezier curve between two solutions (Garipov et al. 2018).

    The control point :math:`\theta_c` of
    :math:`\phi(t) = (1-t)^2\theta_a + 2t(1-t)\theta_c + t^2\theta_b` minimises
    :math:`\mathbb E_{t \sim U(0,1)} L(\phi(t))`: each of ``num_steps`` steps draws one
    ``t`` and a minibatch of ``batch_size`` rows (with replacement) and takes an
    optimizer step on the train-mode minibatch loss (BatchNorm batch statistics, as in
    Garipov et al.), all inside one ``lax.scan``; each step is :func:`losslab.optim.step` on
    :func:`bezier_objective`, so any optimizer of :data:`losslab.optim.OPTIMIZERS` works. The
    endpoints stay fixed. The trained
    curve is then evaluated at ``num_points`` values of t in [0, 1] (see
    :func:`evaluate_points`, which receives the other keyword arguments; use
    ``batch_norm="recompute"`` for BatchNorm models).

    Cost: ``num_steps`` minibatch gradients + ``num_points`` full evaluations.

    Args:
      objective: the Objective.
      params_a: first endpoint :math:`\theta_a` (t = 0).
      params_b: second endpoint :math:`\theta_b` (t = 1).
      key: PRNG key for t, minibatches and dropout.
      num_steps: optimizer steps.
      learning_rate: step size.
      batch_size: minibatch rows.
      optimizer: a name from :data:`losslab.optim.OPTIMIZERS`.
      control: initial control point; None = the midpoint (the straight line).
      num_points: evaluation points along the curve.
      metric: the metric the barrier is measured on.

    Returns:
      A :class:`PathResult` with ``control`` and ``train_losses`` set.
    """
    check_same_structure(params_a, params_b, "bezier_curve")
    if num_steps < 1 or batch_size < 1 or num_points < 2:
        raise ValueError(
            f"need num_steps >= 1, batch_size >= 1, num_points >= 2; got {num_steps}, {batch_size}, {num_points}"
        )
    metrics = _check_metrics(objective, kwargs.pop("metrics", None))
    if metric not in metrics:
        metrics = (metric, *metrics)
    if control is None:
        control = jax.tree.map(lambda a, b: 0.5 * (a + b), params_a, params_b)
    tx = _optimizer(optimizer, float(learning_rate), int(num_steps))
    control, losses = _train_bezier(
        objective, params_a, params_b, control, key, tx=tx, num_steps=int(num_steps), batch_size=int(batch_size)
    )
    t = np.linspace(0.0, 1.0, num_points)
    weights = np.stack([(1 - t) ** 2, 2 * t * (1 - t), t**2], axis=1)
    origin = jax.tree.map(jnp.zeros_like, params_a)
    values = evaluate_points(objective, origin, (params_a, control, params_b), weights, metrics=metrics, **kwargs)
    barrier, frankle = interpolation_barrier(t, values[metric])
    return PathResult(t, values, barrier, frankle, metric, control, np.asarray(losses))


def project_to_plane(params_list: Sequence[PyTree], origin: PyTree, d1: PyTree, d2: PyTree) -> np.ndarray:
    r"""Least-squares coordinates ``(x, y)`` of each params pytree in the plane
    :math:`\theta_0 + x d_1 + y d_2` (solves the 2x2 normal equations, so d1, d2 need not
    be orthogonal). Returns ``(len(params_list), 2)``.
    """
    gram = np.array(
        [[float(tree_vdot(d1, d1)), float(tree_vdot(d1, d2))], [float(tree_vdot(d2, d1)), float(tree_vdot(d2, d2))]]
    )
    if not math.isfinite(np.linalg.cond(gram)) or np.linalg.cond(gram) > 1e12:
        raise ValueError("d1 and d2 are (nearly) parallel or zero; the plane is undefined")
    rows = []
    for p in params_list:
        diff = tree_sub(p, origin)
        rhs = np.array([float(tree_vdot(d1, diff)), float(tree_vdot(d2, diff))])
        rows.append(np.linalg.solve(gram, rhs))
    return np.asarray(rows).reshape(-1, 2)


__all__ = [
    "BATCH_NORM_MODES",
    "LineSlice",
    "PathResult",
    "PlaneSlice",
    "available_metrics",
    "bezier_curve",
    "bezier_objective",
    "bezier_point",
    "default_metrics",
    "default_points_per_chunk",
    "evaluate_points",
    "interpolation_barrier",
    "line",
    "linear_barrier",
    "plane",
    "project_to_plane",
    "recompute_state",
]
