"""losslab.weights: params and state from npz / safetensors / orbax into every model kind, by name mapping,
with one error message that lists everything that does not fit."""

import os

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import linen

import losslab
from losslab import weights

FORMATS = ["npz", "safetensors", "orbax"]
SUFFIX = {"npz": ".npz", "safetensors": ".safetensors", "orbax": ""}


def file_for(tmp_path, fmt, stem="w"):
    return str(tmp_path / f"{stem}{SUFFIX[fmt]}")


def zeros_like(tree):
    """A target with the right structure, shapes and dtypes but other values: a load must fill it."""
    return jax.tree.map(jnp.zeros_like, tree)


def assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.fixture(scope="module")
def objective():
    model = losslab.models.create("mlp", input_shape=(5,), output_dim=3, widths=(4,), batch_norm=True, seed=0)
    ds = losslab.data.load("gaussian_mixture", num_train=32, num_test=8, num_classes=3, dim=5, seed=0)
    return losslab.Objective(model, "cross_entropy", ds)


class TwoLayer(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(3)(jnp.tanh(linen.Dense(4)(x)))


class Equinox(eqx.Module):
    d1: eqx.nn.Linear
    d2: eqx.nn.Linear
    act: str = eqx.field(static=True, default="tanh")

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.d1, self.d2 = eqx.nn.Linear(5, 4, key=k1), eqx.nn.Linear(4, 3, key=k2)

    def __call__(self, x):
        return self.d2(jnp.tanh(self.d1(x)))


def linen_params():
    return TwoLayer().init(jax.random.key(0), jnp.ones((1, 5)))["params"]


def equinox_params():
    return eqx.partition(Equinox(jax.random.key(0)), eqx.is_inexact_array)[0]


def haiku_params():
    transformed = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([4, 3])(x)))
    return transformed.init(jax.random.key(0), jnp.ones((1, 5)))


def plain_params():
    k = jax.random.split(jax.random.key(0), 3)
    return ([jax.random.normal(k[0], (5, 4)), jnp.zeros(4)], (jax.random.normal(k[1], (4, 3)), {"b": jnp.ones(3)}))


KINDS = {"linen": linen_params, "equinox": equinox_params, "haiku": haiku_params, "plain": plain_params}
EXPECTED_NAMES = {
    "linen": ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"],
    "equinox": ["d1/weight", "d1/bias", "d2/weight", "d2/bias"],
    "haiku": ["mlp/~/linear_0/b", "mlp/~/linear_0/w", "mlp/~/linear_1/b", "mlp/~/linear_1/w"],
    "plain": ["0/0", "0/1", "1/0", "1/1/b"],
}


# ----------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_nnx_params_and_state_round_trip_give_the_same_loss(objective, fmt, tmp_path):
    p_path, s_path = file_for(tmp_path, fmt, "params"), file_for(tmp_path, fmt, "state")
    assert weights.save(p_path, objective.params) == p_path
    weights.save(s_path, objective.state)
    params = weights.load(p_path, zeros_like(objective.params))
    state = weights.load(s_path, zeros_like(objective.state))
    assert_trees_equal(params, objective.params)
    assert_trees_equal(state, objective.state)
    assert weights.names(objective.state) == ["norms/0/mean", "norms/0/var"]
    restored = objective.replace(state=state)
    assert float(restored.loss(params)) == float(objective.loss(objective.params))


def test_params_and_state_together_in_one_file(objective, tmp_path):
    both = {"params": objective.params, "state": objective.state}
    weights.save(tmp_path / "both.npz", both)
    loaded = weights.load(tmp_path / "both.npz", zeros_like(both))
    assert_trees_equal(loaded, both)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_model_kind_round_trips(kind, fmt, tmp_path):
    params = KINDS[kind]()
    assert weights.names(params) == EXPECTED_NAMES[kind]
    path = weights.save(file_for(tmp_path, fmt), params)
    assert sorted(weights.read(path)) == sorted(EXPECTED_NAMES[kind])
    loaded = weights.load(path, zeros_like(params))
    assert_trees_equal(loaded, params)
    if kind == "equinox":
        static = eqx.partition(Equinox(jax.random.key(0)), eqx.is_inexact_array)[1]
        x = jnp.ones(5)
        np.testing.assert_array_equal(eqx.combine(loaded, static)(x), eqx.combine(params, static)(x))


def test_an_orbax_checkpoint_written_elsewhere_by_a_prefix_mapping(objective, tmp_path):
    path = str(tmp_path / "ckpt")
    with ocp.StandardCheckpointer() as checkpointer:  # what a training script elsewhere would write
        checkpointer.save(path, {"params": objective.params, "state": objective.state, "step": np.int32(7)})
    assert "params/layers/0/kernel" in weights.read(path)
    with pytest.raises(ValueError, match=r"(?s)unexpected \(3\).*'state/norms/0/mean'.*'step'"):
        weights.load(path, objective.params, mapping=[(r"^", "params/")])
    params = weights.load(path, zeros_like(objective.params), mapping=[(r"^", "params/")], strict=False)
    state = weights.load(path, zeros_like(objective.state), mapping=[(r"^", "state/")], strict=False)
    assert float(objective.replace(state=state).loss(params)) == float(objective.loss(objective.params))


def test_shape_dtype_structs_are_enough_as_the_target(tmp_path):
    params = linen_params()
    weights.save(tmp_path / "w.npz", params)
    loaded = weights.load(tmp_path / "w.npz", jax.eval_shape(lambda: params))
    assert_trees_equal(loaded, params)


def test_save_is_atomic_and_overwrites(tmp_path):
    params = plain_params()
    for fmt in FORMATS:
        path = file_for(tmp_path, fmt)
        weights.save(path, zeros_like(params))
        weights.save(path, params)  # replaces the first file / folder
        assert_trees_equal(weights.load(path, params), params)
    assert sorted(os.listdir(tmp_path)) == ["w", "w.npz", "w.safetensors"]  # no temporary files left


def test_names_that_are_numpy_keywords_are_fine(tmp_path):
    tree = {"file": jnp.ones(2), "allow_pickle": jnp.zeros(3)}
    weights.save(tmp_path / "w.npz", tree)
    assert_trees_equal(weights.load(tmp_path / "w.npz", tree), tree)


# ----------------------------------------------------------------------------
# Mappings: a PyTorch-style state dict into Flax kernels


def torch_state_dict(params):
    """What ``torch.nn.Sequential``-like code would store for the NNX MLP: Linear weights are (out, in).

    Contiguous copies: ``safetensors.numpy.save_file`` writes a transposed view's buffer as if it were C-ordered.
    """
    state = {
        "fc1.weight": np.asarray(params["layers"][0]["kernel"]).T,
        "fc1.bias": np.asarray(params["layers"][0]["bias"]),
        "fc2.weight": np.asarray(params["head"]["kernel"]).T,
        "fc2.bias": np.asarray(params["head"]["bias"]),
    }
    return {name: np.ascontiguousarray(a) for name, a in state.items()}


TORCH_MAPPINGS = {
    "regex": [(r"^layers/(\d+)/", lambda m: f"fc{int(m[1]) + 1}."), (r"^head/", "fc2."), (r"kernel$", "weight")],
    "dict": {"layers/0/kernel": "fc1.weight", "layers/0/bias": "fc1.bias",
             "head/kernel": "fc2.weight", "head/bias": "fc2.bias"},
    "callable": lambda name: name.replace("layers/0/", "fc1.").replace("head/", "fc2.").replace("kernel", "weight"),
}


@pytest.mark.parametrize("how", sorted(TORCH_MAPPINGS))
def test_torch_names_and_layout_into_flax_dense_kernels(objective, how, tmp_path):
    dense = {k: objective.params[k] for k in ("layers", "head")}
    dense["layers"] = {0: objective.params["layers"][0]}
    path = str(tmp_path / "model.safetensors")
    safetensors.numpy.save_file(torch_state_dict(objective.params), path)  # written the way torch users do
    loaded = weights.load(path, zeros_like(dense), mapping=TORCH_MAPPINGS[how],
                          transpose=lambda name: name.endswith("kernel"))
    assert_trees_equal(loaded, dense)


def test_save_writes_transposed_views_in_their_logical_order(tmp_path):
    tree = {"k": jnp.arange(6.0).reshape(2, 3)}
    weights.save(tmp_path / "w.safetensors", {"k": np.asarray(tree["k"]).T})  # a non-contiguous view
    assert_trees_equal(weights.load(tmp_path / "w.safetensors", tree, transpose={"k"}), tree)


def test_transpose_takes_a_set_of_names(objective, tmp_path):
    kernel = {"k": objective.params["layers"][0]["kernel"]}  # (5, 4)
    weights.save(tmp_path / "w.npz", {"k": kernel["k"].T})
    assert_trees_equal(weights.load(tmp_path / "w.npz", kernel, transpose={"k"}), kernel)
    with pytest.raises(ValueError, match=r"stored \(4, 5\), expected \(5, 4\)"):
        weights.load(tmp_path / "w.npz", kernel)


# ----------------------------------------------------------------------------
# Errors: one message listing everything


def test_one_message_lists_every_missing_mis_shaped_and_unexpected_entry(objective, tmp_path):
    stored = weights.named_arrays(objective.params)
    del stored["head/bias"], stored["layers/0/bias"]
    stored["norms/0/scale"] = np.ones(7, np.float32)
    stored["extra/thing"] = np.ones(2, np.float32)
    weights.save(tmp_path / "w.npz", stored)
    with pytest.raises(weights.MismatchError) as info:
        weights.load(tmp_path / "w.npz", objective.params, mapping={"head/bias": "out.b"})
    message = str(info.value)
    for text in ("missing (2)", "'head/bias' (looked for 'out.b')", "'layers/0/bias' (looked for 'layers/0/bias')",
                 "mis-shaped (1)", "'norms/0/scale'", "stored (7,), expected (4,)",
                 "unexpected (1)", "'extra/thing' (2,)", "strict=False", "w.npz"):
        assert text in message, (text, message)
    assert info.value.missing == [("head/bias", "out.b"), ("layers/0/bias", "layers/0/bias")]
    assert [m[0] for m in info.value.misshaped] == ["norms/0/scale"]
    assert info.value.unexpected == ["extra/thing"]


def test_unexpected_entries_are_an_error_only_when_strict(tmp_path):
    params = plain_params()
    weights.save(tmp_path / "w.safetensors", {**weights.named_arrays(params), "spare": np.ones(1)})
    with pytest.raises(ValueError, match=r"(?s)unexpected \(1\).*'spare'"):
        weights.load(tmp_path / "w.safetensors", params)
    assert_trees_equal(weights.load(tmp_path / "w.safetensors", params, strict=False), params)


def test_mapping_and_transpose_names_must_be_targets(tmp_path):
    params = {"a": jnp.ones((2, 3))}
    weights.save(tmp_path / "w.npz", params)
    with pytest.raises(ValueError, match=r"non-targets \(2\): \['b', 'c'\]"):
        weights.load(tmp_path / "w.npz", params, mapping={"b": "a"}, transpose={"c"})
    with pytest.raises(ValueError, match="regex"):
        weights.load(tmp_path / "w.npz", params, mapping=[("(", "x")])
    with pytest.raises(ValueError, match="callable"):
        weights.load(tmp_path / "w.npz", params, transpose="a")


def test_a_missing_path_names_it(tmp_path):
    path = str(tmp_path / "nothing_here.npz")
    with pytest.raises(FileNotFoundError, match="nothing_here.npz"):
        weights.load(path, plain_params())


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_a_truncated_file_is_a_value_error_naming_file_and_format(fmt, keep, tmp_path):
    path = weights.save(file_for(tmp_path, fmt), plain_params())
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=rf"w\{SUFFIX[fmt]}' is not a readable {fmt} file"):
        weights.load(path, plain_params())


def test_an_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "w.npz", a=np.array([1, "x", None], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        weights.load(tmp_path / "w.npz", {"a": jnp.ones(3)})


def test_a_folder_that_is_no_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not an orbax checkpoint"):
        weights.load(tmp_path / "ckpt", plain_params())
    (tmp_path / "ckpt" / "10").mkdir()  # a CheckpointManager root: steps as sub-folders
    with pytest.raises(ValueError, match=r"CheckpointManager folder.*ckpt/10/default"):
        weights.load(tmp_path / "ckpt", plain_params())
    with pytest.raises(ValueError, match="is a folder, but npz weights are one file"):
        weights.load(tmp_path / "ckpt", plain_params(), format="npz")


def test_unknown_extension_and_format(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"\x80\x02")
    with pytest.raises(ValueError, match=r"(?s)w\.pt.*npz.*safetensors.*orbax"):
        weights.load(path, plain_params())
    with pytest.raises(ValueError, match="valid weights format names: npz, orbax, safetensors"):
        weights.load(path, plain_params(), format="torch")
    with pytest.raises(ValueError, match="is a file, but orbax weights are a folder"):
        weights.load(path, plain_params(), format="orbax")
    with pytest.raises(ValueError, match="w.pt"):
        weights.save(path, plain_params())


def test_npz_refuses_bfloat16_rather_than_storing_bytes(tmp_path):
    tree = {"a": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match="bfloat16"):
        weights.save(tmp_path / "w.npz", tree)
    np.savez(tmp_path / "raw.npz", a=np.asarray(tree["a"]))  # numpy keeps only the bytes: void, 2 per element
    with pytest.raises(ValueError, match=r"'a': stored \(3,\) of non-numeric \|V2, expected \(3,\)"):
        weights.load(tmp_path / "raw.npz", tree)
    weights.save(tmp_path / "w.safetensors", tree)
    assert_trees_equal(weights.load(tmp_path / "w.safetensors", tree), tree)


# ----------------------------------------------------------------------------
# Dtypes


def test_dtype_casts_float_leaves_to_float64_and_keeps_integers(tmp_path):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        tree = {"w": jnp.ones((2, 3), jnp.float32), "steps": jnp.arange(3, dtype=jnp.int32)}
        weights.save(tmp_path / "w.npz", tree)
        loaded = weights.load(tmp_path / "w.npz", tree, dtype=jnp.float64)
        assert loaded["w"].dtype == jnp.float64 and loaded["steps"].dtype == jnp.int32
        like64 = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, tree)
        assert weights.load(tmp_path / "w.npz", like64)["w"].dtype == jnp.float64  # the target's dtype
        np.testing.assert_array_equal(loaded["w"], np.ones((2, 3)))
    finally:
        jax.config.update("jax_enable_x64", previous)
