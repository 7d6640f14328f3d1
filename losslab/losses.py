"""Pluggable per-example losses and parameter regularizers.

Every loss maps ``(outputs, targets) -> (batch,)``: ``outputs`` are the model's
raw outputs (logits for classification), ``targets`` are integer labels of
shape ``(batch,)`` for classification or real targets of shape
``(batch, output_dim)`` for regression. Reduction (the mean over a dataset) is
the Objective's job, never the loss's.

Losses that are the negative log-likelihood of a predictive distribution carry
a :class:`Likelihood`; the Fisher operators in :mod:`losslab.curvature` need it
and refuse losses without one (hinge, MAE, focal, ...), which are not
likelihoods of any normalised distribution over the targets.

Regularizers map ``params -> scalar`` and are added to the training objective
by :class:`losslab.Objective`, never to reported data metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from losslab.registry import lookup

Array = jax.Array


# --------------------------------------------------------------------------
# Helpers


def _one_hot_like(outputs: Array, targets: Array) -> Array:
    """Integer labels -> one-hot of the outputs' width; real targets pass through."""
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    return targets.reshape(outputs.shape).astype(outputs.dtype)


def _labels(targets: Array, name: str) -> Array:
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"loss {name!r} needs integer class labels, got dtype {targets.dtype}")
    return targets


# --------------------------------------------------------------------------
# Per-example losses.  Each takes (outputs, targets, **options).


def cross_entropy(outputs, targets):
    r"""Softmax cross-entropy :math:`-\log \mathrm{softmax}(z)_y`.

    Gradient in the logits is :math:`p - e_y`; Hessian :math:`\mathrm{diag}(p) - pp^\top`.
    """
    return optax.losses.softmax_cross_entropy_with_integer_labels(
        outputs, _labels(targets, "cross_entropy")
    )


def label_smoothing(outputs, targets, *, smoothing: float = 0.1):
    r"""Cross-entropy against smoothed targets :math:`q = (1-\epsilon) e_y + \epsilon / C`.

    Szegedy et al. 2016. ``smoothing`` is :math:`\epsilon \in [0, 1)`.
    """
    onehot = jax.nn.one_hot(_labels(targets, "label_smoothing"), outputs.shape[-1], dtype=outputs.dtype)
    return optax.losses.softmax_cross_entropy(outputs, optax.smooth_labels(onehot, smoothing))


def focal(outputs, targets, *, alpha: float | None = None, gamma: float = 2.0):
    r"""Multiclass focal loss :math:`-\alpha_y (1 - p_y)^\gamma \log p_y` (Lin et al. 2017).

    ``alpha`` (optional) weights every class equally by a scalar; ``gamma`` = 0
    recovers cross-entropy (times ``alpha``).
    """
    labels = _labels(targets, "focal")
    logp = jax.nn.log_softmax(outputs)
    logp_y = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    p_y = jnp.exp(logp_y)
    weight = 1.0 if alpha is None else alpha
    return -weight * (1.0 - p_y) ** gamma * logp_y


def multiclass_hinge(outputs, targets, *, margin: float = 1.0):
    r"""Crammer–Singer hinge :math:`\max(0, \Delta + \max_{k \ne y} z_k - z_y)`."""
    labels = _labels(targets, "multiclass_hinge")
    z_y = jnp.take_along_axis(outputs, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, outputs.shape[-1], dtype=bool), -jnp.inf, outputs)
    return jax.nn.relu(margin + jnp.max(others, axis=-1) - z_y)


def mse(outputs, targets):
    r"""Mean squared error over output coordinates :math:`\frac1D \lVert f - y \rVert^2`.

    Integer labels are one-hot encoded first (Hui & Belkin 2021). This equals
    the Gaussian negative log-likelihood with variance :math:`D/2` up to a
    constant, so its Fisher equals its GGN.
    """
    y = _one_hot_like(outputs, targets)
    return jnp.mean((outputs - y) ** 2, axis=-1)


def mae(outputs, targets):
    r"""Mean absolute error over output coordinates :math:`\frac1D \lVert f - y \rVert_1`."""
    return jnp.mean(jnp.abs(outputs - _one_hot_like(outputs, targets)), axis=-1)


def huber(outputs, targets, *, delta: float = 1.0):
    r"""Huber loss (Huber 1964), averaged over output coordinates.

    :math:`\tfrac12 r^2` for :math:`|r| \le \delta`, else :math:`\delta(|r| - \tfrac12\delta)`.
    """
    r = outputs - _one_hot_like(outputs, targets)
    return jnp.mean(optax.losses.huber_loss(r, delta=delta), axis=-1)


def log_cosh(outputs, targets):
    r""":math:`\frac1D \sum_d \log\cosh(f_d - y_d)`: quadratic near 0, linear in the tails."""
    return jnp.mean(optax.losses.log_cosh(outputs, _one_hot_like(outputs, targets)), axis=-1)


def normalized_cross_entropy(outputs, targets):
    r"""Cross-entropy divided by :math:`\log C`, so a uniform prediction scores 1.

    (The constant normalisation, not the per-sample one of Ma et al. 2020.)
    """
    return cross_entropy(outputs, targets) / math.log(outputs.shape[-1])


# --------------------------------------------------------------------------
# Likelihoods: what the Fisher operators need to know of a loss.


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """A predictive distribution p(y | f) over the targets given model outputs f.

    Attributes:
      name: "categorical" (softmax of logits) or "gaussian" (mean f, variance
        ``variance`` per output coordinate; ``None`` means D/2, the variance that
        makes the negative log-likelihood equal to :func:`mse`).
      variance: see above.
    """

    name: str
    variance: float | None = None

    def _var(self, outputs: Array) -> float:
        return outputs.shape[-1] / 2.0 if self.variance is None else self.variance

    def nll(self, outputs: Array, targets: Array) -> Array:
        """Per-example negative log-likelihood up to a constant, ``(batch,)``.

        Targets are labels (categorical) or real vectors (gaussian), as returned by
        :meth:`sample`.
        """
        if self.name == "categorical":
            return optax.losses.softmax_cross_entropy_with_integer_labels(outputs, targets)
        elif self.name == "gaussian":
            y = _one_hot_like(outputs, targets)
            return jnp.sum((outputs - y) ** 2, axis=-1) / (2.0 * self._var(outputs))
        else:
            raise ValueError(f"unknown likelihood {self.name!r}; valid: categorical, gaussian")

    def sample(self, key: Array, outputs: Array) -> Array:
        """Draws targets y ~ p(y | f) for each row of ``outputs``."""
        if self.name == "categorical":
            return jax.random.categorical(key, outputs, axis=-1)
        elif self.name == "gaussian":
            noise = jax.random.normal(key, outputs.shape, outputs.dtype)
            return outputs + jnp.sqrt(self._var(outputs)) * noise
        else:
            raise ValueError(f"unknown likelihood {self.name!r}; valid: categorical, gaussian")

    def fisher_matvec(self, outputs: Array, vec: Array) -> Array:
        r"""Output-space Fisher times ``vec``, row by row: ``(batch, D) -> (batch, D)``.

        Categorical: :math:`(\mathrm{diag}(p) - pp^\top) v`; Gaussian: :math:`v / \sigma^2`.
        """
        if self.name == "categorical":
            p = jax.nn.softmax(outputs, axis=-1)
            return p * vec - p * jnp.sum(p * vec, axis=-1, keepdims=True)
        elif self.name == "gaussian":
            return vec / self._var(outputs)
        else:
            raise ValueError(f"unknown likelihood {self.name!r}; valid: categorical, gaussian")


# --------------------------------------------------------------------------
# The Loss value: hashable (name + options), so it can be a static argument.

_NO_LIKELIHOOD_REASON = {
    "focal": "the focal loss reweights log p_y by (1 - p_y)^gamma, which is not the log of a normalised distribution",
    "multiclass_hinge": "the hinge loss is a margin loss, not the negative log of any normalised distribution",
    "mae": "MAE is the negative log of a Laplace density whose Fisher is not defined by smooth outputs; use the GGN instead",
    "huber": "the Huber loss is not a normalised negative log-likelihood",
    "log_cosh": "log-cosh is not used as a normalised negative log-likelihood here",
}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A named per-example loss with its options; call it as ``loss(outputs, targets)``.

    Hashable and comparable by value, so it can be a static argument of ``jax.jit``.

    Attributes:
      name: a key of :data:`LOSSES`.
      options: sorted ``(option, value)`` pairs passed to the loss function.
    """

    name: str
    options: tuple[tuple[str, object], ...] = ()

    def __call__(self, outputs: Array, targets: Array) -> Array:
        return LOSSES[self.name].fn(outputs, targets, **dict(self.options))

    @property
    def likelihood(self) -> Likelihood | None:
        """The predictive distribution whose NLL this loss is (up to scale), or None."""
        return LOSSES[self.name].likelihood

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this loss applies to ("classification", "regression")."""
        return LOSSES[self.name].tasks

    def require_likelihood(self) -> Likelihood:
        """Returns the likelihood, or raises ``ValueError`` saying why there is none."""
        if self.likelihood is None:
            why = _NO_LIKELIHOOD_REASON.get(self.name, "it is not a negative log-likelihood")
            raise ValueError(
                f"loss {self.name!r} has no Fisher information: {why}. "
                "The Fisher is defined for likelihood losses (cross_entropy, label_smoothing, "
                "normalized_cross_entropy, mse); use the GGN or Hessian operator instead."
            )
        return self.likelihood

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}({opts})" if opts else self.name


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registry entry of :data:`LOSSES`.

    Attributes:
      fn: the per-example loss ``(outputs, targets, **options) -> (batch,)``.
      tasks: the tasks it applies to ("classification", "regression").
      likelihood: the predictive distribution whose negative log-likelihood it is (enables
        the Fisher operators), or None.
      option_names: the keyword options it accepts.
    """

    fn: Callable
    tasks: tuple[str, ...]
    likelihood: Likelihood | None
    option_names: tuple[str, ...] = ()


def get(name: str | Loss, **options) -> Loss:
    """Builds a :class:`Loss` by name, checking its options.

    Args:
      name: a key of :data:`LOSSES` (or a Loss, returned unchanged when no options).
      **options: the loss's keyword options, e.g. ``gamma=2.0`` for ``focal``.

    Raises:
      ValueError: unknown name (listing the valid ones) or unknown/invalid option.
    """
    if isinstance(name, Loss):
        if options:
            return get(name.name, **{**dict(name.options), **options})
        return name
    spec = lookup(LOSSES, name, "loss")
    unknown = set(options) - set(spec.option_names)
    if unknown:
        raise ValueError(
            f"loss {name!r} got unknown option(s) {sorted(unknown)}; valid options: {list(spec.option_names) or 'none'}"
        )
    for key, value in options.items():
        if key in ("smoothing",) and not 0.0 <= float(value) < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {value}")
        if key in ("gamma", "delta", "margin") and not float(value) >= 0.0:
            raise ValueError(f"loss option {key} must be non-negative, got {value}")
    return Loss(name, tuple(sorted(options.items())))


LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(cross_entropy, ("classification",), Likelihood("categorical")),
    "label_smoothing": LossSpec(label_smoothing, ("classification",), Likelihood("categorical"), ("smoothing",)),
    "focal": LossSpec(focal, ("classification",), None, ("alpha", "gamma")),
    "multiclass_hinge": LossSpec(multiclass_hinge, ("classification",), None, ("margin",)),
    "mse": LossSpec(mse, ("classification", "regression"), Likelihood("gaussian")),
    "mae": LossSpec(mae, ("classification", "regression"), None),
    "huber": LossSpec(huber, ("classification", "regression"), None, ("delta",)),
    "log_cosh": LossSpec(log_cosh, ("classification", "regression"), None),
    "normalized_cross_entropy": LossSpec(normalized_cross_entropy, ("classification",), Likelihood("categorical")),
}


# --------------------------------------------------------------------------
# Regularizers: params -> scalar, on the weights selected by a path filter.


def _is_weight(path: tuple, leaf: Array) -> bool:
    """Default selection: every parameter with ndim >= 2 (kernels, not biases or norms)."""
    return leaf.ndim >= 2


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


@dataclasses.dataclass(frozen=True)
class Regularizer:
    r"""Elastic-net penalty :math:`\lambda_1 \sum |w| + \tfrac{\lambda_2}{2} \sum w^2`.

    Applied to the parameters whose path (e.g. ``"layers/0/kernel"``) contains
    ``include`` (any substring, default all) and that are weights (ndim >= 2)
    unless ``weights_only=False``.  ``l1``, ``l2`` and ``elastic_net`` build it.
    """

    l1: float = 0.0
    l2: float = 0.0
    include: str = ""
    weights_only: bool = True

    def __call__(self, params) -> Array:
        total = jnp.zeros((), jnp.float32)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            if self.include not in _path_str(path):
                continue
            if self.weights_only and not _is_weight(path, leaf):
                continue
            if self.l1:
                total = total + self.l1 * jnp.sum(jnp.abs(leaf))
            if self.l2:
                total = total + 0.5 * self.l2 * jnp.sum(leaf**2)
        return total


def _check_strength(name, value):
    if not value >= 0:
        raise ValueError(f"regularizer strength {name} must be >= 0, got {value}")


def l1(scale: float, *, include: str = "", weights_only: bool = True) -> Regularizer:
    r"""L1 penalty :math:`\lambda \sum_i |w_i|` (lasso)."""
    _check_strength("l1", scale)
    return Regularizer(l1=scale, include=include, weights_only=weights_only)


def l2(scale: float, *, include: str = "", weights_only: bool = True) -> Regularizer:
    r"""L2 penalty :math:`\tfrac{\lambda}{2} \sum_i w_i^2` (weight decay for SGD at rate :math:`\eta\lambda`)."""
    _check_strength("l2", scale)
    return Regularizer(l2=scale, include=include, weights_only=weights_only)


def elastic_net(l1_scale: float, l2_scale: float, *, include: str = "", weights_only: bool = True) -> Regularizer:
    r"""Elastic net :math:`\lambda_1 \sum |w_i| + \tfrac{\lambda_2}{2} \sum w_i^2` (Zou & Hastie 2005)."""
    _check_strength("l1", l1_scale)
    _check_strength("l2", l2_scale)
    return Regularizer(l1=l1_scale, l2=l2_scale, include=include, weights_only=weights_only)
