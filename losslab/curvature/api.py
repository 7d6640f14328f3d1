"""One-line curvature calls for notebooks, returning small result objects with error bars.

>>> print(hessian_trace(objective, params))          # doctest: +SKIP
Hessian trace = 41.27 ± 0.83 (hutchpp, 102 matvecs, 0.41 s)
>>> hessian_trace(objective, params)                 # doctest: +SKIP
TraceEstimate(trace=41.27 ± 0.83, hessian, hutchpp, 102 matvecs, 0.41 s)

``str`` is a sentence, ``repr`` names the class, and notebooks render a short
Markdown line (a table of eigenvalues for :class:`EigenvalueEstimate`).

Each call builds the operator and runs the estimator inside one jitted
program, with the :class:`~losslab.Objective` passed *as an argument* (it is
a pytree), so a second call with same-shaped inputs does not recompile and the
dataset is never baked into the program. ``exact=True`` materialises the
matrix and diagonalises it instead (small models only).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from losslab import display as fmt
from losslab.curvature import backprop
from losslab.curvature import dense as dense_lib
from losslab.curvature import density as density_lib
from losslab.curvature import eigen as eigen_lib
from losslab.curvature import operators as ops
from losslab.curvature import trace as trace_lib
from losslab.curvature.base import restrict, selection_mask

# The operators the one-liners accept: the registry's lazily built curvature matrices.
OPERATOR_NAMES = tuple(name for name in ops.OPERATORS if name != "kfac")
TRACE_METHODS = ("hutchpp", "hutchinson", "adaptive", "backprop", "exact")
EIGEN_METHODS = ("lanczos", "power", "exact")
_TITLES = {name: spec.title for name, spec in ops.OPERATORS.items()}


def _operator(name, objective, params, batch, key, select, mesh=None):
    # mc_fisher labels come from fold_in(key, 1), so probes drawn from key stay independent of them.
    op_key = jax.random.fold_in(key, 1) if ops.OPERATORS[name].needs_key else None
    return ops.make_operator(name, objective, params, batch, key=op_key, select=select, mesh=mesh)


def _prepare(objective, params, key, operator, select, batch=None):
    """Eager checks of a one-liner's arguments (before anything is compiled); returns ``(params, key)``."""
    if operator not in OPERATOR_NAMES:
        raise ValueError(f"operator must be one of {OPERATOR_NAMES}, got {operator!r}")
    key = _as_key(key)
    ops.check_operator(operator, objective, key=key)
    params = objective.params if params is None else objective.check_params(params)
    if batch is not None:
        objective.check_batch(batch)
    selection_mask(params, select)  # validates eagerly
    return params, key


def _as_key(key):
    """A PRNG key from ``key`` (None: ``jax.random.key(0)``; an int is a seed)."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise ValueError(
        f"key must be a jax.random.key(...) (or an int seed, or a legacy PRNGKey), got {type(key).__name__} "
        f"{getattr(key, 'dtype', '')}{getattr(key, 'shape', '')}"
    )


class _CompileCounter:
    """Counts XLA backend compilations (through ``jax.monitoring``), to report whether a call compiled."""

    count = 0
    registered = False

    @classmethod
    def listen(cls) -> int:
        if not cls.registered:
            jax.monitoring.register_event_duration_secs_listener(cls._on_event)
            cls.registered = True
        return cls.count

    @classmethod
    def _on_event(cls, event: str, duration: float, **_kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            cls.count += 1


def _timed(fn, *args, **kwargs):
    """``(fn(...), seconds, compiled)``: ``compiled`` says whether XLA compiled anything during the call."""
    before = _CompileCounter.listen()
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start, _CompileCounter.count > before


# ----------------------------------------------------------------------------
# Trace


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """A trace with its standard error; ``float(t)`` is the value.

    ``str(t)`` is a sentence (``Hessian trace = 175.2 ± 1.4 (hutchpp, 102 matvecs, 1.61 s)``),
    ``repr(t)`` the same facts as ``TraceEstimate(trace=175.2 ± 1.4, ...)``; notebooks show a
    Markdown line.

    Attributes:
      value: the estimate. std_error: its standard error (0 when exact).
      num_matvecs: operator products spent. seconds: wall time of the call
      (``compiled`` says whether it included compilation). method, operator: what ran.
    """

    value: float
    std_error: float
    num_matvecs: int
    seconds: float
    compiled: bool
    method: str
    operator: str

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return (
            f"{_TITLES[self.operator]} trace = {self.value:.6g} ± {self.std_error:.2g} "
            f"({self.method}, {self.num_matvecs} matvecs, {fmt.seconds(self.seconds, self.compiled)})"
        )

    def __repr__(self) -> str:
        return (
            f"TraceEstimate(trace={fmt.pm(self.value, self.std_error)}, {self.operator}, {self.method}, "
            f"{self.num_matvecs} matvecs, {fmt.seconds(self.seconds, self.compiled)})"
        )

    def _repr_markdown_(self) -> str:
        return (
            f"**{_TITLES[self.operator]} trace** = {self.value:.6g} ± {self.std_error:.2g} "
            f"*({self.method}, {self.num_matvecs} matvecs, {fmt.seconds(self.seconds, self.compiled)})*"
        )


@functools.partial(jax.jit, static_argnames=("operator", "method", "num_matvecs", "rel_std_error", "select", "mesh"))
def _trace_impl(objective, params, key, batch, *, operator, method, num_matvecs, rel_std_error, select, mesh):
    op = _operator(operator, objective, params, batch, key, select, mesh)
    if method == "hutchpp":
        return trace_lib.hutchpp_trace(op, key, num_matvecs=num_matvecs)
    elif method == "hutchinson":
        return trace_lib.hutchinson_trace(op, key, num_probes=num_matvecs)
    elif method == "adaptive":
        return trace_lib.hutchinson_trace(op, key, num_probes=num_matvecs, rel_std_error=rel_std_error)
    elif method == "exact":
        return trace_lib.TraceResult(jnp.trace(ops.to_dense(op)), jnp.zeros(()), jnp.asarray(op.size))
    else:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")


def hessian_trace(
    objective,
    params=None,
    key: jax.Array | None = None,
    *,
    method: str = "hutchpp",
    num_matvecs: int = 102,
    rel_std_error: float = 0.01,
    exact: bool = False,
    operator: str = "hessian",
    batch=None,
    select=None,
    mesh: jax.sharding.Mesh | None = None,
) -> TraceEstimate:
    r"""The trace of the Hessian (or GGN / Fisher) of the mean training loss, with its error bar.

    Args:
      objective: a :class:`losslab.Objective`.
      params: the point; None uses ``objective.params``.
      key: PRNG key (None: ``jax.random.key(0)``; same key, same numbers).
      method: "hutchpp" (Meyer et al. 2021; default), "hutchinson" (Hutchinson 1989,
        :math:`\operatorname{tr} H \approx \frac1m \sum_j v_j^\top H v_j`, Rademacher v),
        "adaptive" (Hutchinson until the relative standard error is <= ``rel_std_error``,
        at most ``num_matvecs`` probes), "backprop" (exact, no probes: the diagonal by
        backpropagation, :func:`~losslab.curvature.backprop.exact_trace`; for the Hessian
        the model must be piecewise linear in each parameter tensor, e.g. a ReLU network,
        which is checked) or "exact" (dense; small models).
      num_matvecs: matvec budget (the cap for "adaptive").
      rel_std_error: target of the "adaptive" method.
      exact: shorthand for ``method="exact"``.
      operator: "hessian", "ggn", "fisher", "empirical_fisher" or "mc_fisher".
      batch: ``(x, y)``; None is the whole training set (chunked).
      select: parameter subset (path substring or callable), see :func:`hessian_operator`.
      mesh: optional ``jax.sharding.Mesh`` with a "data" axis; the data chunks of every
        matvec are split over it (the numbers equal the single-device ones).

    Returns:
      A :class:`TraceEstimate`.
    """
    method = "exact" if exact else method
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    params, key = _prepare(objective, params, key, operator, select, batch)
    if method == "backprop":
        # the same matrix as the operator of that name (mc_fisher: the same sampled labels)
        op_key = jax.random.fold_in(key, 1) if operator == "mc_fisher" else key
        res, seconds, compiled = _timed(
            backprop.exact_trace,
            objective,
            params,
            batch,
            operator=operator,
            key=op_key,
            select=select,
            mesh=mesh,
        )
        return TraceEstimate(float(res.estimate), 0.0, 0, seconds, compiled, method, operator)
    res, seconds, compiled = _timed(
        _trace_impl,
        objective,
        params,
        key,
        batch,
        operator=operator,
        method=method,
        num_matvecs=num_matvecs,
        rel_std_error=rel_std_error if method == "adaptive" else None,
        select=select,
        mesh=mesh,
    )
    return TraceEstimate(
        float(res.estimate), float(res.std_error), int(res.num_matvecs), seconds, compiled, method, operator
    )


# ----------------------------------------------------------------------------
# Eigenvalues


@dataclasses.dataclass(frozen=True)
class EigenvalueEstimate:
    """Top-k (or bottom-k) eigenvalues with residuals and eigenvectors.

    Attributes:
      eigenvalues: ``(k,)`` numpy array (descending for "largest", ascending for "smallest").
      residuals: ``(k,)`` residual norms :math:`\\lVert Hu - \\lambda u\\rVert`.
      eigenvectors: ``(k, n)`` flat unit vectors; :meth:`direction` turns one into params.
      num_matvecs, seconds, compiled, method, operator, which: what ran and what it cost.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigenvectors: np.ndarray
    num_matvecs: int
    seconds: float
    compiled: bool
    method: str
    operator: str
    which: str
    unravel: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def condition_number(self) -> float:
        """:math:`|\\lambda_1| / |\\lambda_k|` over the k eigenvalues found."""
        return float(abs(self.eigenvalues[0]) / abs(self.eigenvalues[-1]))

    def direction(self, i: int = 0):
        """Eigenvector i as a params pytree (zeros outside a ``select``-ed subset)."""
        return self.unravel(jnp.asarray(self.eigenvectors[i]))

    def _label(self) -> str:
        k = len(self.eigenvalues)
        if k == 1:
            return "λ_max" if self.which == "largest" else "λ_min"
        return f"top-{k} λ" if self.which == "largest" else f"bottom-{k} λ"

    def _cost(self) -> str:
        return f"{self.method}, {self.num_matvecs} matvecs, {fmt.seconds(self.seconds, self.compiled)}"

    def __str__(self) -> str:
        vals = ", ".join(f"{v:.6g}" for v in self.eigenvalues)
        return (
            f"{_TITLES[self.operator]} {self._label()} = [{vals}] (residual ≤ {np.max(self.residuals):.2g}; "
            f"{self._cost()})"
        )

    def __repr__(self) -> str:
        return (
            f"EigenvalueEstimate({self._label()}={fmt.values(self.eigenvalues)}, "
            f"residual ≤ {np.max(self.residuals):.2g}, {self.operator}, {self._cost()})"
        )

    def _repr_markdown_(self) -> str:
        rows = [(i + 1, f"{v:.6g}", f"{r:.2g}") for i, (v, r) in enumerate(zip(self.eigenvalues, self.residuals))]
        caption = f"{_TITLES[self.operator]} {self._label()} ({self._cost()})"
        return fmt.md_table(("i", "λ_i", "residual ‖Hu − λu‖"), rows, caption)


@functools.partial(jax.jit, static_argnames=("operator", "method", "k", "num_steps", "which", "select", "mesh"))
def _eigen_impl(objective, params, key, batch, *, operator, method, k, num_steps, which, select, mesh):
    op = _operator(operator, objective, params, batch, key, select, mesh)
    if method == "lanczos":
        return eigen_lib.top_eigenpairs(op, key, k=k, num_steps=num_steps, which=which)
    elif method == "power":
        return eigen_lib.power_iteration(op, key, k=k, num_steps=num_steps)
    elif method == "exact":
        full = dense_lib.exact_eigh(op)
        idx = jnp.arange(k) if which == "largest" else jnp.arange(op.size - 1, op.size - 1 - k, -1)
        return eigen_lib.EigenResult(
            full.eigenvalues[idx], full.eigenvectors[idx], full.residuals[idx], full.num_matvecs, full.converged[idx]
        )
    else:
        raise ValueError(f"method must be one of {EIGEN_METHODS}, got {method!r}")


def hessian_eigenvalues(
    objective,
    params=None,
    key: jax.Array | None = None,
    *,
    k: int = 1,
    method: str = "lanczos",
    num_steps: int | None = None,
    which: str = "largest",
    exact: bool = False,
    operator: str = "hessian",
    batch=None,
    select=None,
    mesh: jax.sharding.Mesh | None = None,
) -> EigenvalueEstimate:
    r"""The k largest (or smallest) eigenvalues of the Hessian (or GGN / Fisher) of the mean loss.

    Args:
      objective: a :class:`losslab.Objective`.
      params: the point; None uses ``objective.params``.
      key: PRNG key (None: ``jax.random.key(0)``).
      k: number of eigenvalues.
      method: "lanczos" (full reorthogonalisation, Lanczos 1950; default), "power"
        (power iteration with deflation, largest magnitude; ``which`` must be "largest")
        or "exact" (dense ``eigh``; small models).
      num_steps: Lanczos steps (default ``min(n, max(4k, 40))``) or power iterations per
        pair (default 100).
      which: "largest" or "smallest".
      exact: shorthand for ``method="exact"``.
      operator, batch, select, mesh: as in :func:`hessian_trace`.

    Returns:
      An :class:`EigenvalueEstimate`: ``eigenvalues`` ``(k,)``, ``residuals`` ``(k,)``,
      ``eigenvectors`` ``(k, n)``. Cost: ``num_steps`` matvecs and an ``(m, n)`` basis
      (Lanczos); at most ``k * num_steps`` matvecs (power); n matvecs + O(n³) (exact).
    """
    method = "exact" if exact else method
    if method not in EIGEN_METHODS:
        raise ValueError(f"method must be one of {EIGEN_METHODS}, got {method!r}")
    if which not in eigen_lib.WHICH:
        raise ValueError(f"which must be one of {eigen_lib.WHICH}, got {which!r}")
    if method == "power" and which != "largest":
        raise ValueError(
            "power iteration finds the largest-magnitude eigenvalues; use method='lanczos' for which='smallest'"
        )
    params, key = _prepare(objective, params, key, operator, select, batch)
    restriction, _, size, _ = restrict(params, select)
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, n={size}], got {k}")
    if method == "power" and num_steps is None:
        num_steps = 100
    res, seconds, compiled = _timed(
        _eigen_impl,
        objective,
        params,
        key,
        batch,
        operator=operator,
        method=method,
        k=k,
        num_steps=num_steps,
        which=which,
        select=select,
        mesh=mesh,
    )
    return EigenvalueEstimate(
        np.asarray(res.eigenvalues),
        np.asarray(res.residuals),
        np.asarray(res.eigenvectors),
        int(res.num_matvecs),
        seconds,
        compiled,
        method,
        operator,
        which,
        restriction.unravel,
    )


# ----------------------------------------------------------------------------
# Density


@dataclasses.dataclass(frozen=True)
class DensityEstimate:
    """A spectral density (see :class:`~losslab.curvature.density.DensityResult`) with a summary line.

    Attributes:
      result: the :class:`DensityResult` (grid, density, nodes, weights, ...), as numpy.
      seconds, compiled, method, operator: what ran and what it cost.
    """

    result: density_lib.DensityResult
    seconds: float
    compiled: bool
    method: str
    operator: str

    @property
    def grid(self) -> np.ndarray:
        """``(g,)`` evaluation points t of the density."""
        return np.asarray(self.result.grid)

    @property
    def density(self) -> np.ndarray:
        """``(g,)`` broadened density :math:`\\hat\\phi(t)` on :attr:`grid` (integrates to ≈ 1)."""
        return np.asarray(self.result.density)

    @property
    def negative_fraction(self) -> float:
        """Estimated fraction of eigenvalues below 0 (quadrature weight of the negative nodes)."""
        return float(self.result.negative_fraction)

    @property
    def negative_count(self) -> float:
        """Estimated number of negative eigenvalues, n × :attr:`negative_fraction`."""
        return float(self.result.negative_count)

    def _facts(self) -> str:
        r = self.result
        return (
            f"λ ∈ {fmt.span(r.nodes)}, negative fraction {100 * self.negative_fraction:.2f}% "
            f"(≈ {self.negative_count:.0f} of {int(r.size)}), σ = {float(r.sigma):.2g}"
        )

    def _cost(self) -> str:
        r = self.result
        probes, steps = np.asarray(r.nodes).shape
        return (
            f"{self.method}: {probes} probe(s) × {steps} nodes, {int(r.num_matvecs)} matvecs, "
            f"{fmt.seconds(self.seconds, self.compiled)}"
        )

    def __str__(self) -> str:
        return f"{_TITLES[self.operator]} spectral density: {self._facts()} ({self._cost()})"

    def __repr__(self) -> str:
        return f"DensityEstimate({self._facts()}, {self.operator}, {self._cost()})"

    def _repr_markdown_(self) -> str:
        return f"**{_TITLES[self.operator]} spectral density**: {self._facts()} *({self._cost()})*"


@functools.partial(
    jax.jit, static_argnames=("operator", "method", "num_steps", "num_probes", "grid", "sigma", "select", "mesh")
)
def _density_impl(objective, params, key, batch, *, operator, method, num_steps, num_probes, grid, sigma, select, mesh):
    op = _operator(operator, objective, params, batch, key, select, mesh)
    if method == "slq":
        return density_lib.spectral_density(op, key, num_steps=num_steps, num_probes=num_probes, grid=grid, sigma=sigma)
    elif method == "exact":
        return density_lib.exact_density(dense_lib.exact_eigh(op).eigenvalues, grid=grid, sigma=sigma)
    else:
        raise ValueError(f"method must be one of ('slq', 'exact'), got {method!r}")


def hessian_density(
    objective,
    params=None,
    key: jax.Array | None = None,
    *,
    num_steps: int = 80,
    num_probes: int = 4,
    grid: int = 1000,
    sigma: float | None = None,
    exact: bool = False,
    operator: str = "hessian",
    batch=None,
    select=None,
    mesh: jax.sharding.Mesh | None = None,
) -> DensityEstimate:
    r"""The eigenvalue density of the Hessian (or GGN / Fisher) by stochastic Lanczos quadrature.

    Ghorbani, Krishnan & Xiao 2019. ``num_probes`` × ``num_steps`` matvecs; ``exact=True``
    broadens the exact spectrum instead (small models).

    Args:
      objective, params, key, operator, batch, select, mesh: as in :func:`hessian_trace`.
      num_steps: Lanczos steps per probe (capped at n).
      num_probes: probes averaged.
      grid: number of grid points.
      sigma: Gaussian broadening width (None: 1% of the spectral range).
      exact: dense eigendecomposition instead of SLQ.

    Returns:
      A :class:`DensityEstimate`; :func:`losslab.plot.spectrum.density` draws it.
    """
    params, key = _prepare(objective, params, key, operator, select, batch)
    _, _, size, _ = restrict(params, select)
    method = "exact" if exact else "slq"
    res, seconds, compiled = _timed(
        _density_impl,
        objective,
        params,
        key,
        batch,
        operator=operator,
        method=method,
        num_steps=min(num_steps, size),
        num_probes=num_probes,
        grid=grid,
        sigma=sigma,
        select=select,
        mesh=mesh,
    )
    return DensityEstimate(jax.tree.map(np.asarray, res), seconds, compiled, method, operator)


__all__ = [
    "DensityEstimate",
    "EigenvalueEstimate",
    "TraceEstimate",
    "EIGEN_METHODS",
    "OPERATOR_NAMES",
    "TRACE_METHODS",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
]
