"""The loss zoo: one network, five classification losses; three regression losses under outliers.

Claim. The training loss shapes the minimum that is found: its curvature, and —
for regression with corrupted targets — whether the fit to the clean function
survives. Raw curvature numbers (Hessian trace, λ_max) are *not* comparable
across losses, because each loss has its own scale and its own output-space
curvature (a hinge or absolute loss has none at all); comparisons must use a
scale-free measure.

(a) Classification. One MLP (MNIST-1D, 40-128-128-10, ReLU, the same
initialisation seed) trained under ``cross_entropy``, ``label_smoothing``
(ε = 0.1), ``focal`` (γ = 2), ``multiclass_hinge`` (margin 1) and ``mse`` on one-hot
targets — Adam 1e-3, batch 128, the same early stopping (patience on each loss's
own validation loss, best weights restored). At the end we measure:

* test accuracy;
* Hessian trace (Hutchinson, Rademacher probes, with its standard error) and λ_max
  (Lanczos) of the mean training loss — in each loss's own units;
* three scale-free views, since raw curvature mostly reflects the loss's scale:
  - λ_max / L, the curvature per unit of training loss (invariant to multiplying
    the loss by a constant, but not to its shape; it blows up for a loss that
    reaches ≈ 0, such as the hinge);
  - PAC-Bayes flatness on the **0-1 training error**, magnitude-aware
    (Jiang et al. 2020, ``pacbayes_flatness_mag`` with ``metric="error"``):
    1/σ*², σ* the largest relative noise scale θ ← θ + σ |θ| ⊙ z that raises the
    training *error* by ``flatness_target``. It never looks at the loss value, so
    it is identical in meaning for every loss, and it is invariant to ReLU
    layer/node rescaling;
  - the basin width of the test error along filter-normalised random directions
    (Li et al. 2018): the mean |α| at which the test error of
    θ + α d rises ``width_rise`` above its value at θ (both sides, averaged over
    ``num_directions`` directions drawn with the same keys for every loss).
* the 1-D filter-normalised slices of the *test error* themselves — error, not
  loss, so the curves of different losses share one axis.

For ReLU networks f is linear in each single layer's weights, so the diagonal of
∇²f vanishes and tr ∇²L equals the trace of the Gauss–Newton term
J^T ∇²ℓ J: the trace of a piecewise-linear loss (hinge, MAE) is ≈ 0 wherever the
loss is flat in the outputs, even though λ_max is not.

(b) Regression under outliers. Teacher–student regression
(``data.load("teacher")``: 10 inputs, a tanh teacher with 32 hidden units, noise
σ = 0.1) with a fraction (0, 10 %, 20 %) of training targets replaced by gross
outliers (``data.regression_outliers``, 10 target standard deviations), an MLP
10-64-64-1 student trained with MSE, MAE and Huber (δ = 0.5 ≈ one target
standard deviation, so outliers fall in the linear zone), several seeds.
Validation and test targets stay clean. We report the **clean test MSE** (which
loss keeps the fit; its floor is the noise σ² = 0.01) and, at the end, the
Hessian trace, the Gauss–Newton trace, λ_max and λ_min of the training loss.
MAE has zero output-space curvature, so its Gauss–Newton matrix is exactly 0 and
its Hessian is the residual-weighted network term Σ sign(r_i) ∇²f_i only: for a
ReLU network a traceless, indefinite matrix (λ_min ≈ −λ_max).

Reference: the loss-zoo comparisons of Janocha & Czarnecki 2017 and Hui & Belkin
2021 (MSE vs cross-entropy); sharpness vs scale: Dinh et al. 2017; PAC-Bayes
flatness: Jiang et al. 2020; robust regression: Huber 1964.

Verdict: (a) the losses' test accuracies differ by more than two binomial standard
errors and their scale-free sharpness differs; (b) with the most outliers a robust loss
(MAE, Huber) keeps the lowest clean test MSE (see :func:`verdict`).

Feeds: ``figures/loss_zoo`` (paper figure 7; :func:`figure`).

    python -m experiments.loss_zoo            # the default run, ≈ 3–4 minutes on 2 CPU cores
    python -m experiments.loss_zoo --quick    # seconds, for tests
    python -m experiments.loss_zoo --out DIR --reg-seeds 0,1,2,3,4
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import jax
import numpy as np

from experiments import common
from experiments.common import COMBINE_RULE, Row, Verdict, combine, load_row, parse_config, run_sweep
from losslab import Objective, curvature, data, losses, sharpness
from losslab import directions as D
from losslab import surface as S
from losslab.correlation import kendall_tau
from losslab.results import RunStore

EXPERIMENT = "loss_zoo"
FIGURE = "loss_zoo"
CLAIM = ("the choice of loss changes accuracy and the curvature of the reached minimum; robust losses (MAE, "
         "Huber) keep a regression fit under outliers where MSE does not.")
ROBUST = ("mae", "huber", "log_cosh")
LOSS_LABELS = {"cross_entropy": "cross-entropy", "label_smoothing": "label smoothing", "focal": "focal",
               "multiclass_hinge": "multiclass hinge", "mse": "MSE", "mae": "MAE", "huber": "Huber",
               "log_cosh": "log-cosh", "normalized_cross_entropy": "normalised CE"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Both parts of the loss zoo; defaults are the real run.

    (a) Varied: the classification loss (``losses``). Fixed: the MLP and its initialisation
    (``seed``), Adam, batch size. Stopping: early stopping on each loss's own validation loss
    (``patience``, best weights), at most ``epochs``. One seed. Statistics: test accuracy
    (binomial s.e.), Hessian trace (Hutchinson, s.e.), λ_max, PAC-Bayes flatness on the 0-1
    error, basin width of the test error.

    (b) Varied: the regression loss (``reg_losses``) and the outlier fraction
    (``outlier_fractions``). Fixed: the teacher, the student MLP, Adam. Stopping: early
    stopping on the (clean) validation loss. Seeds: ``reg_seeds``. Statistic: mean ± std over
    seeds of the clean test MSE; curvature of the training loss.
    """

    # (a) classification
    dataset: str = "mnist1d"
    num_samples: int = 5000  # MNIST-1D only
    widths: tuple[int, ...] = (128, 128)
    seed: int = 0
    losses: tuple[str, ...] = ("cross_entropy", "label_smoothing", "focal", "multiclass_hinge", "mse")
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 150
    patience: int = 10
    num_probes: int = 50  # Hutchinson probes for the trace
    lanczos_steps: int = 30
    flatness_target: float = 0.1  # PAC-Bayes flatness: allowed rise of the training error
    flatness_samples: int = 16
    flatness_bisections: int = 16
    num_directions: int = 3
    line_points: int = 41
    line_span: float = 1.0
    width_rise: float = 0.1  # basin width: where the test error rises by this much
    # (b) regression under outliers
    reg_losses: tuple[str, ...] = ("mse", "mae", "huber")
    huber_delta: float = 0.5
    outlier_fractions: tuple[float, ...] = (0.0, 0.1, 0.2)
    outlier_scale: float = 10.0
    reg_seeds: tuple[int, ...] = (0, 1, 2)
    reg_num_train: int = 1000
    reg_input_dim: int = 10
    reg_teacher_hidden: tuple[int, ...] = (32,)
    reg_noise_std: float = 0.1
    reg_widths: tuple[int, ...] = (64, 64)
    reg_batch_size: int = 64
    reg_epochs: int = 300
    reg_patience: int = 20


def quick() -> Config:
    """A subset of the losses: every program is compiled once per loss, which dominates a tiny run."""
    return Config(num_samples=1000, widths=(16,), losses=("cross_entropy", "multiclass_hinge"), epochs=3, patience=2,
                  num_probes=4, lanczos_steps=4, flatness_samples=2, flatness_bisections=3, num_directions=2,
                  line_points=5, reg_losses=("mae",), outlier_fractions=(0.0, 0.2), reg_seeds=(0,),
                  reg_num_train=200, reg_widths=(8,), reg_epochs=3, reg_patience=2)


# --------------------------------------------------------------------------
# Helpers


def slice_width(t, values, rise: float) -> float:
    r"""Half-width of the basin of a 1-D slice ``values(t)`` around ``t = 0``.

    On each side of 0, the smallest :math:`|t|` at which ``values`` exceeds
    :math:`v(0) + \text{rise}`, linearly interpolated between grid points; the result is the
    mean of the two sides. A side that never exceeds the level counts as its last :math:`|t|`
    (so the width is then a lower bound); a grid with points on one side only uses that side.

    Raises:
      ValueError: ``t`` does not contain 0, shapes differ, or ``rise`` is not positive.
    """
    t, v = np.asarray(t, np.float64), np.asarray(values, np.float64)
    if t.ndim != 1 or t.shape != v.shape:
        raise ValueError(f"t and values must be 1-D of equal length, got {t.shape} and {v.shape}")
    if not rise > 0:
        raise ValueError(f"rise must be > 0, got {rise}")
    i0 = int(np.argmin(np.abs(t)))
    if not np.isclose(t[i0], 0.0):
        raise ValueError(f"the slice must contain t = 0, closest is {t[i0]}")
    level = v[i0] + rise
    sides = []
    for step in (1, -1):
        idx = range(i0 + step, len(t) if step == 1 else -1, step)
        if not len(idx):
            continue
        width, prev = abs(t[idx[-1]]), i0
        for i in idx:
            if v[i] > level:
                frac = (level - v[prev]) / (v[i] - v[prev])
                width = abs(t[prev] + frac * (t[i] - t[prev]))
                break
            prev = i
        sides.append(width)
    if not sides:
        raise ValueError("the slice has a single point")
    return float(np.mean(sides))


def _loss(name: str, cfg: dict):
    if name == "huber":
        return losses.get("huber", delta=cfg["huber_delta"])
    return losses.get(name)


@functools.partial(jax.jit, static_argnames=("clean_mse",))
def _scores_kernel(obj: Objective, params, *, clean_mse: bool) -> dict:
    out = {"train_loss": obj.loss(params)}
    if clean_mse:
        # Validation and test targets are clean (regression_outliers corrupts training targets only).
        mse = obj.replace(loss_fn="mse")
        out.update(clean_test_mse=mse.evaluate(params, "test")["loss"], clean_val_mse=mse.evaluate(params, "val")["loss"])
    else:
        test = obj.evaluate(params, "test")
        out.update(train_accuracy=obj.accuracy(params), test_loss=test["loss"], test_accuracy=test["accuracy"])
    return out


def _scores(obj: Objective, params, *, clean_mse: bool = False) -> dict:
    """End-of-training scores in one compiled program (one compile per loss, not one per metric)."""
    return {k: float(v) for k, v in _scores_kernel(obj, params, clean_mse=clean_mse).items()}


def accuracy_std_error(accuracy: float, num_examples: int) -> float:
    """Binomial standard error sqrt(p(1 − p) / n) of an accuracy measured on n examples."""
    return float(np.sqrt(accuracy * (1.0 - accuracy) / num_examples))


def _curvature(obj: Objective, params, key, cfg: dict, *, smallest: bool = False, ggn: bool = False) -> dict:
    """Hessian trace (± standard error) and extreme eigenvalues of the mean training loss."""
    k_tr, k_eig = jax.random.split(key)
    tr = curvature.hessian_trace(obj, params, k_tr, method="hutchinson", num_matvecs=cfg["num_probes"])
    top = curvature.hessian_eigenvalues(obj, params, k_eig, k=1, num_steps=cfg["lanczos_steps"])
    out = {"hessian_trace": tr.value, "hessian_trace_se": tr.std_error,
           "lambda_max": float(top.eigenvalues[0]), "lambda_max_residual": float(top.residuals[0])}
    if smallest:
        low = curvature.hessian_eigenvalues(obj, params, k_eig, k=1, num_steps=cfg["lanczos_steps"], which="smallest")
        out["lambda_min"] = float(low.eigenvalues[0])
    if ggn:
        g = curvature.hessian_trace(obj, params, k_tr, method="hutchinson", num_matvecs=cfg["num_probes"],
                                    operator="ggn")
        out["ggn_trace"], out["ggn_trace_se"] = g.value, g.std_error
    return out


# --------------------------------------------------------------------------
# Runs


def classify(cfg: dict) -> dict:
    """(a) Trains the MLP under one classification loss and measures the minimum it finds."""
    options = {"num_samples": cfg["num_samples"]} if cfg["dataset"] == "mnist1d" else {}
    ds = data.load(cfg["dataset"], seed=0, **options)
    obj = common.mlp_objective(ds, _loss(cfg["loss"], cfg), cfg["widths"], cfg["seed"])
    res = common.train_run(obj, cfg, patience=cfg["patience"])
    params = res.params
    k_curv, k_flat, k_dir = jax.random.split(jax.random.key(cfg["seed"]), 3)
    out = {**_scores(obj, params), "num_test": obj.num_examples("test"), "epochs": res.history.stopped_epoch,
           "best_epoch": res.history.best_epoch}
    out.update(_curvature(obj, params, k_curv, cfg))
    out["lambda_max_over_loss"] = out["lambda_max"] / out["train_loss"] if out["train_loss"] > 0 else float("inf")
    flat = sharpness.compute("pacbayes_flatness_mag", obj, params, k_flat, metric="error",
                             target=cfg["flatness_target"], num_samples=cfg["flatness_samples"],
                             num_bisections=cfg["flatness_bisections"])
    out.update(pacbayes_flatness=flat.value, pacbayes_sigma=flat.info["sigma"], pacbayes_hit_bound=flat.info["hit_bound"])
    t = np.linspace(-cfg["line_span"], cfg["line_span"], cfg["line_points"])
    test_err, train_err = [], []
    for k in jax.random.split(k_dir, cfg["num_directions"]):
        sl = S.line(obj, params, D.random_direction(params, k), t=t, metrics=("train_accuracy", "test_accuracy"))
        test_err.append(1.0 - sl.values["test_accuracy"])
        train_err.append(1.0 - sl.values["train_accuracy"])
    widths = [slice_width(t, e, cfg["width_rise"]) for e in test_err]
    out.update(slice_width=float(np.mean(widths)), slice_widths=widths)
    out["_arrays"] = {"t": t, "test_error": np.stack(test_err), "train_error": np.stack(train_err)}
    return out


def regress(cfg: dict) -> dict:
    """(b) Trains the student under one regression loss on targets with outliers; clean-test fit and curvature."""
    ds = data.load("teacher", seed=0, num_train=cfg["num_train"], input_dim=cfg["input_dim"],
                   hidden=tuple(cfg["teacher_hidden"]), noise_std=cfg["noise_std"])
    if cfg["fraction"] > 0:
        ds = data.regression_outliers(ds, cfg["fraction"], scale=cfg["outlier_scale"], seed=cfg["seed"])
    obj = common.mlp_objective(ds, _loss(cfg["loss"], cfg), cfg["widths"], cfg["seed"])
    res = common.train_run(obj, cfg, patience=cfg["patience"])
    params = res.params
    out = {**_scores(obj, params, clean_mse=True), "epochs": res.history.stopped_epoch,
           "best_epoch": res.history.best_epoch}
    out.update(_curvature(obj, params, jax.random.key(cfg["seed"]), cfg, smallest=True, ggn=True))
    return out


def _configs(config: Config) -> tuple[list[dict], list[dict]]:
    for name in (*config.losses, *config.reg_losses):
        losses.get(name)  # unknown names fail here, listing the valid ones
    shared = {"experiment": EXPERIMENT, "learning_rate": config.learning_rate, "num_probes": config.num_probes,
              "lanczos_steps": config.lanczos_steps}
    cls = [{**shared, "name": f"zoo-{loss}", "part": "classification", "loss": loss, "dataset": config.dataset,
            "num_samples": config.num_samples, "widths": list(config.widths), "seed": config.seed,
            "batch_size": config.batch_size, "epochs": config.epochs, "patience": config.patience,
            "flatness_target": config.flatness_target, "flatness_samples": config.flatness_samples,
            "flatness_bisections": config.flatness_bisections, "num_directions": config.num_directions,
            "line_points": config.line_points, "line_span": config.line_span, "width_rise": config.width_rise}
           for loss in config.losses]
    reg = [{**shared, "name": f"reg-{loss}-out{round(100 * f)}-s{s}", "part": "regression", "loss": loss,
            "huber_delta": config.huber_delta if loss == "huber" else None, "fraction": f,
            "outlier_scale": config.outlier_scale, "seed": s, "num_train": config.reg_num_train,
            "input_dim": config.reg_input_dim, "teacher_hidden": list(config.reg_teacher_hidden),
            "noise_std": config.reg_noise_std, "widths": list(config.reg_widths), "batch_size": config.reg_batch_size,
            "epochs": config.reg_epochs, "patience": config.reg_patience}
           for f in config.outlier_fractions for loss in config.reg_losses for s in config.reg_seeds]
    return cls, reg


def run(config: Config, out_dir: str) -> list[Row]:
    """Runs (or resumes) both parts into ``<out_dir>/loss_zoo/``.

    Returns the rows: one :class:`common.Row` per run, classification first; ``config["part"]``
    is ``"classification"`` (metrics of :func:`classify`, arrays ``t``, ``test_error`` and
    ``train_error`` of the slices, one row per direction) or ``"regression"`` (metrics of
    :func:`regress`).
    """
    store = RunStore(out_dir, EXPERIMENT)
    cls, reg = _configs(config)
    run_sweep(store, [(c, classify) for c in cls], desc="loss zoo (a): classification")
    run_sweep(store, [(c, regress) for c in reg], desc="loss zoo (b): regression")
    return [load_row(store, c) for c in cls] + [load_row(store, c, arrays=False) for c in reg]


# --------------------------------------------------------------------------
# Tables, verdict and figure, from stored rows only


def classification_table(runs) -> list[dict]:
    keys = ("test_accuracy", "num_test", "train_loss", "hessian_trace", "hessian_trace_se", "lambda_max", "lambda_max_over_loss",
            "pacbayes_flatness", "pacbayes_sigma", "slice_width", "epochs")
    return [{"loss": r.config["loss"], **{k: r.metrics[k] for k in keys}}
            for r in runs if r.config["part"] == "classification"]


def regression_table(runs) -> list[dict]:
    """Per (loss, outlier fraction): mean and standard deviation over seeds."""
    keys = ("clean_test_mse", "hessian_trace", "hessian_trace_se", "ggn_trace", "lambda_max", "lambda_min")
    reg = [r for r in runs if r.config["part"] == "regression"]
    rows = []
    for loss, frac in dict.fromkeys((r.config["loss"], r.config["fraction"]) for r in reg):
        ms = [r.metrics for r in reg if r.config["loss"] == loss and r.config["fraction"] == frac]
        row = {"loss": loss, "fraction": frac, "num_seeds": len(ms)}
        for k in keys:
            vals = np.array([m[k] for m in ms], np.float64)
            row[k] = float(vals.mean())
            row[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def classification_reading(rows: list[dict]) -> str:
    """What (a) shows, in one sentence, whichever way the numbers go."""
    if not rows:
        return "(a) no classification runs"
    name = {r["loss"]: LOSS_LABELS.get(r["loss"], r["loss"]) for r in rows}
    acc = {r["loss"]: r["test_accuracy"] for r in rows}
    best, worst = max(acc, key=acc.get), min(acc, key=acc.get)
    se = max(accuracy_std_error(r["test_accuracy"], r["num_test"]) for r in rows)
    if acc[best] - acc[worst] < 2 * se:
        text = (f"(a) all losses reach similar test accuracy ({100 * acc[worst]:.1f}–{100 * acc[best]:.1f} %, "
                f"within 2 binomial s.e. of {100 * se:.1f} pp)")
    else:
        text = (f"(a) test accuracy ranges from {100 * acc[worst]:.1f} % ({name[worst]}) to "
                f"{100 * acc[best]:.1f} % ({name[best]}) (binomial s.e. {100 * se:.1f} pp)")
    lam = {r["loss"]: r["lambda_max"] for r in rows}
    sharp_raw, flat_raw = max(lam, key=lam.get), min(lam, key=lam.get)
    ratio = lam[sharp_raw] / lam[flat_raw] if lam[flat_raw] > 0 else float("inf")
    text += (f"; raw λ_max spans a factor {ratio:.3g} ({name[flat_raw]} lowest, {name[sharp_raw]} highest), "
             "mostly the losses' own scales")
    pb = {r["loss"]: r["pacbayes_flatness"] for r in rows}
    sharp, flat = max(pb, key=pb.get), min(pb, key=pb.get)
    if np.isclose(pb[sharp], pb[flat]):
        text += f"; on the 0-1 error (scale-free) all losses are equally sharp (1/σ*² = {pb[flat]:.3g})"
        return text
    text += f"; on the 0-1 error (scale-free) {name[flat]} is flattest and {name[sharp]} sharpest"
    if len(rows) >= 3:
        tau = kendall_tau([pb[k] for k in acc], [acc[k] for k in acc])
        if not np.isfinite(tau):
            text += "; no ranking (ties)"
        else:
            if tau <= -0.6:
                text += ", and flatter minima test better"
            elif tau >= 0.6:
                text += ", yet sharper minima test better"
            else:
                text += ", with no consistent link to test accuracy"
            text += f" (Kendall τ(sharpness, accuracy) = {tau:+.2f} over only {len(rows)} losses, one seed)"
    return text


def regression_reading(rows: list[dict]) -> str:
    """What (b) shows, in one sentence, whichever way the numbers go."""
    if not rows:
        return "(b) no regression runs"
    fracs = sorted({r["fraction"] for r in rows})
    lo, hi = fracs[0], fracs[-1]
    cell = {(r["loss"], r["fraction"]): r for r in rows}
    names = list(dict.fromkeys(r["loss"] for r in rows))
    label = {n: LOSS_LABELS.get(n, n) for n in names}
    at_hi = {n: cell[n, hi]["clean_test_mse"] for n in names if (n, hi) in cell}
    best = min(at_hi, key=at_hi.get)
    parts = []
    for n in names:
        if (n, lo) in cell and (n, hi) in cell and hi > lo:
            a, b = cell[n, lo]["clean_test_mse"], cell[n, hi]["clean_test_mse"]
            parts.append(f"{label[n]} {a:.3g}→{b:.3g} (×{b / a:.2f})")
    text = f"(b) with {100 * hi:.0f} % outliers {label[best]} keeps the clean fit best"
    if parts:
        text += f" (clean-test MSE from {100 * lo:.0f} % to {100 * hi:.0f} % outliers: " + ", ".join(parts) + ")"
    curv = []
    for n in names:
        if (n, lo) in cell and (n, hi) in cell and hi > lo:
            a, b = cell[n, lo]["lambda_max"], cell[n, hi]["lambda_max"]
            curv.append(f"{label[n]} ×{b / a:.2f}" if a > 0 else f"{label[n]} {a:.3g}→{b:.3g}")
    if curv:
        text += "; λ_max changes " + ", ".join(curv)
    low = [f"{label[n]} {cell[n, lo]['lambda_min']:.2g}→{cell[n, hi]['lambda_min']:.2g}" for n in names
           if (n, lo) in cell and (n, hi) in cell and hi > lo]
    if low:
        text += "; λ_min goes " + ", ".join(low)
    for n in names:
        rs = [r for r in rows if r["loss"] == n]
        zero_ggn = all(abs(r["ggn_trace"]) <= 1e-6 * max(1.0, abs(r["lambda_max"])) for r in rs)
        zero_trace = all(abs(r["hessian_trace"]) <= 3 * r["hessian_trace_se"] + 1e-6 for r in rs)
        symmetric = all(r["lambda_min"] < 0 and abs(r["lambda_max"] + r["lambda_min"]) <= 0.2 * r["lambda_max"]
                        for r in rs)
        if zero_ggn or zero_trace:
            facts = (["Gauss–Newton trace exactly 0"] if zero_ggn else []) + (
                ["Hessian trace ≈ 0 (within 3 s.e.)"] if zero_trace else [])
            if symmetric:
                facts.append("λ_min ≈ −λ_max (an indefinite, network-only Hessian)")
            text += f"; {label[n]}: " + ", ".join(facts)
    return text


def verdict(rows) -> Verdict:
    """(a) accuracy and curvature change with the loss; (b) a robust loss keeps the fit under outliers.

    (a) True when the best and worst test accuracy differ by at least two binomial standard
    errors and the PAC-Bayes 0-1-error sharpness is not the same for every loss; False when
    neither; None when only one (or fewer than two losses). (b) At the largest outlier
    fraction, True when the lowest mean clean test MSE is a robust loss's (MAE, Huber,
    log-cosh), False when it is MSE's, None when MSE or every robust loss is missing.
    Combined by :func:`common.combine`.
    """
    cls, reg = classification_table(rows), regression_table(rows)
    evidence: dict = {}
    part_a = None
    if len(cls) >= 2:
        acc = {r["loss"]: r["test_accuracy"] for r in cls}
        se = max(accuracy_std_error(r["test_accuracy"], r["num_test"]) for r in cls)
        spread = max(acc.values()) - min(acc.values())
        pb = {r["loss"]: r["pacbayes_flatness"] for r in cls}
        differs = bool(not np.isclose(max(pb.values()), min(pb.values())))
        changes = bool(spread >= 2 * se)
        part_a = True if changes and differs else False if not changes and not differs else None
        evidence.update(test_accuracy=acc, accuracy_std_error=se, accuracy_spread=spread, pacbayes_flatness=pb,
                        lambda_max={r["loss"]: r["lambda_max"] for r in cls})
    part_b = None
    if reg:
        hi = max(r["fraction"] for r in reg)
        at_hi = {r["loss"]: r["clean_test_mse"] for r in reg if r["fraction"] == hi}
        if "mse" in at_hi and any(n in at_hi for n in ROBUST):
            part_b = min(at_hi, key=at_hi.get) != "mse"
        evidence.update(outlier_fraction=hi, clean_test_mse=at_hi)
    parts = {"loss_changes_accuracy_and_curvature": part_a, "robust_loss_keeps_the_fit": part_b}
    va, vb = classification_reading(cls), regression_reading(reg)
    return Verdict(CLAIM, combine(parts), {
        "rule": ("(a) the test accuracies of the losses span at least two binomial standard errors and the "
                 "0-1-error PAC-Bayes sharpness is not equal for all losses (both false: contradicted; one: "
                 "undecided); (b) at the largest outlier fraction the lowest mean clean test MSE belongs to a "
                 f"robust loss, not to MSE; {COMBINE_RULE}"),
        "summary": f"{va}. {vb}.", "parts": parts, **evidence,
    })


def figure(rows, ax=None):
    """(a) test-error slices per loss and the curvature measures; (b) clean fit and curvature vs outliers.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the three rows of panels into (as
    sub-figures; None: a new figure). Returns the figure.
    """
    cls = [r for r in rows if r.config["part"] == "classification"]
    fig, host = common.panels(ax, (3.3 * max(len(cls), 4), 13))
    top, mid, bottom = host.subfigures(3, 1, height_ratios=[1.0, 1.0, 1.05])
    _slice_panels(cls, top)
    _measure_panels(cls, mid)
    _regression_panels(rows, bottom)
    return fig


def _slice_panels(cls, top) -> None:
    """(a) slices of the test error, one panel per loss, shared y axis."""
    axes = np.atleast_1d(top.subplots(1, len(cls), sharey=True))
    for ax, r in zip(axes, cls):
        a, m = r.arrays, r.metrics
        t = a["t"]
        for i, (te, tr) in enumerate(zip(a["test_error"], a["train_error"])):
            ax.plot(t, 100 * te, color="C0", lw=1.6, alpha=1.0 if i == 0 else 0.45,
                    label="test error" if i == 0 else None)
            ax.plot(t, 100 * tr, color="0.45", lw=1.0, ls="--", alpha=1.0 if i == 0 else 0.45,
                    label="train error" if i == 0 else None)
        w = m["slice_width"]
        ax.axvspan(-w, w, color="C2", alpha=0.12, label=f"width (test err +{100 * r.config['width_rise']:.0f} pp)")
        ax.set_title(f"{LOSS_LABELS.get(r.config['loss'], r.config['loss'])}\n"
                     f"test acc {100 * m['test_accuracy']:.1f} %, width {w:.2f}", fontsize=10)
        ax.set_xlabel("α (filter-normalised direction)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[0].legend(fontsize=8, loc="upper center")
    top.suptitle(f"(a) 1-D slices of the test error around each minimum ({cls[0].config['num_directions']} random "
                 "filter-normalised directions; first bold)", fontsize=11)


def _measure_panels(cls, mid) -> None:
    """(a) the measures of each minimum, one panel each."""
    names = [LOSS_LABELS.get(r.config["loss"], r.config["loss"]) for r in cls]
    x = np.arange(len(cls))
    panels = [  # (title, y label, values, error bars, scale)
        ("test accuracy (± binomial s.e.)", "accuracy (%)", [100 * r.metrics["test_accuracy"] for r in cls],
         [100 * accuracy_std_error(r.metrics["test_accuracy"], r.metrics["num_test"]) for r in cls], "linear"),
        ("Hessian λ_max", "λ_max (loss units, log)", [r.metrics["lambda_max"] for r in cls], None, "log"),
        ("Hessian trace (± s.e.)", "trace (loss units, symlog)", [r.metrics["hessian_trace"] for r in cls],
         [r.metrics["hessian_trace_se"] for r in cls], "symlog"),
        ("λ_max per unit of loss", "λ_max / training loss (log)", [r.metrics["lambda_max_over_loss"] for r in cls],
         None, "log"),
        ("sharpness on the 0-1 error\n(scale-free)", "PAC-Bayes 1/σ*², magnitude-aware",
         [r.metrics["pacbayes_flatness"] for r in cls], None, "linear"),
    ]
    axes = np.atleast_1d(mid.subplots(1, len(panels)))
    for ax, (label, ylabel, vals, err, scale) in zip(axes, panels):
        vals = np.asarray(vals, float)
        for i, v in enumerate(vals):
            ax.errorbar([i], [v], yerr=None if err is None else [err[i]], fmt="o", ms=9, capsize=4, color=f"C{i}")
            ax.annotate(f"{v:.3g}", (i, v), ha="left", va="center", fontsize=8, xytext=(7, 0),
                        textcoords="offset points")
        finite = vals[np.isfinite(vals)]
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_ylim(min(finite.min() * 3, -3), max(finite.max() * 3, 3))
        elif scale == "log" and finite.size and finite.min() > 0:
            ax.set_yscale("log")
            ax.set_ylim(finite.min() / 2, finite.max() * 3)
        else:
            pad = 0.15 * (finite.max() - finite.min()) + 0.05 * abs(finite.max()) + 1e-12
            ax.set_ylim(finite.min() - pad, finite.max() + 2 * pad)
        ax.set_xlim(-0.6, len(cls) - 0.2)  # room for the value labels right of the points
        ax.set_xticks(x, names, fontsize=8, rotation=25, ha="right")
        ax.set_title(label, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3, axis="y", which="both")
    mid.suptitle("(a) the minimum each loss finds: raw curvature is in each loss's own units; "
                 "the 0-1-error sharpness (right) is comparable", fontsize=11)


def _regression_panels(rows, bottom) -> None:
    """(b) regression under outliers: clean fit, traces and extreme eigenvalues vs the outlier fraction."""
    reg = regression_table(rows)
    axes = np.atleast_1d(bottom.subplots(1, 3))
    reg_losses = list(dict.fromkeys(r["loss"] for r in reg))
    styles = {n: f"C{i}" for i, n in enumerate(reg_losses)}
    for n in reg_losses:
        rs = sorted((r for r in reg if r["loss"] == n), key=lambda r: r["fraction"])
        f = [100 * r["fraction"] for r in rs]
        lab = LOSS_LABELS.get(n, n)
        axes[0].errorbar(f, [r["clean_test_mse"] for r in rs], yerr=[r["clean_test_mse_std"] for r in rs],
                         marker="o", capsize=3, color=styles[n], label=lab)
        axes[1].errorbar(f, [r["hessian_trace"] for r in rs], yerr=[r["hessian_trace_se"] for r in rs], marker="o",
                         capsize=3, color=styles[n], label=f"{lab}: Hessian")
        axes[1].plot(f, [r["ggn_trace"] for r in rs], ls=":", marker="s", mfc="none", color=styles[n],
                     label=f"{lab}: Gauss–Newton")
        axes[2].plot(f, [r["lambda_max"] for r in rs], marker="o", color=styles[n], label=f"{lab}: λ_max")
        axes[2].plot(f, [r["lambda_min"] for r in rs], marker="v", ls="--", color=styles[n], label=f"{lab}: λ_min")
    if reg:
        noise = next(r for r in rows if r.config["part"] == "regression").config["noise_std"]
        axes[0].axhline(noise**2, color="k", lw=0.8, ls=":", label=f"noise floor σ² = {noise**2:.3g}")
        seeds = max(r["num_seeds"] for r in reg)
        axes[0].set_yscale("log")
        axes[0].set_title(f"clean test MSE (mean ± sd over {seeds} seed{'s' if seeds > 1 else ''})", fontsize=10)
        axes[0].set_ylabel("MSE on clean test targets")
        axes[1].set_yscale("symlog", linthresh=1.0)
        axes[1].axhline(0, color="k", lw=0.8)
        axes[1].set_title("trace of the training-loss Hessian (solid, ± s.e.)\nand Gauss–Newton (dotted)", fontsize=10)
        axes[1].set_ylabel("trace (loss units, symlog)")
        axes[2].set_yscale("symlog", linthresh=0.1)
        axes[2].axhline(0, color="k", lw=0.8)
        axes[2].set_title("extreme Hessian eigenvalues of the training loss", fontsize=10)
        axes[2].set_ylabel("eigenvalue (loss units, symlog)")
        for ax in axes:
            ax.set_xlabel("outliers in the training targets (%)")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    bottom.suptitle("(b) teacher–student regression with gross outliers in the training targets: "
                    "which loss keeps the fit, and what happens to curvature", fontsize=11)


def main(argv=None) -> list[str]:
    """``python -m experiments.loss_zoo [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
