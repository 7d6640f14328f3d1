"""Trace, eigenvalue and density estimators on quadratics with a prescribed spectrum (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import curvature as cv

jax.config.update("jax_enable_x64", True)

# Eigenvalue agreement required by the issue: 1e-4 relative.
EIG_RTOL = 1e-4
# Lanczos with k = n and full reorthogonalisation is exact up to round-off.
FULL_LANCZOS_ATOL = 1e-9
# A correct unbiased estimator lands within 4 standard errors (fails with prob. ~6e-5).
NUM_SE = 4.0

N = 60


def prescribed(eigenvalues, seed=0):
    """Q diag(λ) Qᵀ with a Haar-random orthogonal Q, and λ."""
    eigenvalues = np.asarray(eigenvalues, float)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return jnp.asarray(q @ np.diag(eigenvalues) @ q.T), eigenvalues


@pytest.fixture(scope="module")
def indefinite():
    lam = np.concatenate([[10.0, 8.0, 6.0], np.linspace(-2.0, 3.0, N - 5), [-4.0, -5.0]])
    return prescribed(lam)


def test_lanczos_with_k_equal_n_reproduces_eigh(indefinite):
    a, lam = indefinite
    res = jax.jit(lambda key: cv.lanczos(cv.from_matrix(a), key, num_steps=N))(jax.random.key(0))
    theta, vectors, _ = res.ritz()
    np.testing.assert_allclose(np.sort(theta), np.sort(lam), atol=FULL_LANCZOS_ATOL)
    np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(N), atol=FULL_LANCZOS_ATOL)
    np.testing.assert_allclose(res.basis @ a @ res.basis.T, res.tridiagonal(), atol=FULL_LANCZOS_ATOL)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_top_k_matches_eigh(indefinite, which):
    a, lam = indefinite
    op = cv.from_matrix(a)
    res = cv.top_eigenpairs(op, jax.random.key(1), k=3, num_steps=40, which=which)
    expected = np.sort(lam)[::-1][:3] if which == "largest" else np.sort(lam)[:3]
    np.testing.assert_allclose(res.eigenvalues, expected, rtol=EIG_RTOL)
    true_resid = np.linalg.norm(res.eigenvectors @ a - res.eigenvalues[:, None] * res.eigenvectors, axis=1)
    np.testing.assert_allclose(res.residuals, true_resid, atol=1e-8)
    assert bool(jnp.all(res.converged))
    exact = cv.exact_eigh(op)
    np.testing.assert_allclose(exact.eigenvalues, np.sort(lam)[::-1], atol=1e-10)


def test_power_iteration_top_k_matches_eigh():
    a, lam = prescribed(np.concatenate([[10.0, 7.0, 5.0], np.linspace(0.0, 2.0, N - 3)]))
    res = cv.power_iteration(cv.from_matrix(a), jax.random.key(2), k=3, num_steps=2000, tol=1e-9)
    np.testing.assert_allclose(res.eigenvalues, [10.0, 7.0, 5.0], rtol=EIG_RTOL)
    assert bool(jnp.all(res.converged))
    overlaps = np.abs(res.eigenvectors @ res.eigenvectors.T)
    np.testing.assert_allclose(overlaps, np.eye(3), atol=1e-4)
    assert int(res.num_matvecs) < 3 * 2000, "stopped on tolerance"


def test_power_iteration_reports_non_convergence():
    a, _ = prescribed(np.concatenate([[1.0, 0.999], np.linspace(0.0, 0.5, N - 2)]))
    res = cv.power_iteration(cv.from_matrix(a), jax.random.key(0), num_steps=5, tol=1e-12)
    assert int(res.num_matvecs) == 5 and not bool(res.converged[0]) and float(res.residuals[0]) > 0


def test_derived_quantities(indefinite):
    a, lam = indefinite
    op = cv.from_matrix(a)
    key = jax.random.key(0)
    np.testing.assert_allclose(cv.lambda_max(op, key), lam.max(), rtol=EIG_RTOL)
    np.testing.assert_allclose(cv.lambda_min(op, key), lam.min(), rtol=EIG_RTOL)
    np.testing.assert_allclose(cv.condition_number(op, key, k=3), 10.0 / 6.0, rtol=EIG_RTOL)
    dens = cv.exact_density(lam)
    assert float(dens.negative_count) == pytest.approx((lam < 0).sum())
    assert float(dens.negative_mass) == pytest.approx(-lam[lam < 0].sum())
    slq = cv.spectral_density(op, key, num_steps=N, num_probes=40)
    # Each probe's negative fraction has std ~ sqrt(2 f (1-f) / n); 40 probes make 0.05 a 4-sigma band.
    assert abs(float(slq.negative_fraction) - (lam < 0).mean()) < 0.05


def test_hutchinson_is_exact_on_diagonal_matrices():
    d = jnp.asarray(np.random.default_rng(0).normal(size=N))
    op = cv.from_matrix(jnp.diag(d))
    res = cv.hutchinson_trace(op, jax.random.key(0), num_probes=7, chunk_size=3)
    np.testing.assert_allclose(res.estimate, d.sum(), rtol=1e-12)
    assert float(res.std_error) < 1e-12 and int(res.num_matvecs) == 7
    diag = cv.hutchinson_diagonal(op, jax.random.key(1), num_probes=5)
    np.testing.assert_allclose(diag.estimate, d, rtol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_within_standard_errors(indefinite, distribution):
    a, lam = indefinite
    res = cv.hutchinson_trace(
        cv.from_matrix(a), jax.random.key(5), num_probes=300, distribution=distribution, chunk_size=8
    )
    assert abs(float(res.estimate) - lam.sum()) < NUM_SE * float(res.std_error)
    # The standard error itself is right: Rademacher variance 2(||A||_F^2 - sum diag^2) / m.
    if distribution == "rademacher":
        expected_se = np.sqrt(2 * (np.sum(np.asarray(a) ** 2) - np.sum(np.diag(a) ** 2)) / 300)
        assert 0.7 < float(res.std_error) / expected_se < 1.3


def test_hutchinson_averaged_over_many_seeds_lands_on_the_trace(indefinite):
    a, lam = indefinite
    run = jax.jit(jax.vmap(lambda k: cv.hutchinson_trace(cv.from_matrix(a), k, num_probes=20).estimate))
    estimates = run(jax.random.split(jax.random.key(0), 500))
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - lam.sum()) < NUM_SE * se


def test_adaptive_hutchinson_stops_at_target(indefinite):
    a, lam = indefinite
    shifted = a + 3 * jnp.eye(N)  # a trace far from 0, so a relative target is meaningful
    res = cv.hutchinson_trace(
        cv.from_matrix(shifted), jax.random.key(0), num_probes=2000, rel_std_error=0.02, chunk_size=4
    )
    assert int(res.num_matvecs) < 2000
    assert float(res.std_error) <= 0.02 * abs(float(res.estimate))
    assert abs(float(res.estimate) - (lam.sum() + 3 * N)) < NUM_SE * float(res.std_error)


def test_hutchpp_beats_hutchinson_at_equal_matvecs():
    n = 200
    rng = np.random.default_rng(0)
    lam = np.concatenate([np.full(10, 100.0), rng.uniform(0.0, 1.0, n - 10)])  # low rank + noise
    a, _ = prescribed(lam)
    op = cv.from_matrix(a)
    keys = jax.random.split(jax.random.key(0), 30)
    plain = jax.jit(jax.vmap(lambda k: cv.hutchinson_trace(op, k, num_probes=60).estimate))(keys)
    pp = jax.jit(jax.vmap(lambda k: cv.hutchpp_trace(op, k, num_matvecs=60).estimate))(keys)
    err_plain = np.mean(np.abs(np.asarray(plain) - lam.sum()))
    err_pp = np.mean(np.abs(np.asarray(pp) - lam.sum()))
    assert err_pp < err_plain / 5, (err_pp, err_plain)
    one = cv.hutchpp_trace(op, keys[0], num_matvecs=60)
    assert int(one.num_matvecs) == 60 and abs(float(one.estimate) - lam.sum()) < NUM_SE * float(one.std_error)


def test_density_integrates_to_one_and_nodes_match_spectrum(indefinite):
    a, lam = indefinite
    op = cv.from_matrix(a)
    res = cv.spectral_density(op, jax.random.key(0), num_steps=N, num_probes=3, grid=4000)
    assert res.nodes.shape == (3, N) and res.weights.shape == (3, N)
    np.testing.assert_allclose(res.integral(), 1.0, atol=1e-6)
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-10)
    for nodes in np.asarray(res.nodes):
        np.testing.assert_allclose(np.sort(nodes), np.sort(lam), atol=FULL_LANCZOS_ATOL)
    # With normalised Rademacher probes, n * sum(tau * theta) is exactly v^T A v: Hutchinson.
    assert int(res.num_matvecs) == 3 * N
    short = cv.spectral_density(op, jax.random.key(0), num_steps=20, num_probes=2, sigma=0.3)
    np.testing.assert_allclose(short.integral(), 1.0, atol=1e-6)
    assert float(short.nodes.max()) <= lam.max() + 1e-9 and float(short.nodes.min()) >= lam.min() - 1e-9
    np.testing.assert_allclose(short.nodes.max(), lam.max(), rtol=1e-3)  # extremes converge first


def test_algorithms_are_jit_compatible_and_do_not_recompile(indefinite):
    a, _ = indefinite

    @jax.jit
    def run(matrix, key):
        op = cv.from_matrix(matrix)
        return (
            cv.hutchinson_trace(op, key, num_probes=10),
            cv.hutchpp_trace(op, key, num_matvecs=12),
            cv.top_eigenpairs(op, key, k=2, num_steps=20),
            cv.power_iteration(op, key, k=1, num_steps=30),
            cv.spectral_density(op, key, num_steps=10, num_probes=2, grid=50),
        )

    first = run(a, jax.random.key(0))
    run(a * 2, jax.random.key(1))
    assert run._cache_size() == 1
    op = cv.from_matrix(a)
    eager = cv.top_eigenpairs(op, jax.random.key(0), k=2, num_steps=20)
    np.testing.assert_allclose(first[2].eigenvalues, eager.eigenvalues, rtol=1e-10)
    # Same key, same numbers.
    np.testing.assert_array_equal(run(a, jax.random.key(0))[0].estimate, first[0].estimate)


def test_eager_validation_names_bad_values(indefinite):
    op = cv.from_matrix(indefinite[0])
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_steps must be in"):
        cv.lanczos(op, key, num_steps=N + 1)
    with pytest.raises(ValueError, match="which must be one of"):
        cv.top_eigenpairs(op, key, which="middle")
    with pytest.raises(ValueError, match="distribution must be one of"):
        cv.hutchinson_trace(op, key, distribution="uniform")
    with pytest.raises(ValueError, match="num_matvecs must be >= 4"):
        cv.hutchpp_trace(op, key, num_matvecs=3)
    with pytest.raises(ValueError, match="k must be in"):
        cv.top_eigenpairs(op, key, k=50, num_steps=20)


def test_probe_chunking_does_not_change_the_numbers(indefinite):
    # chunk_size=1 calls the matvec unbatched (no size-1 vmap); chunks of 4 over 10 probes
    # leave a remainder of 2. Same keys, so the same probes and the same estimates.
    op = cv.from_matrix(indefinite[0])
    key = jax.random.key(3)
    for chunk in (1, 4):
        ref = [
            cv.hutchinson_trace(op, key, num_probes=10, chunk_size=chunk),
            cv.hutchinson_trace(op, key, num_probes=20, rel_std_error=1e-9, chunk_size=chunk),  # runs to 20
            cv.hutchpp_trace(op, key, num_matvecs=12, chunk_size=chunk),
        ]
        if chunk == 1:
            base = ref
        else:
            for a, b in zip(base, ref):
                np.testing.assert_allclose(a.estimate, b.estimate, rtol=1e-12)
                np.testing.assert_allclose(a.std_error, b.std_error, rtol=1e-9)
    d1 = cv.hutchinson_diagonal(op, key, num_probes=10, chunk_size=1)
    d4 = cv.hutchinson_diagonal(op, key, num_probes=10, chunk_size=4)
    np.testing.assert_allclose(d1.estimate, d4.estimate, rtol=1e-12, atol=1e-12)
    s1 = cv.spectral_density(op, key, num_steps=12, num_probes=3, chunk_size=1)
    s2 = cv.spectral_density(op, key, num_steps=12, num_probes=3, chunk_size=2)
    np.testing.assert_allclose(s1.nodes, s2.nodes, atol=1e-10)
    np.testing.assert_allclose(s1.weights, s2.weights, atol=1e-10)


def test_lanczos_restarts_stay_orthogonal_on_repeated_eigenvalues():
    # 4 distinct eigenvalues, each 15 times: the Krylov space of one start vector has dimension
    # 4, so a 60-step run breaks down and restarts repeatedly; the conditional second
    # Gram-Schmidt pass must keep the basis orthonormal and recover the whole spectrum.
    lam = np.repeat([3.0, 1.0, -0.5, -2.0], N // 4)
    a, lam = prescribed(lam, seed=4)
    res = cv.lanczos(cv.from_matrix(a), jax.random.key(0), num_steps=N)
    np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(N), atol=FULL_LANCZOS_ATOL)
    np.testing.assert_allclose(np.sort(res.ritz()[0]), np.sort(lam), atol=FULL_LANCZOS_ATOL)
    assert int(jnp.sum(res.beta[:-1] == 0)) >= 3  # breakdowns were recorded
