"""Mode connectivity: two independently trained minima, joined by a line and by a trained curve.

Claim (Garipov et al. 2018; Draxler et al. 2018): two networks trained from
different random seeds are separated by a high loss barrier along the straight
segment between them, yet a simple curve — a quadratic Bezier curve whose bend
point is trained — joins them through a valley of (near-)constant low loss.

What is measured. Two MLPs 40-128-128-10 (ReLU) on MNIST-1D, trained with Adam
from seeds 0 and 1 (different initialisation and batch order) until the
training cross-entropy falls below ``target_loss`` (so both endpoints sit at the
same training loss). Then, at ``num_points`` values of t in [0, 1]:

* the linear path θ(t) = θ_A + t (θ_B − θ_A) (:func:`losslab.surface.linear_barrier`);
* the quadratic Bezier curve φ(t) = (1−t)² θ_A + 2t(1−t) θ_C + t² θ_B, with the bend
  point θ_C trained to minimise E_{t~U(0,1)} L(φ(t)) by Adam on random (t, minibatch)
  pairs (:func:`losslab.surface.bezier_curve`);

and along both the training and test cross-entropy and the training and test
error. The **barrier height** of a path for a metric m is
max_t m(t) − ½ (m(0) + m(1)) (Frankle et al. 2020; "max along the path minus the
mean of the endpoints"); the height above the chord (Entezari et al. 2022) is
stored as well. The curve lies exactly in the plane through (θ_A, θ_B, θ_C), so
the training loss and test error on that plane
(:func:`losslab.directions.plane_through`, orthonormal Gram–Schmidt axes in
parameter-space units) are drawn with both paths on them (Garipov et al. 2018,
Fig. 1).

Verdict: (a) a barrier on the line: the linear train-loss barrier exceeds the endpoints'
mean training loss; (b) a low-loss curve: the Bezier barrier is at most
``LOW_BARRIER_FRACTION`` of the linear one (see :func:`verdict`).

Feeds: ``figures/mode_connectivity`` (paper figure 11; :func:`figure`).

    python -m experiments.connectivity            # the default run, ≈ 1.5 minutes on 2 CPU cores
    python -m experiments.connectivity --quick    # seconds, for tests
    python -m experiments.connectivity --out DIR --bezier-steps 5000
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, load_row, parse_config, run_sweep
from losslab import Objective, data
from losslab import directions as D
from losslab import surface as S
from losslab.results import RunStore

EXPERIMENT = "connectivity"
FIGURE = "mode_connectivity"
CLAIM = ("independently trained minima are separated by a barrier on the straight line but joined by a simple "
         "low-loss curve (Garipov et al. 2018; Draxler et al. 2018).")
# The curve is "low-loss" when its train-loss barrier is at most this fraction of the linear one.
LOW_BARRIER_FRACTION = 0.1
PATH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
# Barriers are reported for these quantities; errors are 1 − accuracy.
BARRIER_QUANTITIES = ("train_loss", "test_loss", "train_error", "test_error")


@dataclasses.dataclass(frozen=True)
class Config:
    """Two minima, their linear path, a trained Bezier curve and their plane; defaults are the real run.

    Varied: the endpoint seed (``seeds``: initialisation and batch order). Fixed: the MLP,
    Adam, MNIST-1D. Stopping: each endpoint trains until its training loss is below
    ``target_loss`` (at most ``max_epochs``). Statistic: the barrier height
    max_t L(t) − ½ (L(0) + L(1)) along each path, at ``num_points`` values of t.
    """

    num_samples: int = 5000  # MNIST-1D samples (3200 train / 800 val / 1000 test)
    widths: tuple[int, ...] = (128, 128)
    seeds: tuple[int, ...] = (0, 1)  # the two endpoints
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 300
    target_loss: float = 0.02  # train both endpoints until the training loss is below this
    num_points: int = 41  # evaluation points along each path
    bezier_steps: int = 3000
    bezier_learning_rate: float = 1e-2
    bezier_batch: int = 128
    curve_seed: int = 0
    plane_points: int = 31  # plane_points^2 grid through (θ_A, θ_B, θ_C); 0 skips the plane
    plane_margin: float = 0.2  # margin around the three points, as a fraction of their extent


def quick() -> Config:
    """A small MLP, a few epochs and Bezier steps, a 5×5 plane."""
    return Config(num_samples=1000, widths=(16,), max_epochs=4, target_loss=0.0, num_points=7, bezier_steps=60,
                  bezier_batch=32, plane_points=5)


def _objective(cfg: dict, seed: int) -> Objective:
    ds = data.load("mnist1d", seed=0, num_samples=cfg["num_samples"])
    return common.mlp_objective(ds, "cross_entropy", cfg["widths"], seed)


def _flat(params) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def _unflat(objective: Objective, flat) -> dict:
    return ravel_pytree(objective.params)[1](jax.numpy.asarray(flat))


def barrier_heights(t, values: dict) -> dict:
    """Barrier heights of one path for every quantity in :data:`BARRIER_QUANTITIES`.

    ``values`` holds ``train_loss``/``test_loss`` and ``train_accuracy``/``test_accuracy``
    at ``t`` (``t[0] = 0``, ``t[-1] = 1``). Returns ``{quantity: {"height", "chord", "max",
    "endpoints"}}``: ``height`` = max_t m(t) − ½(m(0) + m(1)) (Frankle et al. 2020), ``chord``
    = max_t [m(t) − ((1−t) m(0) + t m(1))] (Entezari et al. 2022).
    """
    out = {}
    for q in BARRIER_QUANTITIES:
        split, kind = q.split("_")
        v = np.asarray(values[f"{split}_loss"] if kind == "loss" else 1.0 - np.asarray(values[f"{split}_accuracy"]),
                       np.float64)
        chord, height = S.interpolation_barrier(t, v)
        out[q] = {"height": height, "chord": chord, "max": float(v.max()), "endpoints": [float(v[0]), float(v[-1])]}
    return out


# --------------------------------------------------------------------------
# Runs


def train_endpoint(cfg: dict) -> dict:
    """Trains one endpoint until its training loss is below ``target_loss`` (or ``max_epochs``)."""
    obj = _objective(cfg, cfg["seed"])
    res = common.train_run(obj, cfg, epochs=cfg["max_epochs"], stop_below=cfg["target_loss"] or None)
    test = obj.evaluate(res.params, "test")
    return {
        "train_loss": float(obj.loss(res.params)),
        "train_error": float(1.0 - obj.accuracy(res.params)),
        "test_loss": float(test["loss"]),
        "test_error": float(test["error"]),
        "epochs": res.history.stopped_epoch,
        "stop_reason": res.history.stop_reason,
        "_arrays": {"params": _flat(res.params)},
    }


def _endpoints(store: RunStore, cfg: dict):
    obj = _objective(cfg["train"][0], cfg["train"][0]["seed"])
    a, b = (_unflat(obj, store.load(c).arrays()["params"]) for c in cfg["train"])
    return obj, a, b


def paths(store: RunStore, cfg: dict) -> dict:
    """The linear path and a trained Bezier curve between the two stored endpoints."""
    obj, a, b = _endpoints(store, cfg)
    lin = S.linear_barrier(obj, a, b, num_points=cfg["num_points"], metrics=PATH_METRICS)
    bez = S.bezier_curve(obj, a, b, jax.random.key(cfg["curve_seed"]), num_steps=cfg["bezier_steps"],
                         learning_rate=cfg["bezier_learning_rate"], batch_size=cfg["bezier_batch"],
                         num_points=cfg["num_points"], metrics=PATH_METRICS)
    arrays = {"t": lin.t, "control": _flat(bez.control), "bezier_train_losses": bez.train_losses}
    for name, res in (("linear", lin), ("bezier", bez)):
        arrays.update({f"{name}_{k}": v for k, v in res.values.items()})
    return {
        "linear": barrier_heights(lin.t, lin.values),
        "bezier": barrier_heights(bez.t, bez.values),
        "distance": float(D.tree_norm(D.segment(a, b))),
        "control_offset": float(D.tree_norm(D.tree_sub(bez.control, D.tree_scale(D.tree_add(a, b), 0.5)))),
        "_arrays": arrays,
    }


def plane_span(coords, margin: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square-ish window around the points ``coords`` (m, 2), padded by ``margin`` times their extent."""
    coords = np.asarray(coords, np.float64)
    lo, hi = coords.min(0), coords.max(0)
    pad = margin * float(np.max(hi - lo))
    return (lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)


def plane(store: RunStore, cfg: dict) -> dict:
    """Training loss and test error on the plane through (θ_A, θ_B, θ_C) (Garipov et al. 2018, Fig. 1)."""
    obj, a, b = _endpoints(store, cfg)
    control = _unflat(obj, store.load(cfg["paths"]).arrays()["control"])
    basis = D.plane_through(a, b, control)
    x_span, y_span = plane_span(basis.coords, cfg["plane_margin"])
    sl = S.plane(obj, basis.origin, *basis.directions, num_points=cfg["plane_points"], x_span=x_span, y_span=y_span,
                 metrics=("train_loss", "test_loss", "test_accuracy"))
    return {"coords": basis.coords.tolist(),
            "_arrays": {"x": sl.x, "y": sl.y, "coords": basis.coords, **sl.values}}


def _configs(config: Config) -> dict:
    if len(config.seeds) != 2 or config.seeds[0] == config.seeds[1]:
        raise ValueError(f"seeds must be two different seeds (the two endpoints), got {config.seeds}")
    base = {"experiment": EXPERIMENT, "num_samples": config.num_samples, "widths": list(config.widths),
            "learning_rate": config.learning_rate, "batch_size": config.batch_size, "max_epochs": config.max_epochs,
            "target_loss": config.target_loss}
    trains = [{**base, "name": f"train-s{s}", "seed": s} for s in config.seeds]
    path_cfg = {"name": "paths", "train": trains, "num_points": config.num_points, "bezier_steps": config.bezier_steps,
                "bezier_learning_rate": config.bezier_learning_rate, "bezier_batch": config.bezier_batch,
                "curve_seed": config.curve_seed}
    plane_cfg = {"name": "plane", "train": trains, "paths": path_cfg, "plane_points": config.plane_points,
                 "plane_margin": config.plane_margin}
    return {"train": trains, "paths": path_cfg, "plane": plane_cfg if config.plane_points > 0 else None}


def run(config: Config, out_dir: str) -> dict:
    """Runs (or resumes) the study into ``<out_dir>/connectivity/``.

    Returns the rows: ``{"endpoints": [Row, Row], "paths": Row, "plane": Row | None}``
    (:class:`common.Row`). ``paths.metrics`` holds the ``linear`` and ``bezier``
    :func:`barrier_heights`; its arrays ``t`` and ``<path>_<split>_loss`` /
    ``<path>_<split>_accuracy``; the plane's arrays ``x``, ``y``, ``coords`` (θ_A, θ_B, θ_C)
    and the metrics on the grid.
    """
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = _configs(config)
    run_sweep(store, [(c, train_endpoint) for c in cfgs["train"]], desc="connectivity: endpoints")
    todo = [(cfgs["paths"], lambda c: paths(store, c))]
    if cfgs["plane"] is not None:
        todo.append((cfgs["plane"], lambda c: plane(store, c)))
    run_sweep(store, todo, desc="connectivity: paths")
    return {"endpoints": [load_row(store, c, arrays=False) for c in cfgs["train"]],
            "paths": load_row(store, cfgs["paths"]),
            "plane": None if cfgs["plane"] is None else load_row(store, cfgs["plane"])}


# --------------------------------------------------------------------------
# Verdict and figure (from stored rows only)


def barrier_reading(linear: dict, bezier: dict) -> str:
    """One sentence comparing the barrier heights of the two paths (train loss, test loss and test error)."""
    def phrase(q, unit_scale, unit):
        lo, bz = linear[q]["height"] * unit_scale, bezier[q]["height"] * unit_scale
        name = q.replace("_", " ")
        if bz < lo:
            return f"lowers the {name} barrier from {lo:.3g}{unit} to {bz:.3g}{unit}"
        return f"does not lower the {name} barrier ({lo:.3g}{unit} linear vs {bz:.3g}{unit} Bezier)"

    parts = [phrase("train_loss", 1.0, ""), phrase("test_loss", 1.0, ""), phrase("test_error", 100.0, " pp")]
    text = "the Bezier path " + ", ".join(parts[:-1]) + " and " + parts[-1]
    lin, bez = linear["train_loss"]["height"], bezier["train_loss"]["height"]
    ends = linear["train_loss"].get("endpoints")
    if bez < lin and bez <= LOW_BARRIER_FRACTION * lin:
        if lin > (abs(float(np.mean(ends))) if ends else 0.0):
            text += "; the two minima are connected by a low-loss curve but not by a straight line"
        else:
            text += "; the linear barrier was already small next to the minima's own loss"
    return text


def verdict(rows) -> Verdict:
    """Two parts, from the train-loss barrier heights of the two paths.

    (a) separated on the line: the linear barrier exceeds |mean endpoint training loss| (True)
    or not (False); (b) joined by a low-loss curve: the Bezier barrier is at most
    ``LOW_BARRIER_FRACTION`` × the linear one (True), not lower than it (False), or in between
    (None). Combined by :func:`common.combine`.
    """
    m = rows["paths"].metrics
    lin, bez = m["linear"]["train_loss"]["height"], m["bezier"]["train_loss"]["height"]
    ends = m["linear"]["train_loss"]["endpoints"]
    scale = abs(float(np.mean(ends)))
    parts = {"barrier_on_the_line": bool(lin > scale),
             "low_loss_curve": True if bez < lin and bez <= LOW_BARRIER_FRACTION * lin else False if bez >= lin
             else None}
    return Verdict(CLAIM, combine(parts), {
        "rule": ("(a) the linear path's train-loss barrier max_t L(t) − ½(L(0) + L(1)) exceeds the endpoints' mean "
                 f"training loss; (b) the Bezier curve's barrier is at most {LOW_BARRIER_FRACTION:g} × the linear one "
                 f"(not lower: contradicted; in between: undecided); {COMBINE_RULE}"),
        "summary": barrier_reading(m["linear"], m["bezier"]) + ".", "parts": parts,
        "barriers": {name: {q: m[name][q]["height"] for q in BARRIER_QUANTITIES} for name in ("linear", "bezier")},
        "endpoint_train_loss": ends, "distance": m["distance"],
    })


def figure(rows, ax=None):
    """Loss and error along both paths; the plane through the two minima and the bend point (if stored).

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot import surface as P

    has_plane = rows.get("plane") is not None
    fig, host = common.panels(ax, (12, 9.5 if has_plane else 4.6))
    arr = rows["paths"].arrays
    m = rows["paths"].metrics
    t = arr["t"]
    axes = host.subplots(2 if has_plane else 1, 2, squeeze=False)
    colors = {"linear": "C3", "bezier": "C0"}
    labels = {"linear": "linear path", "bezier": "Bezier curve"}

    ax = axes[0, 0]
    for name in ("linear", "bezier"):
        for split, style in (("train", "-"), ("test", "--")):
            h = m[name][f"{split}_loss"]["height"]
            ax.plot(t, arr[f"{name}_{split}_loss"], style, color=colors[name],
                    label=f"{labels[name]}, {split} (barrier {h:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("path parameter t  (t=0: θ_A, t=1: θ_B)")
    ax.set_ylabel("cross-entropy (nats, log scale)")
    ax.set_title("loss along the paths")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for name in ("linear", "bezier"):
        for split, style in (("train", "-"), ("test", "--")):
            h = 100 * m[name][f"{split}_error"]["height"]
            ax.plot(t, 100 * (1 - arr[f"{name}_{split}_accuracy"]), style, color=colors[name],
                    label=f"{labels[name]}, {split} (barrier {h:.3g} pp)")
    ax.set_xlabel("path parameter t  (t=0: θ_A, t=1: θ_B)")
    ax.set_ylabel("error (%)")
    ax.set_title("classification error along the paths")
    ax.set_ylim(0, 118)  # room for the legend above the curves
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper center")

    if has_plane:
        pa = rows["plane"].arrays
        c = pa["coords"]
        tt = np.linspace(0, 1, 101)[:, None]
        curve = (1 - tt) ** 2 * c[0] + 2 * tt * (1 - tt) * c[2] + tt**2 * c[1]
        for ax, key, label, log in ((axes[1, 0], "train_loss", "training cross-entropy (log colour scale)", True),
                                    (axes[1, 1], "test_error", "test error (%)", False)):
            z = pa["train_loss"] if key == "train_loss" else 100 * (1 - pa["test_accuracy"])
            P.contour(pa["x"], pa["y"], z, ax=ax, log=log, label=label, num_levels=25,
                      points={"θ_A": tuple(c[0]), "θ_B": tuple(c[1])},
                      xlabel="u (parameter-space distance along θ_B − θ_A)",
                      ylabel="v (orthogonal, towards the bend point)",
                      title=f"plane through θ_A, θ_B and the bend point: {label.split(' (')[0]}")
            ax.plot([c[0, 0], c[1, 0]], [c[0, 1], c[1, 1]], "-", color=colors["linear"], lw=2, label="linear path")
            ax.plot(curve[:, 0], curve[:, 1], "-", color="white", lw=3.5)
            ax.plot(curve[:, 0], curve[:, 1], "-", color=colors["bezier"], lw=2, label="Bezier curve")
            ax.plot(*c[2], "x", color="k", ms=8, mew=2, label="bend point θ_C")
            ax.set_aspect("equal", adjustable="box")
            ax.legend(fontsize=8, loc="upper right")
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.connectivity [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
