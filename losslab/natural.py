r"""Natural-gradient optimizers: CG-solved NGD, empirical-Fisher NGD and a diagonal-Fisher preconditioner.

The natural gradient (Amari 1998) preconditions the gradient ``g`` of the mean loss with the
inverse Fisher information of the model's predictive distribution,

.. math::  \theta \leftarrow \theta - \eta\, (F + \lambda I)^{-1} g, \qquad
           F = \frac1B \sum_{i=1}^B J_i^\top \Lambda_i J_i,

where :math:`J_i = \partial f_\theta(x_i) / \partial\theta` is the Jacobian of the outputs and
:math:`\Lambda_i` the Fisher of the likelihood in output space (``diag(p) - pp^T`` for softmax
cross-entropy, ``I / sigma^2`` for Gaussian MSE). For these two losses the true Fisher equals the
generalised Gauss-Newton matrix (Martens 2020, sec. 9). The *empirical* Fisher
:math:`\frac1B \sum_i \nabla\ell_i \nabla\ell_i^\top` replaces the model's labels by the data's and
is *not* a curvature matrix in general (Kunstner, Balles & Hennig 2019) -- ``ngd_empirical`` exists to
show where the two differ.

Every optimizer here is an :class:`optax.GradientTransformationExtraArgs`; its ``update`` needs the
extra arguments the training engine (:func:`losslab.train.train`) passes on every step:
``objective`` (the :class:`~losslab.Objective`), ``batch`` (the ``(x, y)`` minibatch) and, for the
sampled Fisher diagonal, ``key``. The returned updates already include the learning rate
(``-eta * direction``), like ``optax.sgd``.

Linear solves are matrix-free: :func:`losslab.curvature.cg_solve` runs conjugate gradient in a
``lax.while_loop`` on the minibatch Fisher operator from the curvature registry
(``make_operator("fisher", ..., linearize=True)``: one ``jax.linearize`` per step, then one JVP + one
VJP per matvec), so a step costs ``1 + num_cg_iterations`` gradient-equivalents.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from losslab.curvature import solve
from losslab.curvature.base import LinearOperator
from losslab.curvature.operators import make_operator
from losslab.curvature.solve import CGResult

Array = jax.Array

# NGD's curvature option -> the operator registry's name for that matrix.
CURVATURES = {"fisher": "fisher", "empirical": "empirical_fisher"}

# Levenberg-Marquardt rule of Martens (2010), sec. 4.1: shrink the damping when the quadratic model
# predicts the loss change well (rho > 3/4), grow it when it does badly (rho < 1/4).
LM_LOW, LM_HIGH = 0.25, 0.75


def _as_schedule(learning_rate) -> Callable[[Array], Array]:
    return learning_rate if callable(learning_rate) else (lambda count: learning_rate)


def _need(name: str, value, optimizer: str):
    if value is None:
        raise ValueError(
            f"{optimizer} needs `{name}=` in update(); the training engine passes objective, batch and key"
        )


# --------------------------------------------------------------------------
# Deprecated names (the solver and the operator moved to the curvature layer)


def cg_solve(op, b: Array, **options) -> CGResult:
    """Deprecated: use :func:`losslab.curvature.cg_solve` with a PSD operator.

    A bare matvec callable is still accepted (with a ``DeprecationWarning``) and treated as a
    PSD operator.
    """
    if not isinstance(op, LinearOperator):
        warnings.warn(
            "losslab.natural.cg_solve(matvec, ...) is deprecated; pass a PSD LinearOperator to "
            "losslab.curvature.cg_solve",
            DeprecationWarning,
            stacklevel=2,
        )
        b = jnp.asarray(b)
        op = LinearOperator(op, int(b.shape[0]), b.dtype, True, True, name="matvec")
    return solve.cg_solve(op, b, **options)


def batch_fisher_operator(objective, params, batch, *, curvature: str = "fisher") -> LinearOperator:
    """Deprecated: ``make_operator("fisher" | "empirical_fisher", objective, params, batch, linearize=True)``.

    The Fisher (``curvature="fisher"``) or empirical Fisher (``"empirical"``) of the mean loss on
    one minibatch, linearised once; see :func:`losslab.curvature.fisher_operator`.
    """
    warnings.warn(
        "batch_fisher_operator is deprecated; use losslab.curvature.make_operator(name, objective, params, batch, "
        "linearize=True)",
        DeprecationWarning,
        stacklevel=2,
    )
    return _minibatch_operator(objective, params, batch, curvature)


def _minibatch_operator(objective, params, batch, curvature: str) -> LinearOperator:
    """The NGD hot path: the registry's Fisher of the minibatch, linearised once when it is one chunk."""
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; valid: {', '.join(CURVATURES)}")
    one_chunk = batch[0].shape[0] <= objective.chunk_size
    return make_operator(CURVATURES[curvature], objective, params, batch, linearize=one_chunk)


# --------------------------------------------------------------------------
# NGD


class NGDState(NamedTuple):
    """State of :func:`natural_gradient`.

    Attributes:
      count: steps taken.
      damping: the current λ (changes only with ``adapt_damping``).
      velocity: flat momentum buffer (zeros without momentum).
      solution: the last CG solution ``u ≈ (F + λI)⁻¹ g`` (warm start).
      cg_steps: CG iterations of the last step.
      cg_residual: relative CG residual of the last step.
      rho: the Levenberg-Marquardt reduction ratio of the last step (NaN when not adapting).
      num_matvecs: cumulative Fisher-vector products (cost accounting).
    """

    count: Array
    damping: Array
    velocity: Array
    solution: Array
    cg_steps: Array
    cg_residual: Array
    rho: Array
    num_matvecs: Array


def _ngd_init(params, damping) -> NGDState:
    """The starting :class:`NGDState`: zero buffers, the initial damping."""
    flat, _ = ravel_pytree(params)
    z = jnp.zeros_like(flat)
    return NGDState(
        count=jnp.zeros((), jnp.int32),
        damping=jnp.asarray(damping, flat.dtype),
        velocity=z,
        solution=z,
        cg_steps=jnp.zeros((), jnp.int32),
        cg_residual=jnp.zeros((), flat.dtype),
        rho=jnp.full((), jnp.nan, flat.dtype),
        num_matvecs=jnp.zeros((), jnp.int32),
    )


def _levenberg_marquardt(objective, params, batch, op, g, step, lam, lm_options):
    """Martens (2010) damping rule: the reduction ratio ρ of the step and the adapted λ (one matvec)."""
    decrease, increase, lo, hi = lm_options
    model_change = jnp.vdot(g, step) + 0.5 * jnp.vdot(step, op.matvec(step))
    actual = objective.loss(op.unravel(op.ravel(params) + step), batch) - objective.loss(params, batch)
    rho = jnp.where(model_change < 0, actual / jnp.where(model_change < 0, model_change, -1.0), -1.0)
    lam = jnp.where(rho > LM_HIGH, lam * decrease, jnp.where(rho < LM_LOW, lam * increase, lam))
    return rho, jnp.clip(lam, lo, hi)


def _check_ngd_options(curvature, damping, momentum, warm_start, damping_decrease, damping_increase, min_damping,
                       max_damping, max_cg_steps) -> None:
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; valid: {', '.join(CURVATURES)}")
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not 0 <= warm_start <= 1:
        raise ValueError(f"warm_start must be in [0, 1], got {warm_start}")
    if not (0 < damping_decrease < 1 < damping_increase):
        raise ValueError(
            f"need 0 < damping_decrease < 1 < damping_increase, got {damping_decrease}, {damping_increase}"
        )
    if not 0 < min_damping <= max_damping:
        raise ValueError(f"need 0 < min_damping <= max_damping, got {min_damping}, {max_damping}")
    if max_cg_steps < 1:
        raise ValueError(f"max_cg_steps must be >= 1, got {max_cg_steps}")


def natural_gradient(
    learning_rate,
    *,
    curvature: str = "fisher",
    damping: float = 1e-3,
    adapt_damping: bool = False,
    damping_decrease: float = 2.0 / 3.0,
    damping_increase: float = 1.5,
    min_damping: float = 1e-8,
    max_damping: float = 1e4,
    max_cg_steps: int = 20,
    cg_tol: float = 1e-4,
    momentum: float = 0.0,
    warm_start: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural-gradient descent with a CG solve on the minibatch Fisher (Amari 1998; Martens 2010).

    Each step, on the minibatch :math:`B` with gradient :math:`g`:

    .. math::  u \approx (F_B + \lambda I)^{-1} g \;\;(\text{CG, at most } K \text{ steps}), \qquad
               v \leftarrow \mu v + u, \qquad \Delta\theta = -\eta\, v .

    With ``adapt_damping`` the damping follows the Levenberg-Marquardt rule of Martens (2010):
    :math:`\rho = (L_B(\theta + \Delta\theta) - L_B(\theta)) / (g^\top\Delta\theta + \tfrac12
    \Delta\theta^\top F_B \Delta\theta)`; :math:`\lambda \leftarrow` ``damping_decrease`` · λ if
    ρ > 3/4, ``damping_increase`` · λ if ρ < 1/4, clipped to ``[min_damping, max_damping]``
    (one extra matvec and two minibatch forward passes per step).

    Args:
      learning_rate: η, a float or a schedule ``count -> rate``.
      curvature: "fisher" (true Fisher = GGN for CE/MSE) or "empirical" (empirical Fisher).
      damping: initial λ > 0 (Tikhonov).
      adapt_damping: adapt λ by the Levenberg-Marquardt rule.
      damping_decrease, damping_increase: LM factors (< 1 and > 1).
      min_damping, max_damping: LM clipping range.
      max_cg_steps: CG iteration cap K.
      cg_tol: CG relative residual tolerance.
      momentum: μ ∈ [0, 1) applied to the natural-gradient direction.
      warm_start: start CG from ``warm_start`` × the previous solution (0 = from zero).

    Returns:
      A transformation whose ``update(grads, state, params, *, objective, batch, ...)`` returns
      :math:`\Delta\theta`. Cost per step: ``1 + cg_steps (+1 with a warm start, +1 with LM)``
      gradient-equivalents.

    Raises:
      ValueError: bad option values (eagerly); missing ``objective``/``batch``/``params`` in update.
    """
    _check_ngd_options(curvature, damping, momentum, warm_start, damping_decrease, damping_increase, min_damping,
                       max_damping, max_cg_steps)
    schedule = _as_schedule(learning_rate)
    name = "ngd" if curvature == "fisher" else "ngd_empirical"
    lm_options = (damping_decrease, damping_increase, min_damping, max_damping)

    def init(params):
        return _ngd_init(params, damping)

    def update(updates, state, params=None, *, objective=None, batch=None, **_extra):
        _need("params", params, name)
        _need("objective", objective, name)
        _need("batch", batch, name)
        op = _minibatch_operator(objective, params, batch, curvature)
        g = op.ravel(updates)
        lam = state.damping.astype(g.dtype)
        x0 = warm_start * state.solution if warm_start > 0 else None
        res = solve.cg_solve(op, g, damping=lam, x0=x0, max_steps=max_cg_steps, tol=cg_tol)
        velocity = momentum * state.velocity + res.x if momentum else res.x
        lr = jnp.asarray(schedule(state.count), g.dtype)
        step = -lr * velocity
        matvecs = res.num_matvecs
        rho = state.rho
        if adapt_damping:
            rho, lam = _levenberg_marquardt(objective, params, batch, op, g, step, lam, lm_options)
            matvecs = matvecs + 1
        new_state = NGDState(
            count=state.count + 1,
            damping=lam.astype(state.damping.dtype),
            velocity=velocity.astype(state.velocity.dtype),
            solution=res.x.astype(state.solution.dtype),
            cg_steps=res.num_steps,
            cg_residual=(res.residual_norm / jnp.maximum(jnp.linalg.norm(g), 1e-30)).astype(state.cg_residual.dtype),
            rho=jnp.asarray(rho, state.rho.dtype),
            num_matvecs=state.num_matvecs + matvecs,
        )
        return op.unravel(step), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def ngd(learning_rate, **options) -> optax.GradientTransformationExtraArgs:
    """Natural-gradient descent with the true Fisher (= GGN for CE/MSE); see :func:`natural_gradient`."""
    return natural_gradient(learning_rate, curvature="fisher", **options)


def ngd_empirical(learning_rate, **options) -> optax.GradientTransformationExtraArgs:
    """NGD with the empirical Fisher (Kunstner et al. 2019's counterexample); see :func:`natural_gradient`."""
    return natural_gradient(learning_rate, curvature="empirical", **options)


# --------------------------------------------------------------------------
# Diagonal Fisher


class DiagFisherState(NamedTuple):
    """State of :func:`diag_fisher`: step count, momentum buffer and the moving-average diagonal."""

    count: Array
    momentum: Any
    diagonal: Any


def per_example_fisher_grads(objective, params, batch, key, *, curvature: str = "fisher"):
    r"""Per-example gradients whose squares estimate the Fisher diagonal, shape ``(B, *param)``.

    ``curvature="fisher"``: :math:`\nabla_\theta\, \mathrm{nll}(f_\theta(x_i), \hat y_i)` with
    :math:`\hat y_i \sim p(y \mid f_\theta(x_i))` (one Monte-Carlo label per example, unbiased:
    :math:`\mathbb{E}[g_i^2] = \mathrm{diag}(F_i)`); ``"empirical"``: :math:`\nabla_\theta \ell(f_\theta(x_i), y_i)`.
    Cost: B per-example gradients in one ``vmap``.
    """
    x, y = batch
    if curvature == "fisher":
        lik = objective.loss_fn.require_likelihood()
        targets = lik.sample(key, jax.lax.stop_gradient(objective.outputs(params, x)))

        def one(p, xi, ti):
            return lik.nll(objective.outputs(p, xi[None]), ti[None])[0]

    elif curvature == "empirical":
        targets = y

        def one(p, xi, ti):
            return objective.per_example_loss(p, (xi[None], ti[None]))[0]

    else:
        raise ValueError(f"unknown curvature {curvature!r}; valid: {', '.join(CURVATURES)}")
    return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, targets)


def diag_fisher(
    learning_rate,
    *,
    curvature: str = "fisher",
    decay: float = 0.95,
    damping: float = 1e-4,
    exponent: float = 1.0,
    momentum: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Diagonal-Fisher preconditioning (the diagonal approximation behind Adam-type methods).

    .. math::  d \leftarrow \beta d + (1-\beta)\,\frac1B \sum_i g_i^{\odot 2}, \qquad
               \hat d = d / (1 - \beta^t), \qquad
               m \leftarrow \mu m + g, \qquad
               \Delta\theta = -\eta\, m / (\hat d^{\,p} + \lambda),

    with :math:`g_i` the per-example gradients of :func:`per_example_fisher_grads` (labels sampled from
    the model, so :math:`\hat d` estimates the true Fisher diagonal). ``exponent`` p = 1 is the
    diagonal natural gradient; p = 1/2 with ``curvature="empirical"`` is RMSprop/Adam's
    square-root preconditioner (Kingma & Ba 2015), the approximation whose relation to
    :math:`F^{-1}` the natural-gradient study measures.

    Args:
      learning_rate: η, a float or a schedule.
      curvature: "fisher" (sampled labels; needs ``key``) or "empirical".
      decay: β ∈ [0, 1), moving-average factor of the diagonal.
      damping: λ > 0 added to the preconditioner.
      exponent: p > 0.
      momentum: μ ∈ [0, 1).

    Returns:
      A transformation; ``update`` needs ``objective``, ``batch`` and (for "fisher") ``key``.
      Cost: B per-example gradients per step (vmapped).
    """
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; valid: {', '.join(CURVATURES)}")
    if not 0 <= decay < 1:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    if not exponent > 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    schedule = _as_schedule(learning_rate)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return DiagFisherState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(updates, state, params=None, *, objective=None, batch=None, key=None, **_extra):
        _need("params", params, "diag_fisher")
        _need("objective", objective, "diag_fisher")
        _need("batch", batch, "diag_fisher")
        if curvature == "fisher":
            _need("key", key, "diag_fisher")
            key = jax.random.fold_in(key, 0x0D1A)
        grads_i = per_example_fisher_grads(objective, params, batch, key, curvature=curvature)
        count = state.count + 1
        diagonal = jax.tree.map(
            lambda d, gi: decay * d + (1 - decay) * jnp.mean(gi**2, axis=0), state.diagonal, grads_i
        )
        mom = jax.tree.map(lambda m, g: momentum * m + g, state.momentum, updates)
        lr = schedule(state.count)
        step = jax.tree.map(
            lambda m, d: (-lr * m / ((d / (1 - decay ** count.astype(d.dtype))) ** exponent + damping)).astype(m.dtype),
            mom,
            diagonal,
        )
        return step, DiagFisherState(count, mom, diagonal)

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = [
    "CURVATURES",
    "CGResult",
    "DiagFisherState",
    "NGDState",
    "batch_fisher_operator",
    "cg_solve",
    "diag_fisher",
    "natural_gradient",
    "ngd",
    "ngd_empirical",
    "per_example_fisher_grads",
]
