"""Edge of stability: under full-batch gradient descent, λ_max rises to 2/η and hovers there.

Claim (Cohen et al. 2021, "Gradient descent on neural networks typically occurs at
the edge of stability", ICLR): with step size η, full-batch gradient descent first
*sharpens* — the top Hessian eigenvalue λ_max of the training loss grows — until
λ_max reaches the stability threshold 2/η of gradient descent on a quadratic; from
then on λ_max hovers at (or just above) 2/η while the training loss keeps falling,
non-monotonically over short times.

Measured: a ReLU MLP 40-64-64-64-10 with the mean-squared-error loss on one-hot
labels (Cohen et al.'s main setting is MSE) on the first 1000 MNIST-1D training
examples, trained by full-batch gradient descent (``optimizer="sgd"``,
``batch_size=None``) for several step sizes η. Every ``probe_every`` steps an
in-training probe (:func:`losslab.probes.lambda_max_probe`, compiled into the
training program) spends ``lanczos_steps`` warm-started Lanczos steps on the
full-training-set Hessian :math:`\\nabla^2 L(\\theta_t)` and records λ_max (with
its Ritz residual). Summary per η: the largest λ_max, the median λ_max over the
second half of training divided by 2/η, and the final training loss.

Verdict: a run is at the edge when its second-half median λ_max is at least
``EDGE_FRACTION`` × 2/η; the claim holds when every run that did not diverge rose to the
edge (see :func:`verdict`).

Feeds: ``figures/edge_of_stability`` (paper figure 4; :func:`figure`).

    python -m experiments.stability            # the default run, ≈ 2.7 min on 2 CPU cores
    python -m experiments.stability --quick    # seconds, for tests
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from experiments import common
from experiments.common import Row, Verdict, load_row, parse_config, run_sweep
from losslab import Objective, data, models, probes
from losslab.results import RunStore
from losslab.train import TrainingDivergedError, train

EXPERIMENT = "stability"
FIGURE = "edge_of_stability"
CLAIM = ("under full-batch gradient descent λ_max rises until it reaches 2/η and then hovers there "
         "(Cohen et al. 2021).")

# A run "is at the edge" when the median λ_max over its second half is at least this
# fraction of 2/η (Cohen et al. report λ_max hovering just above 2/η; the warm-started
# probe and the oscillation around the edge put the median within a few percent of it).
EDGE_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Config:
    """Full-batch GD at several step sizes with λ_max tracked in-graph; defaults are the real run.

    Varied: the step size η (``learning_rates``). Fixed: the MLP, the loss, the first
    ``num_train`` training examples, full-batch GD. Stopping: ``steps`` steps for every η
    (a NaN/Inf loss stops a run: recorded as diverged). Seed: ``seed``. Statistic: the
    median λ_max over the second half of training, divided by 2/η.
    """

    dataset: str = "mnist1d"
    num_train: int = 1000
    widths: tuple[int, ...] = (64, 64, 64)
    activation: str = "relu"
    loss: str = "mse"
    learning_rates: tuple[float, ...] = (0.4, 0.6, 0.9, 1.3)
    steps: int = 3000
    probe_every: int = 10
    lanczos_steps: int = 10
    seed: int = 0


def quick() -> Config:
    """A small MLP on 200 examples, two step sizes, 200 steps."""
    return Config(num_train=200, widths=(16, 16), learning_rates=(0.5, 2.0), steps=200)


def threshold(learning_rate: float) -> float:
    """The stability threshold 2/η of gradient descent: on a quadratic with curvature λ, GD diverges iff λ > 2/η."""
    return 2.0 / learning_rate


def objective(cfg: dict) -> Objective:
    """The MLP and loss of one run on the first ``num_train`` training examples."""
    ds = data.load(cfg["dataset"], seed=0)
    n = cfg["num_train"]
    if not 1 <= n <= ds.x_train.shape[0]:
        raise ValueError(f"num_train must be in [1, {ds.x_train.shape[0]}], got {n}")
    ds = dataclasses.replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])
    model = models.create("mlp", input_shape=ds.input_shape, output_dim=ds.output_dim, widths=tuple(cfg["widths"]),
                          activation=cfg["activation"], seed=cfg["seed"])
    return Objective(model, cfg["loss"], ds)


def gradient_descent(cfg: dict):
    """Full-batch GD for ``cfg["steps"]`` steps with the λ_max probe; returns ``(objective, TrainResult)``.

    One step per "epoch" (the batch is the whole training set); training-set evaluation
    only at the end (the per-step loss is the step's full-batch loss).
    """
    if cfg["steps"] % cfg["probe_every"]:
        raise ValueError(f"steps ({cfg['steps']}) must be a multiple of probe_every ({cfg['probe_every']})")
    obj = objective(cfg)
    probe = probes.lambda_max_probe(num_steps=cfg["lanczos_steps"], full_batch=True, seed=cfg["seed"],
                                       with_residual=True)
    result = train(obj, optimizer="sgd", learning_rate=cfg["learning_rate"], batch_size=None, epochs=cfg["steps"],
                   key=cfg["seed"], probes={"lambda_max": probe}, probe_every=cfg["probe_every"],
                   eval_every=cfg["steps"])
    return obj, result


def trajectory(cfg: dict) -> dict:
    """One step size: λ_max every ``probe_every`` steps and the full-batch loss at every step."""
    try:
        obj, result = gradient_descent(cfg)
    except TrainingDivergedError as e:  # a too-large η: recorded, drawn as missing
        return {"diverged": str(e)}
    h = result.history
    lam = h.probes["lambda_max/value"]
    res = h.probes["lambda_max/residual"]
    values = np.asarray(lam["value"])
    # history.train_loss[t] is the loss of step t+1, i.e. at the iterate θ_t before that update.
    loss = np.asarray(h.train_loss)
    return {
        "diverged": None,
        "num_params": obj.num_params,
        "threshold": threshold(cfg["learning_rate"]),
        "final_train_loss": float(h.train_eval_loss[-1]),
        "final_train_accuracy": float(h.train_accuracy[-1]),
        "max_lambda_max": float(values.max()),
        "_arrays": {
            "lambda_step": np.asarray(lam["step"]), "lambda_max": values, "residual": np.asarray(res["value"]),
            "loss_step": np.arange(len(loss)), "loss": loss,
        },
    }


def _configs(config: Config) -> list[dict]:
    shared = {"dataset": config.dataset, "num_train": config.num_train, "widths": list(config.widths),
              "activation": config.activation, "loss": config.loss, "steps": config.steps,
              "probe_every": config.probe_every, "lanczos_steps": config.lanczos_steps, "seed": config.seed}
    return [{**shared, "name": f"lr{lr:g}", "learning_rate": lr} for lr in config.learning_rates]


def run(config: Config, out_dir: str) -> list[Row]:
    """Runs (or resumes) every step size into ``<out_dir>/stability/``.

    Returns the rows: one :class:`common.Row` per η, in ``learning_rates`` order. Metrics:
    ``diverged`` (None or the error), ``final_train_loss``, ``max_lambda_max``; arrays:
    ``lambda_step``, ``lambda_max``, ``residual`` (every ``probe_every`` steps) and
    ``loss_step``, ``loss`` (every step). A diverged run has no arrays.
    """
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = _configs(config)
    run_sweep(store, [(c, trajectory) for c in cfgs], desc="stability study")
    return [load_row(store, c) for c in cfgs]


def summarize(rows) -> list[dict]:
    """Per η: max λ_max, last-half median λ_max / (2/η), final loss, whether it is at the edge.

    ``edge_step`` is the first probed step with λ_max ≥ ``EDGE_FRACTION`` × 2/η (None if never).
    """
    out = []
    for r in rows:
        lr = r.config["learning_rate"]
        if r.metrics.get("diverged"):
            out.append({"learning_rate": lr, "threshold": threshold(lr), "diverged": True})
            continue
        a = r.arrays
        lam, steps = np.asarray(a["lambda_max"]), np.asarray(a["lambda_step"])
        late = lam[steps > steps[-1] / 2]
        ratio = float(np.median(late) / threshold(lr))
        reached = np.flatnonzero(lam >= EDGE_FRACTION * threshold(lr))
        out.append({
            "learning_rate": lr, "threshold": threshold(lr), "diverged": False,
            "max_lambda_max": float(lam.max()), "late_median_over_threshold": ratio,
            "first_lambda_max": float(lam[0]),
            "edge_step": int(steps[reached[0]]) if reached.size else None,
            "late_max_rel_residual": float(np.max(np.asarray(a["residual"])[steps > steps[-1] / 2] / np.abs(late))),
            "final_train_loss": r.metrics["final_train_loss"], "at_edge": ratio >= EDGE_FRACTION,
        })
    return out


def _reading(per_lr: list[dict]) -> str:
    """One sentence from the numbers: which η reach and hover at 2/η, which stay below, which diverged."""
    edge = [e for e in per_lr if not e["diverged"] and e["at_edge"]]
    below = [e for e in per_lr if not e["diverged"] and not e["at_edge"]]
    diverged = [e for e in per_lr if e["diverged"]]
    parts = []
    if edge:
        lo = min(e["late_median_over_threshold"] for e in edge)
        hi = max(e["late_median_over_threshold"] for e in edge)
        etas = ", ".join(f"{e['learning_rate']:g}" for e in edge)
        when = ", ".join(str(e["edge_step"]) for e in edge)
        # "rises" only when every such run started below the edge (progressive sharpening).
        rises = all(e["first_lambda_max"] < EDGE_FRACTION * e["threshold"] for e in edge)
        parts.append(f"λ_max {'rises to' if rises else 'reaches'} 2/η and hovers there for η ∈ {{{etas}}} "
                     f"(second-half median {lo:.2f}–{hi:.2f} × 2/η; first within "
                     f"{100 * (1 - EDGE_FRACTION):.0f} % of 2/η at step {when})")
    if below:
        desc = ", ".join(f"η={e['learning_rate']:g}: median {e['late_median_over_threshold']:.2f} × 2/η, "
                         f"max {e['max_lambda_max'] / e['threshold']:.2f} × 2/η" for e in below)
        parts.append(f"stays below 2/η for {desc}")
    if diverged:
        parts.append("diverged for η ∈ {" + ", ".join(f"{e['learning_rate']:g}" for e in diverged) + "}")
    return "; ".join(parts) if parts else "no runs"


def verdict(rows) -> Verdict:
    """The edge of stability from the per-η summary (:func:`summarize`).

    Holds: every run that did not diverge is at the edge (second-half median λ_max ≥
    ``EDGE_FRACTION`` × 2/η) and started below it (λ_max rose). Does not hold: none is at the
    edge. Inconclusive: some are and some are not, a run started at the edge already, or
    every run diverged.
    """
    per_lr = summarize(rows)
    live = [e for e in per_lr if not e["diverged"]]
    edge = [e for e in live if e["at_edge"]]
    rose = all(e["first_lambda_max"] < EDGE_FRACTION * e["threshold"] for e in edge)
    if live and len(edge) == len(live) and rose:
        status = "holds"
    elif live and not edge:
        status = "does not hold"
    else:
        status = "inconclusive"
    return Verdict(CLAIM, status, {
        "rule": (f"a run is at the edge when its second-half median λ_max is at least {EDGE_FRACTION:g} × 2/η; "
                 "the claim holds when every run that did not diverge is at the edge and started below it, does "
                 "not hold when none is at the edge, and is inconclusive otherwise"),
        "summary": _reading(per_lr) + ".",
        "edge_fraction": EDGE_FRACTION,
        "per_lr": [{k: e.get(k) for k in ("learning_rate", "threshold", "diverged", "late_median_over_threshold",
                                           "first_lambda_max", "max_lambda_max", "edge_step", "at_edge")}
                   for e in per_lr],
    })


def figure(rows, ax=None):
    """Two panels: λ_max vs step with the 2/η lines; full-batch training loss vs step.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the two panels into (None: a new one).
    Diverged runs appear in the legend only. Returns the figure.
    """
    fig, host = common.panels(ax, (11, 4.2))
    axes = host.subplots(1, 2)
    live = [r for r in rows if not r.metrics.get("diverged")]
    lam_all = []
    for i, r in enumerate(rows):
        lr = r.config["learning_rate"]
        color = f"C{i}"
        if r.metrics.get("diverged"):
            axes[0].plot([], [], color=color, label=f"η = {lr:g}: diverged")
            continue
        a = r.arrays
        lam_all.append(np.asarray(a["lambda_max"]))
        axes[0].plot(a["lambda_step"], a["lambda_max"], color=color, lw=1.2, label=f"η = {lr:g}")
        axes[0].axhline(threshold(lr), color=color, ls="--", lw=1, alpha=0.8, label=f"2/η = {threshold(lr):.3g}")
        axes[1].plot(a["loss_step"], a["loss"], color=color, lw=1, label=f"η = {lr:g}")
    ax = axes[0]
    if live:
        values = np.concatenate(lam_all + [[threshold(r.config["learning_rate"]) for r in live]])
        if values.max() / max(values.min(), 1e-12) > 20:
            ax.set_yscale("log")
    cfg = rows[0].config
    ax.set_xlabel("gradient-descent step t")
    ax.set_ylabel("λ_max of the training-loss Hessian")
    widths = "-".join(str(w) for w in cfg["widths"])
    ax.set_title(f"sharpness: {cfg['activation']} MLP {widths}, {cfg['loss']}, n = {cfg['num_train']}", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax = axes[1]
    ax.set_yscale("log")
    ax.set_xlabel("gradient-descent step t")
    ax.set_ylabel(f"full-batch training loss ({cfg['loss']}, log scale)")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.stability [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
