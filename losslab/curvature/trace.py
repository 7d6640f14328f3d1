"""Stochastic trace and diagonal estimators: Hutchinson, adaptive Hutchinson, Hutch++.

Probes are mapped sequentially in chunks (a ``lax.scan`` over chunks, each
chunk vmapped): on CPU this measured faster than vmapping all probes at once,
and memory is bounded by one chunk of vectors. A chunk of one probe is not
vmapped at all: a size-1 batch dimension costs layout copies of every
activation-sized tangent inside the matvec (about 8% per HVP measured on the
MNIST-1D MLP). Every estimate comes with its standard error and the number of
matvecs it cost.

References: Hutchinson 1989; Avron & Toledo 2011; Bekas, Kokiopoulou & Saad
2007 (diagonal); Meyer, Musco, Musco & Woodruff 2021 (Hutch++).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from losslab import display as fmt
from losslab.curvature.base import LinearOperator

Array = jax.Array
DISTRIBUTIONS = ("rademacher", "gaussian")
# Probes per vectorised chunk. On 2 CPU cores, the MNIST-1D MLP HVP saturates the
# machine already for one probe: chunk 1 measured fastest (benchmarks/curvature_vs_pyhessian.py).
DEFAULT_CHUNK = 1


class TraceResult(NamedTuple):
    """A trace estimate with its standard error.

    Attributes:
      estimate: the trace estimate.
      std_error: its standard error (sample std of the probe values / sqrt(#probes);
        0 for an estimate without randomness left).
      num_matvecs: products with the operator spent.
    """

    estimate: Array
    std_error: Array
    num_matvecs: Array

    def __repr__(self) -> str:
        return f"TraceResult(estimate={fmt.pm(self.estimate, self.std_error)}, {fmt.num(self.num_matvecs)} matvecs)"


class DiagonalResult(NamedTuple):
    """A diagonal estimate ``(n,)`` with per-entry standard errors ``(n,)``."""

    estimate: Array
    std_error: Array
    num_matvecs: Array

    def __repr__(self) -> str:
        return (
            f"DiagonalResult(n={fmt.shape(self.estimate)[0] if fmt.shape(self.estimate) else '?'}, estimate ∈ {fmt.span(self.estimate)}, std_error ∈ {fmt.span(self.std_error)}, "
            f"{fmt.num(self.num_matvecs)} matvecs)"
        )


def _check(distribution: str, chunk_size: int):
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def probe_vector(key, n, dtype, distribution):
    """One ``(n,)`` probe vector: Rademacher (±1) or standard Gaussian entries."""
    if distribution == "rademacher":
        return jax.random.rademacher(key, (n,), dtype)
    elif distribution == "gaussian":
        return jax.random.normal(key, (n,), dtype)
    else:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def _merge(a, b):
    """Chan et al. 1979 pairwise merge of (count, mean, M2) statistics: stable sums."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    delta = mb - ma
    mean = ma + delta * (nb / n)
    return n, mean, sa + sb + delta**2 * (na * nb / n)


def _chunk_stats(values):
    count = jnp.asarray(values.shape[0], values.dtype)
    mean = jnp.mean(values, axis=0)
    return count, mean, jnp.sum((values - mean) ** 2, axis=0)


def shard_probes(keys, mesh, axis: str):
    """Constrains a chunk of probe keys to be split over ``axis`` of ``mesh`` (no-op without a mesh).

    The vectorised matvecs inherit the sharding, so each device runs its share of the
    probes; a chunk that does not split evenly stays replicated.
    """
    if mesh is None or keys.shape[0] % mesh.shape[axis]:
        return keys
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
    return jax.lax.with_sharding_constraint(keys, sharding)


def check_probe_mesh(mesh, axis: str, chunk_size: int):
    """Validates a probe mesh eagerly: the axis exists and divides ``chunk_size``."""
    if mesh is None:
        return
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    if chunk_size % mesh.shape[axis]:
        raise ValueError(
            f"chunk_size={chunk_size} probes do not split evenly over the {mesh.shape[axis]} devices of axis {axis!r}"
        )


def batched_over_keys(fn, chunk_size: int, mesh=None, axis: str = "data"):
    """``fn`` mapped over a chunk of keys: vmapped, or a plain call for a chunk of one.

    A size-1 vmap is not free: XLA keeps the unit batch dimension and inserts transposes
    and copies of every activation-sized tangent of the matvec (measured about 8% per
    Hessian-vector product), so a chunk of one calls ``fn`` directly.
    """
    if chunk_size == 1:
        return lambda ks: jax.tree.map(lambda a: a[None], fn(ks[0]))
    vmapped = jax.vmap(fn)
    return lambda ks: vmapped(shard_probes(ks, mesh, axis))


def _map_matvec(op: LinearOperator, vectors: Array, batch: int) -> Array:
    """``op.matvec`` over the rows of ``vectors``, ``batch`` rows vmapped together (unbatched for 1)."""
    if batch == 1:
        return jax.lax.map(op.matvec, vectors)
    return jax.lax.map(op.matvec, vectors, batch_size=batch)


def _map_stats(fn, keys, chunk_size: int, mesh=None, axis: str = "data"):
    """(count, mean, M2) of ``fn(key)`` over keys, chunk by chunk in one ``lax.scan``."""
    m = keys.shape[0]
    chunk_size = min(chunk_size, m)
    full, rem = divmod(m, chunk_size)
    batched = batched_over_keys(fn, chunk_size, mesh, axis)

    head = keys[: full * chunk_size].reshape(full, chunk_size, *keys.shape[1:])
    stats = _chunk_stats(batched(head[0]))
    if full > 1:
        stats, _ = jax.lax.scan(lambda s, ks: (_merge(s, _chunk_stats(batched(ks))), None), stats, head[1:])
    if rem:
        stats = _merge(stats, _chunk_stats(batched_over_keys(fn, rem, mesh, axis)(keys[full * chunk_size :])))
    return stats


def hutchinson_trace(
    op: LinearOperator,
    key: Array,
    *,
    num_probes: int = 100,
    distribution: str = "rademacher",
    chunk_size: int = DEFAULT_CHUNK,
    rel_std_error: float | None = None,
    min_probes: int = 10,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> TraceResult:
    r"""Hutchinson's estimator :math:`\operatorname{tr} A \approx \frac1m \sum_j v_j^\top A v_j`.

    Rademacher probes (default) give the minimum variance
    :math:`2(\lVert A\rVert_F^2 - \sum_i A_{ii}^2)/m` and are exact for diagonal A;
    Gaussian probes have variance :math:`2\lVert A\rVert_F^2/m` (Hutchinson 1989;
    Avron & Toledo 2011).

    With ``rel_std_error`` the estimator is adaptive: it adds chunks of ``chunk_size``
    probes (in a ``lax.while_loop``) until the standard error is at most
    ``rel_std_error * |estimate|`` (after at least ``min_probes``), or ``num_probes``
    probes are spent; ``num_matvecs`` says how many were used.

    Args:
      op: a square operator of size n.
      key: PRNG key for the probes.
      num_probes: number of probes m (the maximum when adaptive). Cost: m matvecs.
      distribution: "rademacher" or "gaussian".
      chunk_size: probes vectorised together (memory: chunk_size vectors).
      rel_std_error: optional target relative standard error.
      min_probes: probes always spent before the adaptive stopping rule applies.
      mesh: optional ``jax.sharding.Mesh``: each chunk of probes is split over ``axis``
        (``chunk_size`` must be a multiple of the axis size). Same numbers as one device.
      axis: the mesh axis for probes.

    Returns:
      A :class:`TraceResult` (estimate, std_error, num_matvecs).
    """
    _check(distribution, chunk_size)
    check_probe_mesh(mesh, axis, chunk_size)
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 to report a standard error, got {num_probes}")
    n, dtype = op.size, op.dtype

    def quad(k):
        v = probe_vector(k, n, dtype, distribution)
        return jnp.vdot(v, op.matvec(v))

    keys = jax.random.split(key, num_probes)
    if rel_std_error is None:
        count, mean, m2 = _map_stats(quad, keys, chunk_size, mesh, axis)
        return TraceResult(mean, jnp.sqrt(m2 / (count - 1) / count), jnp.asarray(num_probes))

    if not rel_std_error > 0:
        raise ValueError(f"rel_std_error must be > 0, got {rel_std_error}")
    chunk_size = min(chunk_size, num_probes)
    num_chunks = num_probes // chunk_size  # the adaptive run spends whole chunks only
    chunks = keys[: num_chunks * chunk_size].reshape(num_chunks, chunk_size, *keys.shape[1:])
    batched = batched_over_keys(quad, chunk_size, mesh, axis)
    min_chunks = max(2, -(-min_probes // chunk_size))

    def se(stats):
        count, mean, m2 = stats
        return jnp.sqrt(m2 / jnp.maximum(count - 1, 1) / count), mean

    def cond(s):
        i, stats = s
        err, mean = se(stats)
        done = (i >= min_chunks) & (err <= rel_std_error * jnp.abs(mean))
        return (i < num_chunks) & ~done

    def body(s):
        i, stats = s
        return i + 1, _merge(stats, _chunk_stats(batched(chunks[i])))

    zero = jnp.zeros((), dtype)
    i, stats = jax.lax.while_loop(cond, body, (0, (zero, zero, zero)))
    err, mean = se(stats)
    return TraceResult(mean, err, i * chunk_size)


def hutchpp_trace(
    op: LinearOperator,
    key: Array,
    *,
    num_matvecs: int = 102,
    distribution: str = "rademacher",
    chunk_size: int = DEFAULT_CHUNK,
) -> TraceResult:
    r"""Hutch++ (Meyer et al. 2021): exact trace on a sketched top subspace + Hutchinson on the rest.

    With s = ``num_matvecs // 3`` sketch vectors S and g = ``num_matvecs - 2 s`` probes G:
    :math:`Q = \operatorname{qr}(A S)`,
    :math:`\operatorname{tr} A \approx \operatorname{tr}(Q^\top A Q) + \frac1g
    \operatorname{tr}(G^\top (I - QQ^\top) A (I - QQ^\top) G)`.
    The relative error falls like 1/m instead of 1/sqrt(m) for spectra dominated by a few
    large eigenvalues. ``std_error`` is that of the residual Hutchinson term (the sketch
    term has no sampling error given Q).

    Args:
      op: symmetric operator of size n.
      key: PRNG key.
      num_matvecs: total budget m >= 4 (s + s + g matvecs with g >= 2).
      distribution: "rademacher" or "gaussian" for S and G.
      chunk_size: vectors vectorised together.

    Returns:
      A :class:`TraceResult`. Cost: exactly ``num_matvecs`` matvecs; memory: the ``(s, n)``
      sketch and its orthonormal basis Q.
    """
    _check(distribution, chunk_size)
    s = num_matvecs // 3
    g = num_matvecs - 2 * s
    if s < 1 or g < 2:
        raise ValueError(
            f"num_matvecs must be >= 4 for Hutch++ (sketch, projection and >= 2 probes), got {num_matvecs}"
        )
    if s > op.size:
        raise ValueError(f"num_matvecs // 3 = {s} exceeds the operator size n={op.size}")
    n, dtype = op.size, op.dtype
    sketch_key, probe_key = jax.random.split(key)
    batch = min(chunk_size, s)

    sketch = jax.vmap(lambda k: probe_vector(k, n, dtype, distribution))(jax.random.split(sketch_key, s))
    y = _map_matvec(op, sketch, batch)
    q = jnp.linalg.qr(y.T)[0].T  # (s, n) orthonormal rows
    aq = _map_matvec(op, q, batch)
    top = jnp.sum(q * aq)

    def quad(k):
        v = probe_vector(k, n, dtype, distribution)
        v = v - q.T @ (q @ v)
        return jnp.vdot(v, op.matvec(v))

    count, mean, m2 = _map_stats(quad, jax.random.split(probe_key, g), chunk_size)
    return TraceResult(top + mean, jnp.sqrt(m2 / (count - 1) / count), jnp.asarray(num_matvecs))


def hutchinson_diagonal(
    op: LinearOperator,
    key: Array,
    *,
    num_probes: int = 100,
    distribution: str = "rademacher",
    chunk_size: int = DEFAULT_CHUNK,
    mesh: jax.sharding.Mesh | None = None,
    axis: str = "data",
) -> DiagonalResult:
    r"""Diagonal estimator :math:`\operatorname{diag} A \approx \frac1m \sum_j v_j \odot A v_j`.

    Bekas, Kokiopoulou & Saad 2007. Exact for diagonal A with Rademacher probes; the
    variance of entry i is :math:`\sum_{k \ne i} A_{ik}^2 / m`.

    Args:
      op: square operator of size n.
      key: PRNG key.
      num_probes: m >= 2 (cost m matvecs).
      distribution: "rademacher" or "gaussian".
      chunk_size: probes vectorised together.
      mesh, axis: optional probe sharding, as in :func:`hutchinson_trace`.

    Returns:
      A :class:`DiagonalResult` with ``(n,)`` estimate and standard errors.
    """
    _check(distribution, chunk_size)
    check_probe_mesh(mesh, axis, chunk_size)
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2, got {num_probes}")

    def prod(k):
        v = probe_vector(k, op.size, op.dtype, distribution)
        return v * op.matvec(v)

    count, mean, m2 = _map_stats(prod, jax.random.split(key, num_probes), chunk_size, mesh, axis)
    return DiagonalResult(mean, jnp.sqrt(m2 / (count - 1) / count), jnp.asarray(num_probes))


__all__ = [
    "DISTRIBUTIONS",
    "DiagonalResult",
    "TraceResult",
    "batched_over_keys",
    "check_probe_mesh",
    "probe_vector",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "shard_probes",
]
