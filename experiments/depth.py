"""Gradient flow through depth at initialisation: plain vs residual networks.

For MLPs of growing depth (width 64, ReLU, default LeCun-normal initialisation) on
MNIST-1D inputs, with and without residual connections, measures at
initialisation (no training):

* the singular values of the input–output Jacobian ∂f/∂x, averaged over a few
  inputs (dynamical isometry: Saxe et al. 2014; Pennington et al. 2017), and
* the gradient norm of the mean cross-entropy with respect to each hidden
  layer's kernel (vanishing/exploding gradients: Glorot & Bengio 2010; He et al.
  2016).

Feeds: ``figures/depth_gradient_flow`` (paper figure 9).

    python -m experiments.depth
    python -m experiments.depth --quick
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import parse_config, run_sweep
from losslab import data
from losslab.results import RunStore

EXPERIMENT = "depth"


@dataclasses.dataclass(frozen=True)
class Config:
    """Depth sweep at initialisation; defaults are the real run."""

    dataset: str = "mnist1d"
    depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    width: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)
    num_inputs: int = 16
    batch: int = 512


def quick_config() -> Config:
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


def run(config: Config, out_dir: str) -> dict:
    store = RunStore(out_dir, EXPERIMENT)
    cfgs = [
        {"name": f"{'residual' if res else 'plain'}-d{d}", "dataset": config.dataset, "depth": d,
         "width": config.width, "residual": res, "seed": s, "num_inputs": config.num_inputs, "batch": config.batch}
        for d in config.depths for res in (False, True) for s in config.seeds
    ]
    metrics = run_sweep(store, [(c, measure) for c in cfgs], desc="depth study")
    rows = list(zip(cfgs, metrics))
    figs = draw(rows, os.path.join(out_dir, EXPERIMENT))
    return {"rows": rows, "figures": figs, "summary": summarize(rows)}


def summarize(rows) -> list[dict]:
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


def draw(rows, folder: str, path: str | None = None, caption: str | None = None) -> list[str]:
    """Two panels: Jacobian singular values vs depth; per-layer gradient norm of the deepest nets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.plot.training import save

    summary = summarize(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
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
    if caption:
        fig.suptitle(caption, fontsize=9)
    paths = save(fig, path or os.path.join(folder, "depth_gradient_flow"))
    plt.close(fig)
    return paths


def main(argv=None) -> None:
    config, out = parse_config(Config, argv, description=__doc__, quick=quick_config)
    result = run(config, out)
    for e in result["summary"]:
        print(e)
    print("figures:", ", ".join(result["figures"]))


if __name__ == "__main__":
    main(sys.argv[1:])
