"""Exact mode for small models: dense curvature matrices and full eigendecompositions.

Every matrix-free operator can be materialised (n matvecs) and diagonalised
(``eigh``, O(n³)), so any estimate can be checked on a small model; with
``jax_enable_x64`` everything runs in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from losslab.curvature.base import LinearOperator, to_dense
from losslab.curvature.eigen import EigenResult
from losslab.curvature.operators import make_operator

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("kind", "include_regularizer", "select"))
def _dense(objective, params, batch, *, kind, include_regularizer, select):
    # The Objective is a jit argument (a pytree), so repeated calls reuse one compiled program.
    options = {"include_regularizer": include_regularizer} if kind == "hessian" else {}
    return to_dense(make_operator(kind, objective, params, batch, select=select, **options))


def _params(objective, params):
    return objective.params if params is None else params


def dense_hessian(objective, params=None, batch=None, *, include_regularizer: bool = True, select=None) -> Array:
    """The ``(n, n)`` Hessian of the mean loss (see :func:`hessian_operator`), n matvecs, jitted."""
    return _dense(
        objective,
        _params(objective, params),
        batch,
        kind="hessian",
        include_regularizer=include_regularizer,
        select=select,
    )


def dense_ggn(objective, params=None, batch=None, *, select=None) -> Array:
    """The ``(n, n)`` generalized Gauss-Newton matrix of the mean data loss (see :func:`ggn_operator`), n matvecs, jitted."""
    return _dense(objective, _params(objective, params), batch, kind="ggn", include_regularizer=False, select=select)


def dense_fisher(objective, params=None, batch=None, *, select=None) -> Array:
    """The ``(n, n)`` true Fisher of the mean data loss (see :func:`fisher_operator`), n matvecs, jitted.

    Raises:
      ValueError: the loss is not a negative log-likelihood.
    """
    objective.loss_fn.require_likelihood()
    return _dense(objective, _params(objective, params), batch, kind="fisher", include_regularizer=False, select=select)


def exact_eigh(op: LinearOperator | Array) -> EigenResult:
    """All n eigenpairs of an operator (or a dense symmetric matrix) by dense ``eigh``.

    Cost: n matvecs to materialise, O(n³) to diagonalise. Returns an :class:`EigenResult`
    with eigenvalues in *descending* order, eigenvectors as rows ``(n, n)``, and the exact
    residuals :math:`\\lVert A u_i - \\lambda_i u_i \\rVert` of the dense solution.
    """
    if isinstance(op, LinearOperator):
        matrix, n = to_dense(op), op.size
    else:
        matrix = jnp.asarray(op)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"exact_eigh needs an operator or a square matrix, got shape {matrix.shape}")
        n = matrix.shape[0]
    sym = 0.5 * (matrix + matrix.T)
    w, v = jnp.linalg.eigh(sym)
    w, v = w[::-1], v[:, ::-1].T
    residuals = jnp.linalg.norm(v @ sym - w[:, None] * v, axis=1)
    return EigenResult(w, v, residuals, jnp.asarray(n), jnp.ones((n,), bool))


__all__ = [
    "dense_fisher",
    "dense_ggn",
    "dense_hessian",
    "exact_eigh",
]
