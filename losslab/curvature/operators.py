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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array
Select = str | Callable[[str, Array], bool] | None


class LinearOperator(NamedTuple):
    """An immutable symmetric linear operator on flat vectors of length ``size``.

    Attributes:
      matvec: ``(size,) -> (size,)``, the product with the matrix.
      size: n, the number of (selected) parameters.
      dtype: dtype of the vectors.
      symmetric: always True for the curvature operators here.
      psd: True for GGN / Fisher variants (positive semi-definite by construction).
      ravel: params pytree -> flat ``(size,)`` vector (only the selected leaves).
      unravel: flat ``(size,)`` vector -> full params pytree (zeros outside the selection).
      name: a short description, e.g. ``"hessian"``.
    """

    matvec: Callable[[Array], Array]
    size: int
    dtype: Any
    symmetric: bool = True
    psd: bool = False
    ravel: Callable[[Any], Array] = lambda tree: ravel_pytree(tree)[0]
    unravel: Callable[[Array], Any] = lambda vec: vec
    name: str = "operator"

    @property
    def shape(self) -> tuple[int, int]:
        """``(size, size)``, the shape of the matrix the operator represents."""
        return (self.size, self.size)

    def pytree_matvec(self, tree):
        """The product on a params pytree: ``unravel(matvec(ravel(tree)))``."""
        return self.unravel(self.matvec(self.ravel(tree)))

    def __matmul__(self, vec: Array) -> Array:
        """``op @ vec`` is ``op.matvec(vec)``."""
        return self.matvec(vec)

    def __repr__(self) -> str:
        kind = "PSD" if self.psd else "symmetric" if self.symmetric else "general"
        return f"LinearOperator({self.name}, {self.size}×{self.size}, {kind}, dtype={getattr(self.dtype, 'name', self.dtype)})"

    def to_dense(self) -> Array:
        """The ``(size, size)`` matrix (``size`` matvecs); see :func:`to_dense`."""
        return to_dense(self)


def from_matrix(matrix: Array, *, psd: bool = False, name: str = "matrix") -> LinearOperator:
    """Wraps a dense symmetric ``(n, n)`` matrix as a :class:`LinearOperator` (for tests and toy problems)."""
    matrix = jnp.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"from_matrix needs a square matrix, got shape {matrix.shape}")
    return LinearOperator(
        matvec=lambda v: matrix @ v,
        size=int(matrix.shape[0]),
        dtype=matrix.dtype,
        psd=psd,
        ravel=lambda v: jnp.asarray(v),
        unravel=lambda v: v,
        name=name,
    )


def to_dense(op: LinearOperator, *, chunk_size: int = 64) -> Array:
    """Materialises ``op`` as a dense ``(n, n)`` matrix: column j is ``op.matvec(e_j)``.

    Cost: n matvecs, mapped in chunks of ``chunk_size`` columns (memory: one chunk of
    vectors). Meant for tests and small models (n up to a few thousand).
    """
    eye = jnp.eye(op.size, dtype=op.dtype)
    cols = jax.lax.map(op.matvec, eye, batch_size=min(chunk_size, op.size))
    return cols.T


# ----------------------------------------------------------------------------
# Parameter selection


def path_str(path) -> str:
    """``"layers/0/kernel"``-style string of a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _selection(params, select: Select) -> list[bool]:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if select is None:
        return [True] * len(leaves)
    if isinstance(select, str):
        mask = [select in path_str(p) for p, _ in leaves]
    elif callable(select):
        mask = [bool(select(path_str(p), leaf)) for p, leaf in leaves]
    else:
        raise ValueError(f"select must be None, a path substring or a callable(path, leaf) -> bool, got {select!r}")
    if not any(mask):
        paths = [path_str(p) for p, _ in leaves]
        raise ValueError(f"select={select!r} matches no parameter; parameter paths are {paths}")
    return mask


class _Restriction(NamedTuple):
    """Splits params into the selected leaves (the operator's domain) and the fixed rest."""

    mask: tuple[bool, ...]
    treedef: Any
    leaves: tuple
    unravel_sub: Callable

    def sub(self, tree) -> list:
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.mask):
            raise ValueError(f"expected a params pytree with {len(self.mask)} leaves, got {len(leaves)}")
        return [leaf for leaf, m in zip(leaves, self.mask) if m]

    def combine(self, sub) -> Any:
        it = iter(sub)
        return jax.tree.unflatten(self.treedef, [next(it) if m else leaf for leaf, m in zip(self.leaves, self.mask)])

    def ravel(self, tree) -> Array:
        return ravel_pytree(self.sub(tree))[0]

    def unravel(self, vec) -> Any:
        sub = iter(self.unravel_sub(vec))
        full = [next(sub) if m else jnp.zeros_like(leaf) for leaf, m in zip(self.leaves, self.mask)]
        return jax.tree.unflatten(self.treedef, full)


def _restrict(params, select: Select) -> tuple[_Restriction, list, int, Any]:
    mask = _selection(params, select)
    leaves, treedef = jax.tree.flatten(params)
    sub = [leaf for leaf, m in zip(leaves, mask) if m]
    flat, unravel_sub = ravel_pytree(sub)
    return _Restriction(tuple(mask), treedef, tuple(leaves), unravel_sub), sub, int(flat.size), flat.dtype


# ----------------------------------------------------------------------------
# Exact chunked sums over a dataset (pytree rows, optional mesh sharding)


def _chunked_sum(fn: Callable, rows, chunk_size: int, mesh=None, axis: str = "data"):
    """Sums ``fn(rows_chunk, weights)`` over fixed-size chunks of ``rows`` in one ``lax.scan``.

    ``rows`` is a pytree of arrays sharing the leading dimension N. The last chunk is
    padded with copies of row 0 at weight 0, so the sum is exact. With a ``mesh`` each
    chunk's rows are sharded over ``axis`` (the chunk size must divide evenly).
    """
    n = jax.tree.leaves(rows)[0].shape[0]
    chunk_size = min(chunk_size, n)
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    dtype = jnp.result_type(
        *[a.dtype for a in jax.tree.leaves(rows) if jnp.issubdtype(a.dtype, jnp.floating)] or [float]
    )

    def prepare(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
        return a.reshape(num_chunks, chunk_size, *a.shape[1:])

    weights = jnp.concatenate([jnp.ones((n,), dtype), jnp.zeros((pad,), dtype)]).reshape(num_chunks, chunk_size)
    chunks = jax.tree.map(prepare, rows)
    if mesh is not None:
        spec = jax.sharding.PartitionSpec(None, axis)
        sharding = jax.sharding.NamedSharding(mesh, spec)
        chunks, weights = jax.lax.with_sharding_constraint((chunks, weights), sharding)
    if num_chunks == 1:
        return fn(jax.tree.map(lambda a: a[0], chunks), weights[0])
    first = jax.tree.map(lambda a: a[0], chunks)
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first, weights[0]))

    def body(acc, chunk):
        r, w = chunk
        return jax.tree.map(jnp.add, acc, fn(r, w)), None

    total, _ = jax.lax.scan(body, init, (chunks, weights))
    return total


def _check_mesh(mesh, axis, chunk_size, n):
    if mesh is None:
        return
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    d = mesh.shape[axis]
    c = min(chunk_size, n)
    if c % d:
        raise ValueError(f"the chunk of {c} rows does not split evenly over the {d} devices of mesh axis {axis!r}")


# ----------------------------------------------------------------------------
# Operators


def _setup(objective, params, batch, select, mesh, axis):
    params = objective.params if params is None else params
    x, y = objective.batch("train") if batch is None else batch
    n = int(x.shape[0])
    _check_mesh(mesh, axis, objective.chunk_size, n)
    restriction, sub0, size, dtype = _restrict(params, select)
    return restriction, sub0, size, dtype, (x, y), n


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

        out = jax.tree.map(lambda a: a / n, _chunked_sum(chunk_hvp, rows, objective.chunk_size, mesh, axis))
        if include_regularizer and objective.regularizers:
            reg = lambda s: objective.regularization(restriction.combine(s))
            out = jax.tree.map(jnp.add, out, jax.jvp(jax.grad(reg), (sub0,), (tangent,))[1])
        return ravel_pytree(out)[0].astype(dtype)

    return LinearOperator(matvec, size, dtype, True, False, restriction.ravel, restriction.unravel, "hessian")


def _output_space_operator(objective, params, batch, select, mesh, axis, output_matvec, extra_rows, name):
    """Shared ``J^T M J`` construction: ``output_matvec(z, y, extra, u, w) -> (chunk, D)``."""
    restriction, sub0, size, dtype, (x, y), n = _setup(objective, params, batch, select, mesh, axis)
    rows = (x, y, extra_rows(n))

    def matvec(vec):
        tangent = restriction.unravel_sub(vec)

        def chunk_product(r, w):
            xc, yc, ec = r
            f = lambda s: objective.outputs(restriction.combine(s), xc)
            z, ju = jax.jvp(f, (sub0,), (tangent,))
            mu = output_matvec(z, yc, ec, ju, w)
            _, vjp = jax.vjp(f, sub0)
            return vjp(mu.astype(z.dtype))[0]

        out = _chunked_sum(chunk_product, rows, objective.chunk_size, mesh, axis)
        return ravel_pytree(jax.tree.map(lambda a: a / n, out))[0].astype(dtype)

    return LinearOperator(matvec, size, dtype, True, True, restriction.ravel, restriction.unravel, name)


def _no_extra(n):
    return jnp.zeros((n,), jnp.int32)


def ggn_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data"
) -> LinearOperator:
    r"""The generalized Gauss-Newton matrix :math:`G = \frac1N \sum_i J_i^\top H_{L,i} J_i` (data term).

    :math:`J_i` is the Jacobian of the outputs of example i and :math:`H_{L,i} = \nabla^2_z
    \ell(z, y_i)` the loss Hessian in the outputs (Schraudolph 2002; Martens 2020). PSD for
    convex losses. It equals the Hessian of the data loss when the model is linear in θ, and
    the true Fisher for softmax cross-entropy and MSE. Cost per product: one jvp and one vjp
    of the model per chunk (about a gradient and a half). Regularizers are not included.

    Args: as :func:`hessian_operator`.
    """

    def output_matvec(z, y, _, u, w):
        g = lambda zz: jax.grad(lambda q: jnp.sum(w * objective.loss_fn(q, y)))(zz)
        return jax.jvp(g, (z,), (u,))[1]

    return _output_space_operator(objective, params, batch, select, mesh, axis, output_matvec, _no_extra, "ggn")


def fisher_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data"
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

    return _output_space_operator(objective, params, batch, select, mesh, axis, output_matvec, _no_extra, "fisher")


def _sampled_nll_grads(likelihood, key: Array, i, z: Array, num_samples: int) -> Array:
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
            r = _sampled_nll_grads(likelihood, key, i, zi, num_samples)
            return jnp.mean(r * (r @ ui)[:, None], axis=0)

        return w[:, None] * jax.vmap(per_row)(idx, z, u)

    return _output_space_operator(
        objective, params, batch, select, mesh, axis, output_matvec, lambda n: jnp.arange(n), "mc_fisher"
    )


def empirical_fisher_operator(
    objective, params=None, batch=None, *, select: Select = None, mesh=None, axis: str = "data"
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
        objective, params, batch, select, mesh, axis, output_matvec, _no_extra, "empirical_fisher"
    )


OPERATORS = {
    "hessian": hessian_operator,
    "ggn": ggn_operator,
    "fisher": fisher_operator,
    "empirical_fisher": empirical_fisher_operator,
}


def flat_params(params, select: Select = None) -> Array:
    """The flat ``(n,)`` vector of the (selected) params, in the operators' ordering (``op.ravel(params)``)."""
    restriction, _, _, _ = _restrict(params, select)
    return restriction.ravel(params)


__all__ = [
    "OPERATORS",
    "LinearOperator",
    "empirical_fisher_operator",
    "fisher_operator",
    "flat_params",
    "from_matrix",
    "ggn_operator",
    "hessian_operator",
    "mc_fisher_operator",
    "path_str",
    "to_dense",
]
