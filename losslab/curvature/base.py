"""Linear operators as values: the matrix-free type every curvature algorithm consumes, and parameter selection.

A :class:`LinearOperator` is an immutable value with a ``matvec`` on flat vectors and declared
properties (``size``, ``dtype``, ``symmetric``, ``psd``); algorithms read the properties (CG
refuses an operator not declared PSD, Lanczos one not declared symmetric). ``ravel`` /
``unravel`` map between params pytrees and the flat vectors, so algorithms never see pytrees.

``select`` restricts an operator to a subset of the parameters (a per-layer or per-block
curvature): the operator then acts on the flat vector of only the selected leaves, which is
the corresponding principal sub-block of the full matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from losslab.trees import leaf_paths, path_str

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


def selection_mask(params, select: Select) -> list[bool]:
    """Per params leaf (flatten order): whether ``select`` picks it (None: all; a path substring; a callable)."""
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
        paths = leaf_paths(params)
        raise ValueError(f"select={select!r} matches no parameter; parameter paths are {paths}")
    return mask


class Restriction(NamedTuple):
    """Splits params into the selected leaves (the operator's domain) and the fixed rest."""

    mask: tuple[bool, ...]
    treedef: Any
    leaves: tuple
    unravel_sub: Callable

    def sub(self, tree) -> list:
        """The selected leaves of a params pytree (flatten order)."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self.mask):
            raise ValueError(f"expected a params pytree with {len(self.mask)} leaves, got {len(leaves)}")
        return [leaf for leaf, m in zip(leaves, self.mask) if m]

    def combine(self, sub) -> Any:
        """The full params pytree: the selected leaves from ``sub``, the rest from the base point."""
        it = iter(sub)
        return jax.tree.unflatten(self.treedef, [next(it) if m else leaf for leaf, m in zip(self.leaves, self.mask)])

    def ravel(self, tree) -> Array:
        """The flat vector of the selected leaves of ``tree``."""
        return ravel_pytree(self.sub(tree))[0]

    def unravel(self, vec) -> Any:
        """A flat vector as a full params pytree, zeros outside the selection."""
        sub = iter(self.unravel_sub(vec))
        full = [next(sub) if m else jnp.zeros_like(leaf) for leaf, m in zip(self.leaves, self.mask)]
        return jax.tree.unflatten(self.treedef, full)


def restrict(params, select: Select) -> tuple[Restriction, list, int, Any]:
    """Splits ``params`` by ``select``: ``(restriction, selected leaves, their total size, dtype)``."""
    mask = selection_mask(params, select)
    leaves, treedef = jax.tree.flatten(params)
    sub = [leaf for leaf, m in zip(leaves, mask) if m]
    flat, unravel_sub = ravel_pytree(sub)
    return Restriction(tuple(mask), treedef, tuple(leaves), unravel_sub), sub, int(flat.size), flat.dtype


def flat_params(params, select: Select = None) -> Array:
    """The flat ``(n,)`` vector of the (selected) params, in the operators' ordering (``op.ravel(params)``)."""
    restriction, _, _, _ = restrict(params, select)
    return restriction.ravel(params)


def require(op: LinearOperator, *, symmetric: bool = False, psd: bool = False, algorithm: str) -> None:
    """Raises ``ValueError`` naming ``op`` and ``algorithm`` unless ``op`` declares the needed properties."""
    if psd and not op.psd:
        raise ValueError(
            f"{algorithm} needs a positive semi-definite operator; {op.name!r} is not declared PSD "
            "(use a GGN / Fisher operator, or from_matrix(..., psd=True) for a matrix you know is PSD)"
        )
    if symmetric and not op.symmetric:
        raise ValueError(f"{algorithm} needs a symmetric operator; {op.name!r} is declared non-symmetric")


__all__ = [
    "LinearOperator",
    "Restriction",
    "Select",
    "flat_params",
    "from_matrix",
    "path_str",
    "require",
    "restrict",
    "selection_mask",
    "to_dense",
]
