"""Sharded probes and data chunks give the single-device numbers (4 forced host devices, in a subprocess)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    from losslab import Objective, models
    from losslab import curvature as cv

    class Toy:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.x_train, self.y_train = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
            self.x_val = self.y_val = self.x_test = self.y_test = None
            self.task, self.num_classes, self.name = "classification", 3, "toy"

    model = models.create("mlp", input_shape=(4,), output_dim=3, widths=(6,), activation="tanh")
    obj = Objective(model, "cross_entropy", Toy(), chunk_size=16, dtype=jnp.float64)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    key = jax.random.key(0)

    def compute(mesh):
        def fn(objective, params, key):
            op = cv.hessian_operator(objective, params, mesh=mesh)
            ggn = cv.ggn_operator(objective, params, mesh=mesh)
            v = jnp.ones((op.size,), jnp.float64)
            return (
                op.matvec(v),
                ggn.matvec(v),
                cv.hutchinson_trace(op, key, num_probes=12, chunk_size=4, mesh=mesh),
                cv.spectral_density(op, key, num_steps=10, num_probes=8, chunk_size=4, mesh=mesh, grid=64),
            )
        return jax.jit(fn)

    single = compute(None)(obj, obj.params, key)
    sharded = compute(mesh)(obj, obj.params, key)
    # The sharded program really splits work across devices (XLA inserts cross-device sums).
    hlo = compute(mesh).lower(obj, obj.params, key).compile().as_text()
    assert "all-reduce" in hlo or "reduce-scatter" in hlo
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # The one-liners take mesh= too.
    t1 = cv.hessian_trace(obj, obj.params, key, num_matvecs=12)
    t4 = cv.hessian_trace(obj, obj.params, key, num_matvecs=12, mesh=mesh)
    np.testing.assert_allclose(t1.value, t4.value, rtol=1e-9)
    e1 = cv.hessian_eigenvalues(obj, obj.params, key=key, k=2, num_steps=20)
    e4 = cv.hessian_eigenvalues(obj, obj.params, key=key, k=2, num_steps=20, mesh=mesh)
    np.testing.assert_allclose(np.asarray(e1.eigenvalues), np.asarray(e4.eigenvalues), rtol=1e-9)
    d1 = cv.hessian_density(obj, obj.params, key, num_steps=10, num_probes=4)
    d4 = cv.hessian_density(obj, obj.params, key, num_steps=10, num_probes=4, mesh=mesh)
    np.testing.assert_allclose(np.asarray(d1.density), np.asarray(d4.density), rtol=1e-7, atol=1e-12)
    # Exact backprop diagonals: data rows sharded, same numbers.
    b1 = cv.exact_diagonal(obj, obj.params, operator="ggn").estimate
    b4 = cv.exact_diagonal(obj, obj.params, operator="ggn", mesh=mesh).estimate
    np.testing.assert_allclose(np.asarray(b1), np.asarray(b4), rtol=1e-9, atol=1e-12)
    print("OK", float(single[2].estimate), float(sharded[2].estimate))
    """
)


@pytest.mark.slow
def test_sharded_probes_and_chunks_equal_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")
