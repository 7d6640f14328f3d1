"""Matrix-free curvature operators of an Objective's mean loss.

Every operator acts on a *flat* parameter vector and represents a symmetric
``(n, n)`` matrix of the **mean** loss over the batch it was built on
(``batch=None``: the whole training set):

.. math::
   H   = \\nabla^2_\\theta \\Big[\\tfrac1N \\sum_i \\ell(f_\\theta(x_i), y_i) + R(\\theta)\\Big]
   \\qquad
   G   = \\tfrac1N \\sum_i J_i^\\top H_{L,i} J_i
   \\qquad
   F   = \\tfrac1N \\sum_i J_i^\\top F_{L,i} J_i

with :math:`J_i = \\partial f_\\theta(x_i) / \\partial \\theta` and
:math:`H_{L,i}` (:math:`F_{L,i}`) the Hessian of the loss (Fisher of the
likelihood) in the model outputs. The GGN and the Fisher operators are of the
data term only; the Hessian includes the regularizers unless
``include_regularizer=False``.

Full-dataset products visit fixed-size chunks (``objective.chunk_size`` rows)
in one ``lax.scan``, weighting every row by 1 and padding rows by 0: the sum is
exact and memory is bounded by one chunk. With ``mesh=`` every chunk is
sharded over the mesh's data axis (XLA inserts the all-reduce).

``select`` restricts an operator to a subset of the parameters (a per-layer or
per-block curvature): the operator then acts on the flat vector of only the
selected leaves, which is the corresponding principal sub-block of the full
matrix. ``unravel`` maps such a vector back to a full params pytree with zeros
in the leaves that were not selected, so it can be added to ``params``.

References: Pearlmutter 1994 (Hessian-vector products); Schraudolph 2002 and
Martens 2020 (GGN, Fisher); Kunstner et al. 2019 (empirical Fisher).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from losslab.curvature.base import LinearOperator, Select, flat_params, from_matrix, path_str, restrict, to_dense
from losslab.curvature.kfac import kfac_operator
from losslab.objective import check_mesh, chunked_sum, indexed_rows, num_rows
from losslab.registry import lookup
from losslab.stream import is_stream

Array = jax.Array


# ----------------------------------------------------------------------------
# Operators


def _setup(objective, params, batch, select, mesh, axis):
    """``(restriction, selected leaves, size, dtype, rows (x, y, row_index) or a stream, N)``."""
    params = objective.params if params is None else params
    rows = indexed_rows(objective.rows(batch))
    n = num_rows(rows)
    check_mesh(mesh, axis, objective.chunk_size, n)
    restriction, sub0, size, dtype = restrict(params, select)
    return restriction, sub0, size, dtype, rows, n


def hessian_operator(
    objective,
    params=None,
    batch=None,
    *,
    include_regularizer: bool = True,
    select: Select = None,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> LinearOperator:
    r"""The Hessian :math:`H = \nabla^2_\theta L(\theta)` of the mean loss, matrix-free.

    :math:`L(\theta) = \frac1N \sum_{i} \ell(f_\theta(x_i), y_i) + R(\theta)` over ``batch``
    (None: the training set, in chunks of ``objective.chunk_size``). A product is one
    forward-over-reverse pass per chunk, ``jvp(grad(L))`` (Pearlmutter 1994), costing about
    2x a gradient.

    Args:
      objective: a :class:`losslab.Objective` (eval mode: stored BatchNorm statistics).
      params: the point θ (a params pytree); None uses ``objective.params``.
      batch: ``(x, y)`` arrays, or None for the whole training set.
      include_regularizer: add :math:`\nabla^2 R(\theta)` (default True).
      select: restrict to parameters whose path contains this substring, or for which
        ``select(path, leaf)`` is True; the operator is then the principal sub-block.
      mesh: optional ``jax.sharding.Mesh``; each data chunk is sharded over ``axis``.
      axis: the mesh axis for data rows.

    Returns:
      A symmetric (not PSD) :class:`LinearOperator` of size n = number of selected params.
    """
    restriction, sub0, size, dtype, rows, n = _setup(objective, params, batch, select, mesh, axis)

    def chunk_loss(sub, x, y, w):
        return jnp.sum(w * objective.loss_fn(objective.outputs(restriction.combine(sub), x), y))

    def matvec(vec):
        tangent = restriction.unravel_sub(vec)

        def chunk_hvp(r, w):
            g = lambda s: jax.grad(chunk_loss)(s, r[0], r[1], w)
            return jax.jvp(g, (sub0,), (tangent,))[1]

        out = jax.tree.map(lambda a: a / n, chunked_sum(chunk_hvp, rows, objective.chunk_size, mesh=mesh, axis=axis))
        if include_regularizer and objective.regularizers:
            reg = lambda s: objective.regularization(restriction.combine(s))
            out = jax.tree.map(jnp.add, out, jax.jvp(jax.grad(reg), (sub0,), (tangent,))[1])
        return ravel_pytree(out)[0].astype(dtype)

    return LinearOperator(matvec, size, dtype, True, False, restriction.ravel, restriction.unravel, "hessian")


def _output_space_operator(objective, params, batch, select, mesh, axis, output_matvec, name, linearize):
    """Shared ``J^T M J`` construction: ``output_matvec(z, y, extra, u, w) -> (chunk, D)``.

    ``output_matvec`` receives each chunk's global row indices as ``extra``. ``linearize``:
    linearise the model once (``jax.linearize``) and reuse it for every product (one tangent and
    one transposed pass per matvec, no primal recomputation); needs the batch to be one chunk in
    memory. This is the natural-gradient optimizers' hot path.
    """
    restriction, sub0, size, dtype, rows, n = _setup(objective, params, batch, select, mesh, axis)
    if linearize:
        if is_stream(rows):
            raise ValueError("linearize=True needs an in-memory batch, not streamed data")
        x, y, _ = rows
        if n > objective.chunk_size:
            raise ValueError(
                f"linearize=True needs the batch in one chunk: {n} rows > chunk_size {objective.chunk_size}"
            )
        f = lambda s: objective.outputs(restriction.combine(s), x)
        z, jvp = jax.linearize(f, sub0)
        transpose = jax.linear_transpose(jvp, sub0)
        w = jnp.ones((n,), z.dtype)

        def matvec(vec):
            mu = output_matvec(z, y, rows[2], jvp(restriction.unravel_sub(vec)), w)
            (out,) = transpose(mu.astype(z.dtype))
            return ravel_pytree(jax.tree.map(lambda a: a / n, out))[0].astype(dtype)

        return LinearOperator(matvec, size, dtype, True, True, restriction.ravel, restriction.unravel, name)

    def matvec(vec):
        tangent = restriction.unravel_sub(vec)

        def chunk_product(r, w):
            xc, yc, ec = r
            f = lambda s: objective.outputs(restriction.combine(s), xc)
            z, ju = jax.jvp(f, (sub0,), (tangent,))
            mu = output_matvec(z, yc, ec, ju, w)
            _, vjp = jax.vjp(f, sub0)
            return vjp(mu.astype(z.dtype))[0]

        out = chunked_sum(chunk_product, rows, objective.chunk_size, mesh=mesh, axis=axis)
        return ravel_pytree(jax.tree.map(lambda a: a / n, out))[0].astype(dtype)

    return LinearOperator(matvec, size, dtype, True, True, restriction.ravel, restriction.unravel, name)


def ggn_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data", linearize: bool = False
) -> LinearOperator:
    r"""The generalized Gauss-Newton matrix :math:`G = \frac1N \sum_i J_i^\top H_{L,i} J_i` (data term).

    :math:`J_i` is the Jacobian of the outputs of example i and :math:`H_{L,i} = \nabla^2_z
    \ell(z, y_i)` the loss Hessian in the outputs (Schraudolph 2002; Martens 2020). PSD for
    convex losses. It equals the Hessian of the data loss when the model is linear in θ, and
    the true Fisher for softmax cross-entropy and MSE. Cost per product: one jvp and one vjp
    of the model per chunk (about a gradient and a half). Regularizers are not included.

    Args: as :func:`hessian_operator` (without ``include_regularizer``), plus ``linearize``:
    linearise the model once and reuse it for every product (the batch must be one chunk;
    the natural-gradient optimizers' minibatch hot path).
    """

    def output_matvec(z, y, _, u, w):
        g = lambda zz: jax.grad(lambda q: jnp.sum(w * objective.loss_fn(q, y)))(zz)
        return jax.jvp(g, (z,), (u,))[1]

    return _output_space_operator(
        objective, params, batch, select, mesh, axis, output_matvec, "ggn", linearize
    )


def fisher_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data", linearize: bool = False
) -> LinearOperator:
    r"""The true Fisher :math:`F = \frac1N \sum_i J_i^\top F_{L,i} J_i`, analytic in the outputs.

    :math:`F_{L,i} = \mathbb{E}_{y \sim p(y|z_i)}[\nabla_z \log p \nabla_z \log p^\top]` is the
    Fisher of the loss's predictive distribution (``objective.loss_fn.likelihood``):
    :math:`\mathrm{diag}(p) - pp^\top` for the softmax, :math:`I/\sigma^2` for a Gaussian
    (Amari 1998; Martens 2020). Data term only, PSD. Cost per product: one jvp and one vjp of
    the model per chunk, as :func:`ggn_operator` (which it equals for softmax cross-entropy and
    Gaussian MSE).

    Args: as :func:`ggn_operator`.

    Raises:
      ValueError: the loss is not a negative log-likelihood (hinge, MAE, focal, ...).
    """
    likelihood = objective.loss_fn.require_likelihood()

    def output_matvec(z, y, _, u, w):
        return w[:, None] * likelihood.fisher_matvec(z, u)

    return _output_space_operator(
        objective, params, batch, select, mesh, axis, output_matvec, "fisher", linearize
    )


def sampled_nll_grads(likelihood, key: Array, i, z: Array, num_samples: int) -> Array:
    """``(S, D)`` output gradients of the NLL at S labels sampled from the model for example i.

    Example i draws from ``fold_in(key, i)``, so every user of the MC Fisher sees the same labels.
    """
    keys = jax.random.split(jax.random.fold_in(key, i), num_samples)
    ys = jax.vmap(lambda k: likelihood.sample(k, z[None])[0])(keys)
    return jax.vmap(lambda yy: jax.grad(lambda q: likelihood.nll(q[None], yy[None])[0])(z))(ys)


def mc_fisher_operator(
    objective,
    params=None,
    key: Array | None = None,
    batch=None,
    *,
    num_samples: int = 1,
    select: Select = None,
    mesh=None,
    axis: str = "data",
    linearize: bool = False,
) -> LinearOperator:
    r"""The Monte-Carlo Fisher :math:`\hat F = \frac1N \sum_i \frac1S \sum_s g_{is} g_{is}^\top`.

    :math:`g_{is} = \nabla_\theta (-\log p(\hat y_{is} | f_\theta(x_i)))` with labels
    :math:`\hat y_{is} \sim p(y | f_\theta(x_i))` sampled from the model (S = ``num_samples``
    per example; example i uses ``fold_in(key, i)``, so the operator is one fixed matrix).
    Unbiased for the true Fisher; converges as 1/sqrt(S). The outer products are applied in
    output space, :math:`J^\top (r r^\top) J v`, so no per-example gradients are stored.
    Cost per product: one jvp and one vjp of the model per chunk, plus S output-space
    gradients per example.

    Args: as :func:`ggn_operator`, plus ``key`` (PRNG key for the sampled labels) and
    ``num_samples`` (S >= 1).

    Raises:
      ValueError: non-likelihood loss, ``num_samples < 1`` or a missing key.
    """
    likelihood = objective.loss_fn.require_likelihood()
    if key is None:
        raise ValueError("mc_fisher_operator needs a PRNG key to sample labels")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    def output_matvec(z, y, idx, u, w):
        def per_row(i, zi, ui):
            r = sampled_nll_grads(likelihood, key, i, zi, num_samples)
            return jnp.mean(r * (r @ ui)[:, None], axis=0)

        return w[:, None] * jax.vmap(per_row)(idx, z, u)

    return _output_space_operator(
        objective, params, batch, select, mesh, axis, output_matvec, "mc_fisher", linearize
    )


def empirical_fisher_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data", linearize: bool = False
) -> LinearOperator:
    r"""The empirical Fisher :math:`\tilde F = \frac1N \sum_i g_i g_i^\top` at the *true* labels.

    :math:`g_i = \nabla_\theta \ell(f_\theta(x_i), y_i)`. Kunstner et al. 2019 show it is not
    the Fisher: it differs from :func:`fisher_operator` away from a perfect fit (e.g. it
    vanishes where the per-example gradients vanish, while the true Fisher does not), and
    preconditioning with it can distort steps. Applied in output space, no per-example
    gradients stored. Data term only, PSD. Cost per product: one jvp and one vjp of the model
    per chunk.

    Args: as :func:`ggn_operator`.

    Raises:
      ValueError: the loss is not a negative log-likelihood (no Fisher of any kind).
    """
    objective.loss_fn.require_likelihood()

    def output_matvec(z, y, _, u, w):
        r = jax.grad(lambda q: jnp.sum(objective.loss_fn(q, y)))(z)
        return (w * jnp.sum(r * u, axis=-1))[:, None] * r

    return _output_space_operator(
        objective, params, batch, select, mesh, axis, output_matvec, "empirical_fisher", linearize
    )


# ----------------------------------------------------------------------------
# The one registry: operator name -> constructor with one signature


class OperatorSpec(NamedTuple):
    """A registered curvature operator.

    Attributes:
      name: the registry key ("hessian", "ggn", ...).
      build: ``(objective, params, batch, *, key, select, mesh, axis, **options) -> LinearOperator``.
      title: the name in sentences ("Hessian", "GGN", ...).
      psd: whether the matrix is positive semi-definite by construction.
      needs_likelihood: whether the loss must be a negative log-likelihood.
      needs_key: whether the matrix depends on a PRNG key (sampled labels).
      exact_diagonal: whether :mod:`losslab.curvature.backprop` computes its exact diagonal.
    """

    name: str
    build: Callable[..., LinearOperator]
    title: str
    psd: bool
    needs_likelihood: bool
    needs_key: bool
    exact_diagonal: bool


def _no_key(fn):
    def build(objective, params=None, batch=None, *, key=None, select=None, mesh=None, axis="data", **options):
        return fn(objective, params, batch, select=select, mesh=mesh, axis=axis, **options)

    build.__doc__ = fn.__doc__
    return build


def _mc_fisher(objective, params=None, batch=None, *, key=None, select=None, mesh=None, axis="data", **options):
    return mc_fisher_operator(objective, params, key, batch, select=select, mesh=mesh, axis=axis, **options)


def _kfac(objective, params=None, batch=None, *, key=None, select=None, mesh=None, axis="data", **options):
    if select is not None or mesh is not None:
        raise ValueError("the kfac operator acts on all parameters on one device: select= and mesh= are not supported")
    params = objective.params if params is None else params
    return kfac_operator(objective, params, batch, key=key, **options)


OPERATORS: dict[str, OperatorSpec] = {
    "hessian": OperatorSpec("hessian", _no_key(hessian_operator), "Hessian", False, False, False, True),
    "ggn": OperatorSpec("ggn", _no_key(ggn_operator), "GGN", True, False, False, True),
    "fisher": OperatorSpec("fisher", _no_key(fisher_operator), "Fisher", True, True, False, True),
    "empirical_fisher": OperatorSpec(
        "empirical_fisher", _no_key(empirical_fisher_operator), "empirical Fisher", True, True, False, True
    ),
    "mc_fisher": OperatorSpec("mc_fisher", _mc_fisher, "MC Fisher", True, True, True, True),
    "kfac": OperatorSpec("kfac", _kfac, "K-FAC", True, True, False, False),
}


def operator_spec(name: str) -> OperatorSpec:
    """The :class:`OperatorSpec` registered under ``name``; ``ValueError`` lists the valid names."""
    return lookup(OPERATORS, name, "operator")


def check_operator(name: str, objective, *, key=None, exact_diagonal: bool = False) -> OperatorSpec:
    """Eager checks for building operator ``name`` on ``objective``; returns its spec.

    Raises:
      ValueError: unknown name (listing the valid ones), a loss without a likelihood for a Fisher,
        a missing key for a sampled operator, or (``exact_diagonal``) an operator without one.
    """
    spec = operator_spec(name)
    if spec.needs_likelihood:
        objective.loss_fn.require_likelihood()
    if spec.needs_key and key is None:
        raise ValueError(f"the {name} operator samples labels and needs a PRNG key")
    if exact_diagonal and not spec.exact_diagonal:
        valid = sorted(n for n, s in OPERATORS.items() if s.exact_diagonal)
        raise ValueError(f"no exact backprop diagonal for operator {name!r}; valid: {valid}")
    return spec


def make_operator(
    name: str,
    objective,
    params=None,
    batch=None,
    *,
    key: Array | None = None,
    select: Select = None,
    mesh=None,
    axis: str = "data",
    **options,
) -> LinearOperator:
    """Builds the registered operator ``name`` (see :data:`OPERATORS`) of the mean loss over ``batch``.

    The one entry point every consumer uses (one-liners, probes, natural gradient, backprop
    diagonals). ``key`` is needed by sampled operators ("mc_fisher"); ``options`` go to the
    constructor (``include_regularizer``, ``linearize``, ``num_samples``, ``estimator``, ...).
    Cost: that of the constructor (K-FAC builds its factors; the others are lazy).
    """
    spec = check_operator(name, objective, key=key)
    return spec.build(objective, params, batch, key=key, select=select, mesh=mesh, axis=axis, **options)


__all__ = [
    "OPERATORS",
    "LinearOperator",
    "OperatorSpec",
    "Select",
    "check_operator",
    "empirical_fisher_operator",
    "fisher_operator",
    "flat_params",
    "from_matrix",
    "ggn_operator",
    "hessian_operator",
    "kfac_operator",
    "make_operator",
    "mc_fisher_operator",
    "operator_spec",
    "path_str",
    "restrict",
    "sampled_nll_grads",
    "to_dense",
]
