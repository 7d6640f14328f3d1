r"""Exact curvature diagonals and traces by backpropagation: no probes, no sampling error.

Every curvature matrix of losslab's operators except the Hessian is an output-space form
:math:`\frac1N \sum_i J_i^\top M_i J_i` with a small ``(D, D)`` matrix :math:`M_i` per example
(GGN: the loss Hessian in the outputs; Fisher: the output-space Fisher; empirical Fisher:
:math:`r_i r_i^\top` with :math:`r_i = \nabla_z \ell_i`). Writing :math:`M_i = \sum_c s_{ic}
b_{ic} b_{ic}^\top` (an eigendecomposition, ``s = ±1``), its diagonal is a sum of squared
per-example gradients,

.. math::  \operatorname{diag} \tfrac1N \textstyle\sum_i J_i^\top M_i J_i
           = \tfrac1N \sum_i \sum_c s_{ic}\, (J_i^\top b_{ic})^{\odot 2},

computed with D backward passes of the activations (Dangel, Kunstner & Hennig 2020,
BackPACK's ``DiagGGNExact``). For a Dense layer ``s = W^T a + b`` the per-example gradient is
the outer product :math:`a_i g_{ic}^\top` of the layer input and the backpropagated
pre-activation gradient, so the kernel's diagonal is one matrix product,
:math:`\sum_i a_i^{\odot 2} (\sum_c s_{ic} g_{ic}^{\odot 2})^\top`, and its trace needs only
row norms: no per-example gradient is ever formed. Parameters outside Dense layers applied
to ``(batch, features)`` inputs (convolutions, normalisation scales, ...) use per-example
gradients (``vmap``), in sub-chunks that bound memory.

The Hessian is the GGN plus :math:`\frac1N \sum_{i,k} \partial_{z_k}\ell_i\, \nabla^2 f_{ik}`
(plus the regularizer). For a model that is **piecewise linear in each parameter tensor**
(Dense/Conv layers with ReLU, leaky ReLU, max-pooling, eval-mode BatchNorm, ...) the second
term has a zero diagonal: moving the weights of one tensor moves the outputs piecewise
linearly. There the Hessian's diagonal equals the GGN's diagonal plus the regularizer's
exactly, and the Hessian trace costs a few Hessian-vector products (about four on the
MNIST-1D MLP, which has ten outputs). This is
*checked* at call time: the second directional derivative of the outputs along a random
direction inside each parameter tensor must be exactly zero on ``check_rows`` rows
(a nonzero symmetric second derivative would give zero only on a null set of directions);
smooth activations (tanh, GELU, softplus), LayerNorm or attention fail the check and the
call raises, pointing at the stochastic estimators.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from losslab.curvature.base import Select, restrict, selection_mask
from losslab.curvature.kfac import output_fisher_sqrt
from losslab.curvature.operators import OPERATORS, check_operator, sampled_nll_grads
from losslab.curvature.trace import DiagonalResult, TraceResult
from losslab.layers import covered_mask, find_layers, record
from losslab.losses import Regularizer
from losslab.objective import check_mesh, chunked_sum, indexed_rows, num_rows
from losslab.stream import is_stream
from losslab.trees import key_tuple, leaf_paths

Array = jax.Array
# The registry's operators with an exact backprop diagonal.
KINDS = tuple(name for name, spec in OPERATORS.items() if spec.exact_diagonal)
# Floats of per-example gradients held at once for parameters outside Dense layers.
PER_EXAMPLE_BUDGET = 1 << 24


class _Plan(NamedTuple):
    """Which Dense layers take the outer-product shortcut (static)."""

    dense: tuple  # KFACLayer-like descriptions (path, kind="dense", has_bias, kernel_shape)
    covered: tuple[bool, ...]  # per params leaf (flatten order): handled by a Dense shortcut


def _plan(objective, params, x) -> _Plan:
    """Dense layers (found by the layer tap) called once on ``(batch, features)`` inputs."""
    layers = find_layers(objective, params, kinds=("dense",), strict=False)
    if layers:
        try:
            shapes = jax.eval_shape(lambda p, xx: record(objective, p, xx, layers, None)[1], params, x[:2])
        except ValueError:  # a layer called twice (weight sharing) or not at all: no shortcut
            layers = ()
        else:
            layers = tuple(layer for layer, s in zip(layers, shapes) if len(s.shape) == 2)
    return _Plan(layers, tuple(covered_mask(params, layers)))


def _output_factors(kind: str, objective, z: Array, y: Array, w: Array, key, diagonal: bool) -> tuple[Array, Array]:
    """Cotangents ``U (C, B, D)`` and weights S with ``w_i M_i = Σ_cd S_icd u_ic u_idᵀ`` per example.

    S is ``(C, B)`` (a diagonal: signs) when ``diagonal`` or when the factorisation is diagonal
    anyway, else ``(B, C, C)``. The GGN / Hessian use unit cotangents and the loss Hessian in the
    outputs as S (no factorisation) unless ``diagonal`` asks for its eigendecomposition.
    """
    b, d = z.shape
    if kind in ("hessian", "ggn"):

        def one(zi, yi):
            return jax.hessian(lambda q: objective.loss_fn(q[None], yi[None])[0])(zi)

        hess = jax.vmap(one)(z, y)
        hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2)) * w[:, None, None]
        if not diagonal:
            return jnp.broadcast_to(jnp.eye(d, dtype=z.dtype)[:, None, :], (d, b, d)), hess
        lam, u = jnp.linalg.eigh(hess)  # (B, D), (B, D, D)
        cols = jnp.moveaxis(u * jnp.sqrt(jnp.abs(lam))[:, None, :], -1, 0)
        return cols, jnp.sign(lam).T
    if kind == "fisher":
        lik = objective.loss_fn.require_likelihood()
        cols = output_fisher_sqrt(lik, z) * jnp.sqrt(w)[None, :, None]
        return cols, jnp.ones(cols.shape[:2], z.dtype)
    if kind == "empirical_fisher":
        objective.loss_fn.require_likelihood()
        r = jax.grad(lambda q: jnp.sum(objective.loss_fn(q, y)))(z)
        return (r * jnp.sqrt(w)[:, None])[None], jnp.ones((1, b), z.dtype)
    if kind == "mc_fisher":
        lik = objective.loss_fn.require_likelihood()
        idx, num_samples, base = key
        r = jax.vmap(lambda i, zi: sampled_nll_grads(lik, base, i, zi, num_samples))(idx, z)  # (B, S, D)
        cols = jnp.moveaxis(r, 1, 0) * (jnp.sqrt(w)[None, :, None] / math.sqrt(num_samples))
        return cols, jnp.ones(cols.shape[:2], z.dtype)
    raise ValueError(f"operator must be one of {KINDS}, got {kind!r}")


def _weighted_squares(s: Array, g: Array) -> Array:
    """``Σ_cd S_bcd g_cb g_db`` (elementwise in the trailing axes) for g ``(C, B, ...)``."""
    if s.ndim == 2:  # diagonal weights (C, B)
        return jnp.einsum("cb,cb...->b...", s, g * g)
    c = g.shape[0]
    if c > 32:
        return jnp.sum(g * jnp.einsum("bcd,db...->cb...", s, g), axis=0)
    # Few outputs: the C(C+1)/2 products fuse into one elementwise pass (a batched (C, C) matmul
    # per example and unit measured 2x slower on CPU).
    expand = lambda m: m.reshape(m.shape + (1,) * (g.ndim - 2))
    total = sum(expand(s[:, i, i]) * g[i] * g[i] for i in range(c))
    for i in range(c):
        for j in range(i + 1, c):
            total = total + expand(s[:, i, j] + s[:, j, i]) * g[i] * g[j]
    return total


def _largest_divisor_at_most(n: int, k: int) -> int:
    k = max(1, min(n, k))
    while n % k:
        k -= 1
    return k


def _chunk_diagonal(objective, params, plan: _Plan, kind, x, y, w, extra, trace_only: bool):
    """Per-leaf diagonal sums (or, with ``trace_only``, per-leaf trace sums) over one chunk."""
    leaves, treedef = jax.tree.flatten(params)
    dense = plan.dense
    if dense:
        shapes = jax.eval_shape(lambda p: record(objective, p, x, dense, None)[2], params)
        eps0 = [jnp.zeros(s.shape, s.dtype) for s in shapes]

        def f(eps):
            out, inputs, _ = record(objective, params, x, dense, eps)
            return out, inputs

        z, vjp_fn, inputs = jax.vjp(f, eps0, has_aux=True)
    else:
        z = objective.outputs(params, x)
    z = jax.lax.stop_gradient(z)
    out = [None] * len(leaves)

    if dense:
        cots, weights = _output_factors(kind, objective, z, y, w, extra, diagonal=False)
        gs = jax.vmap(lambda c: vjp_fn(c)[0])(cots)  # per layer (C, B, d_out)
        index = {}
        for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
            index[key_tuple(path)] = i
        for layer, a, g in zip(dense, inputs, gs):
            a = jax.lax.stop_gradient(a)
            g2 = _weighted_squares(weights, g)  # Σ_cd S_cd g_c g_d: (B, d_out)
            a2 = a * a
            if trace_only:
                out[index[layer.path + ("kernel",)]] = jnp.sum(jnp.sum(a2, -1) * jnp.sum(g2, -1))
            else:
                out[index[layer.path + ("kernel",)]] = a2.T @ g2
            if layer.has_bias:
                bias = jnp.sum(g2, 0)
                out[index[layer.path + ("bias",)]] = jnp.sum(bias) if trace_only else bias

    rest = [i for i, c in enumerate(plan.covered) if not c]
    if rest:
        cols, signs = _output_factors(kind, objective, z, y, w, extra, diagonal=True)
        sub0 = [leaves[i] for i in rest]

        def combine(sub):
            full = list(leaves)
            for i, s in zip(rest, sub):
                full[i] = s
            return jax.tree.unflatten(treedef, full)

        def per_example(xi, ci, si):  # one row: Σ_c s_c (J_iᵀ b_c)² for the remaining leaves
            _, vjp = jax.vjp(lambda sub: objective.outputs(combine(sub), xi[None])[0], sub0)
            g = jax.vmap(lambda c: vjp(c)[0])(ci)
            sq = [jnp.einsum("c,c...->...", si, gl * gl) for gl in g]  # Σ_c s_c (J_iᵀ b_c)²
            return [jnp.sum(q) for q in sq] if trace_only else sq

        b, num_cols = x.shape[0], cols.shape[0]
        size = sum(int(leaf.size) for leaf in sub0)
        k = _largest_divisor_at_most(b, PER_EXAMPLE_BUDGET // max(1, num_cols * size))
        rows = (x, jnp.moveaxis(cols, 1, 0), signs.T)
        rows = jax.tree.map(lambda a: a.reshape(b // k, k, *a.shape[1:]), rows)
        zero = jax.eval_shape(lambda: per_example(x[0], cols[:, 0], signs[:, 0]))
        init = [jnp.zeros(s.shape, s.dtype) for s in zero]

        def body(acc, r):
            part = jax.vmap(per_example)(*r)
            return [a + jnp.sum(p, 0) for a, p in zip(acc, part)], None

        sums, _ = jax.lax.scan(body, init, rows)
        for i, s in zip(rest, sums):
            out[i] = s
    return out


@jax.jit
def _curvature_within_leaves(objective, params, x) -> Array:
    """Per leaf, ``max |d²/dt² f(θ + t v)|`` over the rows, v random inside that leaf only."""
    leaves, treedef = jax.tree.flatten(params)
    f = lambda p: objective.outputs(p, x)
    key = jax.random.key(20260123)

    def one(i):  # one leaf per step of a lax.map: one compiled body, one tangent in memory
        tangent = [
            jnp.where(i == j, jax.random.normal(jax.random.fold_in(key, j), leaf.shape, leaf.dtype), 0)
            for j, leaf in enumerate(leaves)
        ]
        tangent = jax.tree.unflatten(treedef, tangent)
        first = lambda p: jax.jvp(f, (p,), (tangent,))[1]
        second = jax.jvp(first, (params,), (tangent,))[1]
        return jnp.max(jnp.abs(second))

    return jax.lax.map(one, jnp.arange(len(leaves)))


def _regularizer_diagonal(objective, params):
    """Exact diagonal of ∇²R: losslab's regularizers are separable, so ∇²R·1 is the diagonal."""
    if not objective.regularizers:
        return None
    odd = [r for r in objective.regularizers if not isinstance(r, Regularizer)]
    if odd:
        raise ValueError(
            f"the backprop diagonal needs separable regularizers (losslab.losses.l1/l2/elastic_net); got {odd!r}"
        )
    ones = jax.tree.map(jnp.ones_like, params)
    return jax.jvp(jax.grad(objective.regularization), (params,), (ones,))[1]


def _head(objective, rows, k):
    """The inputs of the first ``k`` rows (of a batch, or of the streamed training split)."""
    return objective.head(k)[0] if is_stream(rows) else rows[0][:k]


def _diagonal_tree(objective, params, batch, kind, key, num_samples, mesh, axis, trace_only):
    rows = indexed_rows(objective.rows(batch))
    n = num_rows(rows)
    check_mesh(mesh, axis, objective.chunk_size, n)
    plan = _plan(objective, params, _head(objective, rows, 2))

    def fn(r, w):
        xc, yc, ic = r
        return _chunk_diagonal(objective, params, plan, kind, xc, yc, w, (ic, num_samples, key), trace_only)

    sums = chunked_sum(fn, rows, objective.chunk_size, mesh=mesh, axis=axis)
    treedef = jax.tree.structure(params)
    diag = jax.tree.unflatten(treedef, [s / n for s in sums])
    if kind == "hessian":
        reg = _regularizer_diagonal(objective, params)
        if reg is not None:
            reg = jax.tree.map(jnp.sum, reg) if trace_only else reg
            diag = jax.tree.map(jnp.add, diag, reg)
    return diag


def _check_kind(objective, kind, key, num_samples):
    check_operator(kind, objective, key=key, exact_diagonal=True)
    if kind == "mc_fisher" and num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def piecewise_linear_check(objective, params=None, batch=None, *, check_rows: int = 256) -> dict[str, float]:
    """Per parameter tensor, the largest second derivative of the outputs along a random direction in it.

    All zeros means the model is piecewise linear in each parameter tensor on these rows, so the
    Hessian's diagonal equals the GGN's (see the module docstring). Runs on the first
    ``check_rows`` rows of ``batch`` (None: the training set).

    Returns:
      ``{"layers/0/kernel": 0.0, ...}`` (floats).
    """
    params = objective.params if params is None else params
    vals = _curvature_within_leaves(objective, params, _head(objective, objective.rows(batch), check_rows))
    return dict(zip(leaf_paths(params), map(float, vals)))


def require_piecewise_linear(objective, params, batch=None, check_rows: int = 256) -> None:
    """Raises ``ValueError`` naming the curved tensors unless the outputs are piecewise linear in each one."""
    curved = {p: v for p, v in piecewise_linear_check(objective, params, batch, check_rows=check_rows).items() if v}
    if curved:
        worst = ", ".join(f"{p} ({v:.2g})" for p, v in curved.items())
        raise ValueError(
            "the exact backprop Hessian diagonal needs a model piecewise linear in each parameter tensor "
            f"(ReLU-type activations, no smooth nonlinearity between a weight and the output); the outputs "
            f"curve along {worst}. Use method='hutchpp' / 'adaptive' (hessian_trace) or hutchinson_diagonal, "
            "or operator='ggn' for the exact GGN diagonal."
        )


def _prepare(objective, params, batch, operator, key, num_samples, check_rows):
    """Eager validation (and, for the Hessian, the piecewise-linearity check); returns ``(params, key)``."""
    params = objective.params if params is None else objective.check_params(params)
    if batch is not None:
        objective.check_batch(batch)
    _check_kind(objective, operator, key, num_samples)
    if operator == "hessian":
        require_piecewise_linear(objective, params, batch, check_rows)
    return params, (key if operator == "mc_fisher" else None)  # one compiled program with or without a key


def exact_diagonal(
    objective,
    params=None,
    batch=None,
    *,
    operator: str = "hessian",
    key: Array | None = None,
    num_samples: int = 1,
    select: Select = None,
    check_rows: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> DiagonalResult:
    r"""The exact diagonal of the Hessian / GGN / Fisher of the mean loss, by backpropagation.

    No probes: :math:`\frac1N\sum_i\sum_c s_{ic}(J_i^\top b_{ic})^{\odot2}` (module docstring),
    chunked over the data like the operators (``objective.chunk_size`` rows per chunk). For
    ``operator="hessian"`` the model must be piecewise linear in each parameter tensor (ReLU
    networks); this is checked on ``check_rows`` rows first and a ``ValueError`` names the
    tensors that fail. Cost: one forward pass and D (output dimension) backward passes of
    the activations per chunk, plus one kernel-sized product per Dense layer.

    Args:
      objective: a :class:`losslab.Objective`.
      params: the point; None uses ``objective.params``.
      batch: ``(x, y)``; None is the whole training set.
      operator: "hessian", "ggn", "fisher", "empirical_fisher" or "mc_fisher" (the same
        matrices as the operators of the same names).
      key, num_samples: sampled labels for "mc_fisher" (example i uses ``fold_in(key, i)``,
        as :func:`mc_fisher_operator`).
      select: parameter subset (path substring or callable), as :func:`hessian_operator`.
      check_rows: rows used by the piecewise-linearity check (Hessian only).
      mesh, axis: optional ``jax.sharding.Mesh``: the rows of each chunk are sharded over ``axis``.

    Returns:
      A :class:`DiagonalResult` with the ``(n,)`` diagonal in the operators' ordering,
      zero standard errors and ``num_matvecs=0``.
    """
    params, key = _prepare(objective, params, batch, operator, key, num_samples, check_rows)
    restriction, _, _, _ = restrict(params, select)
    diag = exact_jit(objective, params, batch, key, operator, num_samples, mesh, axis, False)
    flat = restriction.ravel(diag)
    return DiagonalResult(flat, jnp.zeros_like(flat), jnp.asarray(0))


def exact_trace(
    objective,
    params=None,
    batch=None,
    *,
    operator: str = "hessian",
    key: Array | None = None,
    num_samples: int = 1,
    select: Select = None,
    check_rows: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> TraceResult:
    """The exact trace of the Hessian / GGN / Fisher by backpropagation (:func:`exact_diagonal`, summed).

    Cheaper than the diagonal: a Dense kernel's share is :math:`\\sum_i \\lVert a_i\\rVert^2
    \\sum_c s_{ic} \\lVert g_{ic}\\rVert^2`, row norms only. For the MNIST-1D MLP 40-256-256-10
    on 4,000 rows it costs about four Hessian-vector products, 0.09 s on 2 CPU cores, against
    about 30 Hutchinson probes for a 5 % standard error (benchmarks). Same arguments and checks
    as :func:`exact_diagonal`.

    Returns:
      A :class:`TraceResult` with ``std_error`` 0 and ``num_matvecs`` 0.
    """
    params, key = _prepare(objective, params, batch, operator, key, num_samples, check_rows)
    mask = selection_mask(params, select)
    parts = exact_jit(objective, params, batch, key, operator, num_samples, mesh, axis, True)
    total = sum(p for p, m in zip(jax.tree.leaves(parts), mask) if m)
    return TraceResult(total, jnp.zeros_like(total), jnp.asarray(0))


def diagonal_tree(
    objective, params, batch=None, *, operator: str = "hessian", key=None, num_samples: int = 1, mesh=None,
    axis: str = "data", trace_only: bool = False,
):
    """The exact diagonal as a params pytree (per-leaf trace scalars with ``trace_only``); traceable.

    The unchecked kernel of :func:`exact_diagonal` / :func:`exact_trace` for use inside a compiled
    program (the in-training trace probe): call :func:`check` eagerly first.
    """
    return _diagonal_tree(objective, params, batch, operator, key, num_samples, mesh, axis, trace_only)


def check(objective, params, *, operator: str = "hessian", key=None, num_samples: int = 1, check_rows: int = 256):
    """The eager checks of :func:`exact_diagonal` (operator, key, and for the Hessian piecewise linearity)."""
    _prepare(objective, params, None, operator, key, num_samples, check_rows)


@functools.partial(jax.jit, static_argnames=("operator", "num_samples", "mesh", "axis", "trace_only"))
def exact_jit(objective, params, batch, key, operator, num_samples, mesh, axis, trace_only):
    """Jitted :func:`diagonal_tree` (one compiled program per static configuration)."""
    return _diagonal_tree(objective, params, batch, operator, key, num_samples, mesh, axis, trace_only)


__all__ = [
    "KINDS",
    "check",
    "diagonal_tree",
    "exact_diagonal",
    "exact_jit",
    "exact_trace",
    "piecewise_linear_check",
    "require_piecewise_linear",
]
