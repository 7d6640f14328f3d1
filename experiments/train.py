"""A first study: early stopping, L2 and Dropout on the digits MLP.

On scikit-learn's bundled ``digits``: MLP 64 -> 64 (ReLU) -> Dropout -> 10, Adam
(lr 1e-3), cross-entropy, batch 32, up to 50 epochs, early stopping (patience 5,
restore best weights). Variants: L2 in {0.001, 0.01, 0.1} on the first layer
(Dropout 0.2) and Dropout in {0.1, 0.2, 0.3} (no L2), plus SGD for the Adam vs
SGD contrast, each over several seeds. Reports the best validation loss, its
epoch and the validation accuracy per run, a mean ± std table per variant, and
a training-curves figure with the early-stopping points marked.

Feeds: ``figures/training_curves`` (paper figure 10).

    python -m experiments.train            # default run (~2 min on 2 CPU cores)
    python -m experiments.train --quick    # seconds (tests)
    python -m experiments.train --seeds 0,1,2,3,4,5,6,7,8,9 --out results
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

from experiments import common
from experiments.common import parse_config, run_sweep
from losslab import data, diagnose, losses
from losslab.results import RunStore, atomic_write_json, atomic_write_text

EXPERIMENT = "train"


@dataclasses.dataclass(frozen=True)
class Config:
    """The digits early-stopping study; defaults are the real run."""

    dataset: str = "digits"
    hidden: int = 64
    learning_rate: float = 1e-3
    sgd_learning_rate: float = 0.05
    batch_size: int = 32
    epochs: int = 50
    patience: int = 5
    base_dropout: float = 0.2
    l2_values: tuple[float, ...] = (0.001, 0.01, 0.1)
    dropout_values: tuple[float, ...] = (0.1, 0.2, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    target_val_loss: float = 0.15


def quick_config() -> Config:
    return Config(epochs=4, patience=2, l2_values=(0.01,), dropout_values=(0.1,), seeds=(0,))


def variants(config: Config) -> list[dict]:
    """The run configs of the sweep (one dict per variant and seed)."""
    base = {"dataset": config.dataset, "hidden": config.hidden, "batch_size": config.batch_size,
            "epochs": config.epochs, "patience": config.patience}
    out = []
    for seed in config.seeds:
        out.append({**base, "name": "adam", "optimizer": "adam", "learning_rate": config.learning_rate,
                    "dropout": config.base_dropout, "l2": 0.0, "seed": seed})
        out.append({**base, "name": "sgd", "optimizer": "sgd", "learning_rate": config.sgd_learning_rate,
                    "dropout": config.base_dropout, "l2": 0.0, "seed": seed})
        for l2 in config.l2_values:
            out.append({**base, "name": f"l2={l2:g}", "optimizer": "adam", "learning_rate": config.learning_rate,
                        "dropout": config.base_dropout, "l2": l2, "seed": seed})
        for p in config.dropout_values:
            out.append({**base, "name": f"dropout={p:g}", "optimizer": "adam", "learning_rate": config.learning_rate,
                        "dropout": p, "l2": 0.0, "seed": seed})
    return out


def run_one(cfg: dict, target_val_loss: float) -> dict:
    """Trains one variant and returns its metrics (history included)."""
    ds = data.load(cfg["dataset"], seed=0)
    regs = [losses.l2(cfg["l2"], include="layers/0")] if cfg["l2"] else []
    obj = common.mlp_objective(ds, "cross_entropy", (cfg["hidden"],), cfg["seed"], regularizers=regs,
                               dropout=cfg["dropout"])
    result = common.train_run(obj, cfg, optimizer=cfg["optimizer"], patience=cfg["patience"])
    h = result.history
    best = h.best_epoch
    val = np.asarray(h.val_loss)
    reached = np.flatnonzero(val <= target_val_loss)
    test = result.objective.evaluate(result.params, "test")
    return {
        "best_val_loss": float(val[best - 1]),
        "best_epoch": int(best),
        "val_accuracy": float(h.val_accuracy[best - 1]),
        "test_loss": float(test["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "stopped_epoch": int(h.stopped_epoch),
        "epochs_to_target": int(h.epoch[reached[0]]) if reached.size else None,
        "diagnosis": diagnose(h)._asdict(),
        "history": h.as_dict(),
    }


def summarize(rows: list[tuple[dict, dict]]) -> list[dict]:
    """Mean ± std over seeds of each variant."""
    names = list(dict.fromkeys(c["name"] for c, _ in rows))
    table = []
    for name in names:
        ms = [m for c, m in rows if c["name"] == name]
        entry = {"variant": name, "runs": len(ms)}
        for key in ("best_val_loss", "best_epoch", "val_accuracy", "test_accuracy"):
            vals = np.asarray([m[key] for m in ms], float)
            entry[key] = float(vals.mean())
            entry[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        reached = [m["epochs_to_target"] for m in ms if m["epochs_to_target"] is not None]
        entry["epochs_to_target"] = float(np.mean(reached)) if reached else None
        entry["reached_target"] = len(reached)
        table.append(entry)
    return table


def format_table(table: list[dict], target: float) -> str:
    lines = [
        f"| variant | runs | best val loss | best epoch | val acc | test acc | epochs to val loss <= {target} |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in table:
        ett = f"{e['epochs_to_target']:.1f} ({e['reached_target']}/{e['runs']})" if e["epochs_to_target"] else "never"
        lines.append(
            f"| {e['variant']} | {e['runs']} | {e['best_val_loss']:.4f} ± {e['best_val_loss_std']:.4f} | "
            f"{e['best_epoch']:.1f} ± {e['best_epoch_std']:.1f} | {e['val_accuracy']:.3f} | "
            f"{e['test_accuracy']:.3f} | {ett} |"
        )
    return "\n".join(lines)


def run(config: Config, out_dir: str) -> dict:
    """Runs (or resumes) the sweep under ``out_dir/train`` and writes the table and figure."""
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = variants(config)
    metrics = run_sweep(store, [(c, lambda c: run_one(c, config.target_val_loss)) for c in cfgs], desc="train study")
    rows = list(zip(cfgs, metrics))
    table = summarize(rows)
    folder = os.path.join(out_dir, EXPERIMENT)
    atomic_write_json(os.path.join(folder, "summary.json"), {"config": dataclasses.asdict(config), "table": table})
    text = format_table(table, config.target_val_loss)
    atomic_write_text(os.path.join(folder, "summary.md"), text + "\n")
    figure_paths = draw(rows, folder)
    return {"table": table, "markdown": text, "figures": figure_paths, "rows": rows}


def draw(rows: list[tuple[dict, dict]], folder: str) -> list[str]:
    """The training-curves figure: seed 0 of the Adam, SGD and strongest-L2 variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.plot.training import save, training_curves

    first_seed = min(c["seed"] for c, _ in rows)
    shown = {c["name"]: m["history"] for c, m in rows if c["seed"] == first_seed}
    keep = [k for k in shown if k in ("adam", "sgd")] + [k for k in shown if k.startswith("l2=")][-1:]
    fig = training_curves({k: shown[k] for k in keep},
                          title="digits MLP: train/val loss, early-stopping points (★)")
    paths = save(fig, os.path.join(folder, "training_curves"))
    plt.close(fig)
    return paths


def main(argv=None) -> None:
    config, out = parse_config(Config, argv, description=__doc__, quick=quick_config)
    result = run(config, out)
    print(result["markdown"])
    print("figures:", ", ".join(result["figures"]))


if __name__ == "__main__":
    main(sys.argv[1:])
