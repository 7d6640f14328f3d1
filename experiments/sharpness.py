"""Which flatness measures track generalization? The flat-minima study (losslab's main job).

Trains a sweep of MNIST-1D models (an MLP and a 1-D CNN) over batch size, learning
rate, loss, weight decay and seed, each to a common stopping rule; computes every
measure of :data:`losslab.sharpness.MEASURES` at the final weights; then correlates
each with the generalization gap (Kendall τ with bootstrap intervals, granulated τ
of Jiang et al. 2020) and draws the Keskar et al. (2017) small- vs large-batch contrast.

Commands::

    python -m experiments.sharpness                 # default run (≤ 15 min on 2 CPU cores)
    python -m experiments.sharpness --quick         # tiny sweep, under a minute (tests)
    python -m experiments.sharpness --full          # larger grid sweep, for a GPU
    python -m experiments.sharpness --epoch_cap 80 --seeds 0,1,2 --out results

Outputs under ``<out>/sharpness/``: one folder per run (config hash; finished runs are
reused, a killed sweep resumes), ``results.csv``/``results.json`` (one row per run),
``tau.csv``/``tau.json`` (τ, its 95% bootstrap interval, granulated τ and per-axis ψ),
``keskar.json``, and the figures ``sharpness_vs_gap`` (:func:`figure`, which feeds
``figures/sharpness_vs_gap``, paper figure 3), ``scatter``, ``tau`` and ``keskar``
(:func:`extra_figures`), each as PNG and PDF.

Verdict: a measure correlates when the 95 % bootstrap interval of its Kendall τ with the
error gap lies above 0; the claim holds when most measures do (see :func:`verdict`).

Design: a *star* around a base configuration (each axis varied alone, for each model),
which gives one group per axis for the granulated τ; ``design="grid"`` (``--full``)
crosses every axis. Training is momentum SGD in chunks of ``check_every`` epochs until
the training accuracy reaches ``target_train_accuracy`` or ``epoch_cap`` epochs (the
common stopping rule; the epoch reached and whether the target was met are recorded).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Sequence

import jax

from experiments import common
from experiments.common import Verdict, parse_config, run_sweep
from losslab import correlation, data, losses, models
from losslab import sharpness as sharp
from losslab.objective import Objective
from losslab.results import RunStore, atomic_write_json, atomic_write_text
from losslab.train import train

EXPERIMENT = "sharpness"
FIGURE = "sharpness_vs_gap"
CLAIM = ("flatter minima generalize better: sharpness measures rank-correlate with the generalization gap "
         "(Jiang et al. 2020).")
AXES = ("model", "batch_size", "learning_rate", "loss", "weight_decay", "seed")
LOSS_OPTIONS = {"label_smoothing": {"smoothing": 0.1}, "focal": {"gamma": 2.0}}


@dataclasses.dataclass(frozen=True)
class Config:
    """The study. Defaults are the embedded default run (≤ 15 minutes on 2 CPU cores).

    Varied: the sweep axes (tuples) model, batch size, learning rate, loss, weight decay and
    seed; ``base_*`` fields are the centre of the star design. A batch size of 0 means full
    batch. Fixed: the dataset, ``optimizer``, every measure's options. Stopping (the same
    for every run): train in chunks of ``check_every`` epochs until the training accuracy
    reaches ``target_train_accuracy``, at most ``epoch_cap`` epochs. Statistic: Kendall τ of
    each measure with the error gap over the runs, with a bootstrap 95 % interval
    (``bootstrap_resamples``), and the granulated τ.
    """

    dataset: str = "mnist1d"
    num_samples: int = 3000
    models: tuple[str, ...] = ("mlp", "cnn1d")
    mlp_widths: tuple[int, ...] = (128, 128)
    cnn_channels: tuple[int, ...] = (8, 8)
    cnn_hidden: int = 32
    design: str = "star"
    batch_sizes: tuple[int, ...] = (16, 64, 256, 0)
    base_batch_size: int = 64
    learning_rates: tuple[float, ...] = (0.01, 0.03, 0.1)
    base_learning_rate: float = 0.03
    losses: tuple[str, ...] = ("cross_entropy", "label_smoothing", "focal", "mse")
    base_loss: str = "cross_entropy"
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3)
    base_weight_decay: float = 0.0
    seeds: tuple[int, ...] = (0, 1)
    base_seed: int = 0
    optimizer: str = "momentum"
    target_train_accuracy: float = 0.99
    epoch_cap: int = 60
    check_every: int = 5
    measures: tuple[str, ...] = tuple(sharp.MEASURES)
    measure_examples: int = 1000
    rho: float = 0.05
    epsilon: float = 1e-3
    sigma: float = 0.01
    m: int = 64
    ascent_steps: int = 10
    noise_samples: int = 16
    pacbayes_target: float = 0.1
    pacbayes_bisections: int = 12
    trace_probes: int = 20
    lanczos_steps: int = 20
    bootstrap_resamples: int = 1000
    measure_seed: int = 1234


def quick() -> Config:
    """A tiny sweep for tests: one small MLP, two batch sizes, two seeds, a few epochs (compiles once)."""
    return Config(
        num_samples=600,
        models=("mlp",),
        mlp_widths=(16,),
        batch_sizes=(32, 0),
        base_batch_size=32,
        learning_rates=(0.05,),
        base_learning_rate=0.05,
        losses=("cross_entropy",),
        weight_decays=(0.0,),
        seeds=(0, 1),
        epoch_cap=4,
        check_every=2,
        measure_examples=200,
        ascent_steps=3,
        noise_samples=4,
        pacbayes_bisections=5,
        trace_probes=4,
        lanczos_steps=5,
        bootstrap_resamples=50,
    )


def full() -> Config:
    """The larger sweep for a GPU: the full grid over every axis, three seeds, all MNIST-1D samples."""
    return Config(
        num_samples=5000,
        mlp_widths=(256, 256),
        cnn_channels=(32, 32, 32),
        cnn_hidden=64,
        design="grid",
        batch_sizes=(16, 32, 64, 128, 256, 1024, 0),
        learning_rates=(0.003, 0.01, 0.03, 0.1),
        weight_decays=(0.0, 1e-4, 1e-3),
        seeds=(0, 1, 2),
        epoch_cap=300,
        measure_examples=4000,
        ascent_steps=20,
        noise_samples=64,
        pacbayes_bisections=20,
        trace_probes=100,
        lanczos_steps=40,
    )


# ----------------------------------------------------------------------------
# The sweep


def validate(config: Config) -> None:
    """Checks names and ranges before anything runs (ValueError naming the field)."""
    if config.design not in ("star", "grid"):
        raise ValueError(f"design must be 'star' or 'grid', got {config.design!r}")
    for name in config.models:
        if name not in ("mlp", "cnn1d"):
            raise ValueError(f"models must be from ('mlp', 'cnn1d'), got {name!r}")
    for name in config.losses + (config.base_loss,):
        losses.get(name)
    for name in config.measures:
        sharp.get(name)
    if not 0 < config.target_train_accuracy <= 1:
        raise ValueError(f"target_train_accuracy must be in (0, 1], got {config.target_train_accuracy}")
    if config.epoch_cap < 1 or config.check_every < 1:
        raise ValueError(f"epoch_cap and check_every must be >= 1, got {config.epoch_cap}, {config.check_every}")
    if any(b < 0 for b in config.batch_sizes) or any(lr <= 0 for lr in config.learning_rates):
        raise ValueError("batch sizes must be >= 0 (0 = full batch) and learning rates > 0")
    if any(w < 0 for w in config.weight_decays):
        raise ValueError(f"weight decays must be >= 0, got {config.weight_decays}")
    for axis in ("models", "batch_sizes", "learning_rates", "losses", "weight_decays", "seeds"):
        if not getattr(config, axis):
            raise ValueError(f"{axis} must not be empty")


def _shared(config: Config) -> dict:
    """Every config field that is not a sweep axis: part of each run's hash."""
    skip = {"models", "batch_sizes", "learning_rates", "losses", "weight_decays", "seeds", "design",
            "base_batch_size", "base_learning_rate", "base_loss", "base_weight_decay", "base_seed",
            "bootstrap_resamples", "measures"}
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def sweep(config: Config) -> list[dict]:
    """The run configs (dicts: the six axes plus the shared fields), deduplicated, in order."""
    values = {
        "model": config.models,
        "batch_size": config.batch_sizes,
        "learning_rate": config.learning_rates,
        "loss": config.losses,
        "weight_decay": config.weight_decays,
        "seed": config.seeds,
    }
    if config.design == "grid":
        points = [dict(zip(AXES, combo)) for combo in itertools.product(*(values[a] for a in AXES))]
    else:
        points = []
        for model in config.models:
            base = {"model": model, "batch_size": config.base_batch_size, "learning_rate": config.base_learning_rate,
                    "loss": config.base_loss, "weight_decay": config.base_weight_decay, "seed": config.base_seed}
            points.append(base)
            for axis in AXES[1:]:
                for v in values[axis]:
                    points.append({**base, axis: v})
    shared = _shared(config)
    shared["measures"] = list(config.measures)
    runs, seen = [], set()
    for p in points:
        key = tuple(p[a] for a in AXES)
        if key not in seen:
            seen.add(key)
            runs.append({**p, **shared})
    return runs


def _dataset(config: Config):
    return data.load(config.dataset, num_samples=config.num_samples)


def _objective(run: dict, ds) -> Objective:
    opts = {"widths": tuple(run["mlp_widths"])} if run["model"] == "mlp" else {
        "channels": tuple(run["cnn_channels"]), "hidden": run["cnn_hidden"]}
    model = models.create(run["model"], input_shape=ds.input_shape, output_dim=ds.num_classes, seed=run["seed"], **opts)
    loss = losses.get(run["loss"], **LOSS_OPTIONS.get(run["loss"], {}))
    regs = (losses.l2(run["weight_decay"]),) if run["weight_decay"] > 0 else ()
    return Objective(model, loss, ds, regularizers=regs)


def measure_options(run: dict, init_params) -> dict[str, dict]:
    """The options each measure is computed with in this study."""
    ascent = {"rho": run["rho"], "num_steps": run["ascent_steps"]}
    noise = {"sigma": run["sigma"], "num_samples": run["noise_samples"]}
    pac = {"target": run["pacbayes_target"], "num_samples": run["noise_samples"],
           "num_bisections": run["pacbayes_bisections"]}
    return {
        "epsilon_sharpness": {"epsilon": run["epsilon"], "num_steps": run["ascent_steps"]},
        "sharpness_l2": ascent, "sharpness_linf": {**ascent, "rho": run["rho"] / 100},
        "adaptive_sharpness_l2": {**ascent, "rho": 10 * run["rho"]},
        "adaptive_sharpness_linf": {**ascent, "rho": run["epsilon"]},
        "m_sharpness": {**ascent, "m": run["m"]},
        "average_sharpness": noise, "average_sharpness_mag": {**noise, "sigma": 10 * run["sigma"]},
        "pacbayes_flatness": pac, "pacbayes_flatness_mag": pac,
        "data_hessian_trace": {"num_probes": run["trace_probes"]},
        "data_hessian_lambda_max": {"num_steps": run["lanczos_steps"]},
        "distance_from_init": {"init_params": init_params},
    }


_BATCH_OPTIONS = {"epsilon_sharpness", "sharpness_l2", "sharpness_linf", "adaptive_sharpness_l2",
                  "adaptive_sharpness_linf", "m_sharpness", "average_sharpness", "average_sharpness_mag",
                  "pacbayes_flatness", "pacbayes_flatness_mag", "data_hessian_trace", "data_hessian_lambda_max",
                  "fisher_rao_norm"}


def train_and_measure(run: dict, ds) -> dict:
    """Trains one run to the stopping rule and computes every measure; returns its metrics."""
    t0 = time.perf_counter()
    obj = _objective(run, ds)
    init = obj.params
    params = init
    key = jax.random.key(run["seed"])
    n = obj.num_examples("train")
    batch_size = n if run["batch_size"] == 0 else run["batch_size"]
    epoch, acc, reached, history, res = 0, 0.0, False, [], None
    while epoch < run["epoch_cap"]:
        # Train in pieces of check_every epochs, each continuing the last exactly (params, optimizer
        # state, key): the stopping rule is checked between pieces and momentum is never reset.
        chunk = min(run["check_every"], run["epoch_cap"] - epoch)
        res = train(obj, params, optimizer=run["optimizer"], learning_rate=run["learning_rate"],
                    batch_size=batch_size, epochs=epoch + chunk, key=key, eval_every=chunk, resume=res)
        params, epoch = res.params, res.epoch
        acc = res.history.train_accuracy[-1]
        history.append({"epoch": epoch, "train_loss": res.history.train_eval_loss[-1], "train_accuracy": acc,
                        "val_accuracy": res.history.val_accuracy[-1]})
        if acc >= run["target_train_accuracy"]:
            reached = True
            break
    train_time = time.perf_counter() - t0
    obj = res.objective  # the trained BatchNorm statistics, if any
    train_eval, test_eval = obj.evaluate(params, "train"), obj.evaluate(params, "test")
    x, y = obj.batch("train")
    subset = (x[: run["measure_examples"]], y[: run["measure_examples"]])
    opts = measure_options(run, init)
    mkey = jax.random.key(run["measure_seed"])
    values, errors, infos = {}, {}, {}
    for i, name in enumerate(run["measures"]):
        o = dict(opts.get(name, {}))
        if name in _BATCH_OPTIONS:
            o["batch"] = subset
        r = sharp.compute(name, obj, params, jax.random.fold_in(mkey, i), **o)
        values[name], errors[name] = r.value, r.std_error
        infos[name] = {k: v for k, v in r.info.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {
        "stop_epoch": epoch,
        "reached_target": reached,
        "stopping_rule": f"train accuracy >= {run['target_train_accuracy']} checked every {run['check_every']} "
                         f"epochs, cap {run['epoch_cap']} epochs",
        "train_loss": float(train_eval["loss"]), "train_error": float(train_eval["error"]),
        "test_loss": float(test_eval["loss"]), "test_error": float(test_eval["error"]),
        "measures": values, "std_errors": errors, "measure_info": infos, "history": history,
        "train_seconds": train_time, "total_seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------
# Analysis (reads the store only)


def results_table(store: RunStore, runs: Sequence[dict]) -> list[dict]:
    """One flat row per run of this sweep: axes, stopping record, errors, gaps and measures."""
    rows = []
    for run in runs:
        if not store.is_done(run):
            continue
        stored = store.load(run)
        m = stored.metrics
        row = {a: run[a] for a in AXES}
        row["batch_size"] = row["batch_size"] or int(m["num_train"])  # 0 = full batch
        row.update({"run_id": stored.run_id, "stop_epoch": m["stop_epoch"], "reached_target": m["reached_target"],
                    "train_error": m["train_error"], "test_error": m["test_error"], "train_loss": m["train_loss"],
                    "test_loss": m["test_loss"]})
        row.update(m["measures"])
        row.update({f"{k}_se": v for k, v in m["std_errors"].items() if v is not None})
        rows.append(row)
    return rows


def _write_csv(path: str, rows: Sequence[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def keskar(rows: Sequence[dict], config: Config) -> list[dict]:
    """Small vs large batch per model (other axes at base): sharpness, errors and gaps."""
    out = []
    for model in config.models:
        sub = [r for r in rows if r["model"] == model and r["learning_rate"] == config.base_learning_rate
               and r["loss"] == config.base_loss and r["weight_decay"] == config.base_weight_decay
               and r["seed"] == config.base_seed]
        if len(sub) < 2:
            continue
        small, large = min(sub, key=lambda r: r["batch_size"]), max(sub, key=lambda r: r["batch_size"])
        entry = {"model": model, "small_batch": small["batch_size"], "large_batch": large["batch_size"]}
        for k in ("test_error", "train_error", "gap_error", "epsilon_sharpness", "data_hessian_lambda_max",
                  "data_hessian_trace", "sharpness_l2", "adaptive_sharpness_l2", "stop_epoch", "reached_target"):
            if k in small:
                entry[f"small/{k}"], entry[f"large/{k}"] = small[k], large[k]
        if "epsilon_sharpness" in small:
            entry["small_flatter"] = bool(small["epsilon_sharpness"] < large["epsilon_sharpness"])
        entry["small_generalizes_better"] = bool(small["test_error"] < large["test_error"])
        out.append(entry)
    return out


def analyse(config: Config, out_dir: str) -> dict:
    """Writes the tables (``results``, ``tau``, ``keskar``; CSV and JSON) from the stored runs of this sweep.

    Returns the study's rows: ``{"num_runs", "rows" (one flat dict per run: the axes,
    ``stop_epoch``, ``reached_target``, errors and every measure), "measures", "tau" (one dict
    per measure: ``tau``, ``tau_low``, ``tau_high``, ``granulated_tau``), "keskar", "base"
    (the star's centre), "folder"}``.
    """
    runs = sweep(config)
    store = RunStore(out_dir, EXPERIMENT)
    rows = results_table(store, runs)
    folder = store.directory
    _write_csv(os.path.join(folder, "results.csv"), rows)
    atomic_write_json(os.path.join(folder, "results.json"), rows)
    measures = [m for m in config.measures if not m.startswith("gap_")]
    gap = [r.get("gap_error", r["test_error"] - r["train_error"]) for r in rows]
    axes = {a: [r[a] for r in rows] for a in AXES if len({str(r[a]) for r in rows}) > 1}
    table = correlation.kendall_table({m: [r[m] for r in rows] for m in measures}, gap, axes or None,
                                      num_resamples=config.bootstrap_resamples, seed=config.measure_seed)
    _write_csv(os.path.join(folder, "tau.csv"), table)
    atomic_write_json(os.path.join(folder, "tau.json"), table)
    contrast = keskar(rows, config)
    atomic_write_json(os.path.join(folder, "keskar.json"), contrast)
    base = {"learning_rate": config.base_learning_rate, "loss": config.base_loss,
            "weight_decay": config.base_weight_decay, "seed": config.base_seed}
    return {"num_runs": len(rows), "tau": table, "keskar": contrast, "folder": folder, "rows": rows,
            "measures": measures, "base": base}


# ----------------------------------------------------------------------------
# Driver


def _measure(run: dict, dataset) -> dict:
    """One run of the sweep: :func:`train_and_measure` plus the training-set size and the error gap."""
    ds = dataset()
    metrics = train_and_measure(run, ds)
    metrics["num_train"] = ds.x_train.shape[0]
    metrics["measures"]["gap_error"] = metrics["measures"].get("gap_error", metrics["test_error"] - metrics["train_error"])
    return metrics


def run(config: Config, out_dir: str) -> dict:
    """Runs the missing runs of the sweep (resuming, through :func:`common.run_sweep`), then :func:`analyse`.

    Each finished run is saved atomically in ``<out_dir>/sharpness/<run-id>/`` before the
    next starts; finished runs are never recomputed. Returns the rows of :func:`analyse`.
    """
    validate(config)
    runs = sweep(config)
    store = RunStore(out_dir, EXPERIMENT)
    dataset = functools.cache(lambda: _dataset(config))  # loaded once, and only when a run is missing
    run_sweep(store, [(r, lambda r: _measure(r, dataset)) for r in runs], desc="sharpness runs")
    return analyse(config, out_dir)


# ----------------------------------------------------------------------------
# Verdict and figures (from the rows only)


def _finite(table) -> list[dict]:
    return [r for r in table if r["tau"] is not None and math.isfinite(r["tau"])]


def verdict(rows) -> Verdict:
    """Counts the measures whose Kendall τ with the error gap is resolved above 0.

    A measure correlates positively when the 95 % bootstrap interval of its τ lies above 0
    (``tau_low > 0``), negatively when it lies below 0. Holds: more than half of the measures
    (with a finite τ) correlate positively. Does not hold: none does. Inconclusive: otherwise.
    """
    table = _finite(rows["tau"])
    ranked = sorted(table, key=lambda r: -r["tau"])
    positive = [r["measure"] for r in ranked if r["tau_low"] > 0]
    negative = [r["measure"] for r in ranked if r["tau_high"] < 0]
    by = {r["measure"]: r for r in table}
    shown = [r["measure"] for r in ranked[:3]]
    parts = [f"{r['measure']} τ = {r['tau']:+.2f} [{r['tau_low']:+.2f}, {r['tau_high']:+.2f}]" for r in ranked[:3]]
    for m in ("data_hessian_trace", "data_hessian_lambda_max"):
        if m in by and m not in shown:
            parts.append(f"{m} τ = {by[m]['tau']:+.2f}")
    summary = (f"over {rows['num_runs']} runs, {len(positive)} of {len(table)} measures correlate positively with "
               f"the error gap (95 % CI above 0){', ' + str(len(negative)) + ' negatively' if negative else ''}; "
               f"strongest: " + "; ".join(parts) + ".")
    status = ("holds" if table and len(positive) > len(table) / 2 else "does not hold" if not positive
              else "inconclusive")
    return Verdict(CLAIM, status, {
        "rule": ("a measure correlates when the 95 % bootstrap interval of its Kendall τ with the error gap lies "
                 "above 0; the claim holds when more than half of the measures do, does not hold when none does, "
                 "and is inconclusive otherwise"),
        "summary": summary, "num_runs": rows["num_runs"], "num_measures": len(table),
        "positive": positive, "negative": negative,
        "tau": {r["measure"]: [r["tau"], r["tau_low"], r["tau_high"]] for r in ranked},
    })


def figure(rows, ax=None):
    """τ (with its interval) and granulated τ of every measure, then the error gap against the two
    strongest measures and the Hessian ones (up to three scatter panels).

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot import sharpness as splot

    table = _finite(rows["tau"])
    ranked = sorted(table, key=lambda r: -r["tau"])
    by = {r["measure"] for r in table}
    shown = [r["measure"] for r in ranked[:2]]
    for m in ("data_hessian_trace", "data_hessian_lambda_max"):
        if m in by and m not in shown and len(shown) < 3:
            shown.append(m)
    fig, host = common.panels(ax, (16, 5))
    grid = host.add_gridspec(1, 1 + len(shown), width_ratios=[1.3] + [1] * len(shown))
    splot.tau_bars(rows["tau"], ax=host.add_subplot(grid[0, 0]))
    for i, m in enumerate(shown):
        splot.measure_vs_gap(rows["rows"], m, ax=host.add_subplot(grid[0, i + 1]))
    return fig


def extra_figures(rows) -> dict:
    """``scatter`` (the gap against every measure), ``tau`` (the τ bars alone) and, when the batch
    axis was swept with ε-sharpness measured, ``keskar`` (the small- vs large-batch contrast)."""
    from losslab.plot import sharpness as splot

    out = {}
    if len(rows["rows"]) < 2:
        return out
    out["scatter"] = splot.measure_grid(rows["rows"], rows["measures"])
    out["tau"] = splot.tau_bars(rows["tau"])
    base = rows["base"]
    batch_rows = [r for r in rows["rows"] if all(r[k] == v for k, v in base.items())]
    if batch_rows and "epsilon_sharpness" in rows["measures"]:
        out["keskar"] = splot.keskar_contrast(batch_rows)
    return out


def main(argv: Sequence[str] | None = None) -> list[str]:
    """``python -m experiments.sharpness [--quick | --full] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick, full=full)
    rows = run(config, out)
    print(f"{rows['num_runs']} runs in {rows['folder']}")
    print(f"{'measure':24s} {'tau':>6s} {'95% CI':>15s} {'gran.':>6s}")
    for row in rows["tau"]:
        g = row.get("granulated_tau", math.nan)
        print(f"{row['measure']:24s} {row['tau']:+6.2f} [{row['tau_low']:+.2f}, {row['tau_high']:+.2f}] {g:+6.2f}")
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows), **extra_figures(rows)}, verdict(rows))


if __name__ == "__main__":
    main()
