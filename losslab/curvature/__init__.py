"""Curvature engine: matrix-free Hessian / GGN / Fisher operators and the estimators that consume them.

Operators (:mod:`~losslab.curvature.operators`) know the Objective; algorithms
(:mod:`~losslab.curvature.trace`, :mod:`~losslab.curvature.eigen`,
:mod:`~losslab.curvature.density`) only see ``matvec`` on flat vectors. All
curvature is of the *mean* loss over the batch given (default: the training set).
"""

from losslab.curvature.api import (
    DensityEstimate,
    EigenvalueEstimate,
    TraceEstimate,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)
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
from losslab.curvature.operators import (
    OPERATORS,
    LinearOperator,
    empirical_fisher_operator,
    fisher_operator,
    flat_params,
    from_matrix,
    ggn_operator,
    hessian_operator,
    mc_fisher_operator,
    to_dense,
)
from losslab.curvature.probes import grad_norm_probe, lambda_max_probe, trace_probe
from losslab.curvature.trace import DiagonalResult, TraceResult, hutchinson_diagonal, hutchinson_trace, hutchpp_trace

__all__ = [
    "DensityEstimate",
    "EigenvalueEstimate",
    "TraceEstimate",
    "grad_norm_probe",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "lambda_max_probe",
    "trace_probe",
    "OPERATORS",
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
    "exact_eigh",
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
    "power_iteration",
    "spectral_density",
    "to_dense",
    "top_eigenpairs",
]
