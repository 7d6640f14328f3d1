"""One network, five frameworks, the same numbers: NNX, linen, equinox, haiku and plain JAX.

The network (Conv1D -> BatchNorm (eval mode, stored statistics) -> ReLU -> Dense -> ReLU -> Dense)
is built in each framework with identical weights; in float64 the loss, gradient, HVP, GGN-vp,
exact backprop trace, top-3 eigenvalues, a 5x5 plane and three sharpness measures agree to 1e-10.
Vectors are compared in one canonical (Flax) layout; each framework's own layout is mapped to it.
"""

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from losslab import Objective, adapters, curvature, data, sharpness, surface

AGREE = 1e-10  # float64: the frameworks differ only in summation order
W, C_IN, C_OUT, K, HIDDEN, CLASSES = 6, 2, 3, 3, 4, 3
FLAT = (W - K + 1) * C_OUT


pytestmark = pytest.mark.usefixtures("x64_module")


def canonical_weights():
    rng = np.random.default_rng(0)
    return {
        "conv_k": rng.normal(size=(K, C_IN, C_OUT)) * 0.6, "conv_b": rng.normal(size=C_OUT) * 0.1,
        "bn_scale": 1 + 0.2 * rng.normal(size=C_OUT), "bn_bias": 0.1 * rng.normal(size=C_OUT),
        "bn_mean": 0.3 * rng.normal(size=C_OUT), "bn_var": 0.5 + rng.random(C_OUT),
        "d1_k": rng.normal(size=(FLAT, HIDDEN)) * 0.4, "d1_b": 0.1 * rng.normal(size=HIDDEN),
        "d2_k": rng.normal(size=(HIDDEN, CLASSES)) * 0.5, "d2_b": 0.1 * rng.normal(size=CLASSES),
    }


def dataset():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, W, C_IN)).astype(np.float32) for n in (40, 8, 16)]
    ys = [rng.integers(0, CLASSES, size=n).astype(np.int32) for n in (40, 8, 16)]
    return data.Dataset("toy", "classification", CLASSES, xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])


# --------------------------------------------------------------------------- the five builds
# Each returns (objective, to_canonical(params_like) -> dict, from_canonical(dict) -> params_like).

CANON_PARAMS = ("conv_k", "conv_b", "bn_scale", "bn_bias", "d1_k", "d1_b", "d2_k", "d2_b")


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(C_IN, C_OUT, kernel_size=(K,), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(C_OUT, rngs=rngs)
        self.d1, self.d2 = nnx.Linear(FLAT, HIDDEN, rngs=rngs), nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, x, train=False):
        h = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
        return self.d2(nnx.relu(self.d1(h.reshape(h.shape[0], -1))))


def build_nnx(w, ds):
    m = NNXNet(nnx.Rngs(0))
    m.conv.kernel.value, m.conv.bias.value = jnp.asarray(w["conv_k"]), jnp.asarray(w["conv_b"])
    m.bn.scale.value, m.bn.bias.value = jnp.asarray(w["bn_scale"]), jnp.asarray(w["bn_bias"])
    m.bn.mean.value, m.bn.var.value = jnp.asarray(w["bn_mean"]), jnp.asarray(w["bn_var"])
    m.d1.kernel.value, m.d1.bias.value = jnp.asarray(w["d1_k"]), jnp.asarray(w["d1_b"])
    m.d2.kernel.value, m.d2.bias.value = jnp.asarray(w["d2_k"]), jnp.asarray(w["d2_b"])
    names = {"conv_k": ("conv", "kernel"), "conv_b": ("conv", "bias"), "bn_scale": ("bn", "scale"),
             "bn_bias": ("bn", "bias"), "d1_k": ("d1", "kernel"), "d1_b": ("d1", "bias"),
             "d2_k": ("d2", "kernel"), "d2_b": ("d2", "bias")}
    return Objective(m, "cross_entropy", ds, dtype=jnp.float64), *dict_maps(names)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(C_OUT, (K,), padding="VALID")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, epsilon=1e-5)(h))
        h = nn.relu(nn.Dense(HIDDEN)(h.reshape(h.shape[0], -1)))
        return nn.Dense(CLASSES)(h)


def build_linen(w, ds):
    module = LinenNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, W, C_IN)))
    params = {"Conv_0": {"kernel": w["conv_k"], "bias": w["conv_b"]},
              "BatchNorm_0": {"scale": w["bn_scale"], "bias": w["bn_bias"]},
              "Dense_0": {"kernel": w["d1_k"], "bias": w["d1_b"]}, "Dense_1": {"kernel": w["d2_k"], "bias": w["d2_b"]}}
    variables = {"params": jax.tree.map(jnp.asarray, params),
                 "batch_stats": {"BatchNorm_0": {"mean": jnp.asarray(w["bn_mean"]), "var": jnp.asarray(w["bn_var"])}}}
    names = {"conv_k": ("Conv_0", "kernel"), "conv_b": ("Conv_0", "bias"), "bn_scale": ("BatchNorm_0", "scale"),
             "bn_bias": ("BatchNorm_0", "bias"), "d1_k": ("Dense_0", "kernel"), "d1_b": ("Dense_0", "bias"),
             "d2_k": ("Dense_1", "kernel"), "d2_b": ("Dense_1", "bias")}
    return Objective(adapters.linen(module, variables), "cross_entropy", ds, dtype=jnp.float64), *dict_maps(names)


def haiku_forward(x, is_training=False):
    h = hk.Conv1D(C_OUT, K, padding="VALID", name="conv")(x)
    h = hk.BatchNorm(True, True, 0.9, eps=1e-5, name="bn")(h, is_training=is_training)
    h = jax.nn.relu(h)
    h = jax.nn.relu(hk.Linear(HIDDEN, name="d1")(h.reshape(h.shape[0], -1)))
    return hk.Linear(CLASSES, name="d2")(h)


HAIKU = hk.transform_with_state(haiku_forward)


def build_haiku(w, ds):
    params, state = HAIKU.init(jax.random.PRNGKey(0), jnp.zeros((1, W, C_IN)), is_training=True)
    params = {"conv": {"w": w["conv_k"], "b": w["conv_b"]},
              "bn": {"scale": w["bn_scale"].reshape(1, 1, -1), "offset": w["bn_bias"].reshape(1, 1, -1)},
              "d1": {"w": w["d1_k"], "b": w["d1_b"]}, "d2": {"w": w["d2_k"], "b": w["d2_b"]}}
    params = jax.tree.map(jnp.asarray, params)
    state = jax.tree.map(jnp.asarray, state)
    state["bn/~/mean_ema"]["average"] = jnp.asarray(w["bn_mean"]).reshape(1, 1, -1)
    state["bn/~/var_ema"]["average"] = jnp.asarray(w["bn_var"]).reshape(1, 1, -1)
    names = {"conv_k": ("conv", "w"), "conv_b": ("conv", "b"), "bn_scale": ("bn", "scale"), "bn_bias": ("bn", "offset"),
             "d1_k": ("d1", "w"), "d1_b": ("d1", "b"), "d2_k": ("d2", "w"), "d2_b": ("d2", "b")}
    shapes = {"bn_scale": (1, 1, C_OUT), "bn_bias": (1, 1, C_OUT)}
    bound = adapters.haiku(HAIKU, params, state, train_keyword="is_training")
    return Objective(bound, "cross_entropy", ds, dtype=jnp.float64), *dict_maps(names, shapes)


class EqxNet(eqx.Module):
    conv: eqx.nn.Conv1d
    bn: eqx.nn.BatchNorm
    d1: eqx.nn.Linear
    d2: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv1d(C_IN, C_OUT, K, key=k[0])
        self.bn = eqx.nn.BatchNorm(C_OUT, axis_name="batch", mode="ema")
        self.d1, self.d2 = eqx.nn.Linear(FLAT, HIDDEN, key=k[1]), eqx.nn.Linear(HIDDEN, CLASSES, key=k[2])

    def __call__(self, x, state):
        h = self.conv(x.T)  # equinox is channels-first and per example: (C, W)
        h, state = self.bn(h, state)
        h = jax.nn.relu(h).T.reshape(-1)  # back to (W, C) before flattening, as the Flax layout
        return self.d2(jax.nn.relu(self.d1(h))), state


def build_equinox(w, ds):
    model, state = eqx.nn.make_with_state(EqxNet)(jax.random.PRNGKey(0))
    j = jnp.asarray
    model = eqx.tree_at(lambda m: (m.conv.weight, m.conv.bias, m.bn.weight, m.bn.bias, m.d1.weight, m.d1.bias,
                                   m.d2.weight, m.d2.bias), model,
                        (j(w["conv_k"].transpose(2, 1, 0)), j(w["conv_b"][:, None]), j(w["bn_scale"]), j(w["bn_bias"]),
                         j(w["d1_k"].T), j(w["d1_b"]), j(w["d2_k"].T), j(w["d2_b"])))
    state = state.set(model.bn.ema_state_index, (j(w["bn_mean"]), j(w["bn_var"])))
    state = state.set(model.bn.ema_first_time_index, jnp.array(False))

    def to_canonical(p):
        return {"conv_k": p.conv.weight.transpose(2, 1, 0), "conv_b": p.conv.bias[:, 0], "bn_scale": p.bn.weight,
                "bn_bias": p.bn.bias, "d1_k": p.d1.weight.T, "d1_b": p.d1.bias, "d2_k": p.d2.weight.T,
                "d2_b": p.d2.bias}

    def from_canonical(c, like):
        return eqx.tree_at(lambda m: (m.conv.weight, m.conv.bias, m.bn.weight, m.bn.bias, m.d1.weight, m.d1.bias,
                                      m.d2.weight, m.d2.bias), like,
                           (c["conv_k"].transpose(2, 1, 0), c["conv_b"][:, None], c["bn_scale"], c["bn_bias"],
                            c["d1_k"].T, c["d1_b"], c["d2_k"].T, c["d2_b"]))

    return Objective(adapters.equinox(model, state), "cross_entropy", ds, dtype=jnp.float64), to_canonical, from_canonical


def plain_apply(params, state, x, *, train=False, key=None):
    h = jax.lax.conv_general_dilated(x, params["conv"]["k"], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
    h = h + params["conv"]["b"]
    if train:
        mean, var = jnp.mean(h, (0, 1)), jnp.var(h, (0, 1))
        state = {"mean": 0.9 * state["mean"] + 0.1 * mean, "var": 0.9 * state["var"] + 0.1 * var}
    else:
        mean, var = state["mean"], state["var"]
    h = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-5) * params["bn"]["scale"] + params["bn"]["bias"])
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["d1"]["k"] + params["d1"]["b"])
    out = h @ params["d2"]["k"] + params["d2"]["b"]
    return (out, state) if train else out


def build_plain(w, ds):
    j = jnp.asarray
    params = {"conv": {"k": j(w["conv_k"]), "b": j(w["conv_b"])}, "bn": {"scale": j(w["bn_scale"]), "bias": j(w["bn_bias"])},
              "d1": {"k": j(w["d1_k"]), "b": j(w["d1_b"])}, "d2": {"k": j(w["d2_k"]), "b": j(w["d2_b"])}}
    state = {"mean": j(w["bn_mean"]), "var": j(w["bn_var"])}
    names = {"conv_k": ("conv", "k"), "conv_b": ("conv", "b"), "bn_scale": ("bn", "scale"), "bn_bias": ("bn", "bias"),
             "d1_k": ("d1", "k"), "d1_b": ("d1", "b"), "d2_k": ("d2", "k"), "d2_b": ("d2", "b")}
    obj = Objective.from_apply(plain_apply, params, "cross_entropy", ds, state=state, dtype=jnp.float64)
    return obj, *dict_maps(names)


def dict_maps(names, shapes=None):
    shapes = shapes or {}

    def to_canonical(p):
        return {c: p[a][b].reshape(-1) if c in shapes else p[a][b] for c, (a, b) in names.items()}

    def from_canonical(c, like):
        out = jax.tree.map(lambda x: x, like)
        for k, (a, b) in names.items():
            out[a][b] = c[k].reshape(shapes[k]) if k in shapes else c[k]
        return out

    return to_canonical, from_canonical


BUILDERS = {"nnx": build_nnx, "linen": build_linen, "equinox": build_equinox, "haiku": build_haiku, "plain": build_plain}


@pytest.fixture(scope="module")
def builds():
    w, ds = canonical_weights(), dataset()
    return {name: build(w, ds) for name, build in BUILDERS.items()}


def flat(c):
    return np.concatenate([np.asarray(c[k]).reshape(-1) for k in CANON_PARAMS])


def canon_direction(seed):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=np.shape(v))) for k, v in canonical_weights().items() if k in CANON_PARAMS}


def test_loss_gradient_hvp_ggn_agree_across_frameworks(builds):
    ref = None
    v = canon_direction(2)
    for name, (obj, to_c, from_c) in builds.items():
        p = obj.params
        tangent = from_c(v, p)
        g = flat(to_c(jax.grad(obj.loss)(p)))
        hvp = flat(to_c(curvature.hessian_operator(obj).pytree_matvec(tangent)))
        ggn = flat(to_c(curvature.ggn_operator(obj).pytree_matvec(tangent)))
        row = (float(obj.loss(p)), g, hvp, ggn)
        if ref is None:
            ref = row
            assert np.abs(hvp).max() > 1e-3 and np.abs(ggn).max() > 1e-3
            continue
        assert abs(row[0] - ref[0]) < AGREE, name
        for a, b, what in zip(row[1:], ref[1:], ("grad", "hvp", "ggn")):
            np.testing.assert_allclose(a, b, atol=AGREE, rtol=0, err_msg=f"{name} {what}")


def test_trace_eigenvalues_plane_and_measures_agree_across_frameworks(builds):
    ref = None
    d1, d2 = canon_direction(3), canon_direction(4)
    key = jax.random.key(0)
    for name, (obj, _to_c, from_c) in builds.items():
        p = obj.params
        trace = curvature.hessian_trace(obj, method="backprop").value
        eig = curvature.hessian_eigenvalues(obj, key=key, k=3, num_steps=obj.num_params).eigenvalues
        plane = surface.plane(obj, p, from_c(d1, p), from_c(d2, p), x_span=(-0.5, 0.5), y_span=(-0.5, 0.5), num_points=5,
                              metrics=("train_loss",)).values["train_loss"]
        measures = [sharpness.compute(m, obj, p, key).value for m in ("fisher_rao_norm", "l2_norm", "gap_loss")]
        row = (np.array([trace]), np.asarray(eig), np.asarray(plane), np.asarray(measures))
        if ref is None:
            ref = row
            continue
        for a, b, what in zip(row, ref, ("exact trace", "top-3 eigenvalues", "5x5 plane", "measures")):
            np.testing.assert_allclose(a, b, atol=AGREE, rtol=0, err_msg=f"{name} {what}")


def test_unsupported_model_objects_are_refused_up_front(builds):
    ds = dataset()
    with pytest.raises(TypeError, match="a flax.linen module, pass losslab.adapters.linen"):
        Objective(LinenNet(), "cross_entropy", ds)
    with pytest.raises(TypeError, match="an equinox module, pass losslab.adapters.equinox"):
        Objective(EqxNet(jax.random.PRNGKey(0)), "cross_entropy", ds)
    with pytest.raises(TypeError, match="a haiku transform, pass losslab.adapters.haiku"):
        Objective(HAIKU, "cross_entropy", ds)
    with pytest.raises(TypeError, match="plain function, use Objective.from_apply"):
        Objective(plain_apply, "cross_entropy", ds)
    with pytest.raises(TypeError, match="params leaf 'k' is"):
        Objective.from_apply(lambda p, x: x, {"k": 3}, "cross_entropy", ds)
    obj = builds["linen"][0]
    with pytest.raises(ValueError, match="the layer tap .* needs a Flax NNX model; this is a linen model"):
        curvature.kfac_operator(obj, obj.params)


def test_filter_normalisation_follows_each_frameworks_kernel_layout(builds):
    """The same Gaussian draw, normalised per filter in each framework's own layout, is the same direction."""
    from losslab import directions

    raw = canon_direction(5)
    ref = None
    for name, (obj, to_c, from_c) in builds.items():
        d = directions.normalize_direction(from_c(raw, obj.params), obj.params, filter_axis=obj.model.filter_axis)
        got = flat(to_c(d))
        if ref is None:
            ref = got
            continue
        np.testing.assert_allclose(got, ref, atol=AGREE, rtol=0, err_msg=name)
    assert builds["equinox"][0].model.filter_axis == 0 and builds["nnx"][0].model.filter_axis == -1
    with pytest.raises(ValueError, match="filter_axis must be -1"):
        directions.normalize_direction(raw, raw, filter_axis=1)
