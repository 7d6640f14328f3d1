"""Every study's verdict, fed synthetic rows in the shape its ``run`` returns: holds, does not hold, inconclusive."""

import importlib
import json

import numpy as np
import pytest

from experiments.common import STATUSES, Row

# --------------------------------------------------------------------------
# Synthetic rows, one builder per study: ``rows(case)`` for case in STATUSES.


def depth_rows(case):
    # Median Jacobian singular value at depth 2 and at depth 16, plain and residual.
    sv = {"holds": {False: (0.5, 1e-3), True: (0.7, 1.0)},
          "does not hold": {False: (0.5, 0.6), True: (0.7, 100.0)},
          "inconclusive": {False: (0.5, 1e-3), True: (0.7, 100.0)}}[case]
    rows = []
    for residual, (shallow, deep) in sv.items():
        for depth, v in ((2, shallow), (16, deep)):
            rows.append(({"depth": depth, "residual": residual, "seed": 0},
                         {"jacobian_singular_values": [v / 2, v, 2 * v], "layer_grad_norms": [1.0] * depth}))
    return rows


def noise_rows(case):
    floor = {0.0: 0.0, 0.2: 0.8}
    val = {"holds": {0.0: 0.1, 0.2: 1.0}, "does not hold": {0.0: 0.3, 0.2: 0.5},
           "inconclusive": {0.0: 0.1, 0.2: 1.0}}[case]
    bal = {"holds": (0.80, 0.85), "does not hold": (0.85, 0.80), "inconclusive": (0.85, 0.80)}[case]
    rows = [({"part": "noise", "noise": p, "seed": 0},
             {"best_val_loss": val[p], "floor": floor[p], "test_accuracy": 0.9, "num_classes": 10, "history": {}})
            for p in (0.0, 0.2)]
    for ratio in (1.0, 0.05):
        for loss, b in zip(("cross_entropy", "focal"), bal):
            rows.append(({"part": "imbalance", "ratio": ratio, "loss": loss, "seed": 0},
                         {"balanced_accuracy": b if ratio < 1 else 0.95, "rare_recall": b - 0.3}))
    return rows


def train_rows(case):
    ett = {"holds": (10, 20), "does not hold": (30, 20), "inconclusive": (10, 20)}[case]
    # Best validation loss per variant over two seeds: resolved (spread 0.1 ≫ std) or not (spread 0.001).
    spread = 0.1 if case == "holds" else 0.001
    rows = []
    for seed in (0, 1):
        noise = 0.002 * seed
        variants = {"adam": (0.2, ett[0]), "sgd": (0.3, ett[1])}
        variants.update({f"l2={v:g}": (0.2 + i * spread + noise, 10) for i, v in enumerate((0.001, 0.01, 0.1))})
        variants.update({f"dropout={v:g}": (0.2 + (2 - i) * spread + noise, 10) for i, v in enumerate((0.1, 0.2))})
        for name, (loss, epochs) in variants.items():
            rows.append(({"name": name, "seed": seed, "target_val_loss": 0.15},
                         {"best_val_loss": loss, "best_epoch": 5, "val_accuracy": 0.9, "test_accuracy": 0.9,
                          "epochs_to_target": epochs, "history": {}}))
    return rows


def spectrum_rows(case):
    bulk = case in ("holds", "inconclusive")
    nodes = [[-0.01, 0.0, 0.01, 10.0]] if bulk else [[5.0, 8.0, 10.0, 10.0]]
    weights = [[0.3, 0.4, 0.25, 0.05]]
    exact = 4.0 if case == "holds" else 4.4  # the small model's eigh λ_max vs Lanczos' 4.0
    big = Row({"name": "mlp"}, {"num_params": 1000, "init": {"lambda_max": 1.0, "negative_fraction": 0.4},
                                "end": {"lambda_max": 10.0, "negative_fraction": 0.3}},
              {"end_nodes": np.array(nodes), "end_weights": np.array(weights)})
    small = Row({"name": "small"}, {"num_params": 100, "end": {
        "lambda_max": 4.0, "exact_lambda_max": exact, "trace": 10.1, "exact_trace": 10.0, "trace_std_error": 0.2}})
    return [big, small]


def stability_rows(case):
    levels = {"holds": (1.0, 1.05), "does not hold": (0.5, 0.6), "inconclusive": (0.5, 1.0)}[case]
    rows = []
    steps = np.arange(10, 101, 10)
    for lr, level in zip((0.5, 1.0), levels):
        lam = np.minimum(np.linspace(0.2, 2.0, steps.size), 1.0) * level * 2.0 / lr
        cfg = {"learning_rate": lr, "widths": [8], "activation": "relu", "loss": "mse", "num_train": 64}
        rows.append(Row(cfg, {"diverged": None, "final_train_loss": 0.01, "max_lambda_max": float(lam.max())},
                        {"lambda_step": steps, "lambda_max": lam, "residual": 1e-6 * lam,
                         "loss_step": np.arange(100), "loss": np.geomspace(0.5, 0.01, 100)}))
    return rows


def connectivity_rows(case):
    lin, bez = {"holds": (4.4, 0.03), "does not hold": (0.01, 0.02), "inconclusive": (4.4, 1.0)}[case]

    def heights(train_loss):
        h = {q: {"height": 0.1, "endpoints": [0.5, 0.5]} for q in ("train_loss", "test_loss", "train_error",
                                                                   "test_error")}
        h["train_loss"] = {"height": train_loss, "endpoints": [0.02, 0.02] if case != "does not hold" else [0.5, 0.5]}
        return h

    paths = Row({"name": "paths"}, {"linear": heights(lin), "bezier": heights(bez), "distance": 3.0})
    return {"endpoints": [Row({"seed": 0}, {}), Row({"seed": 1}, {})], "paths": paths, "plane": None}


def reparam_rows(case):
    def rescaling(kind, x, ratios, diff=1e-6):
        invariant = {"data_hessian_trace": False, "data_hessian_lambda_max": False, "path_norm": True}
        cfg = {"kind": kind, **({"alpha": x, "layer": 0} if kind == "layer" else {"log_std": x})}
        measures = {n: {"before": 1.0, "after": r, "ratio": r, "relative_change": abs(r - 1),
                        "declared_invariant": invariant[n], "consistent": not (invariant[n] and abs(r - 1) > 1e-2)}
                    for n, r in ratios.items()}
        return cfg, {"output_max_abs_diff": diff, "output_max_abs": 10.0, "measures": measures}

    if case == "holds":
        rescalings = [rescaling("layer", 10.0, {"data_hessian_trace": 100.0, "data_hessian_lambda_max": 50.0, "path_norm": 1.0}),
                      rescaling("node", 1.0, {"data_hessian_trace": 0.1, "data_hessian_lambda_max": 3.0, "path_norm": 1.0})]
    elif case == "does not hold":
        rescalings = [rescaling("layer", 10.0, {"data_hessian_trace": 1.0, "data_hessian_lambda_max": 1.0, "path_norm": 5.0})]
    else:  # the outputs moved: the rescaling was wrong, nothing can be read off
        rescalings = [rescaling("layer", 10.0, {"data_hessian_trace": 100.0, "data_hessian_lambda_max": 50.0, "path_norm": 1.0},
                                diff=1.0)]
    return {"model": {"test_accuracy": 0.97}, "rescalings": rescalings}


def loss_zoo_rows(case):
    accs = {"holds": (0.60, 0.50), "does not hold": (0.50, 0.505), "inconclusive": (0.60, 0.50)}[case]
    flats = (20.0, 30.0) if case != "does not hold" else (20.0, 20.0)
    rows = []
    for loss, acc, flat in zip(("cross_entropy", "mse"), accs, flats):
        rows.append(Row({"part": "classification", "loss": loss}, {
            "test_accuracy": acc, "num_test": 1000, "train_loss": 0.5, "hessian_trace": 10.0, "hessian_trace_se": 0.5,
            "lambda_max": 5.0, "lambda_max_over_loss": 10.0, "pacbayes_flatness": flat, "pacbayes_sigma": 0.2,
            "slice_width": 0.4, "epochs": 10}))
    mse_at_20 = 0.16 if case == "holds" else 0.02
    for loss, mses in (("mse", (0.03, mse_at_20)), ("mae", (0.03, 0.04))):
        for frac, mse in zip((0.0, 0.2), mses):
            rows.append(Row({"part": "regression", "loss": loss, "fraction": frac, "seed": 0}, {
                "clean_test_mse": mse, "hessian_trace": 5.0, "hessian_trace_se": 1.0, "ggn_trace": 5.0,
                "lambda_max": 2.0, "lambda_min": -0.1}))
    return rows


def natural_gradient_rows(case):
    from experiments.natural_gradient import OPERATORS

    steps = {"holds": {"kfac": 100, "ngd": 140, "adam": 160, "sgd": None},
             "does not hold": {"kfac": 300, "ngd": None, "adam": 100, "sgd": 200},
             "inconclusive": {"kfac": 100, "ngd": 140, "adam": 160, "sgd": None}}[case]
    table = [{"dataset": "mnist1d", "optimizer": o, "learning_rate": 0.1, "steps_to_target": s,
              "wall_to_target": None if s is None else s / 100, "curves": {}} for o, s in steps.items()]

    def overlaps(fisher_hessian):
        m = np.eye(len(OPERATORS))
        i, j = OPERATORS.index("fisher"), OPERATORS.index("hessian")
        m[i, j] = m[j, i] = fisher_hessian
        return m.tolist()

    last = {"holds": 0.95, "does not hold": 0.2, "inconclusive": 0.7}[case]
    geometry = {"checkpoints": {"0": {"overlaps": overlaps(0.5)}, "12": {"overlaps": overlaps(last)}}}
    return {"config": {"datasets": ["mnist1d"], "target_loss": 0.5, "top_k": 10}, "rows": table,
            "geometry": geometry, "all_rates_diverged": []}


def sharpness_rows(case):
    lows = {"holds": (0.1, 0.2, 0.05, -0.3), "does not hold": (-0.1, -0.2, -0.05, -0.3),
            "inconclusive": (0.1, -0.2, -0.05, -0.3)}[case]
    tau = [{"measure": m, "tau": low + 0.2, "tau_low": low, "tau_high": low + 0.4}
           for m, low in zip(("epsilon_sharpness", "data_hessian_trace", "l2_norm", "path_norm"), lows)]
    return {"num_runs": 24, "tau": tau, "rows": [], "measures": [r["measure"] for r in tau], "keskar": [],
            "base": {}, "folder": "/nonexistent"}


def surfaces_rows(case):
    lb_rise, lb_acc = {"holds": (2.0, 0.55), "does not hold": (0.5, 0.65), "inconclusive": (2.0, 0.65)}[case]
    t = np.linspace(-1, 1, 5)
    lines = {"t": t, "sb_train_loss": 0.1 + t**2, "lb_train_loss": 0.1 + lb_rise * t**2}
    return {"lines": Row({"name": "lines"}, {}, lines),
            "train-sb": Row({"batch_size": 32}, {"test_accuracy": 0.6}),
            "train-lb": Row({"batch_size": 1000}, {"test_accuracy": lb_acc})}


BUILDERS = {"connectivity": connectivity_rows, "depth": depth_rows, "loss_zoo": loss_zoo_rows,
            "natural_gradient": natural_gradient_rows, "noise": noise_rows, "reparam": reparam_rows,
            "sharpness": sharpness_rows, "spectrum": spectrum_rows, "stability": stability_rows,
            "surfaces": surfaces_rows, "train": train_rows}


def test_every_study_has_a_builder():
    from experiments import paper

    assert sorted(BUILDERS) == sorted(f.study for f in paper.FIGURES)


@pytest.mark.parametrize("case", STATUSES)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_verdict_on_synthetic_rows(name, case):
    study = importlib.import_module(f"experiments.{name}")
    v = study.verdict(BUILDERS[name](case))
    assert v.status == case, (name, v.evidence)
    assert v.claim == study.CLAIM
    assert v.evidence["rule"] and v.evidence["summary"].endswith(".")
    json.dumps(v.evidence)  # the numbers are plain JSON


def test_the_verdicts_read_their_numbers():
    from experiments import connectivity, depth, reparam, stability, surfaces

    text = connectivity.verdict(connectivity_rows("holds")).evidence["summary"]
    assert text.startswith("the Bezier path lowers the train loss barrier from 4.4 to 0.03")
    assert "connected by a low-loss curve but not by a straight line" in text
    assert "does not lower the train loss barrier (0.01 linear vs 0.02 Bezier)" in \
        connectivity.verdict(connectivity_rows("does not hold")).evidence["summary"]
    ev = depth.verdict(depth_rows("inconclusive")).evidence
    assert ev["parts"] == {"plain_vanish_or_explode": True, "residual_keeps_flowing": False}
    assert "plain nets' signals vanish, residual nets' signals explode" in ev["summary"]
    ev = stability.verdict(stability_rows("inconclusive")).evidence
    assert [e["at_edge"] for e in ev["per_lr"]] == [False, True]
    assert "η ∈ {1}" in ev["summary"] and "η=0.5" in ev["summary"]
    ev = reparam.verdict(reparam_rows("does not hold")).evidence
    assert ev["invariance_violated"] == ["path_norm (layer-wise)"] and "EXCEPT path_norm" in ev["summary"]
    ev = surfaces.verdict(surfaces_rows("holds")).evidence
    assert ev["edge_rise"] == {"sb": pytest.approx(1.0), "lb": pytest.approx(2.0)}
