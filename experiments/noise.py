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

Verdict: two directional parts, the floor (A) and focal vs CE (B); see :func:`verdict`.

Feeds: ``figures/noise_floor_imbalance`` (paper figure 8; :func:`figure`).

    python -m experiments.noise            # the default run, ≈ 0.9 min on 2 CPU cores
    python -m experiments.noise --quick    # seconds, for tests
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, parse_config, run_sweep
from losslab import data
from losslab.results import RunStore

EXPERIMENT = "noise"
FIGURE = "noise_floor_imbalance"
CLAIM = ("with noisy labels the validation loss cannot go below the label-noise entropy H(p), so early stopping "
         "finds a floor that rises with p; focal loss helps the rare classes under imbalance (Lin et al. 2017).")


@dataclasses.dataclass(frozen=True)
class Config:
    """Label-noise and class-imbalance sweeps on digits; defaults are the real run.

    Varied: the symmetric label-noise rate p (train and validation labels), and the class
    imbalance ratio r with the loss (cross-entropy vs focal). Fixed: the MLP, Adam, batch
    size. Stopping: early stopping on the validation loss (``patience``, best weights), at
    most ``epochs``. Seeds: ``seeds``, one run per cell and seed. Statistics: mean (and
    std) over seeds of the best validation loss and of the balanced test accuracy.
    """

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


def quick() -> Config:
    """Two noise rates, two imbalance ratios, one seed, a few epochs."""
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
    """Means (and std) over seeds: per noise rate, and per (imbalance ratio, loss)."""
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


def run(config: Config, out_dir: str) -> list[tuple[dict, dict]]:
    """Runs (or resumes) both sweeps into ``<out_dir>/noise/``.

    Returns the rows: one ``(run config, metrics)`` pair per run; ``config["part"]`` is
    ``"noise"`` (with ``noise``, metrics with ``best_val_loss``, ``floor``, ``history``) or
    ``"imbalance"`` (with ``ratio`` and ``loss``, metrics with ``balanced_accuracy`` and
    ``rare_recall``).
    """
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = configs(config)
    metrics = run_sweep(store, [(c, run_one) for c in cfgs], desc="noise study")
    return list(zip(cfgs, metrics))


def verdict(rows) -> Verdict:
    """Two parts, from the means over seeds.

    (A) the floor: True when no noise rate's mean best validation loss is below H(p) and the
    mean rises strictly with p; False when it is below H(p) at some p or does not rise.
    (B) focal helps the rare classes: at the strongest imbalance, focal's mean balanced test
    accuracy above cross-entropy's (True), below (False), equal or missing (None).
    """
    s = summarize(rows)
    noise = sorted(s["noise"], key=lambda e: e["noise"])
    above = [e["best_val_loss"] - e["floor"] for e in noise]
    losses_by_p = [e["best_val_loss"] for e in noise]
    rising = all(b > a for a, b in zip(losses_by_p, losses_by_p[1:]))
    below = [e["noise"] for e in noise if e["best_val_loss"] < e["floor"]]
    parts: dict = {"floor_holds_and_rises": (not below and rising) if len(noise) > 1 else None}
    rates = ", ".join(format(100 * e["noise"], "g") for e in noise)
    text = []
    if noise:
        text.append(f"the best validation loss stays {min(above):.2f}–{max(above):.2f} nats "
                    f"{'above' if not below else 'around'} the noise floor H(p) for p = {rates} % and "
                    f"{'rises with p' if rising else 'is not monotone in p'}")
    evidence = {"noise_rates": [e["noise"] for e in noise], "best_val_loss": losses_by_p,
                "best_val_loss_std": [e["std"] for e in noise], "floor": [e["floor"] for e in noise],
                "below_floor_at": below, "rises_with_p": rising}
    parts["focal_helps_rare_classes"] = None
    if s["imbalance"]:
        worst = min(e["ratio"] for e in s["imbalance"])
        imb = {e["loss"]: e for e in s["imbalance"] if e["ratio"] == worst}
        ce, fo = imb.get("cross_entropy"), imb.get("focal")
        if ce and fo:
            parts["focal_helps_rare_classes"] = common.direction(ce["balanced_accuracy"], fo["balanced_accuracy"])
            better = "focal" if fo["balanced_accuracy"] > ce["balanced_accuracy"] else "cross-entropy"
            text.append(f"at imbalance r = {worst:g}, balanced accuracy CE {ce['balanced_accuracy']:.3f} ± "
                        f"{ce['balanced_accuracy_std']:.3f} vs focal {fo['balanced_accuracy']:.3f} ± "
                        f"{fo['balanced_accuracy_std']:.3f} (rarest-class recall {ce['rare_recall']:.2f} vs "
                        f"{fo['rare_recall']:.2f}): {better} is ahead")
            evidence.update(imbalance_ratio=worst, balanced_accuracy={"cross_entropy": ce["balanced_accuracy"],
                                                                       "focal": fo["balanced_accuracy"]},
                            balanced_accuracy_std={"cross_entropy": ce["balanced_accuracy_std"],
                                                   "focal": fo["balanced_accuracy_std"]},
                            rare_recall={"cross_entropy": ce["rare_recall"], "focal": fo["rare_recall"]})
    return Verdict(CLAIM, combine(parts), {
        "rule": ("(A) the mean best validation loss is at or above H(p) at every noise rate and rises strictly "
                 "with p; (B) at the strongest imbalance, focal's mean balanced test accuracy exceeds "
                 f"cross-entropy's; {COMBINE_RULE}"),
        "summary": "; ".join(text) + ".", "parts": parts, **evidence,
    })


def figure(rows, ax=None):
    """Three panels: train/val curves with the early-stopping point; best validation loss vs H(p);
    balanced accuracy and rarest-class recall under imbalance, CE vs focal.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot.training import training_curves

    fig, host = common.panels(ax, (15, 4.2))
    s = summarize(rows)
    axes = host.subplots(1, 3)
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
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.noise [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
