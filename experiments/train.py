"""A first study: early stopping, L2 and Dropout on the digits MLP.

On scikit-learn's bundled ``digits``: MLP 64 -> 64 (ReLU) -> Dropout -> 10, Adam
(lr 1e-3), cross-entropy, batch 32, up to 50 epochs, early stopping (patience 5,
restore best weights). Variants: L2 in {0.001, 0.01, 0.1} on the first layer
(Dropout 0.2) and Dropout in {0.1, 0.2, 0.3} (no L2), plus SGD for the Adam vs
SGD contrast, each over several seeds. Reports the best validation loss, its
epoch and the validation accuracy per run, a mean ± std table per variant, and
a three-panel figure: Adam vs SGD training curves with the early-stopping points, the best
validation loss per variant over seeds, and the epochs each seed needed to reach
``target_val_loss``.

Verdict: Adam vs SGD by mean epochs to the target, and whether the best L2 / Dropout value
is resolved by the seeds (see :func:`verdict`).

Feeds: ``figures/training_claims`` (paper figure 10, run with 10 seeds; :func:`figure`).

    python -m experiments.train            # default run (~2 min on 2 CPU cores)
    python -m experiments.train --quick    # seconds (tests)
    python -m experiments.train --seeds 0,1,2,3,4,5,6,7,8,9 --out results
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, parse_config, run_sweep
from losslab import data, diagnose, losses
from losslab.results import RunStore, atomic_write_json, atomic_write_text

EXPERIMENT = "train"
FIGURE = "training_claims"
CLAIM = ("Adam reaches a target validation loss in fewer epochs than SGD, and there is an optimal L2 / Dropout "
         "value for early-stopped training.")


@dataclasses.dataclass(frozen=True)
class Config:
    """The digits early-stopping study; defaults are the real run.

    Varied: the optimizer (Adam vs SGD), the L2 weight on the first layer (``l2_values``,
    Dropout ``base_dropout``) and the Dropout rate (``dropout_values``, no L2). Fixed: the
    MLP, batch size, learning rates. Stopping: early stopping on the validation loss
    (``patience``, best weights restored), at most ``epochs``. Seeds: ``seeds`` per variant.
    Statistics: mean ± std over seeds of the best validation loss; mean epochs to
    ``target_val_loss`` over the seeds that reach it.
    """

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


def quick() -> Config:
    """One L2 and one Dropout value, one seed, four epochs."""
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


def run(config: Config, out_dir: str) -> list[tuple[dict, dict]]:
    """Runs (or resumes) the sweep under ``out_dir/train``; writes ``summary.json`` / ``summary.md`` there.

    Returns the rows: one ``(run config, metrics)`` pair per variant and seed, the config with
    ``name`` (the variant: ``adam``, ``sgd``, ``l2=…``, ``dropout=…``) and ``seed``, the metrics
    with ``best_val_loss``, ``epochs_to_target`` (None if never reached) and ``history``.
    """
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = variants(config)
    metrics = run_sweep(store, [(c, lambda c: run_one(c, config.target_val_loss)) for c in cfgs], desc="train study")
    rows = [({**c, "target_val_loss": config.target_val_loss}, m) for c, m in zip(cfgs, metrics)]
    table = summarize(rows)
    folder = os.path.join(out_dir, EXPERIMENT)
    atomic_write_json(os.path.join(folder, "summary.json"), {"config": dataclasses.asdict(config), "table": table})
    atomic_write_text(os.path.join(folder, "summary.md"), format_table(table, config.target_val_loss) + "\n")
    return rows


def _target(rows) -> float:
    return rows[0][0]["target_val_loss"]


def verdict(rows) -> Verdict:
    """Adam vs SGD, and whether an optimal L2 / Dropout value is resolved.

    Parts: (a) Adam's mean epochs to ``target_val_loss`` below SGD's (a variant no seed brings
    to the target counts as never: infinitely slow; both never: None); (b) for L2 and for
    Dropout (with at least two values each): the best mean best-validation-loss beats the
    second best by more than the largest seed std — resolved (True) or not resolved by these
    seeds (None). Combined by :func:`common.combine`.
    """
    table = {e["variant"]: e for e in summarize(rows)}
    target = _target(rows)

    def ett(name):
        e = table.get(name)
        if not e:
            return "n/a"
        return f"{e['epochs_to_target']:.1f} epochs ({e['reached_target']}/{e['runs']} seeds)" \
            if e["epochs_to_target"] else f"never (0/{e['runs']})"

    def epochs(name):
        e = table.get(name)
        return None if e is None else e["epochs_to_target"] if e["epochs_to_target"] else math.inf

    adam, sgd = epochs("adam"), epochs("sgd")
    parts = {"adam_faster": None if adam == sgd == math.inf else common.direction(adam, sgd)}
    evidence = {"target_val_loss": target, "epochs_to_target": {"adam": adam, "sgd": sgd},
                "seeds_reaching_target": {n: table[n]["reached_target"] for n in ("adam", "sgd") if n in table}}
    text = [f"to val loss {target:g}: Adam {ett('adam')}, SGD {ett('sgd')}"]
    groups = {"L2": [v for v in table if v.startswith("l2=")], "Dropout": [v for v in table if v.startswith("dropout=")]}
    for label, names in groups.items():
        if len(names) < 2:
            parts[f"{label.lower()}_optimum_resolved"] = None
            continue
        means = np.asarray([table[n]["best_val_loss"] for n in names])
        stds = np.asarray([table[n]["best_val_loss_std"] for n in names])
        best_i = int(np.argmin(means))
        resolved = bool((np.sort(means)[1] - means[best_i]) > float(np.max(stds)))
        parts[f"{label.lower()}_optimum_resolved"] = True if resolved else None
        evidence[label.lower()] = {"values": names, "best_val_loss_mean": means.tolist(),
                                   "best_val_loss_std": stds.tolist(), "best": names[best_i]}
        text.append(f"{label}: best {names[best_i]} ({means[best_i]:.3f} ± {stds[best_i]:.3f}); spread of means "
                    f"{np.ptp(means):.3f} vs seed std up to {np.max(stds):.3f} — "
                    + ("the optimum is resolved" if resolved else "the 'optimal interval' is not resolved by "
                       f"{table[names[0]]['runs']} seeds"))
    return Verdict(CLAIM, combine(parts), {
        "rule": ("(a) Adam's mean epochs to the target validation loss (over the seeds that reach it; never = ∞) "
                 "is below SGD's; (b) for L2 and for Dropout, the best variant's mean best validation loss beats "
                 "the second best by more than the largest seed std (else unresolved: undecided); "
                 f"{COMBINE_RULE}"),
        "summary": "; ".join(text) + ".", "parts": parts, **evidence,
    })


def figure(rows, ax=None):
    """Three panels: Adam vs SGD curves (first seed); best validation loss per variant (mean ± std and
    each seed); epochs to the target validation loss, Adam vs SGD (seeds that reach it, counted).

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels into (None: a new one).
    Returns the figure.
    """
    from losslab.plot.training import training_curves

    fig, host = common.panels(ax, (16, 4.6))
    table = {e["variant"]: e for e in summarize(rows)}
    target = _target(rows)
    axes = host.subplots(1, 3)
    first = min(c["seed"] for c, _ in rows)
    shown = {c["name"]: m["history"] for c, m in rows if c["seed"] == first and c["name"] in ("adam", "sgd")}
    training_curves(shown, ax=axes[0], title=f"Adam vs SGD (seed {first}): train/val loss")
    ax = axes[1]
    names = list(table)
    means = [table[n]["best_val_loss"] for n in names]
    stds = [table[n]["best_val_loss_std"] for n in names]
    ax.errorbar(np.arange(len(names)), means, yerr=stds, fmt="o", capsize=4, color="C0", label="mean ± std over seeds")
    for i, n in enumerate(names):
        vals = [m["best_val_loss"] for c, m in rows if c["name"] == n]
        ax.plot(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, ".", color="0.6", ms=4,
                label="single seed" if i == 0 else None)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("best validation loss (nats)")
    ax.set_title(f"best validation loss per variant ({table[names[0]]['runs']} seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    for i, n in enumerate(("adam", "sgd")):
        vals = [m["epochs_to_target"] for c, m in rows if c["name"] == n]
        hit = [v for v in vals if v is not None]
        ax.plot(np.full(len(hit), i) + np.linspace(-0.1, 0.1, len(hit)), hit, "o", color=f"C{i}")
        ax.text(i, 0.02, f"{len(hit)}/{len(vals)} seeds\nreached", ha="center", va="bottom",
                transform=ax.get_xaxis_transform(), fontsize=8)
    ax.set_xticks([0, 1], ["Adam", "SGD"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel(f"epochs to validation loss ≤ {target:g}")
    ax.set_title("speed to a target validation loss")
    ax.grid(alpha=0.3)
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.train [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    print(format_table(summarize(rows), config.target_val_loss))
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
