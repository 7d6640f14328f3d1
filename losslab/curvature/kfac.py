r"""K-FAC: Kronecker-factored approximate curvature of Dense and Conv layers, as factors and as an operator.

For a layer :math:`s = W^\top a` (bias folded in as :math:`\bar a = (a, 1)`), the per-example
gradient is :math:`\bar a\, g^\top` with :math:`g = \partial\,\mathrm{nll}/\partial s`, and the
layer's Fisher block is approximated by a Kronecker product (Martens & Grosse 2015):

.. math::  F_\ell \approx A_\ell \otimes G_\ell, \qquad A_\ell = \mathbb{E}[\bar a \bar a^\top], \quad
           G_\ell = \mathbb{E}_{x,\, \hat y \sim p(y|x)}[g g^\top],

``g`` uses labels *sampled from the model* (the true Fisher, not the empirical one), or, with
``estimator="exact"``, the expectation over labels in closed form (the columns of a square root of
the output-space Fisher :math:`\Lambda = B B^\top`, one backward pass per output). Conv layers use
the KFC approximation of Grosse & Martens (2016): :math:`A = \mathbb{E}[\sum_t \bar a_t \bar a_t^\top]`
over im2col patches, :math:`G = \frac1T \mathbb{E}[\sum_t g_t g_t^\top]` over output positions.
Parameters outside Dense/Conv layers (BatchNorm scales, ...) get a diagonal block estimated from
one sampled gradient per batch (unbiased since sampled-label gradients have zero mean).

Activations and output gradients come from the layer tap (:mod:`losslab.layers`). The K-FAC
*optimizer* built on these factors is :func:`losslab.kfac.kfac`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from losslab.curvature.base import LinearOperator
from losslab.layers import (
    Layer,
    covered_mask,
    find_layers,
    inputs_matrix,
    layer_from_matrix,
    layer_grad_matrix,
    record,
)
from losslab.objective import chunked_sum, indexed_rows
from losslab.trees import get_path, key_tuple

Array = jax.Array
ESTIMATORS = ("sampled", "exact")


def output_fisher_sqrt(likelihood, outputs: Array) -> Array:
    r"""Columns of a square root :math:`B_i` of the output-space Fisher, :math:`\Lambda_i = B_i B_i^\top`.

    Categorical: :math:`B = \mathrm{diag}(\sqrt p) - p \sqrt p^\top` (column c is
    :math:`\sqrt{p_c}(e_c - p)`); Gaussian: :math:`B = I / \sigma`.

    Args:
      likelihood: a :class:`losslab.losses.Likelihood`.
      outputs: ``(B, D)`` model outputs.

    Returns:
      ``(D, B, D)``: entry ``[c, i]`` is column c of :math:`B_i`.
    """
    b, d = outputs.shape
    eye = jnp.eye(d, dtype=outputs.dtype)
    if likelihood.name == "categorical":
        p = jax.nn.softmax(outputs, axis=-1)
        cols = jnp.sqrt(p).T[:, :, None] * (eye[:, None, :] - p[None])
        return cols
    elif likelihood.name == "gaussian":
        var = d / 2.0 if likelihood.variance is None else likelihood.variance
        return jnp.broadcast_to(eye[:, None, :] / math.sqrt(var), (d, b, d))
    else:
        raise ValueError(f"unknown likelihood {likelihood.name!r}; valid: categorical, gaussian")


class KFACFactors(NamedTuple):
    """Kronecker factors of a batch or dataset.

    Attributes:
      a: per layer, ``(a_dim, a_dim)`` input second moments ``E[ā āᵀ]``.
      g: per layer, ``(g_dim, g_dim)`` pre-activation gradient second moments ``E[g gᵀ]``.
      diag: diagonal Fisher estimates of the parameters outside K-FAC layers (flatten order).
    """

    a: tuple
    g: tuple
    diag: tuple


def factor_sums(objective, params, x, w, cot_fn, layers, mask):
    """Weighted K-FAC sums over one chunk of inputs ``x`` with row weights ``w``.

    Returns ``(Σ w ā āᵀ per layer, Σ w g gᵀ / T per layer, squared diagonal gradients of the
    uncovered leaves, Σ w)``; ``cot_fn`` (from :func:`cotangents`) gives the output cotangents.
    Cost: one tapped forward pass and one backward pass per cotangent column.
    """
    leaves, treedef = jax.tree.flatten(params)
    shapes = jax.eval_shape(lambda p: record(objective, p, x, layers, None)[2], params)
    eps0 = [jnp.zeros(s.shape, s.dtype) for s in shapes]

    def f(p, eps):
        out, inputs, _ = record(objective, p, x, layers, eps)
        return out, inputs

    out, vjp_fn, inputs = jax.vjp(f, params, eps0, has_aux=True)
    cots, diag_cot = cot_fn(jax.lax.stop_gradient(out))
    wcol = w.astype(out.dtype)
    a_sums, g_sums = [], []
    for layer, a in zip(layers, inputs):
        am = inputs_matrix(layer, jax.lax.stop_gradient(a))
        a_sums.append(jnp.einsum("i,itk,itl->kl", wcol, am, am))

    def eps_grads(c):
        return vjp_fn(c)[1]

    gs = jax.lax.map(eps_grads, cots)
    for g in gs:
        g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])
        t = g.shape[2]
        g_sums.append(jnp.einsum("i,sitk,sitl->kl", wcol, g, g) / t)
    diag = ()
    if not all(mask):
        pg = jax.tree.leaves(vjp_fn(diag_cot * wcol[:, None])[0])
        diag = tuple(leaf**2 for leaf, m in zip(pg, mask) if not m)
    del leaves, treedef
    return tuple(a_sums), tuple(g_sums), diag, jnp.sum(wcol)


def cotangents(likelihood, estimator: str, num_samples: int, keys_fn: Callable[[], Any], need_diag: bool):
    """Builds ``cot_fn(outputs) -> ((S, B, D) cotangents, (B, D) diagonal cotangent)``."""

    def cot_fn(out):
        if estimator == "exact":
            cols = output_fisher_sqrt(likelihood, out)
            if need_diag:
                signs = jax.random.rademacher(keys_fn(), (cols.shape[0], out.shape[0]), out.dtype)
                diag_cot = jnp.einsum("cb,cbd->bd", signs, cols)
            else:
                diag_cot = jnp.zeros_like(out)
            return cols, diag_cot
        elif estimator == "sampled":
            keys = jax.random.split(keys_fn(), num_samples)

            def one(k):
                y = likelihood.sample(k, out)
                return jax.grad(lambda o: jnp.sum(likelihood.nll(o, y)))(out)

            cots = jax.vmap(one)(keys)
            return cots / math.sqrt(num_samples), cots[0]
        else:
            raise ValueError(f"unknown K-FAC estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")

    return cot_fn


def kfac_factors(
    objective,
    params,
    batch=None,
    *,
    key: Array | None = None,
    estimator: str = "exact",
    num_samples: int = 1,
    layers: tuple[Layer, ...] | None = None,
) -> KFACFactors:
    r"""K-FAC factors :math:`A_\ell, G_\ell` of the mean-loss Fisher over a batch (default: training set).

    Exact in the batch (chunked with ``objective.chunk_size``, weighted sums, no approximation beyond
    K-FAC's own). ``estimator="exact"`` takes the expectation over labels in closed form (D backward
    passes); ``"sampled"`` draws ``num_samples`` labels per example from the model (needs ``key``).

    Args:
      objective: the :class:`~losslab.Objective` (its loss must have a likelihood).
      params: the point θ.
      batch: ``(x, y)`` or None for the training set.
      key: PRNG key (sampled estimator; exact estimator when parameters outside K-FAC layers exist).
      estimator: "exact" or "sampled".
      num_samples: labels per example for "sampled".
      layers: from :func:`find_layers` (computed if None).

    Returns:
      :class:`KFACFactors`. Cost: one forward pass plus D ("exact") or ``num_samples`` backward
      passes per example.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown K-FAC estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    lik = objective.loss_fn.require_likelihood()
    layers = find_layers(objective, params) if layers is None else layers
    mask = covered_mask(params, layers)
    need_diag = not all(mask)
    if key is None and (estimator == "sampled" or need_diag):
        raise ValueError(
            "kfac_factors needs key= for the sampled estimator or for parameters outside Dense/Conv layers"
        )
    rows = indexed_rows(objective.rows(batch))

    def fn(xc, ic, w):
        cot_fn = cotangents(lik, estimator, num_samples, lambda: jax.random.fold_in(key, ic[0]), need_diag)
        return factor_sums(objective, params, xc, w, cot_fn, layers, mask)

    a, g, diag, total = chunked_sum(lambda r, w: fn(r[0], r[2], w), rows, objective.chunk_size)
    return KFACFactors(tuple(m / total for m in a), tuple(m / total for m in g), tuple(d / total for d in diag))


# --------------------------------------------------------------------------
# The operator


def apply_blocks(params_like, layers, mask, left, right, diag_fn):
    """Applies Kronecker blocks to a params-shaped pytree.

    ``W̄ -> left_ℓ W̄ right_ℓ`` for each layer ℓ (``W̄ = [W; bᵀ]``) and ``diag_fn(j, leaf)`` on the
    j-th leaf not covered by a layer (``mask`` from :func:`losslab.layers.covered_mask`).
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params_like)
    out = {key_tuple(p): leaf for p, leaf in leaves_with_path}
    for layer, lm, rm in zip(layers, left, right):
        node = get_path(params_like, layer.path)
        new = layer_from_matrix(layer, lm @ layer_grad_matrix(layer, node) @ rm)
        for name, v in new.items():
            out[layer.path + (name,)] = v.astype(node[name].dtype)
    j = 0
    leaves = []
    for (p, _), covered in zip(leaves_with_path, mask):
        k = key_tuple(p)
        if covered:
            leaves.append(out[k])
        else:
            leaves.append(diag_fn(j, out[k]))
            j += 1
    return jax.tree.unflatten(treedef, leaves)


def kfac_operator(
    objective,
    params,
    batch=None,
    *,
    key: Array | None = None,
    estimator: str = "exact",
    num_samples: int = 1,
    damping: float = 0.0,
) -> LinearOperator:
    r"""K-FAC's approximation of the Fisher as a matrix-free operator on flat parameter vectors.

    :math:`\tilde F v`: for each Dense/Conv layer :math:`\mathrm{vec}^{-1}(v_\ell) \mapsto
    A_\ell\, \bar V_\ell\, G_\ell` (with :math:`\bar V = [V_W; v_b^\top]`), and a diagonal for other
    parameters; plus ``damping`` × v. Factors from :func:`kfac_factors` over ``batch`` (default: the
    whole training set, the convention of every losslab curvature operator: the mean loss).
    Exact (equal to the Fisher) for a single Dense layer under Gaussian MSE; compare its spectrum
    with :func:`losslab.curvature.fisher_operator` elsewhere.

    Returns a :class:`losslab.curvature.LinearOperator` (``psd=True``, ``name="kfac"``); the factors
    themselves come from :func:`kfac_factors`. Cost: building = :func:`kfac_factors`; each matvec is two
    small matmuls per layer (no model pass).
    """
    factors = kfac_factors(objective, params, batch, key=key, estimator=estimator, num_samples=num_samples)
    layers = find_layers(objective, params)
    mask = covered_mask(params, layers)
    flat, unravel = ravel_pytree(params)

    def ravel(tree):
        return ravel_pytree(tree)[0]

    def matvec(v):
        tree = unravel(v)
        out = apply_blocks(tree, layers, mask, factors.a, factors.g, lambda j, leaf: factors.diag[j] * leaf)
        return ravel(out) + damping * v

    return LinearOperator(
        matvec=matvec, size=flat.size, dtype=flat.dtype, psd=True, ravel=ravel, unravel=unravel, name="kfac"
    )


# --------------------------------------------------------------------------
# Damped inverses (the optimizer's preconditioner)


def damped_inverses(a, g, damping):
    r"""Factored Tikhonov: :math:`(A + \pi\gamma I)^{-1}, (G + \gamma/\pi I)^{-1}`, :math:`\gamma = \sqrt\lambda`.

    Inverted through ``eigh`` with eigenvalues clipped at 0, which stays finite in float32 where a
    Cholesky factorisation of a nearly singular factor can fail.
    """
    gamma = jnp.sqrt(damping)
    inv_a, inv_g = [], []
    for am, gm in zip(a, g):
        ta = jnp.trace(am) / am.shape[0]
        tg = jnp.trace(gm) / gm.shape[0]
        pi = jnp.sqrt(jnp.maximum(ta, 1e-30) / jnp.maximum(tg, 1e-30))
        inv_a.append(psd_inverse(am, pi * gamma))
        inv_g.append(psd_inverse(gm, gamma / pi))
    return tuple(inv_a), tuple(inv_g)


def psd_inverse(m, shift):
    """``(M + shift·I)⁻¹`` of a symmetric PSD matrix through ``eigh`` (eigenvalues clipped at 0)."""
    w, q = jnp.linalg.eigh(0.5 * (m + m.T))
    return (q / (jnp.maximum(w, 0) + shift)) @ q.T


__all__ = [
    "ESTIMATORS",
    "KFACFactors",
    "apply_blocks",
    "cotangents",
    "damped_inverses",
    "factor_sums",
    "kfac_factors",
    "kfac_operator",
    "output_fisher_sqrt",
    "psd_inverse",
]
