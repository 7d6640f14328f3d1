"""The paper: regenerates every figure in ``figures/`` and ``figures/README.md``.

Runs each study whose stored results are missing (reusing those present under
``--out``, so a killed run resumes), then draws every figure into ``--figures``
(PNG for the README, PDF for papers) with a caption stating the claim and the
verdict the data gives, whichever way it goes. Provenance (config hash, package
versions, git commit) is written into each figure file's metadata, and
``figures/README.md`` lists figure → claim → what was measured → verdict → the
command that regenerates it alone.

    python -m experiments.paper                      # every figure (≈ 1 h on 2 CPU cores)
    python -m experiments.paper --only 4             # one figure (number or name)
    python -m experiments.paper --quick --out /tmp/r --figures /tmp/f   # tiny runs (tests)
    python -m experiments.paper --list
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from losslab.results import RunStore, atomic_write_json, atomic_write_text, config_hash, provenance


@dataclasses.dataclass(frozen=True)
class Figure:
    """One paper figure: where it comes from and what it claims."""

    number: int
    name: str  # file stem in figures/
    title: str
    claim: str
    measured: str
    study: str  # module in experiments/
    build: Callable[[Figure, bool, str, str], dict]  # (fig, quick, out_dir, path) -> record


def _study(name: str):
    return importlib.import_module(f"experiments.{name}")


def _config(module, quick: bool, **overrides):
    quick_fn = getattr(module, "quick_config", None) or module.quick
    base = quick_fn() if quick else module.Config()
    return dataclasses.replace(base, **overrides) if overrides else base


def _caption(fig: Figure, verdict: str) -> str:
    import textwrap

    return textwrap.fill(f"Fig. {fig.number}. Claim: {fig.claim} Verdict: {verdict}", 130)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: str, caption: str) -> list[str]:
    from losslab.plot.training import save

    plt = _plt()
    fig.suptitle(caption, fontsize=8.5, wrap=True)
    paths = save(fig, path)
    plt.close(fig)
    return paths


def _fmt(x, spec=".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


# ---------------------------------------------------------------------------
# Figure 1: small- vs large-batch minima (experiments.surfaces)


def _surfaces_verdict(stored) -> str:
    lines = stored["lines"].arrays()
    t = lines["t"]
    edge = np.abs(t) >= 0.999 * np.abs(t).max()
    centre = int(np.argmin(np.abs(t)))
    rise = {w: float(np.mean(lines[f"{w}_train_loss"][edge]) - lines[f"{w}_train_loss"][centre]) for w in ("sb", "lb")}
    acc = {w: stored[f"train-{w}"].metrics["test_accuracy"] for w in ("sb", "lb")}
    sharper = rise["lb"] > rise["sb"]
    better = acc["sb"] > acc["lb"]
    holds = "holds" if sharper and better else "does not hold" if not sharper and not better else "holds only in part"
    return (f"the large-batch minimum is {'sharper' if sharper else 'flatter'} (train-loss rise at the edge of the "
            f"filter-normalised slices: LB {rise['lb']:.3g} vs SB {rise['sb']:.3g}) and SB reaches "
            f"{100 * acc['sb']:.1f} % test accuracy vs LB {100 * acc['lb']:.1f} %: the claim {holds} here.")


def build_surfaces(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    from losslab.plot import surface as P

    study = _study("surfaces")
    cfg = _config(study, quick)
    result = study.run(cfg, out_dir)
    stored = result["stored"]
    verdict = _surfaces_verdict(stored)
    plt = _plt()
    f, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    sb, lb = stored["plane-sb"].arrays(), stored["plane-lb"].arrays()
    both = np.concatenate([sb["train_loss"].ravel(), lb["train_loss"].ravel()])
    vmin, vmax = float(both[both > 0].min()), float(min(both.max(), 10.0))
    for ax, arr, key in zip(axes[:2], (sb, lb), ("sb", "lb")):
        acc = stored[f"train-{key}"].metrics["test_accuracy"]
        P.contour(arr["x"], arr["y"], arr["train_loss"], ax=ax, vmin=vmin, vmax=vmax, label="train loss (nats)",
                  title=f"{'small' if key == 'sb' else 'large'}-batch minimum (test acc {100 * acc:.1f} %)",
                  points={key.upper(): (0.0, 0.0)})
    interp = stored["interpolation"].arrays()
    P.interpolation(interp["t"], interp, ax=axes[2], names=("SB", "LB"),
                    title="1-D interpolation SB (α=0) → LB (α=1)")
    return {"config": cfg, "verdict": verdict, "paths": _finish(f, path, _caption(fig, verdict))}


# ---------------------------------------------------------------------------
# Figure 2: Hessian spectrum (experiments.spectrum)


def build_spectrum(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    study = _study("spectrum")
    cfg = _config(study, quick)
    runs = study.run(cfg, out_dir)["runs"]
    big, small = (r.metrics for r in runs)
    s = small["end"]
    verdict = (f"training moves the top eigenvalue from {big['init']['lambda_max']:.3g} to "
               f"{big['end']['lambda_max']:.3g} while most mass stays near zero "
               f"({100 * big['end']['negative_fraction']:.0f} % negative); on the {small['num_params']}-parameter "
               f"model SLQ's λ_max is within {abs(s['lambda_max'] / s['exact_lambda_max'] - 1):.1e} of eigh and "
               f"its trace within {abs(s['trace'] / s['exact_trace'] - 1):.1%}.")
    paths = study.draw(runs, os.path.dirname(path), path=path, caption=_caption(fig, verdict))
    return {"config": cfg, "verdict": verdict, "paths": paths}


# ---------------------------------------------------------------------------
# Figure 3: sharpness measures vs generalization gap (experiments.sharpness)


def build_sharpness(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    from losslab.plot import sharpness as splot

    study = _study("sharpness")
    cfg = _config(study, quick)
    summary = study.run(cfg, out_dir, progress=True)
    table = [r for r in summary["tau"] if r["tau"] is not None and math.isfinite(r["tau"])]
    ranked = sorted(table, key=lambda r: -r["tau"])
    positive = [r["measure"] for r in ranked if r["tau_low"] > 0]
    negative = [r["measure"] for r in ranked if r["tau_high"] < 0]
    by = {r["measure"]: r for r in table}
    parts = [f"{r['measure']} τ = {r['tau']:+.2f} [{r['tau_low']:+.2f}, {r['tau_high']:+.2f}]" for r in ranked[:3]]
    for m in ("hessian_trace", "hessian_lambda_max"):
        if m in by and m not in [r["measure"] for r in ranked[:3]]:
            parts.append(f"{m} τ = {by[m]['tau']:+.2f}")
    verdict = (f"over {summary['num_runs']} runs, {len(positive)} of {len(table)} measures correlate positively with "
               f"the error gap (95 % CI above 0){', ' + str(len(negative)) + ' negatively' if negative else ''}; "
               f"strongest: " + "; ".join(parts) + ".")
    plt = _plt()
    rows = summary["rows"]
    shown = [r["measure"] for r in ranked[:2]]
    for m in ("hessian_trace", "hessian_lambda_max"):
        if m in by and m not in shown and len(shown) < 3:
            shown.append(m)
    f = plt.figure(figsize=(16, 5), constrained_layout=True)
    grid = f.add_gridspec(1, 1 + len(shown), width_ratios=[1.3] + [1] * len(shown))
    splot.tau_bars(summary["tau"], ax=f.add_subplot(grid[0, 0]))
    for i, m in enumerate(shown):
        splot.measure_vs_gap(rows, m, ax=f.add_subplot(grid[0, i + 1]))
    return {"config": cfg, "verdict": verdict, "paths": _finish(f, path, _caption(fig, verdict))}


# ---------------------------------------------------------------------------
# Figure 5: natural gradient (experiments.natural_gradient)


def build_natural(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    from losslab.plot import natural as nplot

    study = _study("natural_gradient")
    OPERATORS = study.OPERATORS  # noqa: N806 - the study's operator order (Hessian, GGN, Fisher, EF, K-FAC)
    cfg = _config(study, quick)
    summary = study.run(cfg, out_dir)
    d0 = cfg.datasets[0]
    rows = [r for r in summary["rows"] if r["dataset"] == d0]
    reached = sorted((r for r in rows if r["steps_to_target"] is not None), key=lambda r: r["steps_to_target"])
    never = [r["optimizer"] for r in rows if r["steps_to_target"] is None]
    geometry = summary.get("geometry") or {}
    checkpoints = geometry.get("checkpoints", {})
    epochs = sorted(checkpoints, key=int)
    idx = {n: i for i, n in enumerate(OPERATORS)}
    overlap = (f"; Fisher–Hessian top-{cfg.top_k} overlap {checkpoints[epochs[0]]['overlaps'][idx['fisher']][idx['hessian']]:.2f} "
               f"(epoch {epochs[0]}) → {checkpoints[epochs[-1]]['overlaps'][idx['fisher']][idx['hessian']]:.2f} "
               f"(epoch {epochs[-1]})") if epochs else ""
    verdict = (f"{d0}: steps to train loss {cfg.target_loss:g}: "
               + ", ".join(f"{r['optimizer']} {r['steps_to_target']}" for r in reached)
               + (f"; never: {', '.join(never)}" if never else "")
               + (f" (in wall time the fastest is {min(reached, key=lambda r: r['wall_to_target'])['optimizer']})"
                  if reached else "") + overlap + ".")
    plt = _plt()
    ncols = 3 if epochs else 2
    f, axes = plt.subplots(1, ncols, figsize=(5.4 * ncols, 4.6), constrained_layout=True)
    best = summary["best"]
    curves = {o: best[(d, o)][1]["curves"] for (d, o) in best if d == d0}
    nplot.loss_curves(curves, x="step", ax=axes[0], target=cfg.target_loss)
    axes[0].set_title(f"{d0}: training loss (best learning rate each)")
    axes[0].legend(fontsize=7)
    nplot.loss_curves(curves, x="wall_time", ax=axes[1], target=cfg.target_loss)
    axes[1].set_title("the same against wall time")
    if epochs:
        last = epochs[-1]
        nplot.overlap_matrix(checkpoints[last]["overlaps"], OPERATORS, ax=axes[2],
                             title=f"top-{cfg.top_k} eigenspace overlaps, epoch {last}")
    return {"config": cfg, "verdict": verdict, "paths": _finish(f, path, _caption(fig, verdict))}


# ---------------------------------------------------------------------------
# Figures built by a study's own draw() that returns a verdict in its summary


def _verdict_text(v) -> str:
    if isinstance(v, dict):
        return " ".join(f"({k}) {t}" for k, t in v.items())
    return str(v)


def build_with_study_verdict(study_name: str) -> Callable:
    def build(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
        study = _study(study_name)
        cfg = _config(study, quick)
        result = study.run(cfg, out_dir)
        verdict = _verdict_text(result["summary"]["verdict"])
        paths = _redraw(study, result, out_dir, path, _caption(fig, verdict))
        return {"config": cfg, "verdict": verdict, "paths": paths}

    return build


def _redraw(study, result, out_dir, path, caption):
    """Calls ``study.draw`` on what its ``run`` returned (rows or runs), into ``path``."""
    data = result.get("rows", result.get("runs"))
    return study.draw(data, os.path.join(out_dir, study.EXPERIMENT), path=path, caption=caption)


# ---------------------------------------------------------------------------
# Figure 8: early stopping, noise floor, imbalance (experiments.noise)


def build_noise(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    study = _study("noise")
    cfg = _config(study, quick)
    result = study.run(cfg, out_dir)
    s = result["summary"]
    above = [e["best_val_loss"] - e["floor"] for e in s["noise"]]
    worst = min(s["imbalance"], key=lambda e: e["ratio"])["ratio"]
    imb = {e["loss"]: e for e in s["imbalance"] if e["ratio"] == worst}
    ce, fo = imb.get("cross_entropy"), imb.get("focal")
    rates = ", ".join(format(100 * e["noise"], "g") for e in s["noise"])
    losses_by_p = [e["best_val_loss"] for e in sorted(s["noise"], key=lambda e: e["noise"])]
    rising = all(b > a for a, b in zip(losses_by_p, losses_by_p[1:]))
    below = [e for e in s["noise"] if e["best_val_loss"] < e["floor"]]
    parts = [f"the best validation loss stays {min(above):.2f}–{max(above):.2f} nats "
             f"{'above' if not below else 'around'} the noise floor H(p) for p = {rates} % and "
             f"{'rises with p' if rising else 'is not monotone in p'}"]
    if ce and fo:
        better = "focal" if fo["balanced_accuracy"] > ce["balanced_accuracy"] else "cross-entropy"
        parts.append(f"at imbalance r = {worst:g}, balanced accuracy CE {ce['balanced_accuracy']:.3f} ± "
                     f"{ce['balanced_accuracy_std']:.3f} vs focal {fo['balanced_accuracy']:.3f} ± "
                     f"{fo['balanced_accuracy_std']:.3f} (rarest-class recall {ce['rare_recall']:.2f} vs "
                     f"{fo['rare_recall']:.2f}): {better} is ahead")
    verdict = "; ".join(parts) + "."
    paths = study.draw(result["rows"], os.path.join(out_dir, study.EXPERIMENT), path=path,
                       caption=_caption(fig, verdict))
    return {"config": cfg, "verdict": verdict, "paths": paths}


# ---------------------------------------------------------------------------
# Figure 9: gradient flow through depth (experiments.depth)


def build_depth(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    study = _study("depth")
    cfg = _config(study, quick)
    result = study.run(cfg, out_dir)
    s = result["summary"]
    deepest = max(e["depth"] for e in s)
    shallow = min(e["depth"] for e in s)
    e = {(x["depth"], x["residual"]): x for x in s}
    verdict = (f"from depth {shallow} to {deepest}, the median Jacobian singular value of plain nets goes "
               f"{e[(shallow, False)]['sv_median']:.2g} → {e[(deepest, False)]['sv_median']:.2g} and of residual nets "
               f"{e[(shallow, True)]['sv_median']:.2g} → {e[(deepest, True)]['sv_median']:.2g}; first/last layer "
               f"gradient-norm ratio at depth {deepest}: plain {e[(deepest, False)]['grad_first_over_last']:.2g}, "
               f"residual {e[(deepest, True)]['grad_first_over_last']:.2g}: "
               + _depth_reading(e[(shallow, False)]["sv_median"], e[(deepest, False)]["sv_median"],
                                e[(shallow, True)]["sv_median"], e[(deepest, True)]["sv_median"]) + ".")
    paths = study.draw(result["rows"], os.path.join(out_dir, study.EXPERIMENT), path=path,
                       caption=_caption(fig, verdict))
    return {"config": cfg, "verdict": verdict, "paths": paths}


def _depth_reading(plain_0: float, plain_1: float, res_0: float, res_1: float) -> str:
    def trend(a, b):
        return "vanish" if b < a / 10 else "explode" if b > 10 * a else "stay within 10×"

    return f"plain nets' signals {trend(plain_0, plain_1)}, residual nets' signals {trend(res_0, res_1)}"


# ---------------------------------------------------------------------------
# Figure 10: common training claims on digits (experiments.train, 10 seeds)


def build_train(fig: Figure, quick: bool, out_dir: str, path: str) -> dict:
    from losslab.plot.training import training_curves

    study = _study("train")
    cfg = _config(study, quick) if quick else dataclasses.replace(study.Config(), seeds=tuple(range(10)))
    result = study.run(cfg, out_dir)
    table = {e["variant"]: e for e in result["table"]}
    rows = result["rows"]

    def ett(name):
        e = table.get(name)
        if not e:
            return "n/a"
        return f"{e['epochs_to_target']:.1f} epochs ({e['reached_target']}/{e['runs']} seeds)" \
            if e["epochs_to_target"] else f"never (0/{e['runs']})"

    groups = {"L2": [v for v in table if v.startswith("l2=")], "Dropout": [v for v in table if v.startswith("dropout=")]}
    parts = [f"to val loss {cfg.target_val_loss:g}: Adam {ett('adam')}, SGD {ett('sgd')}"]
    for label, names in groups.items():
        if len(names) < 2:
            continue
        means = np.asarray([table[n]["best_val_loss"] for n in names])
        stds = np.asarray([table[n]["best_val_loss_std"] for n in names])
        best_i = int(np.argmin(means))
        resolved = (np.sort(means)[1] - means[best_i]) > float(np.max(stds))
        parts.append(f"{label}: best {names[best_i]} ({means[best_i]:.3f} ± {stds[best_i]:.3f}); spread of means "
                     f"{np.ptp(means):.3f} vs seed std up to {np.max(stds):.3f} — "
                     + ("the optimum is resolved" if resolved else "the 'optimal interval' is not resolved by "
                        f"{table[names[0]]['runs']} seeds"))
    verdict = "; ".join(parts) + "."
    plt = _plt()
    f, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
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
    ax.set_ylabel(f"epochs to validation loss ≤ {cfg.target_val_loss:g}")
    ax.set_title("speed to a target validation loss")
    ax.grid(alpha=0.3)
    return {"config": cfg, "verdict": verdict, "paths": _finish(f, path, _caption(fig, verdict))}


# ---------------------------------------------------------------------------
# The figure list


FIGURES: tuple[Figure, ...] = (
    Figure(1, "sb_lb_surfaces", "Small-batch vs large-batch minima",
           "large-batch training converges to sharper minima that generalize worse (Keskar et al. 2017), visible in "
           "filter-normalised surfaces (Li et al. 2018).",
           "MNIST-1D MLP trained with batch 32 and batch 1000; 2-D filter-normalised random-plane train-loss "
           "contours around each minimum; train/test loss and accuracy along the line SB → LB.",
           "surfaces", build_surfaces),
    Figure(2, "hessian_spectrum", "Hessian spectral density",
           "the Hessian spectrum of a trained network is a bulk near zero plus a few outliers (Sagun et al. 2017; "
           "Ghorbani et al. 2019), and SLQ recovers it.",
           "SLQ density of the MNIST-1D MLP Hessian at initialisation and after training; on a small MLP the SLQ "
           "density against the exact eigh spectrum.",
           "spectrum", build_spectrum),
    Figure(3, "sharpness_vs_gap", "Sharpness vs generalization gap",
           "flatter minima generalize better: sharpness measures rank-correlate with the generalization gap "
           "(Jiang et al. 2020).",
           "a sweep over batch size, learning rate, loss, weight decay, model and seed on MNIST-1D, trained to a "
           "train-accuracy target; Kendall τ (bootstrap 95 % CI) and granulated τ of each measure vs the error gap.",
           "sharpness", build_sharpness),
    Figure(4, "edge_of_stability", "Edge of stability",
           "under full-batch gradient descent λ_max rises until it reaches 2/η and then hovers there "
           "(Cohen et al. 2021).",
           "λ_max of the training-loss Hessian (Lanczos, in-graph probe) during full-batch GD for several η, "
           "with the 2/η stability thresholds, and the training loss.",
           "stability", build_with_study_verdict("stability")),
    Figure(5, "natural_gradient", "Natural gradient vs first-order optimizers",
           "natural-gradient methods (NGD, K-FAC) need fewer steps than SGD/Adam/RMSprop, and the Fisher "
           "approximates the Hessian near a minimum (Amari 1998; Martens & Grosse 2015; Kunstner et al. 2019).",
           "steps and wall time to a fixed training loss for each optimizer at its best learning rate; top-k "
           "eigenspace overlaps between Hessian, GGN, Fisher, empirical Fisher and K-FAC.",
           "natural_gradient", build_natural),
    Figure(6, "reparametrisation", "Reparametrisation and sharpness",
           "sharp minima can generalize: function-preserving rescalings change Hessian trace and λ_max "
           "arbitrarily, while rescaling-invariant measures do not move (Dinh et al. 2017).",
           "a trained ReLU MLP rescaled layer-wise by α and node-wise at random; output change and "
           "measure(rescaled) / measure(original) per sharpness measure.",
           "reparam", build_with_study_verdict("reparam")),
    Figure(7, "loss_zoo", "The loss zoo",
           "the choice of loss changes accuracy and the curvature of the reached minimum; robust losses (MAE, "
           "Huber) keep a regression fit under outliers where MSE does not.",
           "one MLP trained under CE, label smoothing, focal, hinge and MSE (test accuracy, curvature, 1-D test-error "
           "slices); teacher–student regression with gross outliers under MSE, MAE and Huber (clean test MSE, "
           "curvature).",
           "loss_zoo", build_with_study_verdict("loss_zoo")),
    Figure(8, "noise_floor_imbalance", "Early stopping and the loss floor",
           "with noisy labels the validation loss cannot go below the label-noise entropy H(p), so early stopping "
           "finds a floor that rises with p; focal loss helps the rare classes under imbalance (Lin et al. 2017).",
           "train/val curves with the early-stopping point; best validation loss vs label noise p ∈ {0, 5, 10, 20} % "
           "against H(p); balanced accuracy and rare-class recall with CE vs focal under class imbalance.",
           "noise", build_noise),
    Figure(9, "depth_gradient_flow", "Gradient flow through depth",
           "without skip connections, signals and gradients vanish or explode with depth at initialisation; "
           "residual connections keep them flowing (Glorot & Bengio 2010; He et al. 2016).",
           "singular values of the input–output Jacobian and per-layer gradient norms at initialisation, plain vs "
           "residual MLPs of depth 2–32, 3 seeds.",
           "depth", build_depth),
    Figure(10, "training_claims", "Common training claims on digits",
           "Adam reaches a target validation loss in fewer epochs than SGD, and there is an optimal L2 / Dropout "
           "value for early-stopped training.",
           "digits MLP with early stopping over 10 seeds: epochs to a validation-loss target, best validation loss "
           "(mean ± std) for L2 ∈ {0.001, 0.01, 0.1} and Dropout ∈ {0.1, 0.2, 0.3}.",
           "train", build_train),
    Figure(11, "mode_connectivity", "Mode connectivity",
           "independently trained minima are separated by a barrier on the straight line but joined by a simple "
           "low-loss curve (Garipov et al. 2018; Draxler et al. 2018).",
           "test loss and error along the linear path and along a trained quadratic Bezier curve between two "
           "MNIST-1D MLPs from different seeds.",
           "connectivity", build_with_study_verdict("connectivity")),
)


def select(only: Sequence[str] | None) -> list[Figure]:
    """Figures by number or name; None selects all. Unknown names raise, listing the valid ones."""
    if not only:
        return list(FIGURES)
    out = []
    for token in only:
        match = [f for f in FIGURES if token == str(f.number) or token == f.name]
        if not match:
            valid = ", ".join(f"{f.number}/{f.name}" for f in FIGURES)
            raise ValueError(f"unknown figure {token!r}; valid: {valid}")
        out.extend(m for m in match if m not in out)
    return out


def _study_seconds(out_dir: str, study: str) -> float:
    """Compute time of a study: the summed wall time of its stored runs."""
    return float(sum((run.provenance.get("wall_time") or 0.0) for run in RunStore(out_dir, study)))


def _readme(records: dict, fig_dir: str) -> str:
    lines = [
        "# Figures",
        "",
        "Every figure here is regenerated from scratch by `python -m experiments.paper` (all of them) or",
        "`python -m experiments.paper --only N` (one). Each caption states the claim tested and the verdict the",
        "data gave. Provenance (config hash, package versions, git commit) is in each file's metadata",
        "(PNG text chunks, PDF subject); `index.json` holds the same records.",
        "",
        "| # | figure | claim | verdict | study compute (2 CPU cores) |",
        "|---|---|---|---|---|",
    ]
    for f in FIGURES:
        r = records.get(str(f.number))
        if r is None:
            continue
        lines.append(f"| {f.number} | [{f.title}]({f.name}.png) | {f.claim} | {r['verdict']} | "
                     f"{r['study_seconds'] / 60:.1f} min |")
    lines.append("")
    for f in FIGURES:
        r = records.get(str(f.number))
        if r is None:
            continue
        lines += [
            f"## Figure {f.number}: {f.title}",
            "",
            f"![{f.title}]({f.name}.png)",
            "",
            f"- **Claim:** {f.claim}",
            f"- **Measured:** {f.measured}",
            f"- **Verdict:** {r['verdict']}",
            f"- **Regenerate:** `python -m experiments.paper --only {f.number}` (study alone: "
            f"`python -m experiments.{f.study}`); PDF: [{f.name}.pdf]({f.name}.pdf)",
            f"- **Provenance:** config hash `{r['config_hash']}`, commit `{r.get('git_commit')}`, "
            f"{'quick' if r['quick'] else 'default'} configuration, {r['study_seconds'] / 60:.1f} min of study compute.",
            "",
        ]
    return "\n".join(lines)


def run(only: Sequence[str] | None = None, *, quick: bool = False, out_dir: str = "results",
        fig_dir: str = "figures") -> dict:
    """Runs the missing studies and draws the selected figures; returns ``{number: record}``."""
    from losslab.plot.training import figure_metadata

    figures = select(only)
    os.makedirs(fig_dir, exist_ok=True)
    index_path = os.path.join(fig_dir, "index.json")
    records = {}
    if os.path.exists(index_path):
        with open(index_path) as fh:
            records = json.load(fh)
    prov = provenance()
    versions = {k: prov[k] for k in ("losslab", "jax", "flax", "optax", "numpy", "python", "backend")}
    for fig in figures:
        start = time.perf_counter()
        print(f"[paper] figure {fig.number} ({fig.name}) from experiments.{fig.study}", flush=True)
        path = os.path.join(fig_dir, fig.name)
        meta = {"figure": fig.number, "study": fig.study, **versions, "git_commit": prov["git_commit"]}
        with figure_metadata(**meta):
            record = fig.build(fig, quick, out_dir, path)
        cfg = record.pop("config")
        record.update(
            name=fig.name, title=fig.title, claim=fig.claim, study=fig.study, quick=quick,
            config=dataclasses.asdict(cfg), config_hash=config_hash(dataclasses.asdict(cfg)),
            git_commit=prov["git_commit"], versions=versions,
            study_seconds=_study_seconds(out_dir, _study(fig.study).EXPERIMENT),
            draw_seconds=time.perf_counter() - start,
            paths=[os.path.relpath(p, fig_dir) for p in record["paths"]],
        )
        _stamp(record, os.path.join(fig_dir, fig.name))
        records[str(fig.number)] = record
        atomic_write_json(index_path, records)
        print(f"[paper]   {record['verdict']}", flush=True)
    atomic_write_text(os.path.join(fig_dir, "README.md"), _readme(records, fig_dir))
    return {int(k): v for k, v in records.items()}


def _stamp(record: dict, stem: str) -> None:
    """Rewrites the PNG's text chunks with the final config hash (the draw ran before it was known)."""
    from PIL import Image, PngImagePlugin

    png = stem + ".png"
    if not os.path.exists(png):
        return
    with Image.open(png) as im:
        im.load()
        info = PngImagePlugin.PngInfo()
        for k, v in {**im.text, "config_hash": record["config_hash"], "verdict": record["verdict"]}.items():
            info.add_text(str(k), str(v))
        im.save(png, pnginfo=info)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny runs of every study (tests; minutes)")
    parser.add_argument("--only", default=None, help="comma-separated figure numbers or names")
    parser.add_argument("--out", default="results", help="results folder of the studies (default: results)")
    parser.add_argument("--figures", default="figures", help="figure folder (default: figures)")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    args = parser.parse_args(argv)
    if args.list:
        for f in FIGURES:
            print(f"{f.number:2d}  {f.name:24s} experiments.{f.study:18s} {f.title}")
        return
    only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
    try:
        select(only)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    records = run(only, quick=args.quick, out_dir=args.out, fig_dir=args.figures)
    total = time.perf_counter() - start
    print(f"[paper] {len(records)} figures in {args.figures}/ ({total / 60:.1f} min this run; summed study compute "
          f"{sum(r['study_seconds'] for r in records.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1:])
