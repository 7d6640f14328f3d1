"""Eigenvalues of a symmetric operator: power iteration with deflation and Lanczos.

The algorithms see only a :class:`~losslab.curvature.operators.LinearOperator`
(``matvec`` on flat vectors); they know nothing of models. All loops are
``lax`` loops, so they compile once whatever the number of steps, and every
result says how far it got (residuals, matvecs, convergence flags) instead of
stopping silently.

References: Lanczos 1950; Paige 1972 (loss of orthogonality, hence full
reorthogonalisation); Golub & Van Loan, *Matrix Computations*, ch. 10;
Yao et al. 2020 (PyHessian's power iteration).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from losslab import display as fmt
from losslab.curvature.base import LinearOperator, require

Array = jax.Array
WHICH = ("largest", "smallest")


class EigenResult(NamedTuple):
    """Eigenpair estimates.

    Attributes:
      eigenvalues: ``(k,)``; descending for ``which="largest"``, ascending for "smallest".
      eigenvectors: ``(k, n)`` flat unit vectors (rows), ``op.unravel`` maps one to params.
      residuals: ``(k,)`` residual norms :math:`\\lVert A u - \\lambda u \\rVert`.
      num_matvecs: products with the operator spent.
      converged: ``(k,)`` bool, residual within the requested tolerance (all True when
        no tolerance applies, e.g. exact eigh).
    """

    eigenvalues: Array
    eigenvectors: Array
    residuals: Array
    num_matvecs: Array
    converged: Array

    @property
    def condition_number(self) -> Array:
        """:math:`|\\lambda_1| / |\\lambda_k|` over the k eigenvalues found (the top-k condition number)."""
        return jnp.abs(self.eigenvalues[0]) / jnp.abs(self.eigenvalues[-1])

    def __repr__(self) -> str:
        conv = fmt.as_array(self.converged)
        done = f"{int(conv.sum())}/{conv.size} converged" if conv is not None else "? converged"
        return (
            f"EigenResult(eigenvalues={fmt.values(self.eigenvalues)}, residual ≤ {fmt.largest(self.residuals)}, "
            f"{done}, {fmt.num(self.num_matvecs)} matvecs, eigenvectors {fmt.shape(self.eigenvectors)})"
        )


class LanczosResult(NamedTuple):
    """The Lanczos decomposition :math:`A V^\\top = V^\\top T + \\beta_m v_{m+1} e_m^\\top`.

    Attributes:
      alpha: ``(m,)`` diagonal of the tridiagonal T.
      beta: ``(m,)``; ``beta[j]`` couples basis vectors j and j+1 (the off-diagonal of T is
        ``beta[:-1]``) and ``beta[-1]`` is the norm of the remainder, which bounds the
        Ritz residuals. A zero marks an invariant subspace found (breakdown, restarted).
      basis: ``(m, n)`` orthonormal Lanczos vectors (rows).
      num_matvecs: m.
    """

    alpha: Array
    beta: Array
    basis: Array
    num_matvecs: Array

    def tridiagonal(self) -> Array:
        """The ``(m, m)`` symmetric tridiagonal matrix T."""
        off = self.beta[:-1]
        return jnp.diag(self.alpha) + jnp.diag(off, 1) + jnp.diag(off, -1)

    def __repr__(self) -> str:
        return (
            f"LanczosResult(basis {fmt.shape(self.basis)}, alpha ∈ {fmt.span(self.alpha)}, "
            f"remainder β_m = {fmt.entry(self.beta, -1, 2)}, {fmt.num(self.num_matvecs)} matvecs)"
        )

    def ritz(self) -> tuple[Array, Array, Array]:
        """Ritz values (ascending), Ritz vectors ``(m, n)`` and residual bounds ``|beta_m s_{m,i}|``."""
        theta, s = jnp.linalg.eigh(self.tridiagonal())
        vectors = s.T @ self.basis
        return theta, vectors, jnp.abs(self.beta[-1] * s[-1, :])


def _random_unit(key, n, dtype):
    v = jax.random.normal(key, (n,), dtype)
    return v / jnp.linalg.norm(v)


def check_num_steps(op: LinearOperator, num_steps: int, name: str = "num_steps") -> None:
    """Raises ``ValueError`` unless ``1 <= num_steps <= op.size``."""
    if not 1 <= num_steps <= op.size:
        raise ValueError(f"{name} must be in [1, n={op.size}], got {num_steps}")


def lanczos(
    op: LinearOperator,
    key: Array,
    *,
    num_steps: int,
    reorthogonalize: bool = True,
    init: Array | None = None,
) -> LanczosResult:
    r"""Runs ``num_steps`` Lanczos iterations on a symmetric operator (Lanczos 1950).

    Builds an orthonormal basis :math:`v_1..v_m` of the Krylov space
    :math:`\mathcal K_m(A, v_1)` and the tridiagonal :math:`T = V A V^\top`, whose
    eigenvalues (Ritz values) approximate the extreme eigenvalues of A first. With
    ``reorthogonalize=True`` every new vector is orthogonalised against the whole basis by
    classical Gram-Schmidt, with a second pass whenever the first cancelled more than half
    of its squared norm (twice is enough; Daniel et al. 1976, Giraud et al. 2005), which stops the
    spurious copies of converged eigenvalues of plain Lanczos (Paige 1972); with
    ``num_steps = n`` the Ritz values are then the exact spectrum. On breakdown
    (:math:`\beta_j \approx 0`: an invariant subspace was found) the iteration continues
    from a fresh random vector orthogonal to the basis and records :math:`\beta_j = 0`.

    Args:
      op: a symmetric operator of size n.
      key: PRNG key for the start vector (Gaussian) and restarts.
      num_steps: m in [1, n]; cost m matvecs, memory ``(m, n)``.
      reorthogonalize: full reorthogonalisation (default; costs O(m n) per step).
      init: optional ``(n,)`` start vector (e.g. a warm start), normalised here.

    Returns:
      A :class:`LanczosResult`.
    """
    require(op, symmetric=True, algorithm="lanczos")
    check_num_steps(op, num_steps)
    n, m, dtype = op.size, num_steps, op.dtype
    start_key, restart_key = jax.random.split(key)
    v0 = _random_unit(start_key, n, dtype) if init is None else init.astype(dtype) / jnp.linalg.norm(init)
    eps = jnp.finfo(dtype).eps

    def orthogonalize(w, basis):
        if not reorthogonalize:
            return w
        w1 = w - basis.T @ (basis @ w)
        # "Twice is enough", and once is enough unless the pass cancelled most of w
        # (Daniel, Gragg, Kaufman & Stewart 1976): the second pass runs only when
        # ||w1|| < ||w|| / sqrt(2). Each pass streams the (m, n) basis twice.
        again = jnp.vdot(w1, w1) < 0.5 * jnp.vdot(w, w)
        return jax.lax.cond(again, lambda: w1 - basis.T @ (basis @ w1), lambda: w1)

    def step(j, carry):
        basis, alpha, beta, v, v_prev, b_prev, scale = carry
        basis = basis.at[j].set(v)
        w = op.matvec(v)
        a = jnp.vdot(v, w)
        w = w - a * v - b_prev * v_prev
        w = orthogonalize(w, basis)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        broke = b <= 10 * eps * jnp.sqrt(jnp.asarray(n, dtype)) * scale
        # Only on breakdown: draw and orthogonalise a fresh vector (lax.cond skips the cost otherwise).
        nxt = jax.lax.cond(
            broke,
            lambda: orthogonalize(jax.random.normal(jax.random.fold_in(restart_key, j), (n,), dtype), basis),
            lambda: w,
        )
        nxt = nxt / jnp.maximum(jnp.linalg.norm(nxt), jnp.finfo(dtype).tiny)
        b = jnp.where(broke, jnp.zeros_like(b), b)
        return basis, alpha.at[j].set(a), beta.at[j].set(b), nxt, v, b, scale

    init_carry = (
        jnp.zeros((m, n), dtype),
        jnp.zeros((m,), dtype),
        jnp.zeros((m,), dtype),
        v0,
        jnp.zeros((n,), dtype),
        jnp.zeros((), dtype),
        jnp.zeros((), dtype),
    )
    basis, alpha, beta, *_ = jax.lax.fori_loop(0, m, step, init_carry)
    return LanczosResult(alpha, beta, basis, jnp.asarray(m))


def top_eigenpairs(
    op: LinearOperator,
    key: Array,
    *,
    k: int = 1,
    num_steps: int | None = None,
    which: str = "largest",
    reorthogonalize: bool = True,
    init: Array | None = None,
    tol: float = 1e-4,
) -> EigenResult:
    r"""The k largest (or smallest) eigenpairs by Lanczos with full reorthogonalisation.

    Ritz pairs :math:`(\theta_i, V^\top s_i)` of the m-step decomposition; the residual
    :math:`\lVert A u_i - \theta_i u_i \rVert = |\beta_m s_{m,i}|` costs no extra matvec
    (exact in exact arithmetic with full reorthogonalisation). Extreme eigenvalues converge
    much faster than with power iteration (Kuczynski & Wozniakowski 1992): the error
    shrinks like :math:`\exp(-4m\sqrt{\text{gap}})` instead of :math:`(1-\text{gap})^{2m}`.

    Args:
      op: symmetric operator of size n.
      key: PRNG key for the start vector.
      k: number of eigenpairs, ``1 <= k <= num_steps``.
      num_steps: Lanczos steps m (cost m matvecs, memory ``(m, n)``); default
        ``min(n, max(4k, 40))``.
      which: "largest" (algebraic, descending) or "smallest" (algebraic, ascending: the
        most negative first).
      reorthogonalize: see :func:`lanczos`.
      init: optional warm-start vector.
      tol: ``converged`` flags residual <= tol * max|θ| (no effect on the work done).

    Returns:
      An :class:`EigenResult`.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    num_steps = min(op.size, max(4 * k, 40)) if num_steps is None else num_steps
    check_num_steps(op, num_steps)
    if not 1 <= k <= num_steps:
        raise ValueError(f"k must be in [1, num_steps={num_steps}], got {k}")
    res = lanczos(op, key, num_steps=num_steps, reorthogonalize=reorthogonalize, init=init)
    theta, vectors, resid = res.ritz()
    idx = jnp.arange(num_steps - 1, num_steps - 1 - k, -1) if which == "largest" else jnp.arange(k)
    vals = theta[idx]
    resid = resid[idx]
    return EigenResult(vals, vectors[idx], resid, res.num_matvecs, resid <= tol * jnp.max(jnp.abs(theta)))


def power_iteration(
    op: LinearOperator,
    key: Array,
    *,
    k: int = 1,
    num_steps: int = 100,
    tol: float = 1e-4,
    init: Array | None = None,
) -> EigenResult:
    r"""Top-k eigenpairs by largest magnitude, by power iteration with deflation.

    For pair i, iterates :math:`v \leftarrow P A P v / \lVert P A P v \rVert` with P the
    projector onto the complement of the pairs already found (Hotelling deflation, as in
    PyHessian, Yao et al. 2020), and stops once the relative residual
    :math:`\lVert A v - \lambda v \rVert \le` ``tol`` :math:`|\lambda|` or after
    ``num_steps`` matvecs. The eigenvalue error falls like :math:`(\lambda_2/\lambda_1)^{2t}`;
    prefer :func:`top_eigenpairs` (Lanczos) for accuracy per matvec.

    Args:
      op: symmetric operator of size n.
      key: PRNG key for the Gaussian start vectors.
      k: number of pairs (found one after the other, in decreasing |λ|).
      num_steps: maximum matvecs per pair; ``tol=0`` spends exactly ``k * num_steps``.
      tol: relative residual at which a pair counts as converged.
      init: optional warm start for the first pair.

    Returns:
      An :class:`EigenResult` in the order found; ``num_matvecs`` counts all pairs, the
      reported vector is the one whose Rayleigh quotient and residual are reported.
      Cost: at most ``k * num_steps`` matvecs.
    """
    require(op, symmetric=True, algorithm="power_iteration")
    if k < 1 or k > op.size:
        raise ValueError(f"k must be in [1, n={op.size}], got {k}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    n, dtype = op.size, op.dtype
    keys = jax.random.split(key, k)

    def one_pair(i, carry):
        vecs, vals, res, conv, total = carry
        found = (jnp.arange(k) < i)[:, None] * vecs

        def project(w):
            return w - found.T @ (found @ w)

        v = _random_unit(keys[i], n, dtype)
        if init is not None:
            v = jnp.where(i == 0, init.astype(dtype), v)
        v = project(v)
        v = v / jnp.linalg.norm(v)

        def cond(s):
            t, _, lam, r, _ = s
            return (t < num_steps) & ~(r <= tol * jnp.abs(lam))

        def body(s):
            t, v, _, _, _ = s
            w = project(op.matvec(v))
            lam = jnp.vdot(v, w)
            r = jnp.linalg.norm(w - lam * v)
            return t + 1, w / jnp.linalg.norm(w), lam, r, v

        inf = jnp.asarray(jnp.inf, dtype)
        t, _, lam, r, u = jax.lax.while_loop(cond, body, (0, v, jnp.zeros((), dtype), inf, v))
        return (
            vecs.at[i].set(u),
            vals.at[i].set(lam),
            res.at[i].set(r),
            conv.at[i].set(r <= tol * jnp.abs(lam)),
            total + t,
        )

    init_carry = (jnp.zeros((k, n), dtype), jnp.zeros((k,), dtype), jnp.zeros((k,), dtype), jnp.zeros((k,), bool), 0)
    vecs, vals, res, conv, total = jax.lax.fori_loop(0, k, one_pair, init_carry)
    return EigenResult(vals, vecs, res, jnp.asarray(total), conv)


def lambda_max(op: LinearOperator, key: Array, *, num_steps: int | None = None) -> Array:
    """λ_max, the largest (algebraic) eigenvalue, by Lanczos (:func:`top_eigenpairs`, k=1; Lanczos 1950).

    Cost: ``num_steps`` matvecs (default ``min(n, 40)``). Returns a scalar; use
    :func:`top_eigenpairs` for the eigenvector and the residual.
    """
    return top_eigenpairs(op, key, k=1, num_steps=num_steps).eigenvalues[0]


def lambda_min(op: LinearOperator, key: Array, *, num_steps: int | None = None) -> Array:
    """λ_min, the smallest (most negative) eigenvalue, by Lanczos (``which="smallest"``).

    Cost: ``num_steps`` matvecs (default ``min(n, 40)``). Returns a scalar.
    """
    return top_eigenpairs(op, key, k=1, num_steps=num_steps, which="smallest").eigenvalues[0]


def condition_number(op: LinearOperator, key: Array, *, k: int, num_steps: int | None = None) -> Array:
    """Top-k condition number :math:`|\\lambda_1| / |\\lambda_k|` (Lanczos); the full one for PSD ``k = n``.

    Cost: ``num_steps`` matvecs (default ``min(n, max(4k, 40))``). Returns a scalar.
    """
    return top_eigenpairs(op, key, k=k, num_steps=num_steps).condition_number


__all__ = [
    "WHICH",
    "EigenResult",
    "LanczosResult",
    "check_num_steps",
    "condition_number",
    "lambda_max",
    "lambda_min",
    "lanczos",
    "power_iteration",
    "top_eigenpairs",
]
