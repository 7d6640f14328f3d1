"""Sharp minima can generalize: function-preserving rescalings move curvature but not the function.

Claim (Dinh et al. 2017, "Sharp Minima Can Generalize For Deep Nets", ICML): for a
ReLU network, multiplying one layer's weights and bias by α > 0 and dividing the next
layer's incoming weights by α leaves the function — hence every prediction, the
training loss and the generalization gap — unchanged, while the Hessian becomes
:math:`D^{-1} H D^{-1}`: its trace and λ_max, and every sharpness measure that is not
scale-aware, can be made arbitrarily large. A flatness measure can only explain
generalization if it is invariant to these symmetries.

Measured: a ReLU MLP 64-64-64-10 trained with Adam and cross-entropy on scikit-learn digits (to a
training loss of ~0.005 and ~97 % test accuracy: a minimum that generalizes);
then (i) layer-wise rescalings of hidden layer ``layer`` by α over four decades
(:func:`losslab.symmetry.rescale`) and (ii) node-wise random rescalings of every
hidden layer, :math:`\\alpha_i = e^{s z_i}`, :math:`z_i \\sim N(0, 1)`
(:func:`losslab.symmetry.random_rescaling`). For each: the largest output change
:math:`\\max_x |f_\\alpha(x) - f(x)|` over the test set (float32 round-off, ~1e-6)
and, for every measure of :data:`losslab.sharpness.MEASURES` (via
:func:`losslab.symmetry.compare_measures`, same PRNG key before and after), the
ratio measure(rescaled) / measure(original), against the measure's declared
invariances. ``distance_from_init`` is left out (it needs θ₀, it is not a property of
θ); ``spectral_product`` is taken as the product of norms (not its log), so that its
ratio is meaningful.

Verdict: with the function preserved, (a) every measure declared invariant stays within
``INVARIANT_RTOL`` and (b) the Hessian trace and λ_max move by at least a factor
``10 ** MOVE_DECADES`` (see :func:`verdict`).

Feeds: ``figures/reparametrisation`` (paper figure 6; :func:`figure`).

    python -m experiments.reparam            # the default run, ≈ 2.3 min on 2 CPU cores
    python -m experiments.reparam --quick    # seconds, for tests
"""

from __future__ import annotations

import dataclasses
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments import common
from experiments.common import COMBINE_RULE, Verdict, combine, parse_config, run_sweep
from losslab import Objective, data, sharpness, symmetry
from losslab.results import RunStore

EXPERIMENT = "reparam"
FIGURE = "reparametrisation"
CLAIM = ("sharp minima can generalize: function-preserving rescalings change Hessian trace and λ_max "
         "arbitrarily, while rescaling-invariant measures do not move (Dinh et al. 2017).")

# Every measure of the registry that is a property of θ alone.
DEFAULT_MEASURES = tuple(n for n in sharpness.MEASURES if n != "distance_from_init")
# The smoke run: the curvature measures the claim is about, and the invariant ones that catch a wrong rescaling.
QUICK_MEASURES = ("data_hessian_trace", "data_hessian_lambda_max", "sharpness_l2", "l2_norm", "adaptive_sharpness_l2",
                  "average_sharpness_mag", "fisher_rao_norm", "path_norm", "spectral_product", "gap_loss")
# An invariant measure counts as moved beyond this relative change (float32 round-off through a
# rescaled network, and bisection/ascent paths that can flip on round-off, stay far below it).
INVARIANT_RTOL = 1e-2
# The function counts as preserved when max |f_α(x) − f(x)| is at most this fraction of max |f(x)|
# (float32 round-off is ~1e-7 relative).
OUTPUT_RTOL = 1e-4
# "Arbitrarily": the Hessian trace and λ_max move by at least 10**MOVE_DECADES over the rescalings.
MOVE_DECADES = 1.0
CURVATURE = ("data_hessian_trace", "data_hessian_lambda_max")


@dataclasses.dataclass(frozen=True)
class Config:
    """One trained ReLU MLP, rescaled layer-wise and node-wise; defaults are the real run.

    Varied: the rescaling — layer-wise α of hidden layer ``layer`` (``alphas``) and node-wise
    with log-spread s (``node_log_stds``). Fixed: the trained model (one training run of
    ``epochs`` epochs, seed ``seed``), the PRNG key of every measure before and after.
    Statistic: measure(rescaled) / measure(original), and max |f_α(x) − f(x)| over the test set.
    """

    dataset: str = "digits"
    widths: tuple[int, ...] = (64, 64)
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    layer: int = 0
    alphas: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0)
    node_log_stds: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    measures: tuple[str, ...] = DEFAULT_MEASURES
    num_probes: int = 50
    lanczos_steps: int = 20
    pacbayes_bisections: int = 12
    seed: int = 0


def quick() -> Config:
    """A small MLP, two epochs, α ∈ {1, 10}, one node-wise spread and the measures the claim is about."""
    return Config(widths=(16,), epochs=2, alphas=(1.0, 10.0), node_log_stds=(1.0,), measures=QUICK_MEASURES,
                  num_probes=10, lanczos_steps=10)


def measure_options(cfg: dict) -> dict:
    """Per-measure keyword options of :func:`losslab.symmetry.compare_measures` from a run config."""
    opts = {
        "data_hessian_trace": {"num_probes": cfg["num_probes"]},
        "data_hessian_lambda_max": {"num_steps": cfg["lanczos_steps"]},
        "pacbayes_flatness": {"num_bisections": cfg["pacbayes_bisections"]},
        "pacbayes_flatness_mag": {"num_bisections": cfg["pacbayes_bisections"]},
        "spectral_product": {"log": False},
    }
    return {k: v for k, v in opts.items() if k in cfg["measures"]}


def _model_objective(cfg: dict) -> Objective:
    ds = data.load(cfg["dataset"], seed=0)
    return common.mlp_objective(ds, "cross_entropy", cfg["widths"], cfg["seed"], activation="relu")


def train_model(cfg: dict) -> dict:
    """Trains the MLP once; its flat params are stored as ``arrays.npz["params"]``."""
    obj = _model_objective(cfg)
    result = common.train_run(obj, cfg)
    test = obj.evaluate(result.params, "test")
    flat, _ = ravel_pytree(result.params)
    return {"num_params": obj.num_params, "final_train_loss": float(result.history.train_eval_loss[-1]),
            "test_loss": float(test["loss"]), "test_accuracy": float(test["accuracy"]),
            "_arrays": {"params": np.asarray(flat)}}


def trained_params(obj: Objective, flat: np.ndarray):
    """The params pytree of ``obj`` holding the flat vector ``flat``."""
    init, unravel = ravel_pytree(obj.params)
    if flat.shape != init.shape:
        raise ValueError(f"stored params have shape {flat.shape}, the model has {init.shape}")
    return unravel(jnp.asarray(flat, init.dtype))


def transformed(cfg: dict, params):
    """``(new_params, symmetry tag)`` of the rescaling a transformation config describes."""
    if cfg["kind"] == "layer":
        return symmetry.rescale(params, cfg["layer"], cfg["alpha"]), sharpness.LAYER_RESCALING
    if cfg["kind"] == "node":
        key = jax.random.fold_in(jax.random.key(cfg["seed"]), int(round(1000 * cfg["log_std"])))
        new = symmetry.random_rescaling(params, key, log_std=cfg["log_std"], node_wise=True)
        return new, sharpness.NODE_RESCALING
    raise ValueError(f"kind must be 'layer' or 'node', got {cfg['kind']!r}")


def compare(cfg: dict, store: RunStore, train_cfg: dict) -> dict:
    """One rescaling of the trained model: output change and every measure before/after."""
    obj = _model_objective(cfg)
    params = trained_params(obj, store.load(train_cfg).arrays()["params"])
    new, sym = transformed(cfg, params)
    x = obj.batch("test")[0]
    out, new_out = np.asarray(obj.outputs(params, x)), np.asarray(obj.outputs(new, x))
    report = symmetry.compare_measures(obj, params, new, jax.random.key(cfg["seed"]), symmetry=sym,
                                       names=cfg["measures"], options=measure_options(cfg), rtol=INVARIANT_RTOL)
    measures = {}
    for name, r in report.items():
        ratio = r.after / r.before if r.before != 0 else (1.0 if r.after == 0 else math.inf)
        measures[name] = {"before": r.before, "after": r.after, "ratio": ratio, "relative_change": r.relative_change,
                          "declared_invariant": r.declared_invariant, "consistent": r.consistent}
    return {
        "symmetry": sym,
        "output_max_abs_diff": float(np.max(np.abs(new_out - out))),
        "output_max_abs": float(np.max(np.abs(out))),
        "param_max_abs_change": float(max(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                                          for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)))),
        "measures": measures,
    }


def _configs(config: Config) -> tuple[dict, list[dict]]:
    unknown = sorted(set(config.measures) - set(sharpness.MEASURES))
    if unknown:
        raise ValueError(f"unknown measures {unknown}; valid: {sorted(sharpness.MEASURES)}")
    if not config.alphas and not config.node_log_stds:
        raise ValueError("give at least one layer-wise alpha or one node-wise log_std")
    train_cfg = {"name": "train", "dataset": config.dataset, "widths": list(config.widths), "epochs": config.epochs,
                 "batch_size": config.batch_size, "learning_rate": config.learning_rate, "seed": config.seed}
    shared = {**train_cfg, "measures": list(config.measures), "num_probes": config.num_probes,
              "lanczos_steps": config.lanczos_steps, "pacbayes_bisections": config.pacbayes_bisections}
    cfgs = [{**shared, "name": f"layer{config.layer}-alpha{a:g}", "kind": "layer", "layer": config.layer,
             "alpha": float(a)} for a in config.alphas]
    cfgs += [{**shared, "name": f"node-s{s:g}", "kind": "node", "log_std": float(s)} for s in config.node_log_stds]
    return train_cfg, cfgs


def run(config: Config, out_dir: str) -> dict:
    """Runs (or resumes) the training and every rescaling into ``<out_dir>/reparam/``.

    Returns the rows: ``{"model": metrics of the trained model, "rescalings": [(run config,
    metrics), ...]}``; a rescaling's config has ``kind`` (``"layer"`` with ``alpha``, or
    ``"node"`` with ``log_std``), its metrics ``output_max_abs_diff``, ``output_max_abs`` and
    ``measures`` (per measure: ``before``, ``after``, ``ratio``, ``declared_invariant``,
    ``consistent``).
    """
    store = RunStore(out_dir, EXPERIMENT)
    train_cfg, cfgs = _configs(config)
    runs = [(train_cfg, train_model)] + [(c, lambda c: compare(c, store, train_cfg)) for c in cfgs]
    metrics = run_sweep(store, runs, desc="reparametrization study")
    return {"model": metrics[0], "rescalings": list(zip(cfgs, metrics[1:]))}


def describe(name: str) -> str:
    """The registry's one-line description (the spectral product is taken without its log here)."""
    text = sharpness.MEASURES[name].description
    return "Π spectral norms" if name == "spectral_product" else text


def _log_ratio(m: dict) -> float:
    r = abs(m["ratio"])
    return abs(math.log10(r)) if 0 < r < math.inf else math.inf


def summarize(rescalings) -> dict:
    """Per measure and symmetry: max |log10 ratio|, the declared invariance and whether it held; output changes."""
    per_measure = []
    names = list(dict.fromkeys(n for _, m in rescalings for n in m["measures"]))
    for name in names:
        entry = {"measure": name, "description": describe(name)}
        for kind in ("layer", "node"):
            ms = [m["measures"][name] for c, m in rescalings if c["kind"] == kind]
            if not ms:
                continue
            entry[f"{kind}_invariant"] = ms[0]["declared_invariant"]
            entry[f"{kind}_max_abs_log10_ratio"] = max(_log_ratio(x) for x in ms)
            entry[f"{kind}_consistent"] = all(x["consistent"] for x in ms)
        per_measure.append(entry)
    diff = max(m["output_max_abs_diff"] for _, m in rescalings)
    rel = max(m["output_max_abs_diff"] / max(m["output_max_abs"], 1e-30) for _, m in rescalings)
    return {"per_measure": per_measure, "output_max_abs_diff": diff, "output_max_rel_diff": rel}


def _reading(per_measure: list[dict], diff: float, rel: float, num_rescalings: int) -> str:
    """One paragraph from the numbers: function preserved? invariant measures stay put? the others move how far?"""
    parts = [f"outputs change by at most {diff:.2g} ({rel:.1g} of max |f|) over {num_rescalings} rescalings"]
    inv, moved, violated, still = [], [], [], []
    for e in per_measure:
        for kind in ("layer", "node"):
            if f"{kind}_invariant" not in e:
                continue
            lr = e[f"{kind}_max_abs_log10_ratio"]
            if e[f"{kind}_invariant"]:
                inv.append(lr)
                if not e[f"{kind}_consistent"]:
                    violated.append(f"{e['measure']} ({kind}-wise, ×10^{lr:.2g})")
            elif lr > math.log10(1 + INVARIANT_RTOL):
                moved.append((lr, e["measure"], kind))
            else:
                still.append(f"{e['measure']} ({kind}-wise)")
    if inv:
        worst = max(inv)
        parts.append(f"measures declared invariant stay within {100 * (10 ** worst - 1):.2g} % "
                     f"(max |log10 ratio| {worst:.1g})" + ("" if not violated else ", EXCEPT " + ", ".join(violated)))
    if moved:
        moved.sort(reverse=True)
        top = ", ".join(f"{n} ×10^{lr:.2g} ({k}-wise)" for lr, n, k in moved[:3])
        parts.append(f"the {len({n for _, n, _ in moved})} measures not declared invariant move by up to {top}")
    if still:
        parts.append("not invariant by declaration but unmoved (< 1 %): " + ", ".join(still))
    return "; ".join(parts)


def verdict(rows) -> Verdict:
    """Invariant measures stay, curvature moves — provided the rescalings preserved the function.

    Precondition: max |f_α(x) − f(x)| ≤ ``OUTPUT_RTOL`` · max |f(x)| for every rescaling; if not,
    the rescalings are wrong and the verdict is inconclusive. Parts: (a) every measure declared
    invariant stays within ``INVARIANT_RTOL`` (True) or one moves (False); (b) the Hessian trace
    and λ_max both move by at least 10^``MOVE_DECADES`` (True), both stay within
    ``INVARIANT_RTOL`` (False), else (or not measured) None. Combined by :func:`common.combine`.
    """
    rescalings = rows["rescalings"]
    s = summarize(rescalings)
    per = {e["measure"]: e for e in s["per_measure"]}
    kinds = [k for k in ("layer", "node") if any(c["kind"] == k for c, _ in rescalings)]
    declared = [(e["measure"], k) for e in s["per_measure"] for k in kinds if e.get(f"{k}_invariant")]
    violated = [f"{n} ({k}-wise)" for n, k in declared if not per[n][f"{k}_consistent"]]
    moves = {n: max(per[n][f"{k}_max_abs_log10_ratio"] for k in kinds) for n in CURVATURE if n in per}
    still = math.log10(1 + INVARIANT_RTOL)
    preserved = s["output_max_rel_diff"] <= OUTPUT_RTOL
    parts = {"invariant_measures_unmoved": (not violated) if declared else None,
             "curvature_moves": None if len(moves) < len(CURVATURE) else True
             if all(v >= MOVE_DECADES for v in moves.values()) else False if all(v <= still for v in moves.values())
             else None}
    status = combine(parts) if preserved else "inconclusive"
    return Verdict(CLAIM, status, {
        "rule": (f"precondition: every rescaling changes the outputs by at most {OUTPUT_RTOL:g} of max |f| (else "
                 f"inconclusive); (a) every measure declared invariant changes by less than {INVARIANT_RTOL:.0%}; "
                 f"(b) Hessian trace and λ_max both change by at least a factor {10 ** MOVE_DECADES:g} (both under "
                 f"{INVARIANT_RTOL:.0%}: contradicted); {COMBINE_RULE}"),
        "summary": _reading(s["per_measure"], s["output_max_abs_diff"], s["output_max_rel_diff"], len(rescalings))
        + ".",
        "parts": parts, "function_preserved": preserved, "output_max_abs_diff": s["output_max_abs_diff"],
        "output_max_rel_diff": s["output_max_rel_diff"], "invariance_violated": violated,
        "curvature_max_abs_log10_ratio": moves, "num_rescalings": len(rescalings),
        "model_test_accuracy": rows["model"].get("test_accuracy"),
    })


def _palette() -> list:
    import matplotlib

    return [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["Dark2"].colors,
            *matplotlib.colormaps["Set1"].colors]


def _style(invariant: bool, color) -> dict:
    return ({"color": color, "ls": "--", "marker": "o", "mfc": "none", "ms": 5, "lw": 1.2} if invariant
            else {"color": color, "ls": "-", "marker": "s", "ms": 4, "lw": 1.5})


def _order(rows) -> list[str]:
    """Measures that move first, largest move first (legend order ≈ line order), then the invariant ones."""
    names = list(dict.fromkeys(n for _, m in rows for n in m["measures"]))
    spread = {n: max(_log_ratio(m["measures"][n]) for _, m in rows) for n in names}
    invariant = {n: all(m["measures"][n]["declared_invariant"] for _, m in rows) for n in names}
    return sorted(names, key=lambda n: (invariant[n], -spread[n] if not invariant[n] else 0.0))


def figure(rows, ax=None):
    """(a) |ratio| vs α, layer-wise; (b) |ratio| vs s, node-wise; (c) output change per rescaling; log y throughout.

    ``ax``: a matplotlib ``Figure`` or ``SubFigure`` to draw the panels (and the measure legend,
    outside on the right) into (None: a new one). Returns the figure.
    """
    from matplotlib.lines import Line2D

    rows = rows["rescalings"]
    names = _order(rows)
    colors = {n: _palette()[i % len(_palette())] for i, n in enumerate(names)}
    kinds = [k for k in ("layer", "node") if any(c["kind"] == k for c, _ in rows)]
    fig, host = common.panels(ax, (4.6 * len(kinds) + 7.0, 4.6))
    axes = host.subplots(1, len(kinds) + 1, gridspec_kw={"width_ratios": [1.0] * len(kinds) + [0.8]})
    x_of = {"layer": lambda c: c["alpha"], "node": lambda c: c["log_std"]}
    titles = {"layer": "layer-wise: (W_k, b_k)·α, W_{k+1}/α", "node": "node-wise: α_i = exp(s·z_i), every hidden unit"}
    xlabels = {"layer": "α (scale of hidden layer {layer}, log scale)",
               "node": "spread s of log α_i (z_i ~ N(0, 1))"}
    invariant = {k: {} for k in kinds}
    for ax, kind in zip(axes, kinds):
        sel = sorted(((c, m) for c, m in rows if c["kind"] == kind), key=lambda cm: x_of[kind](cm[0]))
        xs = [x_of[kind](c) for c, _ in sel]
        for name in names:
            ratios = np.abs([m["measures"][name]["ratio"] for _, m in sel])
            invariant[kind][name] = sel[0][1]["measures"][name]["declared_invariant"]
            ax.plot(xs, ratios, **_style(invariant[kind][name], colors[name]))
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        dev = [abs(abs(m["measures"][n]["ratio"]) - 1) for _, m in sel for n in names if invariant[kind][n]]
        if dev:
            ax.text(0.5, 0.015, f"{sum(invariant[kind].values())} declared invariant: |ratio − 1| ≤ {max(dev):.1g}",
                    transform=ax.transAxes, ha="center", va="bottom", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.9})
        if kind == "layer":
            ax.set_xscale("log")
        ax.set_yscale("log")
        # Room below the ratio-1 line for the note, so it never hides the invariant measures.
        low = min([abs(m["measures"][n]["ratio"]) for _, m in sel for n in names
                   if 0 < abs(m["measures"][n]["ratio"]) < math.inf] + [1.0])
        ax.set_ylim(bottom=low / 4)
        ax.set_xlabel(xlabels[kind].format(layer=sel[0][0].get("layer", "")))
        ax.set_ylabel("measure(rescaled) / measure(original)")
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    # (c) one point per rescaling; a change of exactly 0 (α = 1, or a power of 2, is exact in
    # floating point) has no place on a log axis and is drawn as a triangle on the bottom edge.
    ax = axes[-1]
    floor = 1e-9
    order = [(c, m) for kind in kinds
             for c, m in sorted(((c, m) for c, m in rows if c["kind"] == kind), key=lambda cm: x_of[kind](cm[0]))]
    labels = [f"α={c['alpha']:g}" if c["kind"] == "layer" else f"s={c['log_std']:g}" for c, _ in order]
    for i, (c, m) in enumerate(order):
        color = "C0" if c["kind"] == "layer" else "C3"
        d = m["output_max_abs_diff"]
        ax.plot(i, d if d > 0 else floor, "o" if d > 0 else "v", color=color, ms=7 if d > 0 else 8,
                clip_on=False)
    scale = max(m["output_max_abs"] for _, m in rows)
    ax.axhline(scale * np.finfo(np.float32).eps, color="k", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(floor, max(1e-2, scale))
    ax.set_xticks(range(len(order)), labels, rotation=60, fontsize=8)
    ax.set_xlabel("rescaling")
    ax.set_ylabel("max over test x of |f_α(x) − f(x)| (logits)")
    ax.set_title(f"outputs preserved (max |f(x)| = {scale:.3g})", fontsize=10)
    ax.legend([Line2D([], [], marker="o", ls="", color="C0"), Line2D([], [], marker="o", ls="", color="C3"),
               Line2D([], [], marker="v", ls="", color="gray"), Line2D([], [], ls=":", color="k")],
              ["layer-wise", "node-wise", "exactly 0", "float32 ε × max |f(x)|"], fontsize=8, loc="upper left")
    handles, texts = [], []
    for name in names:
        inv = [invariant[k][name] for k in kinds]
        tag = (" (invariant)" if all(inv) else "" if not any(inv)
               else " (invariant " + "/".join(k + "-wise" for k in kinds if invariant[k][name]) + ")")
        handles.append(Line2D([], [], **_style(all(inv), colors[name])))
        texts.append(describe(name) + tag)
    host.legend(handles, texts, loc="outside right center", fontsize=7.5,
                title="measure (dashed, open: declared invariant)", title_fontsize=8)
    return fig


def main(argv=None) -> list[str]:
    """``python -m experiments.reparam [--quick] [--out DIR] [--<field> <value> ...]``."""
    config, out = parse_config(Config, argv, description=__doc__, quick=quick)
    rows = run(config, out)
    return common.finish(out, EXPERIMENT, {FIGURE: figure(rows)}, verdict(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
