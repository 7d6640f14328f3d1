"""Every figure function takes an optional ``ax`` and returns the figure it drew on."""

import importlib
import inspect

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from losslab.plot import natural, sharpness, spectrum, surface, training  # noqa: E402

# Helpers that draw nothing: writing files, stamping metadata, computing contour levels.
NOT_DRAWING = {"save", "figure_metadata", "log_levels"}


def drawing_functions():
    for module in (natural, sharpness, spectrum, surface, training):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_") and name not in NOT_DRAWING:
                yield f"{module.__name__.rsplit('.', 1)[-1]}.{name}", fn


@pytest.mark.parametrize("name, fn", list(drawing_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_figure_function_takes_ax(name, fn):
    param = inspect.signature(fn).parameters.get("ax")
    assert param is not None and param.default is None, f"{name} needs an optional ax=None"
    assert "eturns" in (fn.__doc__ or ""), f"{name}: the docstring should say it returns the figure"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_draws_into_a_given_ax_or_a_new_figure():
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    z = 1.0 + np.add.outer(x**2, y**2)
    fig, axes = plt.subplots(1, 3)
    assert surface.contour(x, y, z, ax=axes[0]) is fig
    assert surface.trajectory(np.zeros((3, 2)), ax=axes[0]) is fig
    dens = {"grid": np.linspace(-1, 1, 50), "density": np.exp(-(np.linspace(-1, 1, 50) ** 2))}
    assert spectrum.density(dens, ax=axes[1]) is fig
    history = {"epoch": [1, 2], "train_eval_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "best_epoch": 2}
    assert training.training_curves({"run": history}, ax=axes[2]) is fig
    new = surface.contour(x, y, z)
    assert new is not fig and len(new.axes) == 2  # the axis and its colour bar


def test_measure_grid_into_given_axes():
    rows = [{"a": float(i), "b": float(i) ** 2, "gap_error": 0.1 * i} for i in range(1, 6)]
    fig, axes = plt.subplots(2, 2)
    assert sharpness.measure_grid(rows, ["a", "b", "a"], ax=axes) is fig
    assert not axes[1, 1].axison  # the spare panel is switched off
    with pytest.raises(ValueError, match="2 axes for 3 measures"):
        sharpness.measure_grid(rows, ["a", "b", "a"], ax=axes[0])
    assert len(sharpness.measure_grid(rows, ["a"], ncols=2).axes) == 2


def test_plot_package_exports_its_modules():
    plot = importlib.import_module("losslab.plot")
    for name in ("natural", "sharpness", "spectrum", "surface", "training"):
        assert name in plot.__all__
