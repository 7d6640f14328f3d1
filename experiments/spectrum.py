"""Hessian spectral density at initialisation and after training, validated against the exact spectrum.

(a) The MNIST-1D MLP 40-64-64-10 (ReLU, Adam, cross-entropy): Hessian density
by stochastic Lanczos quadrature (Ghorbani et al. 2019) over the full training
set, at initialisation and at the end of training. (b) Validation: a small MLP
40-12-10 (≈ 600 parameters) trained the same way, whose dense Hessian fits in
memory: the SLQ density drawn over the broadened exact spectrum from ``eigh``,
and SLQ's top eigenvalue and trace against the exact ones.

Verdict: (a) the bulk: the share of SLQ spectral mass within ``BULK_WIDTH`` × λ_max of
zero after training; (b) recovery: Lanczos λ_max and the trace estimate against the exact
values on the small model (see :func:`verdict`).

Feeds: ``figures/hessian_spectrum`` (paper figure 2; :func:`figure`).

    python -m experiments.spectrum            # the default run, ≈ 1.6 min on 2 CPU cores
    python -m experiments.spectrum --quick    # seconds, for tests
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import numpy as np

from experiments import common
from experiments.common import COMBINE_RULE, Row, Verdict, combine, load_row, parse_config, run_sweep
from losslab import curvature, data
from losslab.results import RunStore

EXPERIMENT = "spectrum"
FIGURE = "hessian_spectrum"
CLAIM = ("the Hessian spectrum of a trained network is a bulk near zero plus a few outliers (Sagun et al. 2017; "
         "Ghorbani et al. 2019), and SLQ recovers it.")
# "Near zero": within this fraction of λ_max of 0. The bulk holds when at least BULK_MASS of the SLQ
# spectral mass lies there, and is absent when less than half does.
BULK_WIDTH = 0.1
BULK_MASS = 0.9
# Recovery on the small model: Lanczos λ_max within this relative error of eigh (it converges to
# ~1e-6 on a few hundred parameters), and the trace estimate within this many standard errors.
LAMBDA_RTOL = 1e-2
TRACE_NUM_SE = 3.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Spectra of a trained MLP; defaults are the real run.

    Varied: the stage (initialisation, end of training) and the model (the MLP ``widths``; the
    small MLP ``small_widths``, whose dense Hessian is computed). Fixed: MNIST-1D, Adam,
    cross-entropy, ``epochs`` epochs (the same for both models). Seed: ``seed``. Statistics:
    SLQ with ``num_probes`` probes × ``num_steps`` Lanczos steps over the full training set.
    """

    dataset: str = "mnist1d"
    widths: tuple[int, ...] = (64, 64)
    small_widths: tuple[int, ...] = (12,)
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    num_steps: int = 90
    num_probes: int = 4
    seed: int = 0


def quick() -> Config:
    """Small models, two epochs, short Lanczos runs."""
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


def run(config: Config, out_dir: str) -> list[Row]:
    """Runs (or resumes) both models into ``<out_dir>/spectrum/``.

    Returns the rows: two :class:`common.Row` — the MLP (``config["name"] == "mlp"``) and the
    small model (``"small"``). Metrics per stage (``init``, ``end``): ``lambda_max``, ``trace``,
    ``trace_std_error``, ``negative_fraction`` (and ``exact_*`` for the small model); arrays:
    ``<stage>_grid``, ``<stage>_density``, ``<stage>_nodes`` and ``<stage>_weights`` (SLQ,
    ``(probes, steps)``), and for the small model ``<stage>_exact_eigenvalues`` / ``_exact_density``.
    """
    store = RunStore(out_dir, EXPERIMENT)
    shared = {"dataset": config.dataset, "epochs": config.epochs, "batch_size": config.batch_size,
              "learning_rate": config.learning_rate, "num_steps": config.num_steps, "num_probes": config.num_probes,
              "seed": config.seed}
    cfgs = [{**shared, "name": "mlp", "widths": list(config.widths), "exact": False},
            {**shared, "name": "small", "widths": list(config.small_widths), "exact": True}]
    run_sweep(store, [(c, spectra) for c in cfgs], desc="spectrum study")
    return [load_row(store, c) for c in cfgs]


def bulk_fraction(nodes, weights, lambda_max: float, width: float = BULK_WIDTH) -> float:
    """Share of the SLQ spectral mass with |λ| ≤ ``width`` · λ_max (weights ``(P, m)``, rows summing to 1)."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    return float(np.sum(weights * (np.abs(nodes) <= width * abs(lambda_max))) / nodes.shape[0])


def verdict(rows) -> Verdict:
    """(a) bulk plus outliers after training, (b) SLQ recovers the small model's exact spectrum.

    (a) True when at least ``BULK_MASS`` of the MLP's end-of-training SLQ mass lies within
    ``BULK_WIDTH`` · λ_max of zero, False when less than half does, None between. (b) True when
    the small model's Lanczos λ_max is within ``LAMBDA_RTOL`` of eigh's and its trace estimate
    within ``TRACE_NUM_SE`` standard errors (+ 1e-3 relative) of the exact trace, else False.
    """
    big, small = (next(r for r in rows if r.config["name"] == n) for n in ("mlp", "small"))
    b, s = big.metrics, small.metrics["end"]
    frac = bulk_fraction(big.arrays["end_nodes"], big.arrays["end_weights"], b["end"]["lambda_max"])
    lam_err = abs(s["lambda_max"] / s["exact_lambda_max"] - 1)
    trace_err = abs(s["trace"] - s["exact_trace"])
    trace_ok = trace_err <= TRACE_NUM_SE * s["trace_std_error"] + 1e-3 * abs(s["exact_trace"])
    parts = {"bulk_and_outliers": True if frac >= BULK_MASS else False if frac < 0.5 else None,
             "slq_recovers_exact": bool(lam_err <= LAMBDA_RTOL and trace_ok)}
    summary = (f"training moves the top eigenvalue from {b['init']['lambda_max']:.3g} to {b['end']['lambda_max']:.3g} "
               f"with {100 * frac:.0f} % of the spectral mass within {BULK_WIDTH:g}·λ_max of zero "
               f"({100 * b['end']['negative_fraction']:.0f} % negative); on the {small.metrics['num_params']}-parameter "
               f"model Lanczos' λ_max is within {lam_err:.1e} of eigh and the trace estimate within "
               f"{abs(s['trace'] / s['exact_trace'] - 1):.1%} ({trace_err / max(s['trace_std_error'], 1e-30):.1f} s.e.).")
    return Verdict(CLAIM, combine(parts), {
        "rule": (f"(a) at least {BULK_MASS:.0%} of the trained MLP's SLQ spectral mass lies within {BULK_WIDTH:g}·λ_max "
                 f"of zero (below 50 %: contradicted); (b) on the small model, λ_max within {LAMBDA_RTOL:g} relative "
                 f"of eigh and the trace within {TRACE_NUM_SE:g} standard errors of the exact trace; {COMBINE_RULE}"),
        "summary": summary, "parts": parts, "bulk_fraction": frac,
        "lambda_max": {"init": b["init"]["lambda_max"], "end": b["end"]["lambda_max"]},
        "negative_fraction_end": b["end"]["negative_fraction"], "small_num_params": small.metrics["num_params"],
        "small_lambda_max_rel_error": lam_err, "small_trace_error": trace_err,
        "small_trace_std_error": s["trace_std_error"],
    })


def figure(rows, ax=None):
    """Panel (a): init vs end density of the MLP; panel (b): SLQ vs exact on the small model.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the two panels into (None: a new one).
    Returns the figure.
    """
    fig, host = common.panels(ax, (11, 4))
    big, small = (next(r for r in rows if r.config["name"] == n) for n in ("mlp", "small"))
    a, s = big.arrays, small.arrays
    axes = host.subplots(1, 2)
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
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.spectrum [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
