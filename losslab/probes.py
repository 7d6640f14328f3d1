"""In-training probes for :func:`losslab.train.train` (``probes={...}, probe_every=k``).

A :class:`Probe` is compiled into the training program (it runs under ``lax.cond``
every k steps) and may carry state from one call to the next. The λ_max probe carries
its last top eigenvector in the probe state, so a few warm-started
Lanczos/power steps per call track λ_max as it drifts during training
(the edge-of-stability measurements of Cohen et al. 2021 use the same idea).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from losslab.curvature import backprop
from losslab.curvature.base import restrict
from losslab.curvature.eigen import power_iteration, top_eigenpairs
from losslab.curvature.operators import OPERATORS, make_operator, operator_spec
from losslab.curvature.trace import hutchinson_trace, hutchpp_trace

METHODS = ("lanczos", "power")
TRACE_METHODS = ("hutchinson", "hutchpp", "backprop")
# Operators a probe can rebuild on every call from (objective, params, batch): the lazily built ones.
PROBE_OPERATORS = tuple(name for name, spec in OPERATORS.items() if not spec.needs_key and name != "kfac")


class Probe(NamedTuple):
    """A measurement taken every k steps inside the compiled training loop.

    Attributes:
      init: ``(objective, params) -> state`` (any pytree, e.g. a warm-start vector).
      fn: ``(objective, params, batch, state, key) -> (value, new_state)``;
        ``value`` is a scalar or a flat dict of scalars; ``batch`` is the current minibatch
        and ``objective`` carries the current BatchNorm statistics.
    """

    init: Callable[[Any, Any], Any]
    fn: Callable[..., tuple[Any, Any]]


def grad_norm_probe(full_batch: bool = False) -> Probe:
    r"""Probe of :math:`\lVert \nabla L(\theta) \rVert_2` on the minibatch (or the full training set)."""

    def fn(obj, params, batch, state, key):
        b = None if full_batch else batch
        g = jax.grad(obj.loss)(params, b)
        return optax.global_norm(g), state

    return Probe(lambda obj, params: (), fn)


def _check_operator(operator: str) -> None:
    operator_spec(operator)
    if operator not in PROBE_OPERATORS:
        raise ValueError(f"probes support the operators {PROBE_OPERATORS}, got {operator!r}")


def lambda_max_probe(
    *,
    num_steps: int = 10,
    full_batch: bool = False,
    method: str = "lanczos",
    operator: str = "hessian",
    seed: int = 0,
    with_residual: bool = False,
) -> Probe:
    r"""Probe of the top eigenvalue :math:`\lambda_{\max}` of the Hessian (or GGN / Fisher).

    Every call spends ``num_steps`` matvecs on the current minibatch (or the full training
    set with ``full_batch=True``), starting from the top eigenvector of the previous call:
    Lanczos (default; the top Ritz pair of ``num_steps`` steps) or power iteration.
    Warm starts make a handful of steps enough once training moves slowly.

    Args:
      num_steps: matvecs per call (Lanczos steps or power iterations), <= number of params.
      full_batch: curvature of the full training loss instead of the minibatch loss.
      method: "lanczos" or "power".
      operator: "hessian", "ggn", "fisher" or "empirical_fisher".
      seed: seed of the first start vector.
      with_residual: report ``{"value", "residual"}`` instead of the bare value.

    Returns:
      A :class:`Probe` whose state is the last flat top eigenvector.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    _check_operator(operator)

    def init(objective, params):
        _, _, size, dtype = restrict(params, None)
        if num_steps > size:
            raise ValueError(f"num_steps={num_steps} exceeds the number of parameters {size}")
        v = jax.random.normal(jax.random.key(seed), (size,), dtype)
        return v / jnp.linalg.norm(v)

    def fn(objective, params, batch, state, key):
        op = make_operator(operator, objective, params, None if full_batch else batch)
        if method == "lanczos":
            res = top_eigenpairs(op, key, k=1, num_steps=num_steps, init=state)
        else:
            res = power_iteration(op, key, k=1, num_steps=num_steps, tol=0.0, init=state)
        value = res.eigenvalues[0]
        out = {"value": value, "residual": res.residuals[0]} if with_residual else value
        return out, res.eigenvectors[0]

    return Probe(init, fn)


def trace_probe(
    *,
    num_probes: int = 10,
    full_batch: bool = False,
    method: str = "hutchinson",
    operator: str = "hessian",
    with_std_error: bool = False,
) -> Probe:
    r"""Probe of :math:`\operatorname{tr} H` by Hutchinson (or Hutch++) with ``num_probes`` matvecs per call.

    ``method="backprop"`` records the exact trace instead (no probes, std_error 0; see
    :func:`losslab.curvature.exact_trace`). For the Hessian the model must be piecewise linear
    in each parameter tensor; that is checked once, when training starts.

    Args:
      num_probes: matvecs per call (>= 2; >= 4 for Hutch++; unused by "backprop").
      full_batch: curvature of the full training loss instead of the minibatch loss.
      method: "hutchinson", "hutchpp" or "backprop".
      operator: "hessian", "ggn", "fisher" or "empirical_fisher".
      with_std_error: report ``{"value", "std_error"}`` instead of the bare estimate.

    Returns:
      A stateless :class:`losslab.train.Probe`.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    if num_probes < (4 if method == "hutchpp" else 2):
        raise ValueError(f"num_probes={num_probes} is too small for {method}")
    _check_operator(operator)
    if method == "backprop":

        def init(objective, params):
            backprop.check(objective, params, operator=operator)
            return ()

        def exact(objective, params, batch, state, key):
            parts = backprop.diagonal_tree(
                objective, params, None if full_batch else batch, operator=operator, trace_only=True
            )
            value = sum(jax.tree.leaves(parts))
            out = {"value": value, "std_error": jnp.zeros_like(value)} if with_std_error else value
            return out, state

        return Probe(init, exact)

    def fn(objective, params, batch, state, key):
        op = make_operator(operator, objective, params, None if full_batch else batch)
        if method == "hutchinson":
            res = hutchinson_trace(op, key, num_probes=num_probes)
        else:
            res = hutchpp_trace(op, key, num_matvecs=num_probes)
        out = {"value": res.estimate, "std_error": res.std_error} if with_std_error else res.estimate
        return out, state

    return Probe(lambda objective, params: (), fn)


__all__ = ["METHODS", "PROBE_OPERATORS", "TRACE_METHODS", "Probe", "grad_norm_probe", "lambda_max_probe", "trace_probe"]
