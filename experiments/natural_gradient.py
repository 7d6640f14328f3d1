"""Natural gradient and Fisher geometry: NGD, empirical-Fisher NGD, K-FAC and diagonal Fisher vs SGD/Adam.

On MNIST-1D (4,000 samples) and digits, an MLP trained by SGD, momentum, Adam, RMSprop, NGD (CG on
the minibatch Fisher), empirical-Fisher NGD, K-FAC and the diagonal Fisher, each with the best
learning rate of a small grid (lowest final training loss). Reported per optimizer: steps, wall
time and gradient-equivalent cost to reach a fixed training loss, final test error, and the
sharpness (λ_max, trace of the Hessian) of the minimum it reaches. Along the Adam run on the first
dataset, at a few checkpoints: the cosine of the natural gradient with the gradient and with Adam's
update, the overlaps of the top-k eigenspaces of Fisher, empirical Fisher, GGN, Hessian and K-FAC,
their spectral densities, and the correlation of Adam's second moment with the Fisher diagonal.

Verdict: (a) the fastest of NGD / K-FAC reaches the target training loss in fewer steps than
the fastest of SGD / momentum / Adam / RMSprop; (b) the Fisher's and the Hessian's top-k
eigenspaces overlap by at least ``OVERLAP_HOLDS`` at the last checkpoint (see :func:`verdict`).

Feeds ``figures/natural_gradient`` (paper figure 5; :func:`figure`); :func:`extra_figures`
draws the per-dataset curves and sharpness, the overlaps and densities per checkpoint, and
Adam's second moment against the Fisher diagonal::

    python -m experiments.natural_gradient            # default run (~10 min on 2 CPU cores)
    python -m experiments.natural_gradient --quick    # seconds (tests)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, parse_config, run_sweep
from losslab import Objective, curvature, data, models, optim
from losslab.kfac import kfac_operator
from losslab.results import RunStore, atomic_write_json, atomic_write_text
from losslab.train import TrainingDivergedError, train

EXPERIMENT = "natural_gradient"
FIGURE = "natural_gradient"
OPERATORS = ("fisher", "empirical_fisher", "ggn", "hessian", "kfac")
CLAIM = ("natural-gradient methods (NGD, K-FAC) need fewer steps than SGD/Adam/RMSprop, and the Fisher "
         "approximates the Hessian near a minimum (Amari 1998; Martens & Grosse 2015; Kunstner et al. 2019).")
NATURAL = ("ngd", "kfac")
FIRST_ORDER = ("sgd", "momentum", "adam", "rmsprop")
# Fisher ≈ Hessian when their top-k eigenspaces overlap by at least OVERLAP_HOLDS (1 = the same
# subspace); below OVERLAP_FAILS they are mostly different directions.
OVERLAP_HOLDS = 0.9
OVERLAP_FAILS = 0.5


@dataclasses.dataclass(frozen=True)
class Config:
    """The natural-gradient study; defaults are the real run.

    Varied: the optimizer (``optimizers``) and its learning rate (``lr_grid``; the lowest
    final training loss wins); the dataset. Fixed: the MLP and its initialisation
    (``seed``), batch size, damping. Stopping: ``epochs`` epochs for every run. One seed.
    Statistics: steps (and wall time, gradient-equivalent cost) to a training loss of
    ``target_loss``; along the Adam run, top-``top_k`` eigenspace overlaps of the curvature
    matrices on ``analysis_samples`` examples.
    """

    datasets: tuple[str, ...] = ("mnist1d", "digits")
    num_samples: int = 4000
    widths: tuple[int, ...] = (128, 128)
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop", "ngd", "ngd_empirical", "kfac", "diag_fisher")
    # Learning-rate grids (name, rates); the best final training loss wins.
    lr_grid: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("sgd", (0.05, 0.2, 0.5)),
        ("momentum", (0.02, 0.05, 0.1)),
        ("adam", (1e-3, 3e-3, 1e-2)),
        ("rmsprop", (3e-4, 1e-3, 3e-3)),
        ("ngd", (0.1, 0.3, 1.0)),
        ("ngd_empirical", (0.03, 0.1, 0.3)),
        ("kfac", (0.1, 0.3, 1.0)),
        ("diag_fisher", (3e-3, 1e-2, 3e-2)),
    )
    batch_size: int = 128
    epochs: int = 12
    seed: int = 0
    target_loss: float = 0.5
    ngd_damping: float = 1e-3
    ngd_max_cg_steps: int = 10
    kfac_damping: float = 0.1
    diag_damping: float = 1e-3
    analysis_samples: int = 512
    analysis_epochs: tuple[int, ...] = (0, 3, 12)
    top_k: int = 10
    lanczos_steps: int = 40
    density_probes: int = 2
    diag_probes: int = 64


def quick() -> Config:
    """One dataset, four optimizers at one rate each, two epochs, small Lanczos runs."""
    return Config(
        datasets=("mnist1d",),
        num_samples=400,
        widths=(16,),
        optimizers=("sgd", "adam", "ngd", "kfac"),
        lr_grid=(("sgd", (0.2,)), ("adam", (1e-2,)), ("ngd", (0.3,)), ("kfac", (0.3,))),
        batch_size=64,
        epochs=2,
        target_loss=2.0,
        ngd_max_cg_steps=3,
        analysis_samples=64,
        analysis_epochs=(0, 2),
        top_k=3,
        lanczos_steps=10,
        density_probes=1,
        diag_probes=4,
    )


def optimizer_options(config: Config, name: str) -> dict:
    """The fixed (not searched) options of each optimizer."""
    if name in ("ngd", "ngd_empirical"):
        return {"damping": config.ngd_damping, "max_cg_steps": config.ngd_max_cg_steps}
    if name == "kfac":
        return {"damping": config.kfac_damping}
    if name == "diag_fisher":
        return {"damping": config.diag_damping}
    return {}


def cost_per_step(config: Config, name: str) -> int:
    """Gradient-equivalents per step: 1 gradient, + K CG matvecs (upper bound) for NGD, + 1 backward pass
    of sampled labels for K-FAC and for the diagonal Fisher's per-example gradients."""
    if name in ("ngd", "ngd_empirical"):
        return 1 + config.ngd_max_cg_steps
    if name in ("kfac", "diag_fisher"):
        return 2
    return 1


def build_objective(config: Config, dataset: str, dtype=None) -> Objective:
    opts = {"num_samples": config.num_samples} if dataset == "mnist1d" else {}
    ds = data.load(dataset, seed=config.seed, **opts)
    model = models.create(
        "mlp", input_shape=ds.input_shape, output_dim=ds.num_classes, widths=config.widths, seed=config.seed
    )
    return Objective(model, "cross_entropy", ds, dtype=dtype)


def analysis_batch(obj: Objective, num: int):
    x, y = obj.batch("train")
    return x[:num], y[:num]


def _sharpness(obj, params, batch, key, config):
    k1, k2 = jax.random.split(key)
    hess = curvature.hessian_operator(obj, params, batch)
    top = curvature.top_eigenpairs(hess, k1, k=1, num_steps=min(config.lanczos_steps, hess.size))
    trace = curvature.hutchinson_trace(hess, k2, num_probes=max(config.diag_probes, 2))
    return float(top.eigenvalues[0]), float(trace.estimate)


def run_training(cfg: dict, config: Config) -> dict:
    """One optimizer at one learning rate on one dataset: history, target crossing, test error, sharpness."""
    obj = build_objective(config, cfg["dataset"])
    try:
        result = train(
            obj,
            optimizer=cfg["optimizer"],
            learning_rate=cfg["learning_rate"],
            optimizer_options=optimizer_options(config, cfg["optimizer"]),
            batch_size=config.batch_size,
            epochs=config.epochs,
            key=config.seed,
        )
    except TrainingDivergedError as e:  # a too-large rate in the grid: recorded, never selected
        return {"diverged": str(e), "final_train_loss": float("inf")}
    return {"diverged": None, **_summarise(result, obj, cfg, config)}


def _summarise(result, obj, cfg, config):
    h = result.history
    wall = np.asarray(h.wall_time, float)
    per_epoch = float(np.median(np.diff(wall))) if len(wall) > 1 else float(wall[0])
    compile_time = max(float(wall[0]) - per_epoch, 0.0)
    loss = np.asarray(h.train_eval_loss, float)
    hit = np.flatnonzero(loss <= config.target_loss)
    test = obj.evaluate(result.params, "test")
    lam, tr = _sharpness(obj, result.params, analysis_batch(obj, config.analysis_samples), jax.random.key(1), config)
    cost = cost_per_step(config, cfg["optimizer"])
    return {
        "final_train_loss": float(loss[-1]),
        "test_loss": float(test["loss"]),
        "test_error": float(test["error"]),
        "steps_to_target": int(h.step[hit[0]]) if hit.size else None,
        "wall_to_target": float(wall[hit[0]] - compile_time) if hit.size else None,
        "cost_to_target": int(h.step[hit[0]] * cost) if hit.size else None,
        "compile_time": compile_time,
        "cost_per_step": cost,
        "lambda_max": lam,
        "hessian_trace": tr,
        "curves": {
            "step": h.step,
            "wall_time": (wall - compile_time).tolist(),
            "cost": [s * cost for s in h.step],
            "train_eval_loss": h.train_eval_loss,
            "val_loss": h.val_loss,
        },
    }


# ----------------------------------------------------------------------------
# Fisher geometry along the Adam run


def _subspace_overlap(u, v):
    return float(jnp.sum((u @ v.T) ** 2) / u.shape[0])


def _cos(a, b):
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def geometry_at(obj, params, adam_state, batch, key, config: Config) -> dict:
    """Cosines, eigenspace overlaps, densities and the Adam-v / Fisher-diagonal correlation at ``params``."""
    keys = jax.random.split(key, 8)
    ops = {
        "fisher": curvature.fisher_operator(obj, params, batch),
        "empirical_fisher": curvature.empirical_fisher_operator(obj, params, batch),
        "ggn": curvature.ggn_operator(obj, params, batch),
        "hessian": curvature.hessian_operator(obj, params, batch),
        "kfac": kfac_operator(obj, params, batch),
    }
    steps = min(config.lanczos_steps, ops["fisher"].size)
    k = min(config.top_k, steps)
    eig = {name: curvature.top_eigenpairs(op, keys[0], k=k, num_steps=steps) for name, op in ops.items()}
    overlaps = [[_subspace_overlap(eig[a].eigenvectors, eig[b].eigenvectors) for b in OPERATORS] for a in OPERATORS]
    dens = {}
    for name in OPERATORS[:4]:
        d = curvature.spectral_density(ops[name], keys[1], num_steps=steps, num_probes=config.density_probes, grid=400)
        dens[name] = (np.asarray(d.grid), np.asarray(d.density))
    g = ravel_pytree(jax.grad(obj.loss)(params, batch))[0]
    lam = config.ngd_damping
    solve = {"damping": lam, "max_steps": 200, "tol": 1e-6}
    nat = curvature.cg_solve(curvature.make_operator("fisher", obj, params, batch, linearize=True), g, **solve)
    emp = curvature.cg_solve(curvature.make_operator("empirical_fisher", obj, params, batch, linearize=True), g, **solve)
    (adam,) = [
        s
        for s in jax.tree.leaves(adam_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    mu, nu, count = ravel_pytree(adam.mu)[0], ravel_pytree(adam.nu)[0], int(adam.count)
    if count > 0:
        m_hat, v_hat = mu / (1 - 0.9**count), nu / (1 - 0.999**count)
        adam_dir = m_hat / (jnp.sqrt(v_hat) + 1e-8)
    else:  # before the first step Adam's first update is sign(g)
        v_hat, adam_dir = g**2, jnp.sign(g)
    fdiag = curvature.hutchinson_diagonal(ops["fisher"], keys[2], num_probes=config.diag_probes).estimate
    fdiag = jnp.maximum(fdiag, 0.0)
    logv, logf = np.log(np.asarray(v_hat) + 1e-30), np.log(np.asarray(fdiag) + 1e-30)
    return {
        "eigenvalues": {name: np.asarray(e.eigenvalues).tolist() for name, e in eig.items()},
        "overlaps": overlaps,
        "cos_natural_gradient": _cos(nat.x, g),
        "cos_natural_adam": _cos(nat.x, adam_dir),
        "cos_empirical_natural": _cos(emp.x, nat.x),
        "cos_adam_gradient": _cos(adam_dir, g),
        "cg_steps": int(nat.num_steps),
        "adam_v_fisher_pearson_log": float(np.corrcoef(logv, logf)[0, 1]),
        "adam_v_fisher_spearman": float(_spearman(np.asarray(v_hat), np.asarray(fdiag))),
        "_arrays": {
            **{f"density_{n}_grid": d[0] for n, d in dens.items()},
            **{f"density_{n}": d[1] for n, d in dens.items()},
            "adam_v": np.asarray(v_hat),
            "fisher_diag": np.asarray(fdiag),
        },
    }


def _spearman(a, b):
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return np.corrcoef(ra, rb)[0, 1]


def run_geometry(cfg: dict, config: Config) -> dict:
    """Replays the Adam run (same seed, lr) with checkpoints at ``analysis_epochs`` and measures the geometry."""
    obj = build_objective(config, cfg["dataset"])
    batch = analysis_batch(obj, config.analysis_samples)
    tx, _ = optim.create("adam", cfg["learning_rate"])
    params, opt_state, result = obj.params, tx.init(obj.params), None
    out = {}
    for e in sorted(config.analysis_epochs):
        if e > 0:  # continue the same Adam run up to epoch e (params, moments and key carried over)
            result = train(obj, optimizer="adam", learning_rate=cfg["learning_rate"], batch_size=config.batch_size,
                           epochs=e, key=config.seed, resume=result)
            params, opt_state = result.params, result.opt_state
        out[str(e)] = geometry_at(obj, params, opt_state, batch, jax.random.key(e), config)
    arrays = {f"e{e}_{k}": v for e, m in out.items() for k, v in m.pop("_arrays").items()}
    return {"checkpoints": out, "_arrays": arrays}


# ----------------------------------------------------------------------------


def _grid(config: Config) -> dict:
    grid = dict(config.lr_grid)
    missing = [o for o in config.optimizers if o not in grid]
    if missing:
        raise ValueError(f"lr_grid has no learning rates for {missing}; it covers {sorted(grid)}")
    unknown = [o for o in config.optimizers if o not in optim.OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizers {unknown}; valid: {sorted(optim.OPTIMIZERS)}")
    return grid


def run(config: Config, out_dir: str) -> dict:
    """Runs (or resumes) the study under ``out_dir/natural_gradient``; writes ``summary.json`` / ``summary.md``.

    Returns the rows: ``{"config": the config as a dict, "rows": [...], "geometry": {...},
    "all_rates_diverged": [...]}``. ``rows`` holds one dict per (dataset, optimizer) at its best
    learning rate: ``dataset``, ``optimizer``, ``learning_rate``, ``steps_to_target`` (None if
    never), ``wall_to_target``, ``final_train_loss``, ``test_error``, ``lambda_max``,
    ``hessian_trace`` and ``curves`` (per epoch: ``step``, ``wall_time``, ``cost``,
    ``train_eval_loss``, ``val_loss``). ``geometry`` (empty without an Adam run on the first
    dataset): ``checkpoints`` ``{epoch: overlaps (in ``OPERATORS`` order), cosines, ...}`` and
    ``arrays`` (densities, Adam's v and the Fisher diagonal per epoch).
    """
    grid = _grid(config)
    store = RunStore(out_dir, EXPERIMENT)
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("datasets", "optimizers", "lr_grid")}
    cfgs = [
        {"name": f"{d}-{o}-lr{lr:g}", "kind": "train", "dataset": d, "optimizer": o, "learning_rate": lr, **shared}
        for d in config.datasets
        for o in config.optimizers
        for lr in grid[o]
    ]
    metrics = run_sweep(store, [(c, lambda c: run_training(c, config)) for c in cfgs], desc="natural-gradient runs")
    best = {}
    for c, m in zip(cfgs, metrics):
        key = (c["dataset"], c["optimizer"])
        if key not in best or _score(m) < _score(best[key][1]):
            best[key] = (c, m)
    diverged = sorted(f"{d}/{o}" for (d, o), (_, m) in best.items() if m.get("diverged"))
    best = {k: v for k, v in best.items() if not v[1].get("diverged")}  # every rate of the grid diverged
    geometry = {}
    if (config.datasets[0], "adam") in best:
        d0 = config.datasets[0]
        gcfg = {
            "name": f"{d0}-geometry",
            "kind": "geometry",
            "dataset": d0,
            "learning_rate": best[(d0, "adam")][0]["learning_rate"],
            **shared,
        }
        geometry = run_sweep(store, [(gcfg, lambda c: run_geometry(c, config))], desc="Fisher geometry")[0]
        geometry["arrays"] = store.load(gcfg, gcfg["name"]).arrays()
    summary = summarise(config, best, geometry)
    folder = os.path.join(out_dir, EXPERIMENT)
    atomic_write_json(os.path.join(folder, "summary.json"),
                      {"rows": summary["rows"], "geometry": summary["geometry"], "all_rates_diverged": diverged})
    atomic_write_text(os.path.join(folder, "summary.md"), summary["note"])
    rows = [{**r, "curves": best[(r["dataset"], r["optimizer"])][1]["curves"]} for r in summary["rows"]]
    return {"config": dataclasses.asdict(config), "rows": rows, "geometry": geometry, "all_rates_diverged": diverged}


def _score(m):
    loss = m["final_train_loss"]
    return loss if loss is not None and np.isfinite(loss) else np.inf


def summarise(config: Config, best: dict, geometry: dict) -> dict:
    rows = []
    for (d, o), (c, m) in best.items():
        rows.append(
            {
                "dataset": d,
                "optimizer": o,
                "learning_rate": c["learning_rate"],
                **{k: v for k, v in m.items() if k != "curves"},
            }
        )
    lines = [
        f"# Natural-gradient study: steps / time / cost to train loss <= {config.target_loss}",
        "",
        "| dataset | optimizer | lr | steps | wall (s) | cost | final train | test error | λ_max | tr H |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def f(v, fmt):
            return "never" if v is None else format(v, fmt)

        lines.append(
            f"| {r['dataset']} | {r['optimizer']} | {r['learning_rate']:g} | {f(r['steps_to_target'], 'd')} | "
            f"{f(r['wall_to_target'], '.2f')} | {f(r['cost_to_target'], 'd')} | {r['final_train_loss']:.3f} | "
            f"{r['test_error']:.3f} | {r['lambda_max']:.3g} | {r['hessian_trace']:.3g} |"
        )
    if geometry:
        lines += [
            "",
            f"## Fisher geometry along the Adam run ({config.datasets[0]}, top-{config.top_k} eigenspaces)",
            "",
            "| epoch | F–H | F–GGN | F–EF | EF–H | F–KFAC | cos(nat, g) | cos(nat, Adam) | cos(EF-nat, nat) | corr(log v, log diag F) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        idx = {n: i for i, n in enumerate(OPERATORS)}
        for e, m in sorted(geometry["checkpoints"].items(), key=lambda kv: int(kv[0])):
            o = m["overlaps"]
            lines.append(
                f"| {e} | {o[idx['fisher']][idx['hessian']]:.3f} | {o[idx['fisher']][idx['ggn']]:.3f} | "
                f"{o[idx['fisher']][idx['empirical_fisher']]:.3f} | {o[idx['empirical_fisher']][idx['hessian']]:.3f} | "
                f"{o[idx['fisher']][idx['kfac']]:.3f} | {m['cos_natural_gradient']:.3f} | {m['cos_natural_adam']:.3f} | "
                f"{m['cos_empirical_natural']:.3f} | {m['adam_v_fisher_pearson_log']:.3f} |"
            )
    return {
        "rows": rows,
        "geometry": {k: v for k, v in geometry.items() if k != "arrays"},
        "note": "\n".join(lines) + "\n",
    }


def _overlap(checkpoint: dict, a: str, b: str) -> float:
    idx = {n: i for i, n in enumerate(OPERATORS)}
    return float(checkpoint["overlaps"][idx[a]][idx[b]])


def _epochs(rows) -> list[str]:
    return sorted((rows.get("geometry") or {}).get("checkpoints", {}), key=int)


def verdict(rows) -> Verdict:
    """Two parts, on the first dataset, each optimizer at its best learning rate.

    (a) fewer steps: the fewest steps to ``target_loss`` among NGD / K-FAC against the fewest
    among SGD / momentum / Adam / RMSprop (never reaching it counts as ∞): fewer (True), more
    (False), equal or neither family reaching it (None). (b) Fisher ≈ Hessian: their top-k
    eigenspace overlap at the last checkpoint ≥ ``OVERLAP_HOLDS`` (True), < ``OVERLAP_FAILS``
    (False), between or no geometry (None). Combined by :func:`common.combine`.
    """
    cfg = rows["config"]
    d0 = cfg["datasets"][0]
    table = [r for r in rows["rows"] if r["dataset"] == d0]
    steps = {r["optimizer"]: r["steps_to_target"] for r in table}

    def fewest(names):
        got = [steps[n] if steps[n] is not None else math.inf for n in names if n in steps]
        return min(got) if got else None

    nat, first = fewest(NATURAL), fewest(FIRST_ORDER)
    fewer = None if nat is None or first is None or nat == first == math.inf else common.direction(nat, first)
    epochs = _epochs(rows)
    checkpoints = (rows.get("geometry") or {}).get("checkpoints", {})
    overlap = {e: _overlap(checkpoints[e], "fisher", "hessian") for e in epochs}
    last = overlap[epochs[-1]] if epochs else None
    approx = None if last is None else True if last >= OVERLAP_HOLDS else False if last < OVERLAP_FAILS else None
    parts = {"natural_fewer_steps": fewer, "fisher_approximates_hessian": approx}
    reached = sorted((r for r in table if r["steps_to_target"] is not None), key=lambda r: r["steps_to_target"])
    never = [r["optimizer"] for r in table if r["steps_to_target"] is None]
    summary = (f"{d0}: steps to train loss {cfg['target_loss']:g}: "
               + ", ".join(f"{r['optimizer']} {r['steps_to_target']}" for r in reached)
               + (f"; never: {', '.join(never)}" if never else "")
               + (f" (in wall time the fastest is {min(reached, key=lambda r: r['wall_to_target'])['optimizer']})"
                  if reached else "")
               + (f"; Fisher–Hessian top-{cfg['top_k']} overlap {overlap[epochs[0]]:.2f} (epoch {epochs[0]}) → "
                  f"{last:.2f} (epoch {epochs[-1]})" if epochs else "") + ".")
    return Verdict(CLAIM, combine(parts), {
        "rule": (f"on {d0}, each optimizer at its best learning rate: (a) the fewest steps to training loss "
                 f"{cfg['target_loss']:g} among {'/'.join(NATURAL)} is below the fewest among "
                 f"{'/'.join(FIRST_ORDER)} (never = ∞); (b) the Fisher–Hessian top-{cfg['top_k']} eigenspace overlap "
                 f"at the last checkpoint is at least {OVERLAP_HOLDS:g} (below {OVERLAP_FAILS:g}: contradicted); "
                 f"{COMBINE_RULE}"),
        "summary": summary, "parts": parts, "dataset": d0, "target_loss": cfg["target_loss"],
        "steps_to_target": steps, "fewest_steps": {"natural": nat, "first_order": first},
        "fisher_hessian_overlap": overlap,
    })


def figure(rows, ax=None):
    """Training loss against steps and against wall time on the first dataset (best learning rate each),
    and the top-k eigenspace overlaps at the last checkpoint (when the geometry was measured).

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot import natural as nplot

    cfg = rows["config"]
    d0 = cfg["datasets"][0]
    epochs = _epochs(rows)
    ncols = 3 if epochs else 2
    fig, host = common.panels(ax, (5.4 * ncols, 4.6))
    axes = host.subplots(1, ncols)
    curves = {r["optimizer"]: r["curves"] for r in rows["rows"] if r["dataset"] == d0}
    nplot.loss_curves(curves, x="step", ax=axes[0], target=cfg["target_loss"])
    axes[0].set_title(f"{d0}: training loss (best learning rate each)")
    axes[0].legend(fontsize=7)
    nplot.loss_curves(curves, x="wall_time", ax=axes[1], target=cfg["target_loss"])
    axes[1].set_title("the same against wall time")
    if epochs:
        last = epochs[-1]
        nplot.overlap_matrix(rows["geometry"]["checkpoints"][last]["overlaps"], OPERATORS, ax=axes[2],
                             title=f"top-{cfg['top_k']} eigenspace overlaps, epoch {last}")
    return fig


def extra_figures(rows) -> dict:
    """The study's other views, from stored rows: ``{stem: Figure}``.

    Per dataset ``natural_curves_<dataset>`` (training and validation loss against steps, wall time
    and cost) and ``natural_sharpness_<dataset>`` (λ_max of each minimum vs test error); from the
    geometry ``natural_overlaps`` and ``natural_densities`` (per checkpoint) and
    ``natural_adam_vs_fisher_diag`` (last checkpoint).
    """
    import matplotlib.pyplot as plt

    from losslab.plot import natural as nplot

    cfg = rows["config"]
    out = {}
    for d in cfg["datasets"]:
        table = [r for r in rows["rows"] if r["dataset"] == d]
        runs = {r["optimizer"]: r["curves"] for r in table}
        fig, axes = plt.subplots(2, 3, figsize=(14, 7), layout="constrained")
        for col, x in enumerate(("step", "wall_time", "cost")):
            nplot.loss_curves(runs, x=x, metric="train_eval_loss", ax=axes[0, col], target=cfg["target_loss"])
            nplot.loss_curves(runs, x=x, metric="val_loss", ax=axes[1, col])
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"{d}: training (top) and validation (bottom) loss")
        out[f"natural_curves_{d}"] = fig
        fig = nplot.sharpness_scatter(table)
        fig.axes[0].set_title(f"{d}: sharpness of the reached minimum vs test error")
        out[f"natural_sharpness_{d}"] = fig
    epochs = _epochs(rows)
    if epochs:
        geometry = rows["geometry"]
        arrays = geometry["arrays"]
        fig, axes = plt.subplots(1, len(epochs), figsize=(4.2 * len(epochs), 3.8), layout="constrained")
        for ax, e in zip(np.atleast_1d(axes), epochs):
            nplot.overlap_matrix(geometry["checkpoints"][e]["overlaps"], OPERATORS, ax=ax, title=f"epoch {e}")
        out["natural_overlaps"] = fig
        fig, axes = plt.subplots(1, len(epochs), figsize=(4.5 * len(epochs), 3.6), layout="constrained")
        for ax, e in zip(np.atleast_1d(axes), epochs):
            curves = {n: (arrays[f"e{e}_density_{n}_grid"], arrays[f"e{e}_density_{n}"]) for n in OPERATORS[:4]}
            nplot.densities(curves, ax=ax, title=f"epoch {e}")
        out["natural_densities"] = fig
        last = epochs[-1]
        out["natural_adam_vs_fisher_diag"] = nplot.diagonal_scatter(
            arrays[f"e{last}_adam_v"], arrays[f"e{last}_fisher_diag"], title=f"epoch {last}")
    return out


def main(argv=None) -> list[str]:
    """``python -m experiments.natural_gradient [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows), **extra_figures(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
