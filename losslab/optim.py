"""Optimizers and learning-rate schedules by name, as optax transformations.

Every optimizer built here is an :class:`optax.GradientTransformationExtraArgs`
whose ``update`` accepts the keyword arguments the training engine passes on
every step, and uses those it needs:

* ``grad_fn(params, i) -> grads`` on the current minibatch (SAM's ascent step);
* ``value``: the minibatch loss;
* ``batch``: the ``(x, y)`` minibatch; ``key``: a PRNG key for this step
  (natural-gradient methods sample from the model's predictive distribution).

The last element of every chain is a learning-rate multiplier held in the
optimizer state (:func:`set_lr_scale`), which reduce-on-plateau lowers between
epochs without recompiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from losslab import kfac, natural
from losslab.registry import lookup


def _base(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(tx)


def sgd(learning_rate):
    r"""Plain SGD: :math:`\theta \leftarrow \theta - \eta g`."""
    return _base(optax.sgd(learning_rate))


def momentum(learning_rate, *, beta: float = 0.9):
    r"""Heavy-ball momentum (Polyak 1964): :math:`v \leftarrow \beta v + g`, :math:`\theta \leftarrow \theta - \eta v`."""
    return _base(optax.sgd(learning_rate, momentum=beta))


def nesterov(learning_rate, *, beta: float = 0.9):
    """Nesterov momentum (Sutskever et al. 2013)."""
    return _base(optax.sgd(learning_rate, momentum=beta, nesterov=True))


def adam(learning_rate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba 2015)."""
    return _base(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adamw(learning_rate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""
    return _base(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def rmsprop(learning_rate, *, decay: float = 0.9, eps: float = 1e-8):
    """RMSprop (Tieleman & Hinton 2012)."""
    return _base(optax.rmsprop(learning_rate, decay=decay, eps=eps))


def sam(learning_rate, *, rho: float = 0.05, base: str = "sgd", **options):
    r"""Sharpness-aware minimisation (Foret et al. 2021) via ``optax.contrib.sam``.

    Each step ascends to :math:`\theta + \rho\, g/\lVert g \rVert`, takes the gradient
    there, and applies it at :math:`\theta` with the ``base`` optimizer. Costs two
    gradients per step (``grad_fn`` from the training engine).
    """
    if rho <= 0:
        raise ValueError(f"SAM radius rho must be > 0, got {rho}")
    if base == "sam":
        raise ValueError("SAM's base optimizer cannot itself be 'sam'")
    outer = lookup(OPTIMIZERS, base, "optimizer")(learning_rate, **options)
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    inner = optax.contrib.sam(outer, adv, sync_period=2, opaque_mode=True)

    def update(updates, state, params=None, *, grad_fn=None, **_extra):
        if grad_fn is None:
            raise ValueError("SAM needs grad_fn(params, i) in update(); the training engine passes it")
        return inner.update(updates, state, params, grad_fn=grad_fn)

    return optax.GradientTransformationExtraArgs(inner.init, update)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "sam": sam,
    "ngd": natural.ngd,
    "ngd_empirical": natural.ngd_empirical,
    "kfac": kfac.kfac,
    "diag_fisher": natural.diag_fisher,
}


# --------------------------------------------------------------------------
# Schedules


def constant_schedule(learning_rate: float, total_steps: int):
    """A constant rate (reduce-on-plateau also uses it, scaling it between epochs)."""
    return optax.constant_schedule(learning_rate)


def cosine_schedule(learning_rate: float, total_steps: int, *, alpha: float = 0.0, warmup_steps: int = 0):
    r"""Cosine decay (Loshchilov & Hutter 2017) from :math:`\eta` to :math:`\alpha\eta` over training, optional warm-up."""
    if warmup_steps:
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1), end_value=alpha * learning_rate
        )
    return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1), alpha=alpha)


SCHEDULES = {
    "constant": constant_schedule,
    "cosine": cosine_schedule,
    "plateau": constant_schedule,
}


def create(
    name: str,
    learning_rate: float,
    *,
    schedule: str = "constant",
    total_steps: int = 1,
    schedule_options: dict | None = None,
    **options,
) -> tuple[optax.GradientTransformationExtraArgs, Callable[[int], float]]:
    """Builds an optimizer by name with a learning-rate schedule.

    Args:
      name: a key of :data:`OPTIMIZERS`.
      learning_rate: the base rate η (> 0).
      schedule: "constant", "cosine" or "plateau" (constant, lowered on validation plateaus
        by the training engine through :func:`set_lr_scale`).
      total_steps: length of training in steps (for decaying schedules).
      schedule_options: extra schedule arguments (``alpha``, ``warmup_steps``).
      **options: the optimizer's own options (``beta``, ``b1``, ``rho``, ``weight_decay``, ...).

    Returns:
      ``(tx, schedule_fn)``: the transformation (ending in a learning-rate multiplier) and
      the schedule, a function of the step count.

    Raises:
      ValueError: unknown optimizer or schedule name (listing the valid ones), bad values.
    """
    factory = lookup(OPTIMIZERS, name, "optimizer")
    try:
        sched = lookup(SCHEDULES, schedule, "schedule")(learning_rate, total_steps, **(schedule_options or {}))
    except TypeError as e:
        raise ValueError(f"bad options for schedule {schedule!r}: {e}") from None
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    try:
        base = factory(sched, **options)
    except TypeError as e:
        raise ValueError(f"bad options for optimizer {name!r}: {e}") from None
    scale = _base(optax.inject_hyperparams(optax.scale)(step_size=jnp.asarray(1.0, jnp.float32)))
    return optax.chain(base, scale), sched


def lr_scale(opt_state) -> float:
    """The current learning-rate multiplier (1 unless reduced on a plateau)."""
    return float(opt_state[-1].hyperparams["step_size"])


def set_lr_scale(opt_state, value: float):
    """Returns ``opt_state`` with the learning-rate multiplier set to ``value`` (no recompilation)."""
    last = opt_state[-1]
    hyper = dict(last.hyperparams)
    hyper["step_size"] = jnp.asarray(value, hyper["step_size"].dtype)
    return (*opt_state[:-1], last._replace(hyperparams=hyper))


# --------------------------------------------------------------------------
# The one optimizer step


class StepResult(NamedTuple):
    """What :func:`step` returns: new params, BatchNorm state, optimizer state, and the minibatch loss."""

    params: Any
    state: Any
    opt_state: Any
    loss: jax.Array


def step(tx, objective, params, state, opt_state, batch, key) -> StepResult:
    r"""One optimizer step on the train-mode minibatch objective: the only place losslab calls ``tx.update``.

    Computes :math:`L_B(\theta)` and :math:`\nabla L_B(\theta)` on ``batch`` in train mode (dropout
    with ``key``, BatchNorm batch statistics from ``state``) and applies ``tx``, passing every extra
    argument an optimizer of :data:`OPTIMIZERS` may need: ``value``, ``grad_fn`` (SAM), ``batch``,
    ``key`` and ``objective`` (natural gradient, K-FAC; with the step's BatchNorm state). The
    training engine and the Bezier-curve fit (:func:`losslab.surface.bezier_curve`, through an
    affinely reparametrised objective) both step through here, so every optimizer works in both.

    Args:
      tx: an optimizer from :func:`create` (or any ``GradientTransformationExtraArgs``).
      objective: the :class:`~losslab.Objective` whose ``train_loss`` is minimised.
      params, state, opt_state: the current point, its non-trainable state and ``tx``'s state.
      batch: the ``(x, y)`` minibatch.
      key: PRNG key for dropout and sampling optimizers.

    Returns:
      A :class:`StepResult`. Cost: one gradient plus what ``tx`` spends (SAM: one more gradient;
      NGD: its CG matvecs).
    """

    def loss_fn(p):
        return objective.train_loss(p, state, batch, key)

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

    def grad_fn(p, _=None):
        return jax.grad(lambda q: loss_fn(q)[0])(p)

    updates, opt_state = tx.update(
        grads,
        opt_state,
        params,
        value=loss,
        grad_fn=grad_fn,
        batch=batch,
        key=key,
        objective=objective.replace(state=state),
    )
    return StepResult(optax.apply_updates(params, updates), new_state, opt_state, loss)
