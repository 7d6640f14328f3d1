"""Loss surfaces of small-batch vs large-batch minima, and of a ResNet vs its plain twin.

Feeds the figures (written to ``<out>/figures/``):

* ``surfaces_planes``: filter-normalised 2-D planes (Li et al. 2018) around the
  small-batch (SB) and large-batch (LB) minima of the same MLP on MNIST-1D, on one
  log colour scale; ``surfaces_planes_3d``: the same as 3-D surfaces.
* ``surfaces_interpolation``: loss and accuracy along θ_SB + α(θ_LB − θ_SB),
  α in [−1, 2] (Keskar et al. 2017, Fig. 3).
* ``surfaces_lines``: filter-normalised 1-D slices through both minima on one axis
  (Li et al. 2018, Fig. 3).
* ``surfaces_trajectory``: the LB training trajectory projected on its PCA plane over
  the loss contour, axes labelled with explained variance (Li et al. 2018, Fig. 9).
* ``surfaces_resnet_plain``: planes of a small 1-D ResNet and its plain twin
  (same depth and shapes, no skip connections; Li et al. 2018, Fig. 5).

Command: ``python -m experiments.surfaces`` (the default run: about 5 minutes on
2 CPU cores), ``--quick`` (seconds, for tests), ``--out DIR``, ``--<field> <value>``.
Results are stored in a :class:`losslab.results.RunStore` (``<out>/surfaces/``); a
rerun skips finished runs and only redraws the figures.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Sequence

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.common import parse_config, run_sweep
from losslab import Objective, data, models
from losslab import directions as D
from losslab import surface as S
from losslab.results import RunStore
from losslab.train import train

EXPERIMENT = "surfaces"


@dataclasses.dataclass(frozen=True)
class Config:
    """The study's settings; the defaults are the real run."""

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


def run(config: Config, out_dir: str, fig_dir: str | None = None) -> dict:
    """Runs (or resumes) the study into ``<out_dir>/surfaces/`` and draws its figures.

    Returns ``{"runs": {name: metrics}, "figures": [paths], "stored": {name: results.Run}}``.
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

    common = {"experiment": EXPERIMENT, "seed": config.seed, "points_per_chunk": config.points_per_chunk}
    analyses = {
        "plane-sb": (
            {
                **common,
                "name": "plane-sb",
                "train": train_cfgs["sb"],
                "grid_points": config.grid_points,
                "span": config.span,
            },
            plane_run("sb"),
        ),
        "plane-lb": (
            {
                **common,
                "name": "plane-lb",
                "train": train_cfgs["lb"],
                "grid_points": config.grid_points,
                "span": config.span,
            },
            plane_run("lb"),
        ),
        "lines": ({**common, "name": "lines", "train": train_cfgs, "line_points": config.line_points}, lines_run),
        "interpolation": (
            {**common, "name": "interpolation", "train": train_cfgs, "interp_points": config.interp_points},
            interp_run,
        ),
        "trajectory": (
            {
                **common,
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
                **common,
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
    loaded = {name: store.load(cfg, cfg["name"]) for name, cfg in all_cfgs.items()}
    figures = make_figures(loaded, fig_dir or os.path.join(out_dir, "figures"))
    return {"runs": {name: run_.metrics for name, run_ in loaded.items()}, "figures": figures, "stored": loaded}


# --------------------------------------------------------------------------
# Figures (from stored runs only)


def make_figures(runs: dict, fig_dir: str) -> list[str]:
    """Draws every figure of the study from stored runs ``{name: results.Run}``; returns file paths."""
    import matplotlib.pyplot as plt

    from losslab.plot import surface as P

    paths = []
    sb, lb = runs["plane-sb"].arrays(), runs["plane-lb"].arrays()
    tr = {k: runs[f"train-{k}"].metrics for k in ("sb", "lb")}
    both = np.concatenate([sb["train_loss"].ravel(), lb["train_loss"].ravel()])
    vmin = float(both[both > 0].min())
    vmax = float(min(both.max(), 10.0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, arr, key in zip(axes, (sb, lb), ("sb", "lb")):
        P.contour(
            arr["x"],
            arr["y"],
            arr["train_loss"],
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            label="train loss",
            title=f"{key.upper()} minimum (test acc {100 * tr[key]['test_accuracy']:.1f} %)",
            points={key.upper(): (0.0, 0.0)},
        )
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_planes"))

    fig = plt.figure(figsize=(10, 4.5))
    for i, (arr, key) in enumerate(((sb, "SB"), (lb, "LB"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        P.surface3d(arr["x"], arr["y"], arr["train_loss"], ax=ax, vmin=vmin, vmax=vmax, title=f"{key} minimum")
        ax.set_zlim(vmin, vmax)
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_planes_3d"))

    interp = runs["interpolation"].arrays()
    fig = P.interpolation(
        interp["t"], interp, names=("SB", "LB"), title="Interpolation between SB and LB minima (Keskar et al. Fig. 3)"
    )
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_interpolation"))

    lines = runs["lines"].arrays()
    series = {f"{w.upper()} {s}": lines[f"{w}_{s}_loss"] for w in ("sb", "lb") for s in ("train", "test")}
    styles = {"SB train": "b-", "SB test": "b--", "LB train": "r-", "LB test": "r--"}
    fig = P.curves(lines["t"], series, log=True, styles=styles, title="Filter-normalised 1-D slices")
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_lines"))

    traj = runs["trajectory"].arrays()
    fig = P.contour(
        traj["x"], traj["y"], traj["train_loss"], label="train loss", title="LB trajectory on its PCA plane"
    )
    P.trajectory(
        traj["coords"], ax=fig.axes[0], epochs=traj["epochs"], explained_variance=traj["explained_variance_ratio"]
    )
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_trajectory"))

    rs, pl = runs["plane-resnet"].arrays(), runs["plane-plain"].arrays()
    both = np.concatenate([rs["train_loss"].ravel(), pl["train_loss"].ravel()])
    vmin, vmax = float(both[both > 0].min()), float(min(both.max(), 10.0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, arr, title in zip(axes, (rs, pl), ("ResNet (skip connections)", "plain twin (no skips)")):
        P.contour(arr["x"], arr["y"], arr["train_loss"], ax=ax, vmin=vmin, vmax=vmax, label="train loss", title=title)
    paths += P.save(fig, os.path.join(fig_dir, "surfaces_resnet_plain"))
    return paths


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m experiments.surfaces [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    result = run(config, out)
    for name, metrics in result["runs"].items():
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"{name:16s} {shown}")
    print("figures:", *result["figures"][::2], sep="\n  ")
    return result


if __name__ == "__main__":
    main()
