"""Hessian spectral density at initialisation and after training, validated against the exact spectrum.

(a) The MNIST-1D MLP 40-64-64-10 (ReLU, Adam, cross-entropy): Hessian density
by stochastic Lanczos quadrature (Ghorbani et al. 2019) over the full training
set, at initialisation and at the end of training. (b) Validation: a small MLP
40-12-10 (≈ 600 parameters) trained the same way, whose dense Hessian fits in
memory: the SLQ density drawn over the broadened exact spectrum from ``eigh``,
and SLQ's top eigenvalue and trace against the exact ones.

Feeds: ``figures/hessian_spectrum`` (paper figure 2).

    python -m experiments.spectrum
    python -m experiments.spectrum --quick
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np

from experiments import common
from experiments.common import parse_config, run_sweep
from losslab import curvature, data
from losslab.results import RunStore

EXPERIMENT = "spectrum"


@dataclasses.dataclass(frozen=True)
class Config:
    """Spectra of a trained MLP; defaults are the real run."""

    dataset: str = "mnist1d"
    widths: tuple[int, ...] = (64, 64)
    small_widths: tuple[int, ...] = (12,)
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    num_steps: int = 90
    num_probes: int = 4
    seed: int = 0


def quick_config() -> Config:
    return Config(widths=(16,), small_widths=(4,), epochs=2, num_steps=20, num_probes=2)


def spectra(cfg: dict) -> dict:
    """Trains one MLP and measures its Hessian density at init and at the end."""
    ds = data.load(cfg["dataset"], seed=0)
    obj = common.mlp_objective(ds, "cross_entropy", cfg["widths"], cfg["seed"])
    result = common.train_run(obj, cfg)
    out = {"num_params": obj.num_params, "final_train_loss": result.history.train_eval_loss[-1],
           "final_test_accuracy": float(obj.evaluate(result.params, "test")["accuracy"])}
    arrays = {}
    key = jax.random.key(cfg["seed"])
    for stage, params in (("init", obj.params), ("end", result.params)):
        est = curvature.hessian_density(obj, params, key, num_steps=cfg["num_steps"], num_probes=cfg["num_probes"])
        arrays[f"{stage}_grid"], arrays[f"{stage}_density"] = est.grid, est.density
        arrays[f"{stage}_nodes"] = np.asarray(est.result.nodes)
        arrays[f"{stage}_weights"] = np.asarray(est.result.weights)
        top = curvature.hessian_eigenvalues(obj, params, key=key, k=1)
        trace = curvature.hessian_trace(obj, params, key)
        out[stage] = {"lambda_max": float(np.asarray(top.eigenvalues)[0]), "trace": trace.value,
                      "trace_std_error": float(trace.std_error), "negative_fraction": est.negative_fraction}
        if cfg["exact"]:
            exact = np.asarray(curvature.dense_hessian(obj, params))
            eig = np.linalg.eigvalsh(exact)
            grid = est.grid
            dens = curvature.exact_density(eig, grid=np.asarray(grid), sigma=float(est.result.sigma))
            arrays[f"{stage}_exact_eigenvalues"] = eig
            arrays[f"{stage}_exact_density"] = np.asarray(dens.density)
            out[stage]["exact_lambda_max"] = float(eig.max())
            out[stage]["exact_trace"] = float(eig.sum())
            out[stage]["exact_negative_fraction"] = float(np.mean(eig < 0))
    out["_arrays"] = arrays
    return out


def run(config: Config, out_dir: str) -> dict:
    store = RunStore(out_dir, EXPERIMENT)
    common = {"dataset": config.dataset, "epochs": config.epochs, "batch_size": config.batch_size,
              "learning_rate": config.learning_rate, "num_steps": config.num_steps, "num_probes": config.num_probes,
              "seed": config.seed}
    cfgs = [{**common, "name": "mlp", "widths": list(config.widths), "exact": False},
            {**common, "name": "small", "widths": list(config.small_widths), "exact": True}]
    metrics = run_sweep(store, [(c, spectra) for c in cfgs], desc="spectrum study")
    runs = [store.load(c) for c in cfgs]
    figs = draw(runs, os.path.join(out_dir, EXPERIMENT))
    return {"metrics": metrics, "figures": figs, "runs": runs}


def draw(runs, folder: str, path: str | None = None, caption: str | None = None) -> list[str]:
    """Panel (a): init vs end density of the MLP; panel (b): SLQ vs exact on the small model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from losslab.plot.training import save

    big, small = runs
    a, s = big.arrays(), small.arrays()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    ax = axes[0]
    for stage, color in (("init", "C1"), ("end", "C0")):
        m = big.metrics[stage]
        ax.semilogy(a[f"{stage}_grid"], np.maximum(a[f"{stage}_density"], 1e-12), color=color,
                    label=f"{stage}: λ_max {m['lambda_max']:.3g}, tr {m['trace']:.3g}")
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel("eigenvalue λ of the Hessian")
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"MNIST-1D MLP ({big.metrics['num_params']} params): SLQ density")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.semilogy(s["end_grid"], np.maximum(s["end_exact_density"], 1e-12), color="k", lw=3, alpha=0.4,
                label="exact (eigh, broadened)")
    ax.semilogy(s["end_grid"], np.maximum(s["end_density"], 1e-12), color="C0", ls="--", label="SLQ estimate")
    ax.plot(s["end_exact_eigenvalues"], np.full_like(s["end_exact_eigenvalues"], 2e-6), "|", color="k", ms=8,
            label="exact eigenvalues")
    m = small.metrics["end"]
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel("eigenvalue λ of the Hessian")
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"validation, small MLP ({small.metrics['num_params']} params): λ_max {m['lambda_max']:.4g} "
                 f"vs exact {m['exact_lambda_max']:.4g}", fontsize=9)
    ax.legend(fontsize=8)
    if caption:
        fig.suptitle(caption, fontsize=9)
    paths = save(fig, path or os.path.join(folder, "hessian_spectrum"))
    plt.close(fig)
    return paths


def main(argv=None) -> None:
    config, out = parse_config(Config, argv, description=__doc__, quick=quick_config)
    result = run(config, out)
    for m in result["metrics"]:
        print({k: v for k, v in m.items() if k in ("num_params", "init", "end")})
    print("figures:", ", ".join(result["figures"]))


if __name__ == "__main__":
    main(sys.argv[1:])
