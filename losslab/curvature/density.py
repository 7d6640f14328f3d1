"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a unit probe v, m Lanczos steps give a tridiagonal T = S diag(θ) Sᵀ, and
the m-node Gauss quadrature :math:`\\sum_j \\tau_j \\delta(t - \\theta_j)`,
:math:`\\tau_j = S_{1j}^2`, matches :math:`v^\\top \\delta(t - A) v` on all
polynomials of degree < 2m. With random probes, :math:`E[v^\\top g(A) v] =
\\frac1n \\operatorname{tr} g(A)`, so averaging over probes estimates the
spectral density :math:`\\phi(t) = \\frac1n \\sum_i \\delta(t - \\lambda_i)`;
Gaussian broadening of width σ makes it a curve (Lin, Saad & Yang 2016;
Ghorbani, Krishnan & Xiao 2019; Papyan 2019).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from losslab import display as fmt
from losslab.curvature.base import LinearOperator
from losslab.curvature.eigen import check_num_steps, lanczos
from losslab.curvature.trace import DISTRIBUTIONS, batched_over_keys, check_probe_mesh, probe_vector

Array = jax.Array


class DensityResult(NamedTuple):
    """A smoothed spectral density with its quadrature nodes and weights.

    Attributes:
      grid: ``(g,)`` evaluation points t.
      density: ``(g,)`` :math:`\\hat\\phi(t) = \\frac1P \\sum_p \\sum_j \\tau_{pj}
        \\mathcal N(t; \\theta_{pj}, \\sigma^2)`; integrates to 1 over a grid that covers the nodes.
      nodes: ``(P, m)`` Ritz values θ per probe (ascending).
      weights: ``(P, m)`` quadrature weights τ per probe, each row sums to 1.
      sigma: the Gaussian broadening width.
      num_matvecs: P * m.
      size: n, the operator size (turns fractions into counts).
    """

    grid: Array
    density: Array
    nodes: Array
    weights: Array
    sigma: Array
    num_matvecs: Array
    size: Array

    def __repr__(self) -> str:
        nodes = fmt.as_array(self.nodes)
        weights = fmt.as_array(self.weights)
        if nodes is not None and weights is not None and nodes.ndim == 2:
            negative = f"{100 * float(np.sum(weights * (nodes < 0)) / nodes.shape[0]):.2f}%"
        else:
            negative = "?"
        probes, steps = fmt.shape(self.nodes) if len(fmt.shape(self.nodes)) == 2 else ("?", "?")
        return (
            f"DensityResult(λ ∈ {fmt.span(self.nodes)}, negative fraction {negative}, σ = {fmt.num(self.sigma, 2)}, "
            f"{probes} probe(s) × {steps} nodes, grid {fmt.shape(self.grid)}, {fmt.num(self.num_matvecs)} matvecs)"
        )

    def integral(self) -> Array:
        """Trapezoid integral of the density over the grid (≈ 1)."""
        return jnp.trapezoid(self.density, self.grid)

    @property
    def negative_fraction(self) -> Array:
        """Estimated fraction of eigenvalues below 0: :math:`\\frac1P\\sum_{p,j} \\tau_{pj} [\\theta_{pj} < 0]`."""
        return jnp.sum(self.weights * (self.nodes < 0)) / self.nodes.shape[0]

    @property
    def negative_count(self) -> Array:
        """Estimated number of negative eigenvalues (the saddle index), n × negative fraction."""
        return self.size * self.negative_fraction

    @property
    def negative_mass(self) -> Array:
        """Estimated :math:`\\sum_{\\lambda_i < 0} |\\lambda_i|` = n × quadrature of :math:`|t| [t<0]`."""
        return self.size * jnp.sum(self.weights * jnp.abs(jnp.minimum(self.nodes, 0))) / self.nodes.shape[0]

    @property
    def trace(self) -> Array:
        """The trace estimate implied by the quadrature, :math:`n \\frac1P \\sum \\tau\\theta`."""
        return self.size * jnp.sum(self.weights * self.nodes) / self.nodes.shape[0]


def gaussian_broadening(nodes: Array, weights: Array, grid: Array, sigma, *, chunk_size: int = 512) -> Array:
    """:math:`\\frac1P \\sum_{p,j} w_{pj} \\mathcal N(t; \\theta_{pj}, \\sigma^2)` on ``grid``, in grid chunks.

    Args:
      nodes: ``(P, m)`` quadrature nodes θ (Ritz values).
      weights: ``(P, m)`` quadrature weights w (each row sums to 1).
      grid: ``(g,)`` evaluation points t.
      sigma: the Gaussian width σ > 0.
      chunk_size: grid points evaluated together (memory: ``chunk_size * P * m``).

    Returns:
      ``(g,)`` density values. Cost: O(g P m), no matvecs.
    """
    theta = nodes.reshape(-1)
    w = weights.reshape(-1) / nodes.shape[0]

    def at(t):
        z = (t - theta) / sigma
        return jnp.sum(w * jnp.exp(-0.5 * z * z)) / (sigma * jnp.sqrt(2 * jnp.pi))

    return jax.lax.map(at, grid, batch_size=min(chunk_size, grid.shape[0]))


def _make_grid(nodes, grid, sigma, rel_sigma):
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.maximum(hi - lo, jnp.maximum(jnp.abs(hi), jnp.abs(lo)) * 1e-3 + jnp.finfo(nodes.dtype).tiny ** 0.5)
    sigma = rel_sigma * width if sigma is None else jnp.asarray(sigma, nodes.dtype)
    if isinstance(grid, int):
        grid = jnp.linspace(lo - 6 * sigma, hi + 6 * sigma, grid, dtype=nodes.dtype)
    else:
        grid = jnp.asarray(grid, nodes.dtype)
    return grid, sigma


def _validate_grid(grid, sigma, rel_sigma):
    if isinstance(grid, int) and grid < 2:
        raise ValueError(f"grid must be an int >= 2 or an array of points, got {grid}")
    if sigma is not None and not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not rel_sigma > 0:
        raise ValueError(f"rel_sigma must be > 0, got {rel_sigma}")


def spectral_density(
    op: LinearOperator,
    key: Array,
    *,
    num_steps: int = 80,
    num_probes: int = 4,
    grid: int | Array = 1000,
    sigma: float | None = None,
    rel_sigma: float = 0.01,
    distribution: str = "rademacher",
    chunk_size: int = 1,
    grid_chunk_size: int = 512,
    reorthogonalize: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> DensityResult:
    r"""Stochastic Lanczos quadrature estimate of the eigenvalue density of ``op``.

    Ghorbani, Krishnan & Xiao 2019 (as used by PyHessian); Lin, Saad & Yang 2016. Each of
    the P probes (normalised Rademacher by default) runs m Lanczos steps with full
    reorthogonalisation; the m Ritz values θ and squared first components τ of T's
    eigenvectors form a Gauss quadrature rule. With ``num_steps = n`` the nodes are the
    exact spectrum.

    Args:
      op: symmetric operator of size n.
      key: PRNG key for the probes.
      num_steps: Lanczos steps m per probe (1 <= m <= n).
      num_probes: P; cost P * m matvecs.
      grid: number of evaluation points spanning the nodes ± 6σ, or explicit points.
      sigma: Gaussian broadening width; None uses ``rel_sigma`` × (θ_max − θ_min).
      rel_sigma: relative width used when ``sigma`` is None.
      distribution: probe distribution ("rademacher" or "gaussian").
      chunk_size: probes run together (each holds an ``(m, n)`` basis in memory).
      grid_chunk_size: grid points evaluated together (memory: chunk × P m).
      reorthogonalize: full reorthogonalisation in Lanczos.
      mesh, axis: optional ``jax.sharding.Mesh``; each chunk of probes is split over ``axis``.

    Returns:
      A :class:`DensityResult`.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_num_steps(op, num_steps)
    _validate_grid(grid, sigma, rel_sigma)
    check_probe_mesh(mesh, axis, min(chunk_size, num_probes))

    def one(k):
        probe_key, lanczos_key = jax.random.split(k)
        v = probe_vector(probe_key, op.size, op.dtype, distribution)
        res = lanczos(op, lanczos_key, num_steps=num_steps, reorthogonalize=reorthogonalize, init=v)
        theta, s = jnp.linalg.eigh(res.tridiagonal())
        return theta, s[0, :] ** 2

    chunk = min(chunk_size, num_probes)
    keys = jax.random.split(key, num_probes)
    full = num_probes // chunk
    head = keys[: full * chunk].reshape(full, chunk, *keys.shape[1:])
    # A chunk of one probe is not vmapped: a unit batch dimension costs layout copies in
    # every matvec, and vmap turns Lanczos' breakdown lax.cond into a select that draws
    # and orthogonalises a restart vector at every step (together ~50% per step measured).
    nodes, weights = jax.lax.map(batched_over_keys(one, chunk, mesh, axis), head)
    nodes, weights = nodes.reshape(full * chunk, num_steps), weights.reshape(full * chunk, num_steps)
    if num_probes > full * chunk:
        rest_nodes, rest_weights = batched_over_keys(one, num_probes - full * chunk)(keys[full * chunk :])
        nodes = jnp.concatenate([nodes, rest_nodes])
        weights = jnp.concatenate([weights, rest_weights])
    return _density_from_nodes(nodes, weights, grid, sigma, rel_sigma, grid_chunk_size, num_probes * num_steps, op.size)


def _density_from_nodes(nodes, weights, grid, sigma, rel_sigma, grid_chunk_size, num_matvecs, size):
    grid, sigma = _make_grid(nodes, grid, sigma, rel_sigma)
    density = gaussian_broadening(nodes, weights, grid, sigma, chunk_size=grid_chunk_size)
    return DensityResult(grid, density, nodes, weights, sigma, jnp.asarray(num_matvecs), jnp.asarray(size))


def exact_density(
    eigenvalues: Array,
    *,
    grid: int | Array = 1000,
    sigma: float | None = None,
    rel_sigma: float = 0.01,
    grid_chunk_size: int = 512,
) -> DensityResult:
    """The broadened density of a known spectrum, for comparison with :func:`spectral_density`.

    :math:`\\phi(t) = \\frac1n \\sum_i \\mathcal N(t; \\lambda_i, \\sigma^2)`: one "probe" whose n
    nodes are the eigenvalues, each with weight 1/n (``num_matvecs`` is reported as n, the
    cost of materialising the matrix they came from).

    Args:
      eigenvalues: ``(n,)`` the spectrum (e.g. ``exact_eigh(op).eigenvalues``).
      grid, sigma, rel_sigma, grid_chunk_size: as in :func:`spectral_density`.

    Returns:
      A :class:`DensityResult` with ``nodes`` and ``weights`` of shape ``(1, n)``.
    """
    _validate_grid(grid, sigma, rel_sigma)
    eigenvalues = jnp.sort(jnp.asarray(eigenvalues))
    n = eigenvalues.shape[0]
    nodes = eigenvalues[None, :]
    weights = jnp.full((1, n), 1.0 / n, eigenvalues.dtype)
    return _density_from_nodes(nodes, weights, grid, sigma, rel_sigma, grid_chunk_size, n, n)


__all__ = [
    "DensityResult",
    "exact_density",
    "gaussian_broadening",
    "spectral_density",
]
