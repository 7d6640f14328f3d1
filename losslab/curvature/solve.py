r"""Linear solves with curvature operators: conjugate gradient on PSD operators.

:func:`cg_solve` solves :math:`(A + \lambda I)\,x = b` for an operator ``A`` declared positive
semi-definite (a GGN, Fisher or K-FAC operator, or ``from_matrix(..., psd=True)``); it refuses
one that is not, since CG on an indefinite matrix (a Hessian away from a minimum) can diverge
or stop on a direction of negative curvature without saying so.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from losslab import display as fmt
from losslab.curvature.base import LinearOperator, require

Array = jax.Array


class CGResult(NamedTuple):
    """Outcome of :func:`cg_solve`.

    Attributes:
      x: the approximate solution, shape ``(n,)``.
      num_steps: CG iterations taken (each one matvec).
      residual_norm: :math:`\\lVert b - (A + \\lambda I) x \\rVert_2` as tracked by the recursion.
      converged: ``residual_norm <= tol * ||b||``.
      num_matvecs: matvecs spent (``num_steps``, plus one for a non-zero start).
    """

    x: Array
    num_steps: Array
    residual_norm: Array
    converged: Array
    num_matvecs: Array

    def __repr__(self) -> str:
        return (
            f"CGResult(converged={fmt.num(self.converged)} after {fmt.num(self.num_steps)} steps, "
            f"residual_norm={fmt.num(self.residual_norm, 3)}, {fmt.num(self.num_matvecs)} matvecs, x {fmt.shape(self.x)})"
        )


def cg_solve(
    op: LinearOperator,
    b: Array,
    *,
    damping: float | Array = 0.0,
    x0: Array | None = None,
    max_steps: int = 50,
    tol: float = 1e-6,
) -> CGResult:
    r"""Solves :math:`(A + \lambda I)\, x = b` by conjugate gradient (Hestenes & Stiefel 1952).

    ``op`` must be declared PSD (``op.psd``); a ``ValueError`` naming it is raised otherwise.
    The loop is a ``lax.while_loop``: it stops after ``max_steps`` iterations or once
    :math:`\lVert r \rVert \le \mathrm{tol}\,\lVert b \rVert`, and never raises inside ``jit``;
    read ``converged`` and ``residual_norm``. A direction with zero curvature (``pᵀAp = 0``, only
    possible without damping on a singular ``A``) ends the loop with the current iterate.

    Args:
      op: a PSD :class:`~losslab.curvature.LinearOperator` on flat vectors of shape ``(n,)``.
      b: right-hand side, shape ``(n,)``.
      damping: :math:`\lambda \ge 0` (Tikhonov damping), may be a traced scalar.
      x0: warm start (zeros if None).
      max_steps: iteration cap (static).
      tol: relative residual tolerance.

    Returns:
      A :class:`CGResult`. Cost: ``num_steps`` matvecs (+1 with ``x0``).
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(
            f"cg_solve takes a LinearOperator (e.g. fisher_operator(...) or from_matrix(A, psd=True)), got "
            f"{type(op).__name__}"
        )
    require(op, psd=True, algorithm="cg_solve")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if b.shape != (op.size,):
        raise ValueError(f"b must have shape ({op.size},) to match the operator, got {b.shape}")
    damping = jnp.asarray(damping, b.dtype)

    def apply(v):
        return op.matvec(v) + damping * v

    if x0 is None:
        x, r, extra = jnp.zeros_like(b), b, 0
    else:
        x, r, extra = x0, b - apply(x0), 1
    thresh = tol * jnp.linalg.norm(b)
    rs = jnp.vdot(r, r)

    def cond(carry):
        _, _, _, rs, i, stalled = carry
        return (i < max_steps) & (jnp.sqrt(rs) > thresh) & ~stalled

    def body(carry):
        x, r, p, rs, i, _ = carry
        ap = apply(p)
        pap = jnp.vdot(p, ap)
        ok = pap > 0
        alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        p = r + (rs_new / jnp.where(rs > 0, rs, 1.0)) * p
        return x, r, p, rs_new, i + 1, ~ok

    x, r, _, rs, steps, _ = jax.lax.while_loop(cond, body, (x, r, r, rs, jnp.zeros((), jnp.int32), jnp.array(False)))
    res = jnp.sqrt(rs)
    return CGResult(x, steps, res, res <= thresh, steps + extra)


__all__ = ["CGResult", "cg_solve"]
