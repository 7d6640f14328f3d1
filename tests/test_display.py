"""Result objects print one readable line (and render Markdown in notebooks) without losing tuple behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losslab import History, TrainResult, data
from losslab import curvature as cv
from losslab.directions import HessianDirections, PlaneBasis, TrajectoryPCA
from losslab.natural import CGResult
from losslab.sharpness import MeasureResult
from losslab.surface import LineSlice, PathResult, PlaneSlice
from losslab.symmetry import SymmetryReport

# A one-line summary should fit a notebook cell without wrapping into a wall of numbers.
MAX_REPR = 300


def one_line(obj) -> str:
    text = repr(obj)
    assert "\n" not in text and len(text) <= MAX_REPR, text
    assert text.startswith(type(obj).__name__ + "("), text
    return text


def test_measure_result_repr_and_tuple_behaviour():
    m = MeasureResult(173.46, 4.99, {"num_probes": 50, "curve": [1, 2, 3]})
    text = one_line(m)
    assert "173.5 ± 5" in text and "num_probes=50" in text and "curve" not in text
    value, err, info = m  # still a NamedTuple
    assert (value, err, info["num_probes"]) == (173.46, 4.99, 50) and m._fields == ("value", "std_error", "info")
    assert float(m) == 173.46
    assert "±" not in one_line(MeasureResult(0.5, None, {}))


def test_symmetry_report_repr():
    r = SymmetryReport(before=1.0, after=9.0, relative_change=8.0, declared_invariant=False, changed=True)
    assert "change=800%" in one_line(r) and "consistent" in repr(r)
    bad = r._replace(declared_invariant=True)
    assert "INCONSISTENT" in one_line(bad) and not bad.consistent
    assert tuple(r) == (1.0, 9.0, 8.0, False, True)


def test_slice_reprs():
    t = np.linspace(-1, 1, 5)
    line = LineSlice(t, {"train_loss": np.array([3.0, 1.0, 0.5, 1.0, 3.0])})
    assert "5 points" in one_line(line) and "train_loss ∈ [0.5, 3]" in repr(line)
    plane = PlaneSlice(t, t[:3], {"train_loss": np.arange(15.0).reshape(5, 3) + 1})
    assert "5×3 grid" in one_line(plane) and "train_loss ∈ [1, 15]" in repr(plane)
    x, y, values = plane
    assert values["train_loss"].shape == (5, 3)
    path = PathResult(np.linspace(0, 1, 4), {"train_loss": np.ones(4)}, 0.0, 0.0, "train_loss")
    assert "linear" in one_line(path) and "barrier=0" in repr(path)
    curved = path._replace(control={"w": np.ones(3)}, train_losses=np.ones(7))
    assert "Bezier, trained 7 steps" in one_line(curved)


def test_train_result_and_history_reprs():
    h = History(
        epoch=[1, 2, 3],
        step=[10, 20, 30],
        train_loss=[2.0, 1.0, 0.5],
        train_eval_loss=[1.9, 0.9, 0.4],
        train_accuracy=[0.3, 0.6, 0.9],
        val_loss=[2.0, 1.2, 1.1],
        val_accuracy=[0.3, 0.5, 0.55],
        stop_reason="reached the epoch cap (3)",
    )
    text = one_line(h)
    assert "3 epochs, 30 steps" in text and "train_eval_loss 1.9 → 0.4" in text and "epoch cap" in text
    md = h._repr_markdown_()
    assert md.count("\n| ") == 4  # header + 3 epochs
    long = History(**{**h.as_dict(), **{k: list(v) * 10 for k, v in h.as_dict().items() if isinstance(v, list)}})
    assert "…" in long._repr_markdown_()  # long histories are abbreviated
    assert repr(History()) == "History(no epochs)"
    params = {"w": np.zeros((3, 4)), "b": np.zeros(4)}
    res = TrainResult(params, {}, h, [(0, params)], objective="obj")
    assert "16 params, 1 snapshots" in one_line(res) and "30 steps" in repr(res)
    p, state, history, snapshots, objective, opt_state, key, epoch = res  # still a NamedTuple
    assert history is h and "History" in res._repr_markdown_()


def test_cg_and_curvature_results_repr_concrete_and_traced():
    res = CGResult(jnp.ones(5), jnp.asarray(3), jnp.asarray(1e-7), jnp.asarray(True), jnp.asarray(3))
    text = one_line(res)
    assert "converged=True after 3 steps" in text and "x (5,)" in text and res.x.shape == (5,)
    assert "estimate=15 ± 0" in one_line(cv.TraceResult(jnp.asarray(15.0), jnp.asarray(0.0), jnp.asarray(4)))
    assert "n=5" in one_line(cv.DiagonalResult(jnp.arange(5.0), jnp.zeros(5), jnp.asarray(4)))
    eig = cv.EigenResult(jnp.array([5.0, 4.0]), jnp.eye(2, 5), jnp.zeros(2), jnp.asarray(5), jnp.array([True, True]))
    assert "eigenvalues=[5, 4]" in one_line(eig) and "2/2 converged" in repr(eig)
    lanczos = cv.LanczosResult(jnp.ones(5), jnp.ones(5), jnp.eye(5), jnp.asarray(5))
    assert "basis (5, 5)" in one_line(lanczos)
    dens = cv.exact_density(jnp.array([-1.0, 1.0, 2.0, 3.0]), grid=50)
    assert "negative fraction 25.00%" in one_line(dens)

    # Inside a traced function (and on shape structs) printing must not raise: numbers become "?".
    seen = []

    def traced(m):
        r = cv.top_eigenpairs(cv.from_matrix(m), jax.random.key(0), k=1, num_steps=3)
        seen.append(repr(r))
        return r

    shapes = jax.eval_shape(traced, jnp.eye(3))
    assert "eigenvalues=[?]" in seen[0] and "eigenvalues=[?]" in repr(shapes)


def test_direction_results_repr():
    tree = {"w": np.ones((100, 100))}  # the default repr would print every entry
    pca = TrajectoryPCA(tree, (tree, tree), np.array([0.8, 0.1]), np.ones(2), np.zeros((4, 2)), np.arange(4))
    assert "explained variance [0.8, 0.1]" in one_line(pca) and "epochs 0–3" in repr(pca)
    assert "eigenvalues=[3, 2]" in one_line(HessianDirections((tree, tree), np.array([3.0, 2.0])))
    assert "(0, 0); (1, 0)" in one_line(PlaneBasis(tree, (tree, tree), np.array([[0.0, 0.0], [1.0, 0.0]])))


def test_dataset_repr():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = (np.arange(40) % 3).astype(np.int32)
    ds = data.Dataset("toy", "classification", 3, x, y, x[:10], y[:10], x[:5], y[:5])
    text = one_line(ds)  # the dataclass default would print all three splits' arrays
    assert text == "Dataset('toy', classification, input_shape=(8,), num_classes=3, train=40, val=10, test=5)"


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
