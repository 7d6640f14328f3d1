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
``keskar.json``, and figures ``scatter.png``, ``tau.png``, ``keskar.png``.

Design: a *star* around a base configuration (each axis varied alone, for each model),
which gives one group per axis for the granulated τ; ``design="grid"`` (``--full``)
crosses every axis. Training is momentum SGD in chunks of ``check_every`` epochs until
the training accuracy reaches ``target_train_accuracy`` or ``epoch_cap`` epochs (the
common stopping rule; the epoch reached and whether the target was met are recorded).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import jax

from losslab import correlation, data, losses, models
from losslab import sharpness as sharp
from losslab.objective import Objective
from losslab.results import RunStore, atomic_write_json, atomic_write_text
from losslab.train import train

EXPERIMENT = "sharpness"
AXES = ("model", "batch_size", "learning_rate", "loss", "weight_decay", "seed")
LOSS_OPTIONS = {"label_smoothing": {"smoothing": 0.1}, "focal": {"gamma": 2.0}}


@dataclasses.dataclass(frozen=True)
class Config:
    """The study. Defaults are the embedded default run (≤ 15 minutes on 2 CPU cores).

    Sweep axes are tuples; ``base_*`` fields are the centre of the star design.
    A batch size of 0 means full batch.
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
        "hessian_trace": {"num_probes": run["trace_probes"]},
        "hessian_lambda_max": {"num_steps": run["lanczos_steps"]},
        "distance_from_init": {"init_params": init_params},
    }


_BATCH_OPTIONS = {"epsilon_sharpness", "sharpness_l2", "sharpness_linf", "adaptive_sharpness_l2",
                  "adaptive_sharpness_linf", "m_sharpness", "average_sharpness", "average_sharpness_mag",
                  "pacbayes_flatness", "pacbayes_flatness_mag", "hessian_trace", "hessian_lambda_max",
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
    epoch, acc, reached, history = 0, 0.0, False, []
    while epoch < run["epoch_cap"]:
        chunk = min(run["check_every"], run["epoch_cap"] - epoch)
        res = train(obj, params, optimizer=run["optimizer"], learning_rate=run["learning_rate"],
                    batch_size=batch_size, epochs=chunk, key=jax.random.fold_in(key, epoch), eval_every=chunk)
        params, obj = res.params, res.objective
        epoch += chunk
        acc = res.history.train_accuracy[-1]
        history.append({"epoch": epoch, "train_loss": res.history.train_eval_loss[-1], "train_accuracy": acc,
                        "val_accuracy": res.history.val_accuracy[-1]})
        if acc >= run["target_train_accuracy"]:
            reached = True
            break
    train_time = time.perf_counter() - t0
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
        for k in ("test_error", "train_error", "gap_error", "epsilon_sharpness", "hessian_lambda_max",
                  "hessian_trace", "sharpness_l2", "adaptive_sharpness_l2", "stop_epoch", "reached_target"):
            if k in small:
                entry[f"small/{k}"], entry[f"large/{k}"] = small[k], large[k]
        if "epsilon_sharpness" in small:
            entry["small_flatter"] = bool(small["epsilon_sharpness"] < large["epsilon_sharpness"])
        entry["small_generalizes_better"] = bool(small["test_error"] < large["test_error"])
        out.append(entry)
    return out


def analyse(config: Config, out_dir: str) -> dict:
    """Writes the tables and figures from the stored runs of this sweep; returns a summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.plot import sharpness as splot

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
    if len(rows) >= 2:
        fig = splot.measure_grid(rows, measures)
        fig.savefig(os.path.join(folder, "scatter.png"), dpi=110)
        plt.close(fig)
        fig = splot.tau_bars(table)
        fig.savefig(os.path.join(folder, "tau.png"), dpi=110)
        plt.close(fig)
        batch_rows = [r for r in rows if r["learning_rate"] == config.base_learning_rate
                      and r["loss"] == config.base_loss and r["weight_decay"] == config.base_weight_decay
                      and r["seed"] == config.base_seed]
        if batch_rows and "epsilon_sharpness" in measures:
            fig = splot.keskar_contrast(batch_rows)
            fig.savefig(os.path.join(folder, "keskar.png"), dpi=110)
            plt.close(fig)
    return {"num_runs": len(rows), "tau": table, "keskar": contrast, "folder": folder, "rows": rows,
            "measures": measures}


# ----------------------------------------------------------------------------
# Driver


def run(config: Config, out_dir: str = "results", *, progress: bool = True) -> dict:
    """Runs the missing runs of the sweep (resuming), then :func:`analyse`.

    Each finished run is saved atomically in ``<out_dir>/sharpness/<run-id>/`` before the
    next starts; finished runs are never recomputed.
    """
    from tqdm.auto import tqdm

    validate(config)
    runs = sweep(config)
    store = RunStore(out_dir, EXPERIMENT)
    todo = [r for r in runs if not store.is_done(r)]
    ds = _dataset(config) if todo else None
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sharpness runs", unit="run",
               disable=not progress, file=sys.stderr)
    for r in todo:
        bar.set_postfix_str(f"{r['model']} bs={r['batch_size']} lr={r['learning_rate']} {r['loss']} "
                            f"wd={r['weight_decay']} seed={r['seed']}")
        t0 = time.perf_counter()
        metrics = train_and_measure(r, ds)
        metrics["num_train"] = ds.x_train.shape[0]
        metrics["measures"]["gap_error"] = metrics["measures"].get("gap_error", metrics["test_error"] - metrics["train_error"])
        store.save(r, metrics, seed=r["seed"], wall_time=time.perf_counter() - t0)
        bar.update(1)
    bar.close()
    return analyse(config, out_dir)


def _parse_value(text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(default, tuple):
        items = [t for t in text.split(",") if t.strip()]
        proto = default[0] if default else ""
        return tuple(_parse_value(t.strip(), proto) for t in items)
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def config_from_args(argv: Sequence[str] | None = None) -> tuple[Config, str, bool]:
    """Parses ``--quick``/``--full``, ``--out`` and ``--<field> value`` overrides of :class:`Config`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sweep (under a minute)")
    parser.add_argument("--full", action="store_true", help="the larger grid sweep, for a GPU")
    parser.add_argument("--out", default="results", help="results root (default: results)")
    parser.add_argument("--no-progress", action="store_true")
    defaults = Config()
    for f in dataclasses.fields(Config):
        parser.add_argument(f"--{f.name}", default=None, help=f"default {getattr(defaults, f.name)!r}"
                            + (" (comma-separated)" if isinstance(getattr(defaults, f.name), tuple) else ""))
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full are exclusive")
    base = quick() if args.quick else full() if args.full else Config()
    overrides = {}
    for f in dataclasses.fields(Config):
        text = getattr(args, f.name)
        if text is not None:
            try:
                overrides[f.name] = _parse_value(text, getattr(base, f.name))
            except ValueError as e:
                parser.error(f"--{f.name}: {e}")
    return dataclasses.replace(base, **overrides), args.out, not args.no_progress


def main(argv: Sequence[str] | None = None) -> None:
    config, out, progress = config_from_args(argv)
    t0 = time.perf_counter()
    summary = run(config, out, progress=progress)
    print(f"{summary['num_runs']} runs in {summary['folder']} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'measure':24s} {'tau':>6s} {'95% CI':>15s} {'gran.':>6s}")
    for row in summary["tau"]:
        g = row.get("granulated_tau", math.nan)
        print(f"{row['measure']:24s} {row['tau']:+6.2f} [{row['tau_low']:+.2f}, {row['tau_high']:+.2f}] {g:+6.2f}")
    for k in summary["keskar"]:
        print(json.dumps(k))


if __name__ == "__main__":
    main()
