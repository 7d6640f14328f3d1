"""Curvature engine: matrix-free Hessian / GGN / Fisher operators and the estimators that consume them.

All curvature is of the **mean** loss over the batch given (default: the whole
training set, visited in fixed-size chunks, so products are exact and memory is
bounded): :math:`H = \\nabla^2_\\theta L(\\theta)`, :math:`L = \\frac1N \\sum_i \\ell_i + R`.
Cost is counted in *matvecs* (operator-vector products, each one to two gradients' worth)
and every stochastic estimate comes with its standard error.

One-line calls (notebooks), each returning a result that prints one line:

* :func:`hessian_trace` -> :class:`TraceEstimate` (Hutch++ by default; Meyer et al. 2021)
* :func:`hessian_eigenvalues` -> :class:`EigenvalueEstimate` (Lanczos; Lanczos 1950)
* :func:`hessian_density` -> :class:`DensityEstimate` (stochastic Lanczos quadrature;
  Ghorbani et al. 2019), drawn by :func:`losslab.plot.spectrum.density`

each with ``operator="hessian" | "ggn" | "fisher" | "empirical_fisher" | "mc_fisher"``,
``batch=`` and ``select=`` (a per-layer block) and ``exact=True`` for small models.

One registry (:data:`OPERATORS`, :func:`make_operator`) maps each operator name to its
constructor; every consumer (one-liners, backprop diagonals, in-training probes, natural
gradient) builds operators through it.

Operators (:mod:`~losslab.curvature.operators`; they know the Objective), each a
:class:`LinearOperator` on flat vectors of the n (selected) parameters:
:func:`hessian_operator` (forward-over-reverse HVP, Pearlmutter 1994),
:func:`ggn_operator` (:math:`\\frac1N\\sum J^\\top H_L J`, Schraudolph 2002),
:func:`fisher_operator` (:math:`\\frac1N\\sum J^\\top F_L J`, Amari 1998; Martens 2020),
:func:`mc_fisher_operator` (sampled labels), :func:`empirical_fisher_operator`
(Kunstner et al. 2019), :func:`kfac_operator` (Martens & Grosse 2015;
:mod:`~losslab.curvature.kfac`), :func:`from_matrix`; :func:`to_dense` materialises any of
them (n matvecs). Operators declare ``symmetric`` / ``psd``; algorithms check them.

Solves (:mod:`~losslab.curvature.solve`): :func:`cg_solve` (conjugate gradient, PSD operators only).

Algorithms (they see only ``op.matvec``; ``algorithm(op, key, *, ...)``):
:func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`hutchinson_diagonal`
(:mod:`~losslab.curvature.trace`); :func:`lanczos`, :func:`top_eigenpairs`,
:func:`power_iteration`, :func:`lambda_max`, :func:`lambda_min`,
:func:`condition_number` (:mod:`~losslab.curvature.eigen`);
:func:`spectral_density`, :func:`exact_density`, :func:`gaussian_broadening`
(:mod:`~losslab.curvature.density`).

Exact diagonals and traces by backpropagation, no probes (:mod:`~losslab.curvature.backprop`;
Dangel et al. 2020): :func:`exact_diagonal`, :func:`exact_trace` (``hessian_trace(method="backprop")``)
for the GGN / Fisher / empirical Fisher of any model, and for the Hessian of models piecewise
linear in each parameter tensor (ReLU networks; :func:`piecewise_linear_check`).

Exact mode for small models (:mod:`~losslab.curvature.dense`): :func:`dense_hessian`,
:func:`dense_ggn`, :func:`dense_fisher`, :func:`exact_eigh`.

In-training probes built on these tools live one layer up, in :mod:`losslab.probes`.
"""

from losslab.curvature.api import (
    DensityEstimate,
    EigenvalueEstimate,
    TraceEstimate,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)
from losslab.curvature.backprop import exact_diagonal, exact_trace, piecewise_linear_check
from losslab.curvature.dense import dense_fisher, dense_ggn, dense_hessian, exact_eigh
from losslab.curvature.density import DensityResult, exact_density, gaussian_broadening, spectral_density
from losslab.curvature.eigen import (
    EigenResult,
    LanczosResult,
    condition_number,
    lambda_max,
    lambda_min,
    lanczos,
    power_iteration,
    top_eigenpairs,
)
from losslab.curvature.kfac import KFACFactors, kfac_factors
from losslab.curvature.operators import (
    OPERATORS,
    LinearOperator,
    OperatorSpec,
    empirical_fisher_operator,
    fisher_operator,
    flat_params,
    from_matrix,
    ggn_operator,
    hessian_operator,
    kfac_operator,
    make_operator,
    mc_fisher_operator,
    operator_spec,
    path_str,
    to_dense,
)
from losslab.curvature.solve import CGResult, cg_solve
from losslab.curvature.trace import DiagonalResult, TraceResult, hutchinson_diagonal, hutchinson_trace, hutchpp_trace

__all__ = [
    "DensityEstimate",
    "EigenvalueEstimate",
    "TraceEstimate",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "OPERATORS",
    "CGResult",
    "KFACFactors",
    "OperatorSpec",
    "cg_solve",
    "kfac_factors",
    "kfac_operator",
    "make_operator",
    "operator_spec",
    "DensityResult",
    "DiagonalResult",
    "EigenResult",
    "LanczosResult",
    "LinearOperator",
    "TraceResult",
    "condition_number",
    "dense_fisher",
    "dense_ggn",
    "dense_hessian",
    "empirical_fisher_operator",
    "exact_density",
    "exact_diagonal",
    "exact_eigh",
    "exact_trace",
    "fisher_operator",
    "flat_params",
    "from_matrix",
    "gaussian_broadening",
    "ggn_operator",
    "hessian_operator",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lambda_max",
    "lambda_min",
    "lanczos",
    "mc_fisher_operator",
    "path_str",
    "piecewise_linear_check",
    "power_iteration",
    "spectral_density",
    "to_dense",
    "top_eigenpairs",
]
