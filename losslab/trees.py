"""Pytree helpers shared by every layer: key-path names, leaf access by path, small vector algebra.

Parameters travel as pytrees (any nesting of dicts, lists, tuples or registered nodes);
these helpers are the one place that turns a key path into a name (``"layers/0/kernel"``),
looks a leaf up by its path, and does the leaf-by-leaf arithmetic that directions,
surfaces and sharpness measures share.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


def key_name(k) -> Any:
    """The plain name of one pytree key entry: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def key_tuple(path) -> tuple:
    """A key path as a tuple of plain names, e.g. ``("layers", 0, "kernel")``."""
    return tuple(key_name(k) for k in path)


def path_str(path) -> str:
    """``"layers/0/kernel"``-style string of a pytree key path."""
    return "/".join(str(k) for k in key_tuple(path))


def leaf_paths(tree: PyTree) -> list[str]:
    """The ``path_str`` of every leaf, in flatten order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def get_path(tree: PyTree, path: tuple) -> Any:
    """The subtree at ``path`` (a tuple of plain names: dict keys, indices or attributes)."""
    for k in path:
        tree = getattr(tree, k) if isinstance(k, str) and not isinstance(tree, dict) and hasattr(tree, k) else tree[k]
    return tree


def tree_add(a: PyTree, b: PyTree) -> PyTree:
    """``a + b`` leaf by leaf."""
    return jax.tree.map(jnp.add, a, b)


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    """``a - b`` leaf by leaf."""
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(tree: PyTree, scalar) -> PyTree:
    """``scalar * tree`` leaf by leaf (the scalar is cast to each leaf's dtype)."""
    return jax.tree.map(lambda x: jnp.asarray(scalar, x.dtype) * x, tree)


def tree_axpy(a, x: PyTree, y: PyTree) -> PyTree:
    """``y + a * x`` for pytrees; ``a`` is a scalar or a pytree like ``x``."""
    if isinstance(a, (int, float)) or (hasattr(a, "ndim") and a.ndim == 0):
        return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)
    return jax.tree.map(lambda ai, xi, yi: yi + ai * xi, a, x, y)


def tree_vdot(a: PyTree, b: PyTree) -> Array:
    """The Euclidean inner product ``<a, b>`` summed over all leaves."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(tree: PyTree) -> Array:
    """The Euclidean norm ``||tree||_2`` over all leaves."""
    return jnp.sqrt(tree_vdot(tree, tree))


def check_same_structure(a: PyTree, b: PyTree, what: str) -> None:
    """Raises ``ValueError`` (prefixed by ``what``) unless ``a`` and ``b`` have the same structure and leaf shapes."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(f"{what}: pytree structures differ:\n{sa}\nvs\n{sb}")
    for path, x, y in zip(leaf_paths(a), jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(f"{what}: leaf {path!r} shapes differ: {jnp.shape(x)} vs {jnp.shape(y)}")


__all__ = [
    "check_same_structure",
    "get_path",
    "key_name",
    "key_tuple",
    "leaf_paths",
    "path_str",
    "tree_add",
    "tree_axpy",
    "tree_norm",
    "tree_scale",
    "tree_sub",
    "tree_vdot",
]
