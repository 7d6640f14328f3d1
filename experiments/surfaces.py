"""Loss surfaces of small-batch vs large-batch minima, and of a ResNet vs its plain twin.

Claim (Keskar et al. 2017; Li et al. 2018): large-batch (LB) training converges to sharper
minima than small-batch (SB) training, and they generalize worse; filter-normalised
surfaces make the difference visible.

Feeds ``figures/sb_lb_surfaces`` (paper figure 1; :func:`figure`): filter-normalised 2-D
planes (Li et al. 2018) around the SB and LB minima of the same MLP on MNIST-1D on one log
colour scale, filter-normalised 1-D slices through both minima on one axis (Li et al. 2018,
Fig. 3), and loss and accuracy along θ_SB + α(θ_LB − θ_SB), α in [−1, 2] (Keskar et al.
2017, Fig. 3). :func:`extra_figures` draws the planes as 3-D surfaces
(``surfaces_planes_3d``), the LB training trajectory projected on its PCA plane over the
loss contour, axes labelled with explained variance (``surfaces_trajectory``; Li et al.
2018, Fig. 9), and planes of a small 1-D ResNet and its plain twin (same depth and shapes,
no skip connections; ``surfaces_resnet_plain``; Li et al. 2018, Fig. 5).

Verdict: sharper = the larger mean rise of the training loss at the edges of the 1-D slices;
generalizes worse = the lower test accuracy (see :func:`verdict`).

Command: ``python -m experiments.surfaces`` (the default run: about 5 minutes on
2 CPU cores), ``--quick`` (seconds, for tests), ``--out DIR``, ``--<field> <value>``.
Results are stored in a :class:`losslab.results.RunStore` (``<out>/surfaces/``); a
rerun skips finished runs and only redraws the figures.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import common
from experiments.common import COMBINE_RULE, Row, Verdict, combine, load_row, parse_config, run_sweep
from losslab import Objective, data, models
from losslab import directions as D
from losslab import surface as S
from losslab.results import RunStore
from losslab.train import train

EXPERIMENT = "surfaces"
FIGURE = "sb_lb_surfaces"
CLAIM = ("large-batch training converges to sharper minima that generalize worse (Keskar et al. 2017), visible in "
         "filter-normalised surfaces (Li et al. 2018).")


@dataclasses.dataclass(frozen=True)
class Config:
    """The study's settings; the defaults are the real run.

    Varied: the batch size (``small_batch`` vs ``large_batch``; and, for the ResNet part, the
    architecture). Fixed: the MLP and its initialisation (``seed``), Adam, learning rate.
    Stopping: a fixed number of epochs per batch size (``small_epochs``, ``large_epochs``:
    comparable numbers of steps are not the aim, reaching a minimum is). One seed; the
    random directions are drawn with the same key for both minima. Statistic: the mean rise
    of the training loss at the two ends of a filter-normalised 1-D slice.
    """

    seed: int = 0
    num_samples: int = 5000  # MNIST-1D samples (train/val/test split by the loader)
    widths: tuple[int, ...] = (256, 256)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    small_batch: int = 32
    small_epochs: int = 20
    large_batch: int = 1000
    large_epochs: int = 200
    snapshot_every: int = 10  # LB trajectory snapshots, in epochs
    grid_points: int = 31  # SB/LB planes: grid_points^2 points on [-span, span]^2
    span: float = 1.0
    line_points: int = 41  # filter-normalised 1-D slices
    interp_points: int = 61  # α in [-1, 2]
    trajectory_grid_points: int = 21
    resnet_train: int = 1000  # a small input: 1000 MNIST-1D training sequences
    resnet_test: int = 500
    resnet_widths: tuple[int, ...] = (16, 32)
    resnet_blocks: int = 2  # blocks per stage: depth 2 + stages * (1 + 2 * blocks)
    resnet_batch_norm: bool = False  # True evaluates planes with recomputed BN statistics
    resnet_batch: int = 64
    resnet_epochs: int = 20
    resnet_grid_points: int = 21
    points_per_chunk: int = 8


def quick() -> Config:
    """A tiny configuration that runs end to end in seconds."""
    return Config(
        num_samples=600,
        widths=(16,),
        small_batch=32,
        small_epochs=2,
        large_batch=256,
        large_epochs=4,
        snapshot_every=1,
        grid_points=5,
        line_points=5,
        interp_points=7,
        trajectory_grid_points=4,
        resnet_train=64,
        resnet_test=32,
        resnet_widths=(4,),
        resnet_blocks=1,
        resnet_batch=32,
        resnet_epochs=1,
        resnet_grid_points=3,
    )


# --------------------------------------------------------------------------
# Problems


def _dataset(config: Config):
    return data.load("mnist1d", seed=config.seed, num_samples=config.num_samples)


def _mlp_objective(config: Config) -> Objective:
    ds = _dataset(config)
    model = models.create(
        "mlp", input_shape=ds.input_shape, output_dim=ds.num_classes, widths=config.widths, seed=config.seed
    )
    return Objective(model, "cross_entropy", ds)


def _resnet_objective(config: Config, name: str) -> Objective:
    ds = _dataset(config)
    small = types.SimpleNamespace(
        x_train=ds.x_train[: config.resnet_train],
        y_train=ds.y_train[: config.resnet_train],
        x_val=None,
        y_val=None,
        x_test=ds.x_test[: config.resnet_test],
        y_test=ds.y_test[: config.resnet_test],
        task=ds.task,
        num_classes=ds.num_classes,
        name="mnist1d-small",
    )
    model = models.create(
        name,
        input_shape=ds.input_shape,
        output_dim=ds.num_classes,
        widths=config.resnet_widths,
        blocks_per_stage=config.resnet_blocks,
        batch_norm=config.resnet_batch_norm,
        seed=config.seed,
    )
    return Objective(model, "cross_entropy", small)


def _flat(params) -> np.ndarray:
    return np.asarray(ravel_pytree(params)[0])


def _unflat(objective: Objective, flat: np.ndarray):
    return ravel_pytree(objective.params)[1](jax.numpy.asarray(flat))


# --------------------------------------------------------------------------
# Runs (each returns JSON metrics plus "_arrays")


def _train_run(objective_fn, cfg: dict, *, snapshots: bool = False, with_state: bool = False) -> dict:
    obj = objective_fn()
    res = train(
        obj,
        optimizer=cfg["optimizer"],
        learning_rate=cfg["learning_rate"],
        batch_size=cfg["batch_size"],
        epochs=cfg["epochs"],
        key=cfg["seed"],
        snapshot_every=cfg.get("snapshot_every", 0) if snapshots else 0,
    )
    final = res.objective
    arrays = {"params": _flat(res.params)}
    if with_state:
        arrays["state"] = _flat(res.state) if jax.tree.leaves(res.state) else np.zeros(0)
    if snapshots and res.snapshots:
        arrays["snapshots"] = np.stack([_flat(p) for _, p in res.snapshots])
        arrays["snapshot_epochs"] = np.array([e for e, _ in res.snapshots])
    test = final.evaluate(res.params, "test")
    return {
        "train_loss": float(final.loss(res.params)),
        "train_accuracy": float(final.accuracy(res.params)),
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "epochs": res.history.stopped_epoch,
        "_arrays": arrays,
    }


def _plane_arrays(plane: S.PlaneSlice) -> dict:
    return {"x": plane.x, "y": plane.y, **{k: v for k, v in plane.values.items()}}


def _mlp_train_configs(config: Config) -> dict[str, dict]:
    base = {
        "experiment": EXPERIMENT,
        "seed": config.seed,
        "num_samples": config.num_samples,
        "widths": list(config.widths),
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
    }
    return {
        "sb": {**base, "name": "train-sb", "batch_size": config.small_batch, "epochs": config.small_epochs},
        "lb": {
            **base,
            "name": "train-lb",
            "batch_size": config.large_batch,
            "epochs": config.large_epochs,
            "snapshot_every": config.snapshot_every,
        },
    }


def _resnet_train_configs(config: Config) -> dict[str, dict]:
    base = {
        "experiment": EXPERIMENT,
        "seed": config.seed,
        "num_samples": config.num_samples,
        "resnet_train": config.resnet_train,
        "resnet_test": config.resnet_test,
        "widths": list(config.resnet_widths),
        "blocks": config.resnet_blocks,
        "batch_norm": config.resnet_batch_norm,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "batch_size": config.resnet_batch,
        "epochs": config.resnet_epochs,
    }
    return {name: {**base, "name": f"train-{name}", "model": name} for name in ("resnet", "plain")}


def run(config: Config, out_dir: str) -> dict[str, Row]:
    """Runs (or resumes) the study into ``<out_dir>/surfaces/``.

    Returns the rows: ``{name: Row}`` (:class:`common.Row`) for the trainings ``train-sb``,
    ``train-lb``, ``train-resnet``, ``train-plain`` (metrics only: ``train_loss``,
    ``test_accuracy``, ...) and the analyses with their arrays: ``plane-sb``, ``plane-lb``,
    ``plane-resnet``, ``plane-plain`` (``x``, ``y`` and the metrics on the grid), ``lines``
    (``t``, ``<sb|lb>_<train|test>_loss``), ``interpolation`` (``t`` and the metrics) and
    ``trajectory`` (the PCA plane, ``coords``, ``epochs``, ``explained_variance_ratio``).
    """
    store = RunStore(out_dir, EXPERIMENT)
    key = jax.random.key(config.seed)
    k_plane, k_line, k_res = jax.random.split(key, 3)
    eval_kw = {"points_per_chunk": config.points_per_chunk}

    # Stage 1: training.
    train_cfgs = _mlp_train_configs(config)
    res_cfgs = _resnet_train_configs(config)
    runs = [
        (train_cfgs["sb"], lambda c: _train_run(lambda: _mlp_objective(config), c)),
        (train_cfgs["lb"], lambda c: _train_run(lambda: _mlp_objective(config), c, snapshots=True)),
    ]
    runs += [
        (res_cfgs[name], lambda c, name=name: _train_run(lambda: _resnet_objective(config, name), c, with_state=True))
        for name in ("resnet", "plain")
    ]
    run_sweep(store, runs, desc="surfaces: training")

    def trained(cfg):
        return store.load(cfg, cfg["name"]).arrays()

    # Stage 2: slices. Every analysis config embeds the training config it reads.
    def plane_run(which):
        def fn(c):
            obj = _mlp_objective(config)
            params = _unflat(obj, trained(train_cfgs[which])["params"])
            d1, d2 = D.random_plane(params, k_plane)
            sl = S.plane(
                obj,
                params,
                d1,
                d2,
                num_points=c["grid_points"],
                x_span=(-c["span"], c["span"]),
                y_span=(-c["span"], c["span"]),
                **eval_kw,
            )
            return {"centre_train_loss": float(obj.loss(params)), "_arrays": _plane_arrays(sl)}

        return fn

    def lines_run(c):
        obj = _mlp_objective(config)
        out = {}
        for which in ("sb", "lb"):
            params = _unflat(obj, trained(train_cfgs[which])["params"])
            sl = S.line(obj, params, D.random_direction(params, k_line), num_points=c["line_points"], **eval_kw)
            out.update({f"{which}_{k}": v for k, v in sl.values.items()})
            out["t"] = sl.t
        return {"_arrays": out}

    def interp_run(c):
        obj = _mlp_objective(config)
        sb = _unflat(obj, trained(train_cfgs["sb"])["params"])
        lb = _unflat(obj, trained(train_cfgs["lb"])["params"])
        sl = S.line(obj, sb, D.segment(sb, lb), span=(-1.0, 2.0), num_points=c["interp_points"], **eval_kw)
        i0, i1 = int(np.argmin(np.abs(sl.t))), int(np.argmin(np.abs(sl.t - 1.0)))
        if np.isclose(sl.t[i0], 0.0) and np.isclose(sl.t[i1], 1.0):
            barrier, frankle = S.interpolation_barrier(sl.t[i0 : i1 + 1], sl.values["train_loss"][i0 : i1 + 1])
        else:  # the grid does not contain both solutions
            barrier = frankle = float("nan")
        return {
            "train_loss_barrier": barrier,
            "train_loss_frankle_barrier": frankle,
            "distance": float(D.tree_norm(D.segment(sb, lb))),
            "_arrays": {"t": sl.t, **sl.values},
        }

    def trajectory_run(c):
        obj = _mlp_objective(config)
        arrs = trained(train_cfgs["lb"])
        snaps = [(int(e), _unflat(obj, p)) for e, p in zip(arrs["snapshot_epochs"], arrs["snapshots"])]
        pca = D.trajectory_pca(snaps)
        lo, hi = pca.coords.min(0), pca.coords.max(0)
        pad = 0.25 * (hi - lo) + 1e-3
        sl = S.plane(
            obj,
            pca.origin,
            *pca.directions,
            num_points=c["trajectory_grid_points"],
            x_span=(lo[0] - pad[0], hi[0] + pad[0]),
            y_span=(lo[1] - pad[1], hi[1] + pad[1]),
            metrics=("train_loss",),
            **eval_kw,
        )
        return {
            "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
            "_arrays": {
                **_plane_arrays(sl),
                "coords": pca.coords,
                "epochs": pca.epochs,
                "explained_variance_ratio": pca.explained_variance_ratio,
            },
        }

    def resnet_run(name):
        def fn(c):
            obj = _resnet_objective(config, name)
            arrs = trained(res_cfgs[name])
            params = _unflat(obj, arrs["params"])
            if arrs["state"].size:
                obj = obj.replace(state=ravel_pytree(obj.state)[1](jax.numpy.asarray(arrs["state"])))
            d1, d2 = D.random_plane(params, k_res)
            bn = "recompute" if config.resnet_batch_norm else "stored"
            sl = S.plane(obj, params, d1, d2, num_points=c["resnet_grid_points"], batch_norm=bn, **eval_kw)
            return {"centre_train_loss": float(obj.loss(params)), "_arrays": _plane_arrays(sl)}

        return fn

    shared = {"experiment": EXPERIMENT, "seed": config.seed, "points_per_chunk": config.points_per_chunk}
    analyses = {
        "plane-sb": (
            {
                **shared,
                "name": "plane-sb",
                "train": train_cfgs["sb"],
                "grid_points": config.grid_points,
                "span": config.span,
            },
            plane_run("sb"),
        ),
        "plane-lb": (
            {
                **shared,
                "name": "plane-lb",
                "train": train_cfgs["lb"],
                "grid_points": config.grid_points,
                "span": config.span,
            },
            plane_run("lb"),
        ),
        "lines": ({**shared, "name": "lines", "train": train_cfgs, "line_points": config.line_points}, lines_run),
        "interpolation": (
            {**shared, "name": "interpolation", "train": train_cfgs, "interp_points": config.interp_points},
            interp_run,
        ),
        "trajectory": (
            {
                **shared,
                "name": "trajectory",
                "train": train_cfgs["lb"],
                "trajectory_grid_points": config.trajectory_grid_points,
            },
            trajectory_run,
        ),
    }
    for name in ("resnet", "plain"):
        analyses[f"plane-{name}"] = (
            {
                **shared,
                "name": f"plane-{name}",
                "train": res_cfgs[name],
                "resnet_grid_points": config.resnet_grid_points,
            },
            resnet_run(name),
        )
    run_sweep(store, list(analyses.values()), desc="surfaces: slices")

    all_cfgs = {
        **{f"train-{k}": v for k, v in train_cfgs.items()},
        **{f"train-{k}": v for k, v in res_cfgs.items()},
        **{k: v[0] for k, v in analyses.items()},
    }
    return {name: load_row(store, cfg, arrays=not name.startswith("train-")) for name, cfg in all_cfgs.items()}


# --------------------------------------------------------------------------
# Verdict and figures (from stored rows only)


def edge_rise(t, values) -> float:
    """Mean of ``values`` at the two ends of the slice (|t| maximal) minus its value at t = 0."""
    t, v = np.asarray(t), np.asarray(values)
    edge = np.abs(t) >= 0.999 * np.abs(t).max()
    return float(np.mean(v[edge]) - v[int(np.argmin(np.abs(t)))])


def verdict(rows) -> Verdict:
    """Two parts: the LB minimum is sharper; it generalizes worse.

    (a) sharper: the training-loss rise at the edges of the filter-normalised 1-D slice
    (:func:`edge_rise`) is larger through the LB minimum than through the SB one (True),
    smaller (False) or equal (None); (b) generalizes worse: SB's test accuracy above LB's
    (True), below (False), equal (None). Combined by :func:`common.combine`.
    """
    lines = rows["lines"].arrays
    rise = {w: edge_rise(lines["t"], lines[f"{w}_train_loss"]) for w in ("sb", "lb")}
    acc = {w: rows[f"train-{w}"].metrics["test_accuracy"] for w in ("sb", "lb")}
    parts = {"large_batch_sharper": common.direction(rise["sb"], rise["lb"]),
             "large_batch_generalizes_worse": common.direction(acc["lb"], acc["sb"])}
    sharper = rise["lb"] > rise["sb"]
    summary = (f"the large-batch minimum is {'sharper' if sharper else 'flatter'} (train-loss rise at the edge of the "
               f"filter-normalised slices: LB {rise['lb']:.3g} vs SB {rise['sb']:.3g}) and SB reaches "
               f"{100 * acc['sb']:.1f} % test accuracy vs LB {100 * acc['lb']:.1f} %.")
    return Verdict(CLAIM, combine(parts), {
        "rule": ("(a) the training-loss rise at the two ends of the filter-normalised 1-D slice (mean of the ends "
                 "minus the centre) is larger through the LB minimum than through the SB one; (b) SB's test accuracy "
                 f"is above LB's; {COMBINE_RULE}"),
        "summary": summary, "parts": parts, "edge_rise": rise, "test_accuracy": acc,
        "batch_size": {w: rows[f"train-{w}"].config["batch_size"] for w in ("sb", "lb")},
    })


def _loss_range(*arrays) -> tuple[float, float]:
    both = np.concatenate([np.asarray(a).ravel() for a in arrays])
    return float(both[both > 0].min()), float(min(both.max(), 10.0))


def figure(rows, ax=None):
    """Four panels: train-loss planes around the SB and LB minima (one log colour scale), the
    1-D slices through both, and the interpolation SB (α=0) → LB (α=1).

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot import surface as P

    fig, host = common.panels(ax, (21, 4.8))
    axes = host.subplots(1, 4)
    sb, lb = rows["plane-sb"].arrays, rows["plane-lb"].arrays
    vmin, vmax = _loss_range(sb["train_loss"], lb["train_loss"])
    for ax_, arr, key in zip(axes[:2], (sb, lb), ("sb", "lb")):
        train = rows[f"train-{key}"]
        P.contour(arr["x"], arr["y"], arr["train_loss"], ax=ax_, vmin=vmin, vmax=vmax, label="train loss (nats)",
                  title=f"{'small' if key == 'sb' else 'large'}-batch minimum (batch {train.config['batch_size']}, "
                        f"test acc {100 * train.metrics['test_accuracy']:.1f} %)",
                  points={key.upper(): (0.0, 0.0)})
    lines = rows["lines"].arrays
    series = {f"{w.upper()} {s}": lines[f"{w}_{s}_loss"] for w in ("sb", "lb") for s in ("train", "test")}
    styles = {"SB train": "b-", "SB test": "b--", "LB train": "r-", "LB test": "r--"}
    P.curves(lines["t"], series, ax=axes[2], log=True, styles=styles, title="filter-normalised 1-D slices")
    interp = rows["interpolation"].arrays
    P.interpolation(interp["t"], interp, ax=axes[3], names=("SB", "LB"), title="1-D interpolation SB (α=0) → LB (α=1)")
    return fig


def extra_figures(rows) -> dict:
    """The study's other views, from stored rows: ``{stem: Figure}``.

    ``surfaces_planes_3d`` (the SB / LB planes as 3-D surfaces), ``surfaces_trajectory`` (the LB
    trajectory on its PCA plane) and ``surfaces_resnet_plain`` (ResNet vs its plain twin).
    """
    import matplotlib.pyplot as plt

    from losslab.plot import surface as P

    out = {}
    sb, lb = rows["plane-sb"].arrays, rows["plane-lb"].arrays
    vmin, vmax = _loss_range(sb["train_loss"], lb["train_loss"])
    fig = plt.figure(figsize=(10, 4.5), layout="constrained")
    for i, (arr, key) in enumerate(((sb, "SB"), (lb, "LB"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        P.surface3d(arr["x"], arr["y"], arr["train_loss"], ax=ax, vmin=vmin, vmax=vmax, title=f"{key} minimum")
        ax.set_zlim(vmin, vmax)
    out["surfaces_planes_3d"] = fig

    traj = rows["trajectory"].arrays
    fig = P.contour(traj["x"], traj["y"], traj["train_loss"], label="train loss", title="LB trajectory on its PCA plane")
    P.trajectory(traj["coords"], ax=fig.axes[0], epochs=traj["epochs"],
                 explained_variance=traj["explained_variance_ratio"])
    out["surfaces_trajectory"] = fig

    rs, pl = rows["plane-resnet"].arrays, rows["plane-plain"].arrays
    vmin, vmax = _loss_range(rs["train_loss"], pl["train_loss"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, arr, title in zip(axes, (rs, pl), ("ResNet (skip connections)", "plain twin (no skips)")):
        P.contour(arr["x"], arr["y"], arr["train_loss"], ax=ax, vmin=vmin, vmax=vmax, label="train loss", title=title)
    out["surfaces_resnet_plain"] = fig
    return out


def main(argv: Sequence[str] | None = None) -> list[str]:
    """``python -m experiments.surfaces [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows), **extra_figures(rows)}, verdict(rows))


if __name__ == "__main__":
    main()
