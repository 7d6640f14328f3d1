r"""Sharpness and flatness measures of a trained point θ, each tagged with its invariances.

Every measure is a :class:`Measure`: a callable
``measure(objective, params, key, **options) -> MeasureResult`` plus the tuple of
function-preserving symmetries it is invariant to. All of them look at the
*data loss* :math:`L(\theta) = \frac1n \sum_i \ell(f_\theta(x_i), y_i)` of the
``batch`` option (default: the whole training set, chunked), never at the
regularizers: a sharpness measure describes the landscape of the empirical risk.
Larger values always mean *sharper* (PAC-Bayes flatness is reported as
:math:`1/\sigma^2`, as in Jiang et al. 2020).

Invariance tags (see :mod:`losslab.symmetry`):

* ``"layer_rescaling"``: multiplying the weights and bias of a ReLU layer by α > 0 and
  dividing the next layer's weights by α (Dinh et al. 2017);
* ``"node_rescaling"``: the same with one α per hidden unit / channel;
* ``"reparametrization"``: any function-preserving change of θ (only the
  generalization gap itself).

Measures (``MEASURES`` at the bottom of the module):

======================  ==========================================================  ============
name                    value                                                       reference
======================  ==========================================================  ============
epsilon_sharpness       100·(max_{|ε_i|≤ε(|θ_i|+1)} L(θ+ε) − L(θ)) / (1 + L(θ))      Keskar 2017
sharpness_l2 / _linf    max_{‖ε‖_p≤ρ} L(θ+ε) − L(θ)                                Foret 2021
adaptive_sharpness_*    max_{‖ε/(|θ|+η)‖_p≤ρ} L(θ+ε) − L(θ)                         Kwon 2021
m_sharpness             mean over disjoint m-batches of the L2 worst case            Foret 2021
average_sharpness       E_{ε~N(0,σ²I)} L(θ+ε) − L(θ)                                Jiang 2020
average_sharpness_mag   E_{ε~N(0,σ²diag((|θ|+η)²))} L(θ+ε) − L(θ)                   Jiang 2020
pacbayes_flatness       1/σ*², σ* the largest σ with E L̂(θ+σz) − L̂(θ) ≤ d           Jiang 2020
pacbayes_flatness_mag   same with magnitude-aware noise                              Jiang 2020
data_hessian_trace      tr ∇²L(θ), L the data loss (Hutchinson)                      Hutchinson 1989
data_hessian_lambda_max λ_max ∇²L(θ), L the data loss (Lanczos)                      Keskar 2017
fisher_rao_norm         θᵀ F θ                                                       Liang 2019
l2_norm                 ‖θ‖₂                                                          Neyshabur 2017
distance_from_init      ‖θ − θ₀‖₂                                                     Nagarajan 2019
path_norm               (Σ_paths Π w²)^{1/2} = (Σ_k f_{θ²}(1)_k)^{1/2}                Neyshabur 2015
spectral_product        Π_layers ‖W‖₂                                                 Bartlett 2017
gap_loss / gap_error    test − train loss / error                                    —
======================  ==========================================================  ============

Worst-case measures maximise by projected steepest ascent (normalised-gradient
steps for L2, sign steps for L∞, each of length ρ, then projection), started from
a tiny random point; the value is the best loss seen, so it is a certified *lower
bound* of the true maximum (exact for the quadratics in the tests). Every loop is
a ``lax.scan`` inside one jitted kernel whose numeric options (ρ, σ) are traced,
so a sweep over runs and radii compiles once per shape.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from losslab import display as fmt
from losslab.curvature.eigen import top_eigenpairs
from losslab.curvature.operators import make_operator
from losslab.curvature.trace import hutchinson_trace
from losslab.objective import chunked_sum, num_rows
from losslab.registry import lookup
from losslab.stream import is_stream
from losslab.trees import tree_axpy, tree_norm

Array = jax.Array

LAYER_RESCALING = "layer_rescaling"
NODE_RESCALING = "node_rescaling"
REPARAMETRIZATION = "reparametrization"
RESCALING = (LAYER_RESCALING, NODE_RESCALING)


class MeasureResult(NamedTuple):
    """The value of a measure.

    Attributes:
      value: the measure (a Python float; larger = sharper).
      std_error: Monte-Carlo / Hutchinson standard error, or None for deterministic measures
        and optimisation-based lower bounds.
      info: extra diagnostics (e.g. ``{"num_steps": 10, "base_loss": ...}``), JSON-friendly.
    """

    value: float
    std_error: float | None
    info: dict

    def __repr__(self) -> str:
        details = fmt.scalars(self.info)
        return f"MeasureResult(value={fmt.pm(self.value, self.std_error)}" + (f"; {details})" if details else ")")

    def __float__(self) -> float:
        return float(self.value)


@dataclasses.dataclass(frozen=True)
class Measure:
    """A named measure with its declared invariances.

    Attributes:
      name: registry name.
      fn: ``(objective, params, key, **options) -> MeasureResult``.
      invariances: symmetry tags the value is invariant to (see module docstring).
      stochastic: whether the value depends on ``key``.
      description: one line for tables and plots.
    """

    name: str
    fn: Callable[..., MeasureResult]
    invariances: tuple[str, ...]
    stochastic: bool
    description: str

    def __call__(self, objective, params, key=None, **options) -> MeasureResult:
        if self.stochastic and key is None:
            raise ValueError(f"measure {self.name!r} is stochastic and needs a PRNG key")
        # Measures see the data loss only; dropping the regularizers also lets runs that differ
        # only in weight decay share compiled kernels.
        if getattr(objective, "regularizers", ()):
            objective = objective.replace(regularizers=())
        return self.fn(objective, params, key, **options)

    def invariant_to(self, symmetry: str) -> bool:
        """Whether the measure is declared invariant to ``symmetry`` (a tag such as ``"node_rescaling"``)."""
        return symmetry in self.invariances


# ----------------------------------------------------------------------------
# Helpers


def _tree_random(key, params, kind: str):
    """A random pytree like ``params``: standard normal or uniform(−1, 1) entries.

    One draw of the flat vector, then unravelled: a single random-number kernel compiles
    several times faster than one per leaf.
    """
    flat, unravel = ravel_pytree(params)
    if kind == "normal":
        return unravel(jax.random.normal(key, flat.shape, flat.dtype))
    return unravel(jax.random.uniform(key, flat.shape, flat.dtype, -1.0, 1.0))


def _positive(name: str, value) -> float:
    if value is None or not np.isfinite(value) or not float(value) > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _nonnegative(name: str, value) -> float:
    if value is None or not np.isfinite(value) or not float(value) >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


def _batch(objective, batch):
    return objective.rows(batch)


def _scale(params, adaptive, eta):
    """Per-coordinate perturbation scale: 1 (plain) or |θ| + η (magnitude-aware).

    ``adaptive`` is a traced 0/1 flag, so both variants share one compiled kernel.
    """
    return jax.tree.map(lambda v: jnp.where(adaptive, jnp.abs(v) + eta, jnp.ones_like(v)), params)


def _float(x) -> float:
    return float(np.asarray(x))


# ----------------------------------------------------------------------------
# Worst-case sharpness (Keskar, SAM, ASAM, m-sharpness)


def _ascent(loss_fn, params, scale, key, rho, *, norm: str, num_steps: int, init_fraction: float):
    r"""Projected steepest ascent of ``loss_fn(params + scale ∘ δ)`` over ``‖δ‖_p ≤ ρ``.

    Each step: L2, ``δ ← Π(δ + ρ g/‖g‖)``; L∞, ``δ ← clip(δ + ρ sign(g), −ρ, ρ)`` with g the
    gradient in δ. Returns the best value seen (a lower bound of the maximum).
    Cost: ``num_steps`` gradients + 1 loss evaluation.
    """
    kind = "normal" if norm == "l2" else "uniform"
    delta0 = _tree_random(key, params, kind)
    if norm == "l2":
        delta0 = jax.tree.map(lambda d: d * (init_fraction * rho / (tree_norm(delta0) + 1e-30)), delta0)
    else:
        delta0 = jax.tree.map(lambda d: d * init_fraction * rho, delta0)

    def perturbed(delta):
        return loss_fn(tree_axpy(scale, delta, params))

    def project(delta):
        if norm == "l2":
            factor = jnp.minimum(1.0, rho / (tree_norm(delta) + 1e-30))
            return jax.tree.map(lambda d: d * factor, delta)
        return jax.tree.map(lambda d: jnp.clip(d, -rho, rho), delta)

    def step(carry, _):
        delta, best = carry
        value, g = jax.value_and_grad(perturbed)(delta)
        best = jnp.maximum(best, value)
        if norm == "l2":
            gn = tree_norm(g)
            direction = jax.tree.map(lambda v: v / (gn + 1e-30), g)
        else:
            direction = jax.tree.map(jnp.sign, g)
        return (project(tree_axpy(rho, direction, delta)), best), None

    dtype = jax.tree.leaves(params)[0].dtype
    (delta, best), _ = jax.lax.scan(step, (delta0, jnp.asarray(-jnp.inf, dtype)), None, length=num_steps)
    return jnp.maximum(best, perturbed(delta))


@partial(jax.jit, static_argnames=("norm", "num_steps", "m", "init_fraction"))
def _worst_case_kernel(objective, params, batch, key, rho, eta, adaptive, *, norm, num_steps, m, init_fraction):
    scale = _scale(params, adaptive, eta)
    if m is None:
        loss_fn = lambda p: objective.data_loss(p, batch)
        base = loss_fn(params)
        top = _ascent(loss_fn, params, scale, key, rho, norm=norm, num_steps=num_steps, init_fraction=init_fraction)
        return top - base, base, top - base
    x, y = batch
    num_batches = x.shape[0] // m
    xs = x[: num_batches * m].reshape(num_batches, m, *x.shape[1:])
    ys = y[: num_batches * m].reshape(num_batches, m, *y.shape[1:])
    keys = jax.random.split(key, num_batches)

    def one(args):
        xb, yb, kb = args
        loss_fn = lambda p: objective.data_loss(p, (xb, yb))
        base = loss_fn(params)
        top = _ascent(loss_fn, params, scale, kb, rho, norm=norm, num_steps=num_steps, init_fraction=init_fraction)
        return top - base, base

    rises, bases = jax.lax.map(one, (xs, ys, keys))
    return jnp.mean(rises), jnp.mean(bases), jnp.std(rises) / jnp.sqrt(num_batches)


def worst_case_sharpness(
    objective,
    params,
    key,
    *,
    rho: float = 0.05,
    norm: str = "l2",
    adaptive: bool = False,
    eta: float = 0.0,
    m: int | None = None,
    num_steps: int = 10,
    init_fraction: float = 0.01,
    batch=None,
) -> MeasureResult:
    r"""Worst-case ρ-sharpness :math:`\max_{\lVert T^{-1}\epsilon\rVert_p \le \rho} L(\theta+\epsilon) - L(\theta)`.

    ``T = I`` (SAM, Foret et al. 2021) or, with ``adaptive=True``, ``T = diag(|θ| + η)``
    (ASAM, Kwon et al. 2021; exactly invariant to ReLU rescalings when η = 0). ``norm`` is
    "l2" or "linf". With ``m`` set this is *m-sharpness*: the first ``⌊n/m⌋·m`` examples
    are cut into disjoint batches of m, the worst case is taken per batch and averaged,
    :math:`\frac1K \sum_k \max_\epsilon [L_k(\theta+\epsilon) - L_k(\theta)]` — m is a
    property of the measure, independent of the number of devices. On a quadratic at its
    minimum the L2 value is :math:`\tfrac12\rho^2\lambda_{\max}(THT)`; the L∞ value with
    diagonal H is :math:`\tfrac12\rho^2 \sum_i T_{ii}^2 H_{ii}`.

    Cost: ``num_steps`` gradients of the loss (per m-batch).

    Args:
      objective: a :class:`losslab.Objective`.
      params: the point θ.
      key: PRNG key for the random start.
      rho: radius ρ > 0.
      norm: "l2" or "linf".
      adaptive: scale the ball by ``|θ| + η``.
      eta: η ≥ 0 (adaptive only).
      m: None (the whole batch) or the m-sharpness batch size, 1 ≤ m ≤ n.
      num_steps: ascent steps ≥ 1.
      init_fraction: random start radius as a fraction of ρ (the gradient vanishes at an
        exact minimum, so the ascent cannot start at ε = 0).
      batch: ``(x, y)`` or None for the training set.

    Returns:
      ``MeasureResult(value, std_error, info)``: std_error is the standard error over the
      m-batches for m-sharpness, None otherwise (an optimisation lower bound).
    """
    rho = _positive("rho", rho)
    eta = _nonnegative("eta", eta)
    norm = _choice("norm", norm, ("l2", "linf"))
    num_steps = _count("num_steps", num_steps)
    init_fraction = _positive("init_fraction", init_fraction)
    rows = _batch(objective, batch)
    if m is not None:
        m = _count("m", m)
        if is_stream(rows):
            raise ValueError("m-sharpness splits an in-memory batch into m-batches; pass batch=(x, y)")
        if m > rows[0].shape[0]:
            raise ValueError(f"m = {m} exceeds the {rows[0].shape[0]} examples of the batch")
    value, base, spread = _worst_case_kernel(
        objective, params, rows, key, rho, eta, bool(adaptive), norm=norm, num_steps=num_steps, m=m,
        init_fraction=init_fraction,
    )
    info = {"rho": rho, "norm": norm, "adaptive": adaptive, "eta": eta, "num_steps": num_steps, "m": m,
            "base_loss": _float(base)}
    return MeasureResult(_float(value), _float(spread) if m is not None else None, info)


def m_sharpness(objective, params, key, *, m: int = 128, **options) -> MeasureResult:
    r"""m-sharpness (Foret et al. 2021): the L2 worst case per disjoint batch of ``m`` examples, averaged.

    :math:`\frac1K \sum_{k=1}^K \max_{\lVert\epsilon\rVert_2 \le \rho} [L_k(\theta+\epsilon) - L_k(\theta)]`
    over the K = ⌊n/m⌋ batches; see :func:`worst_case_sharpness` (``options``: rho, num_steps,
    adaptive, eta, batch). Always at least the full-batch value (the mean of maxima bounds the
    maximum of the mean). Cost: K · ``num_steps`` gradients on m examples each.
    """
    return worst_case_sharpness(objective, params, key, m=m, **options)


def epsilon_sharpness(
    objective, params, key, *, epsilon: float = 1e-3, num_steps: int = 10, init_fraction: float = 0.01, batch=None
) -> MeasureResult:
    r"""Keskar et al. (2017) ε-sharpness, in percent.

    .. math:: \phi_\epsilon = 100 \cdot \frac{\max_{y \in C_\epsilon} L(\theta + y) - L(\theta)}{1 + L(\theta)},
       \quad C_\epsilon = \{ y : |y_i| \le \epsilon (|\theta_i| + 1) \}

    in the full parameter space (their A = I), maximised by projected sign ascent in the box
    (the L∞ ball of :func:`worst_case_sharpness` with ``T = diag(|θ| + 1)``). Keskar et al.
    use ε = 1e-3 and 5e-4. On a quadratic with diagonal Hessian at its minimum the value is
    :math:`100 \cdot \tfrac12\epsilon^2 \sum_i H_{ii}(|\theta_i|+1)^2 / (1 + L)`.
    Cost: ``num_steps`` gradients.
    """
    epsilon = _positive("epsilon", epsilon)
    num_steps = _count("num_steps", num_steps)
    init_fraction = _positive("init_fraction", init_fraction)
    batch = _batch(objective, batch)
    rise, base, _ = _worst_case_kernel(
        objective, params, batch, key, epsilon, 1.0, True, norm="linf", num_steps=num_steps, m=None,
        init_fraction=init_fraction,
    )
    value = 100.0 * _float(rise) / (1.0 + _float(base))
    return MeasureResult(value, None, {"epsilon": epsilon, "num_steps": num_steps, "base_loss": _float(base)})


# ----------------------------------------------------------------------------
# Average-case sharpness and PAC-Bayes flatness


def _error_fn(objective, batch):
    """Per-example 0-1 error (classification) as a function of params."""
    return lambda p: 1.0 - objective.accuracy(p, batch)


@partial(jax.jit, static_argnames=("num_samples", "metric"))
def _noise_deviations(objective, params, batch, key, sigma, eta, adaptive, *, num_samples, metric):
    r"""Per-pair antithetic deviations ``½[m(θ+σTz) + m(θ−σTz)] − m(θ)``, shape ``(num_samples,)``."""
    fn = (lambda p: objective.data_loss(p, batch)) if metric == "loss" else _error_fn(objective, batch)
    base = fn(params)
    scale = _scale(params, adaptive, eta)
    keys = jax.random.split(key, num_samples)

    def one(k):
        z = _tree_random(k, params, "normal")
        eps = jax.tree.map(lambda t, zi: sigma * t * zi, scale, z)
        return 0.5 * (fn(tree_axpy(1.0, eps, params)) + fn(tree_axpy(-1.0, eps, params))) - base

    return jax.lax.map(one, keys), base


def average_sharpness(
    objective,
    params,
    key,
    *,
    sigma: float = 0.01,
    adaptive: bool = False,
    eta: float = 0.0,
    num_samples: int = 32,
    batch=None,
) -> MeasureResult:
    r"""Average-case sharpness :math:`\mathbb{E}_{\epsilon}[L(\theta+\epsilon)] - L(\theta)`.

    :math:`\epsilon = \sigma T z`, :math:`z \sim N(0, I)`, ``T = I`` (isotropic) or
    ``T = diag(|θ| + η)`` (``adaptive=True``, magnitude-aware; rescaling-invariant for η = 0).
    Estimated with ``num_samples`` antithetic pairs (ε, −ε), which cancel the gradient term
    exactly. To second order (the PAC-Bayes expansion; Jiang et al. 2020):
    :math:`\tfrac12\sigma^2 \operatorname{tr}(T H T)`, exact for a quadratic.

    Cost: 2·``num_samples`` loss evaluations.

    Returns:
      ``MeasureResult(mean, std_error over pairs, info)``.
    """
    sigma = _positive("sigma", sigma)
    eta = _nonnegative("eta", eta)
    num_samples = _count("num_samples", num_samples, 2)
    devs, base = _noise_deviations(
        objective, params, _batch(objective, batch), key, sigma, eta, bool(adaptive), num_samples=num_samples,
        metric="loss",
    )
    devs = np.asarray(devs, np.float64)
    info = {"sigma": sigma, "adaptive": adaptive, "eta": eta, "num_samples": num_samples, "base_loss": _float(base)}
    return MeasureResult(float(devs.mean()), float(devs.std(ddof=1) / math.sqrt(num_samples)), info)


def pacbayes_flatness(
    objective,
    params,
    key,
    *,
    target: float = 0.1,
    metric: str | None = None,
    adaptive: bool = False,
    eta: float = 0.0,
    num_samples: int = 16,
    num_bisections: int = 24,
    sigma_range: tuple[float, float] = (1e-6, 10.0),
    batch=None,
) -> MeasureResult:
    r"""PAC-Bayes flatness :math:`1/\sigma^{*2}` (Jiang et al. 2020, ``pacbayes.flatness``).

    :math:`\sigma^*` is the largest σ with
    :math:`\mathbb{E}_z[\hat L(\theta + \sigma T z)] - \hat L(\theta) \le d` (``target``), where
    :math:`\hat L` is the training error (``metric="error"``, Jiang's choice, the default for
    classification) or the loss (``metric="loss"``), T = I or diag(|θ| + η) (``adaptive``,
    Jiang's ``pacbayes.mag.flatness``). Found by bisection in log σ over ``sigma_range``
    with the *same* ``num_samples`` antithetic draws at every σ (common random numbers, so
    the Monte-Carlo curve is deterministic). For a quadratic with ``metric="loss"``,
    :math:`1/\sigma^{*2} = \operatorname{tr}(THT) / (2d)` in expectation. Larger = sharper.

    Cost: 2·``num_samples``·(``num_bisections`` + 1) evaluations.

    Returns:
      ``MeasureResult(1/σ*², std_error, info)``: std_error by the delta method under the
      quadratic model (deviation ∝ σ²), i.e. value × (relative std error of the deviation
      at σ*). ``info["hit_bound"]`` flags a σ* at the edge of ``sigma_range``.
    """
    target = _positive("target", target)
    eta = _nonnegative("eta", eta)
    num_samples = _count("num_samples", num_samples, 2)
    num_bisections = _count("num_bisections", num_bisections)
    lo, hi = (_positive("sigma_range[0]", sigma_range[0]), _positive("sigma_range[1]", sigma_range[1]))
    if not lo < hi:
        raise ValueError(f"sigma_range must be increasing, got {sigma_range}")
    if metric is None:
        metric = "error" if objective.task == "classification" else "loss"
    metric = _choice("metric", metric, ("loss", "error"))
    if metric == "error" and objective.task != "classification":
        raise ValueError("metric='error' needs a classification task; use metric='loss'")
    batch = _batch(objective, batch)

    def deviation(sigma):
        devs, _ = _noise_deviations(
            objective, params, batch, key, sigma, eta, bool(adaptive), num_samples=num_samples, metric=metric
        )
        return np.asarray(devs, np.float64)

    log_lo, log_hi = math.log(lo), math.log(hi)
    hit = None
    if deviation(hi).mean() <= target:
        log_lo, hit = log_hi, "upper"
    elif deviation(lo).mean() > target:
        log_hi, hit = log_lo, "lower"
    else:
        for _ in range(num_bisections):
            mid = 0.5 * (log_lo + log_hi)
            if deviation(math.exp(mid)).mean() <= target:
                log_lo = mid
            else:
                log_hi = mid
    sigma = math.exp(log_lo)
    devs = deviation(sigma)
    value = 1.0 / sigma**2
    mean = devs.mean()
    rel = devs.std(ddof=1) / math.sqrt(num_samples) / mean if mean > 0 else float("nan")
    info = {"sigma": sigma, "target": target, "metric": metric, "adaptive": adaptive, "eta": eta,
            "num_samples": num_samples, "deviation": float(mean), "hit_bound": hit}
    return MeasureResult(value, float(value * rel) if np.isfinite(rel) else None, info)


# ----------------------------------------------------------------------------
# Curvature-based measures (the curvature engine)


@partial(jax.jit, static_argnames=("num_probes",))
def _trace_kernel(objective, params, batch, key, *, num_probes):
    op = make_operator("hessian", objective, params, batch, include_regularizer=False)
    res = hutchinson_trace(op, key, num_probes=num_probes)
    return res.estimate, res.std_error


@partial(jax.jit, static_argnames=("num_steps",))
def _lambda_max_kernel(objective, params, batch, key, *, num_steps):
    op = make_operator("hessian", objective, params, batch, include_regularizer=False)
    res = top_eigenpairs(op, key, k=1, num_steps=num_steps)
    return res.eigenvalues[0], res.residuals[0]


def data_hessian_trace(objective, params, key, *, num_probes: int = 50, batch=None) -> MeasureResult:
    r"""Trace of the *data-loss* Hessian :math:`\operatorname{tr} \nabla^2 \tfrac1n\sum_i \ell_i(\theta)` (Hutchinson).

    Regularizers are excluded: this is the curvature of the fit, the quantity sharpness studies
    compare. :func:`losslab.curvature.hessian_trace` (the one-liner) is the trace of the Hessian of
    the training objective *including* regularizers; the two agree when there are none.
    Rademacher probes (Hutchinson 1989), via :func:`losslab.curvature.hutchinson_trace` on the
    registry's ``"hessian"`` operator with ``include_regularizer=False``. Not invariant to rescaling
    (Dinh et al. 2017). Cost: ``num_probes`` Hessian-vector products.
    """
    num_probes = _count("num_probes", num_probes, 2)
    est, se = _trace_kernel(objective, params, _batch(objective, batch), key, num_probes=num_probes)
    return MeasureResult(_float(est), _float(se), {"num_probes": num_probes})


def data_hessian_lambda_max(objective, params, key, *, num_steps: int = 20, batch=None) -> MeasureResult:
    r"""Largest eigenvalue of the *data-loss* Hessian :math:`\lambda_{\max}(\nabla^2 \tfrac1n\sum_i\ell_i)` by Lanczos.

    Regularizers are excluded (compare :func:`losslab.curvature.hessian_eigenvalues`, which
    includes them; the two agree when there are none).
    Full reorthogonalisation (:func:`losslab.curvature.top_eigenpairs`, k = 1); the Ritz
    residual :math:`\lVert Hu - \lambda u\rVert` is reported in ``info``. Keskar et al. 2017
    relate it to ε-sharpness; Cohen et al. 2021 to the edge of stability. Cost: ``num_steps``
    Hessian-vector products (at most the number of parameters).
    """
    num_steps = _count("num_steps", num_steps)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    num_steps = min(num_steps, n)
    val, resid = _lambda_max_kernel(objective, params, _batch(objective, batch), key, num_steps=num_steps)
    return MeasureResult(_float(val), None, {"num_steps": num_steps, "residual": _float(resid)})


@jax.jit
def _directional_sq(objective, params, batch):
    def fn(rows, w):
        x, y = rows[0], rows[1]
        g = lambda p: objective.loss_fn(objective.outputs(p, x), y)
        _, d = jax.jvp(g, (params,), (params,))
        return jnp.sum(w * d**2)

    return chunked_sum(fn, batch, objective.chunk_size) / num_rows(batch)


@jax.jit
def _fisher_quadratic(objective, params, batch):
    op = make_operator("fisher", objective, params, batch)
    v = op.ravel(params)
    return jnp.vdot(v, op.matvec(v))


def fisher_rao_norm(objective, params, key=None, *, fisher: str = "empirical", batch=None) -> MeasureResult:
    r"""Squared Fisher–Rao norm :math:`\lVert\theta\rVert_{fr}^2 = \theta^\top F(\theta)\,\theta` (Liang et al. 2019).

    ``fisher="empirical"`` (default; any loss): :math:`\frac1n \sum_i \langle \theta,
    \nabla_\theta \ell_i\rangle^2`, one Jacobian-vector product per chunk (for a bias-free
    ReLU net of depth L+1 this is :math:`(L+1)^2 \frac1n\sum_i \langle \partial\ell_i/\partial f, f\rangle^2`).
    ``fisher="true"``: the model's Fisher (:func:`losslab.curvature.fisher_operator`, likelihood
    losses only), one Fisher-vector product. Both are invariant to node-wise rescaling because
    each :math:`\langle W_k, \partial\ell/\partial W_k\rangle` is.
    """
    fisher = _choice("fisher", fisher, ("empirical", "true"))
    batch = _batch(objective, batch)
    if fisher == "true":
        objective.loss_fn.require_likelihood()
        value = _fisher_quadratic(objective, params, batch)
    else:
        value = _directional_sq(objective, params, batch)
    return MeasureResult(_float(value), None, {"fisher": fisher})


# ----------------------------------------------------------------------------
# Norms


def l2_norm(objective, params, key=None) -> MeasureResult:
    r"""Parameter norm :math:`\lVert\theta\rVert_2` over all parameters (Neyshabur et al. 2017)."""
    return MeasureResult(_float(tree_norm(params)), None, {})


def distance_from_init(objective, params, key=None, *, init_params=None) -> MeasureResult:
    r"""Distance from initialisation :math:`\lVert\theta - \theta_0\rVert_2` (Nagarajan & Kolter 2019).

    Args:
      init_params: θ₀ (required; same structure as ``params``).
    """
    if init_params is None:
        raise ValueError("distance_from_init needs init_params= (the parameters at initialisation)")
    if jax.tree.structure(init_params) != jax.tree.structure(params):
        raise ValueError("init_params must have the same pytree structure as params")
    diff = jax.tree.map(lambda a, b: a - b, params, init_params)
    return MeasureResult(_float(tree_norm(diff)), None, {})


def _is_kernel(path, leaf) -> bool:
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel" and leaf.ndim >= 2


@jax.jit
def _path_norm_kernel(objective, params):
    squared = jax.tree.map(jnp.square, params)
    x = objective.head(1)[0]
    ones = jnp.ones((1, *x.shape[1:]), x.dtype)
    return jnp.sqrt(jnp.sum(objective.outputs(squared, ones)))


def path_norm(objective, params, key=None) -> MeasureResult:
    r"""ℓ2 path norm :math:`\big(\sum_{\text{paths}} \prod_{w \in \text{path}} w^2\big)^{1/2}` (Neyshabur et al. 2015).

    Computed as :math:`(\sum_k f_{\theta^2}(\mathbf 1)_k)^{1/2}`: the network with every
    parameter squared evaluated on an all-ones input (Jiang et al. 2020), which counts every
    input-to-output path (and every bias-to-output path) once. Exact for networks whose
    activations are the identity on non-negative inputs (ReLU) and with linear or average
    pooling; invariant to node-wise rescaling. Cost: one forward pass.
    """
    return MeasureResult(_float(_path_norm_kernel(objective, params)), None, {})


def spectral_product(objective, params, key=None, *, log: bool = True) -> MeasureResult:
    r"""Product of the layers' spectral norms :math:`\prod_k \lVert W_k\rVert_2` (Bartlett et al. 2017).

    Every ``kernel`` leaf is reshaped to (fan-in, fan-out) (a convolution's
    (width·in, out) matrix, as in Jiang et al. 2020) and its largest singular value taken by
    SVD. With ``log=True`` (default) returns :math:`\sum_k \log\lVert W_k\rVert_2`, the
    numerically safe form with the same ranking. Invariant to layer-wise rescaling
    (α·1/α), not to node-wise rescaling.
    """
    total = 0.0
    count = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not _is_kernel(path, leaf):
            continue
        mat = np.asarray(leaf, np.float64).reshape(-1, leaf.shape[-1])
        total += math.log(float(np.linalg.norm(mat, 2)))
        count += 1
    if count == 0:
        raise ValueError("spectral_product found no 'kernel' parameters")
    return MeasureResult(total if log else math.exp(total), None, {"num_layers": count, "log": log})


# ----------------------------------------------------------------------------
# The generalization gap itself


@partial(jax.jit, static_argnames=("split",))
def _evaluate(objective, params, split):
    return objective.evaluate(params, "train"), objective.evaluate(params, split)


def _gap(objective, params, which: str) -> MeasureResult:
    split = "test" if "test" in objective.data else "val"
    train, test = _evaluate(objective, params, split)
    value = _float(test[which]) - _float(train[which])
    return MeasureResult(value, None, {"split": split, "train": _float(train[which]), split: _float(test[which])})


def gap_loss(objective, params, key=None) -> MeasureResult:
    """Generalization gap in the data loss: test loss − train loss (validation split if no test split)."""
    return _gap(objective, params, "loss")


def gap_error(objective, params, key=None) -> MeasureResult:
    """Generalization gap in the 0-1 error: test error − train error (classification)."""
    if objective.task != "classification":
        raise ValueError("gap_error needs a classification task; use gap_loss")
    return _gap(objective, params, "error")


# ----------------------------------------------------------------------------
# Registry


def _preset(fn: Callable, **fixed) -> Callable:
    def measure(objective, params, key, **options):
        clash = sorted(set(fixed) & set(options))
        if clash:
            raise ValueError(f"option(s) {clash} are fixed by this measure ({fixed}); use the general function")
        return fn(objective, params, key, **fixed, **options)

    measure.__doc__ = fn.__doc__
    return measure


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in [
        Measure("epsilon_sharpness", epsilon_sharpness, (), True, "Keskar ε-sharpness (%)"),
        Measure("sharpness_l2", _preset(worst_case_sharpness, norm="l2"), (), True, "worst-case ρ-sharpness, L2"),
        Measure("sharpness_linf", _preset(worst_case_sharpness, norm="linf"), (), True, "worst-case ρ-sharpness, L∞"),
        Measure("adaptive_sharpness_l2", _preset(worst_case_sharpness, norm="l2", adaptive=True), RESCALING, True,
                "adaptive (ASAM) sharpness, L2"),
        Measure("adaptive_sharpness_linf", _preset(worst_case_sharpness, norm="linf", adaptive=True), RESCALING, True,
                "adaptive (ASAM) sharpness, L∞"),
        Measure("m_sharpness", m_sharpness, (), True, "m-sharpness (SAM), L2"),
        Measure("average_sharpness", average_sharpness, (), True, "average-case sharpness, isotropic"),
        Measure("average_sharpness_mag", _preset(average_sharpness, adaptive=True), RESCALING, True,
                "average-case sharpness, magnitude-aware"),
        Measure("pacbayes_flatness", pacbayes_flatness, (), True, "PAC-Bayes flatness 1/σ²"),
        Measure("pacbayes_flatness_mag", _preset(pacbayes_flatness, adaptive=True), RESCALING, True,
                "PAC-Bayes flatness 1/σ², magnitude-aware"),
        Measure("data_hessian_trace", data_hessian_trace, (), True, "data-loss Hessian trace"),
        Measure("data_hessian_lambda_max", data_hessian_lambda_max, (), True, "data-loss Hessian λ_max"),
        Measure("fisher_rao_norm", fisher_rao_norm, RESCALING, False, "Fisher–Rao norm²"),
        Measure("l2_norm", l2_norm, (), False, "parameter L2 norm"),
        Measure("distance_from_init", distance_from_init, (), False, "distance from initialisation"),
        Measure("path_norm", path_norm, RESCALING, False, "ℓ2 path norm"),
        Measure("spectral_product", spectral_product, (LAYER_RESCALING,), False, "Σ log spectral norms"),
        Measure("gap_loss", gap_loss, (*RESCALING, REPARAMETRIZATION), False, "test − train loss"),
        Measure("gap_error", gap_error, (*RESCALING, REPARAMETRIZATION), False, "test − train error"),
    ]
}


# Old measure names (they read like the curvature one-liners, which include regularizers).
DEPRECATED_NAMES = {"hessian_trace": "data_hessian_trace", "hessian_lambda_max": "data_hessian_lambda_max"}


def get(name: str) -> Measure:
    """The :class:`Measure` called ``name``; raises ``ValueError`` listing the valid names.

    The deprecated names of :data:`DEPRECATED_NAMES` still resolve, with a ``DeprecationWarning``.
    """
    if name in DEPRECATED_NAMES:
        warnings.warn(
            f"the sharpness measure {name!r} is now {DEPRECATED_NAMES[name]!r} (the data-loss Hessian; "
            "losslab.curvature's one-liners include regularizers)",
            DeprecationWarning,
            stacklevel=2,
        )
        name = DEPRECATED_NAMES[name]
    return lookup(MEASURES, name, "measure")


def hessian_trace(objective, params, key, **options) -> MeasureResult:
    """Deprecated name of :func:`data_hessian_trace` (warns)."""
    warnings.warn("sharpness.hessian_trace is now sharpness.data_hessian_trace", DeprecationWarning, stacklevel=2)
    return data_hessian_trace(objective, params, key, **options)


def hessian_lambda_max(objective, params, key, **options) -> MeasureResult:
    """Deprecated name of :func:`data_hessian_lambda_max` (warns)."""
    warnings.warn(
        "sharpness.hessian_lambda_max is now sharpness.data_hessian_lambda_max", DeprecationWarning, stacklevel=2
    )
    return data_hessian_lambda_max(objective, params, key, **options)


def compute(name: str, objective, params, key=None, **options) -> MeasureResult:
    """Computes the measure ``name`` (see :data:`MEASURES`) at ``params`` with ``options``.

    Raises:
      ValueError: unknown measure (listing the valid ones), or invalid options (named).
    """
    measure = get(name)
    try:
        return measure(objective, params, key, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise ValueError(f"bad option for measure {name!r}: {e}") from None
        raise


def invariant_measures(symmetry: str) -> list[str]:
    """Names of the measures declared invariant to ``symmetry``."""
    return [name for name, m in MEASURES.items() if symmetry in m.invariances]


__all__ = [
    "LAYER_RESCALING",
    "MEASURES",
    "NODE_RESCALING",
    "REPARAMETRIZATION",
    "RESCALING",
    "Measure",
    "MeasureResult",
    "average_sharpness",
    "compute",
    "data_hessian_lambda_max",
    "data_hessian_trace",
    "distance_from_init",
    "epsilon_sharpness",
    "fisher_rao_norm",
    "gap_error",
    "gap_loss",
    "get",
    "hessian_lambda_max",
    "hessian_trace",
    "invariant_measures",
    "l2_norm",
    "m_sharpness",
    "pacbayes_flatness",
    "path_norm",
    "spectral_product",
    "worst_case_sharpness",
]
