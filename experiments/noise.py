"""Early stopping and the loss floor; class imbalance under cross-entropy vs focal loss.

Part A — label noise: the digits MLP (64 hidden, ReLU, Adam 1e-3, batch 32,
early stopping with patience 5) trained with symmetric label noise at rate p on
the training *and* validation labels. With noisy validation labels no model can
score below the noise-entropy floor

.. math::  H(p) = -(1-p)\\log(1-p) - p \\log\\frac{p}{C-1},

the expected cross-entropy of the best possible predictor (it puts 1-p on the
clean class and p/(C-1) on each other). We report the best validation loss per
noise rate against H(p).

Part B — class imbalance: training classes subsampled geometrically to a
smallest/largest ratio r; cross-entropy vs focal loss (γ = 2; Lin et al. 2017),
measured by balanced test accuracy and the recall of the rarest class.

Feeds: ``figures/noise_floor_imbalance`` (paper figure 8).

    python -m experiments.noise
    python -m experiments.noise --quick
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from experiments import common
from experiments.common import parse_config, run_sweep
from losslab import data
from losslab.results import RunStore

EXPERIMENT = "noise"


@dataclasses.dataclass(frozen=True)
class Config:
    """Label-noise and class-imbalance sweeps on digits; defaults are the real run."""

    dataset: str = "digits"
    hidden: int = 64
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 60
    patience: int = 5
    noise_rates: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    imbalance_ratios: tuple[float, ...] = (1.0, 0.2, 0.05)
    imbalance_losses: tuple[str, ...] = ("cross_entropy", "focal")
    seeds: tuple[int, ...] = (0, 1, 2)


def quick_config() -> Config:
    return Config(epochs=3, patience=2, noise_rates=(0.0, 0.2), imbalance_ratios=(1.0, 0.2), seeds=(0,))


def noise_floor(p: float, num_classes: int) -> float:
    """Entropy of the symmetric-noise label distribution H(p) (nats): the best achievable CE."""
    if p <= 0:
        return 0.0
    return -(1 - p) * math.log(1 - p) - p * math.log(p / (num_classes - 1))


def run_one(cfg: dict) -> dict:
    ds = data.load(cfg["dataset"], seed=0)
    if cfg["part"] == "noise":
        if cfg["noise"] > 0:
            ds = data.label_noise(ds, cfg["noise"], seed=cfg["seed"], splits=("train", "val"))
        loss = "cross_entropy"
    else:
        if cfg["ratio"] < 1:
            ds = data.class_imbalance(ds, cfg["ratio"], seed=cfg["seed"])
        loss = cfg["loss"]
    obj = common.mlp_objective(ds, loss, (cfg["hidden"],), cfg["seed"])
    result = common.train_run(obj, cfg, patience=cfg["patience"])
    h = result.history
    x, y = result.objective.batch("test")
    pred = np.asarray(result.objective.outputs(result.params, x)).argmax(-1)
    y = np.asarray(y)
    recalls = [float(np.mean(pred[y == c] == c)) for c in range(ds.num_classes) if np.any(y == c)]
    out = {
        "best_val_loss": float(h.val_loss[h.best_epoch - 1]),
        "best_epoch": int(h.best_epoch),
        "test_accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(np.mean(recalls)),
        "recall_per_class": recalls,
        "history": h.as_dict(),
    }
    if cfg["part"] == "noise":
        out["floor"] = noise_floor(cfg["noise"], ds.num_classes)
        out["num_classes"] = ds.num_classes
    else:
        counts = ds.info.get("class_counts")
        rare = int(np.argmin(counts)) if counts is not None else ds.num_classes - 1
        out["rare_class"] = rare
        out["rare_recall"] = recalls[rare]
    return out


def configs(config: Config) -> list[dict]:
    base = {"dataset": config.dataset, "hidden": config.hidden, "learning_rate": config.learning_rate,
            "batch_size": config.batch_size, "epochs": config.epochs, "patience": config.patience}
    out = []
    for s in config.seeds:
        for p in config.noise_rates:
            out.append({**base, "name": f"noise-{p:g}", "part": "noise", "noise": p, "seed": s})
        for r in config.imbalance_ratios:
            for loss in config.imbalance_losses:
                out.append({**base, "name": f"imbalance-{r:g}-{loss}", "part": "imbalance", "ratio": r,
                            "loss": loss, "seed": s})
    return out


def summarize(rows) -> dict:
    noise = []
    for p in dict.fromkeys(c["noise"] for c, _ in rows if c["part"] == "noise"):
        ms = [m for c, m in rows if c["part"] == "noise" and c["noise"] == p]
        v = np.asarray([m["best_val_loss"] for m in ms])
        noise.append({"noise": p, "best_val_loss": float(v.mean()), "std": float(v.std()), "floor": ms[0]["floor"],
                      "test_accuracy": float(np.mean([m["test_accuracy"] for m in ms]))})
    imb = []
    for key in dict.fromkeys((c["ratio"], c["loss"]) for c, _ in rows if c["part"] == "imbalance"):
        ms = [m for c, m in rows if c["part"] == "imbalance" and (c["ratio"], c["loss"]) == key]
        imb.append({"ratio": key[0], "loss": key[1],
                    "balanced_accuracy": float(np.mean([m["balanced_accuracy"] for m in ms])),
                    "balanced_accuracy_std": float(np.std([m["balanced_accuracy"] for m in ms])),
                    "rare_recall": float(np.mean([m["rare_recall"] for m in ms]))})
    return {"noise": noise, "imbalance": imb}


def run(config: Config, out_dir: str) -> dict:
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = configs(config)
    metrics = run_sweep(store, [(c, run_one) for c in cfgs], desc="noise study")
    rows = list(zip(cfgs, metrics))
    figs = draw(rows, os.path.join(out_dir, EXPERIMENT))
    return {"summary": summarize(rows), "figures": figs, "rows": rows}


def draw(rows, folder: str, path: str | None = None, caption: str | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.plot.training import save, training_curves

    s = summarize(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    noise_runs = [(c, m) for c, m in rows if c["part"] == "noise"]
    first_seed = min(c["seed"] for c, _ in noise_runs)
    rates = sorted({c["noise"] for c, _ in noise_runs})
    shown = {f"noise {100 * c['noise']:g} %": m["history"] for c, m in noise_runs
             if c["seed"] == first_seed and c["noise"] in (rates[0], rates[-1])}
    training_curves(shown, ax=axes[0], title="train/val loss and the early-stopping point")
    ax = axes[1]
    p = np.asarray([e["noise"] for e in s["noise"]])
    ax.errorbar(100 * p, [e["best_val_loss"] for e in s["noise"]], yerr=[e["std"] for e in s["noise"]],
                fmt="o-", capsize=3, label="best validation loss (early stopping)")
    grid = np.linspace(0, max(p.max(), 1e-3), 50)
    num_classes = next(m["num_classes"] for c, m in rows if c["part"] == "noise")
    ax.plot(100 * grid, [noise_floor(q, num_classes) for q in grid], "k--", label="noise-entropy floor H(p)")
    ax.set_xlabel("label noise rate p (%)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("best validation loss vs the noise floor")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    ratios = sorted({e["ratio"] for e in s["imbalance"]}, reverse=True)
    width = 0.8 / max(len({e["loss"] for e in s["imbalance"]}), 1)
    for i, loss in enumerate(dict.fromkeys(e["loss"] for e in s["imbalance"])):
        es = {e["ratio"]: e for e in s["imbalance"] if e["loss"] == loss}
        xs = np.arange(len(ratios)) + i * width
        ax.bar(xs, [es[r]["balanced_accuracy"] for r in ratios], width, yerr=[es[r]["balanced_accuracy_std"] for r in ratios],
               capsize=3, label=f"{loss}: balanced accuracy")
        ax.plot(xs, [es[r]["rare_recall"] for r in ratios], "kv", ms=6, label="rarest-class recall" if i == 0 else None)
    ax.set_xticks(np.arange(len(ratios)) + width * 0.5, [f"r = {r:g}" for r in ratios])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class imbalance (smallest / largest class)")
    ax.set_ylabel("test accuracy")
    ax.set_title("class imbalance: cross-entropy vs focal")
    ax.legend(fontsize=8, loc="lower left")
    if caption:
        fig.suptitle(caption, fontsize=9)
    paths = save(fig, path or os.path.join(folder, "noise_floor_imbalance"))
    plt.close(fig)
    return paths


def main(argv=None) -> None:
    config, out = parse_config(Config, argv, description=__doc__, quick=quick_config)
    result = run(config, out)
    for part, entries in result["summary"].items():
        for e in entries:
            print(part, e)
    print("figures:", ", ".join(result["figures"]))


if __name__ == "__main__":
    main(sys.argv[1:])
