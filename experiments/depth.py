"""Gradient flow through depth at initialisation: plain vs residual networks.

For MLPs of growing depth (width 64, ReLU, default LeCun-normal initialisation) on
MNIST-1D inputs, with and without residual connections, measures at
initialisation (no training):

* the singular values of the input–output Jacobian ∂f/∂x, averaged over a few
  inputs (dynamical isometry: Saxe et al. 2014; Pennington et al. 2017), and
* the gradient norm of the mean cross-entropy with respect to each hidden
  layer's kernel (vanishing/exploding gradients: Glorot & Bengio 2010; He et al.
  2016).

Verdict: the claim has two parts, each a 10× rule on the median Jacobian singular
value from the shallowest to the deepest net (see :func:`verdict`).

Feeds: ``figures/depth_gradient_flow`` (paper figure 9; :func:`figure`).

    python -m experiments.depth            # the default run, ≈ 0.6 min on 2 CPU cores
    python -m experiments.depth --quick    # seconds, for tests
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, parse_config, run_sweep
from losslab import data
from losslab.results import RunStore

EXPERIMENT = "depth"
FIGURE = "depth_gradient_flow"
CLAIM = ("without skip connections, signals and gradients vanish or explode with depth at initialisation; "
         "residual connections keep them flowing (Glorot & Bengio 2010; He et al. 2016).")
# A signal "vanishes" / "explodes" when the median Jacobian singular value falls / grows by more than
# this factor from the shallowest to the deepest network.
TREND_FACTOR = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Depth sweep at initialisation; defaults are the real run.

    Varied: depth (``depths`` hidden layers of ``width`` units) and residual vs plain. Fixed:
    ReLU, LeCun-normal init, MNIST-1D inputs, no training. Seeds: ``seeds`` (one network per
    seed and cell). Statistic: median singular value of ∂f/∂x over ``num_inputs`` inputs
    and seeds; gradient norms of each layer's kernel on ``batch`` examples.
    """

    dataset: str = "mnist1d"
    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    width: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    num_inputs: int = 16
    batch: int = 512


def quick() -> Config:
    """Two depths, one seed: seconds."""
    return Config(depths=(2, 4), seeds=(0,), num_inputs=2, batch=64)


def measure(cfg: dict) -> dict:
    """Jacobian singular values and per-layer gradient norms of one network at init."""
    ds = data.load(cfg["dataset"], seed=0)
    obj = common.mlp_objective(ds, "cross_entropy", (cfg["width"],) * cfg["depth"], cfg["seed"],
                               residual=cfg["residual"])
    params = obj.params
    x, y = obj.batch("train")
    xs = x[: cfg["num_inputs"]]

    def single(xi):
        return obj.outputs(params, xi[None])[0]

    jac = jax.vmap(jax.jacfwd(single))(xs)  # (inputs, outputs, features)
    svals = np.asarray(jnp.linalg.svd(jac, compute_uv=False)).ravel()
    grads = jax.grad(obj.loss)(params, (x[: cfg["batch"]], y[: cfg["batch"]]))
    layer_norms = [float(jnp.linalg.norm(grads["layers"][i]["kernel"])) for i in range(cfg["depth"])]
    return {
        "jacobian_singular_values": svals.tolist(),
        "jacobian_condition": float(svals.max() / max(svals.min(), 1e-30)),
        "layer_grad_norms": layer_norms,
        "output_std": float(jnp.std(obj.outputs(params, x[: cfg["batch"]]))),
    }


def run(config: Config, out_dir: str) -> list[tuple[dict, dict]]:
    """Runs (or resumes) the sweep into ``<out_dir>/depth/``.

    Returns the rows: one ``(run config, metrics)`` pair per network, the config with
    ``depth``, ``residual`` and ``seed``, the metrics with ``jacobian_singular_values`` and
    ``layer_grad_norms`` (one per hidden layer, input side first).
    """
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = [
        {"name": f"{'residual' if res else 'plain'}-d{d}", "dataset": config.dataset, "depth": d,
         "width": config.width, "residual": res, "seed": s, "num_inputs": config.num_inputs, "batch": config.batch}
        for d in config.depths for res in (False, True) for s in config.seeds
    ]
    metrics = run_sweep(store, [(c, measure) for c in cfgs], desc="depth study")
    return list(zip(cfgs, metrics))


def summarize(rows) -> list[dict]:
    """Per (depth, residual): median / min / max Jacobian singular value, first/last layer gradient ratio."""
    out = []
    for (depth, residual) in dict.fromkeys((c["depth"], c["residual"]) for c, _ in rows):
        ms = [m for c, m in rows if c["depth"] == depth and c["residual"] == residual]
        sv = np.concatenate([m["jacobian_singular_values"] for m in ms])
        first = np.mean([m["layer_grad_norms"][0] for m in ms])
        last = np.mean([m["layer_grad_norms"][-1] for m in ms])
        out.append({"depth": depth, "residual": residual, "sv_median": float(np.median(sv)),
                    "sv_max": float(sv.max()), "sv_min": float(sv.min()),
                    "grad_first_over_last": float(first / last)})
    return out


def _trend(a: float, b: float) -> str:
    return "vanish" if b < a / TREND_FACTOR else "explode" if b > TREND_FACTOR * a else "stay within 10×"


def verdict(rows) -> Verdict:
    """Two parts, from the median Jacobian singular value at the shallowest and the deepest depth.

    (a) plain nets' signals vanish or explode: the median changes by more than ``TREND_FACTOR``
    (True) or stays within it (False); (b) residual nets keep them flowing: the median stays
    within ``TREND_FACTOR`` (True) or does not (False). Combined by :func:`common.combine`.
    """
    s = {(e["depth"], e["residual"]): e for e in summarize(rows)}
    depths = sorted({d for d, _ in s})
    shallow, deepest = depths[0], depths[-1]
    sv = {res: (s[shallow, res]["sv_median"], s[deepest, res]["sv_median"]) for res in (False, True)
          if (shallow, res) in s and (deepest, res) in s}
    trend = {res: _trend(*v) for res, v in sv.items()}
    parts = {"plain_vanish_or_explode": None if False not in trend or shallow == deepest
             else trend[False] != "stay within 10×",
             "residual_keeps_flowing": None if True not in trend or shallow == deepest
             else trend[True] == "stay within 10×"}
    grad = {res: s[deepest, res]["grad_first_over_last"] for res in (False, True) if (deepest, res) in s}
    summary = (f"from depth {shallow} to {deepest}, the median Jacobian singular value of "
               + " and of ".join(f"{'residual' if res else 'plain'} nets goes {a:.2g} → {b:.2g}"
                                 for res, (a, b) in sv.items())
               + f"; first/last layer gradient-norm ratio at depth {deepest}: "
               + ", ".join(f"{'residual' if res else 'plain'} {g:.2g}" for res, g in grad.items())
               + ": " + ", ".join(f"{'residual' if res else 'plain'} nets' signals {t}" for res, t in trend.items())
               + ".")
    return Verdict(CLAIM, combine(parts), {
        "rule": (f"from the shallowest to the deepest net, a median Jacobian singular value that falls or grows by "
                 f"more than {TREND_FACTOR:g}× vanishes or explodes; (a) plain nets' signals vanish or explode; "
                 f"(b) residual nets' signals stay within {TREND_FACTOR:g}×; {COMBINE_RULE}"),
        "summary": summary, "parts": parts, "depths": [shallow, deepest],
        "plain_sv_median": list(sv.get(False, ())), "residual_sv_median": list(sv.get(True, ())),
        "grad_first_over_last": {"residual" if k else "plain": v for k, v in grad.items()},
    })


def figure(rows, ax=None):
    """Two panels: Jacobian singular values vs depth; per-layer gradient norm of the deepest nets.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the two panels into (None: a new one).
    Returns the figure.
    """
    fig, host = common.panels(ax, (10, 4))
    summary = summarize(rows)
    axes = host.subplots(1, 2)
    ax = axes[0]
    for residual, color in ((False, "C3"), (True, "C0")):
        s = [e for e in summary if e["residual"] == residual]
        d = [e["depth"] for e in s]
        ax.plot(d, [e["sv_median"] for e in s], "o-", color=color, label=f"{'residual' if residual else 'plain'} (median)")
        ax.fill_between(d, [e["sv_min"] for e in s], [e["sv_max"] for e in s], color=color, alpha=0.15,
                        label=f"{'residual' if residual else 'plain'} (min–max)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("singular values of ∂f/∂x at init")
    ax.set_title("input–output Jacobian spectrum")
    ax.legend(fontsize=8)
    ax = axes[1]
    deepest = max(c["depth"] for c, _ in rows)
    for residual, color in ((False, "C3"), (True, "C0")):
        norms = np.asarray([m["layer_grad_norms"] for c, m in rows if c["depth"] == deepest and c["residual"] == residual])
        ax.plot(np.arange(1, deepest + 1), norms.mean(0), "o-", ms=3, color=color,
                label=f"{'residual' if residual else 'plain'}, depth {deepest}")
    ax.set_yscale("log")
    ax.set_xlabel("hidden layer index (input side → output side)")
    ax.set_ylabel("‖∂L/∂W_l‖ at init")
    ax.set_title("gradient norm per layer")
    ax.legend(fontsize=8)
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.depth [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
