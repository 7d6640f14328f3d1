"""The paper: regenerates every figure in ``figures/`` and ``figures/README.md``.

For each figure, runs its study's missing runs (``study.run``; runs stored under ``--out``
are reused, so a killed run resumes), draws the study's figure (``study.figure``, from the
stored rows only) and takes its verdict (``study.verdict``). The figure goes to
``--figures`` (PNG for the README, PDF for papers) with a caption built from the verdict —
the study's claim, the status its rule gives ("holds", "does not hold", "inconclusive")
and the numbers — whichever way it goes. Provenance (config hash, package versions, git
commit) is written into each figure file's metadata, and ``figures/README.md`` lists
figure → claim → what was measured → verdict and rule → the command that regenerates it.

This module draws nothing itself: every figure is a study's ``figure``.

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
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType

from experiments.common import Verdict, save_figure
from losslab.results import RunStore, atomic_write_json, atomic_write_text, config_hash, provenance


@dataclasses.dataclass(frozen=True)
class Figure:
    """One paper figure: its number, the study that makes it, and what it shows.

    The claim, the verdict and the file name come from the study (``verdict(rows).claim``,
    ``FIGURE``); ``overrides`` change the study's default config for the paper (never its
    quick one).
    """

    number: int
    study: str  # module in experiments/
    title: str
    measured: str
    overrides: tuple[tuple[str, object], ...] = ()  # (field, value) pairs

    @property
    def module(self) -> ModuleType:
        """The study module, ``experiments.<study>``."""
        return importlib.import_module(f"experiments.{self.study}")

    @property
    def name(self) -> str:
        """The file stem in ``figures/``: the study's ``FIGURE``."""
        return self.module.FIGURE


FIGURES: tuple[Figure, ...] = (
    Figure(1, "surfaces", "Small-batch vs large-batch minima",
           "MNIST-1D MLP trained with batch 32 and batch 1000; 2-D filter-normalised random-plane train-loss "
           "contours around each minimum; filter-normalised 1-D slices through both; train/test loss and accuracy "
           "along the line SB → LB."),
    Figure(2, "spectrum", "Hessian spectral density",
           "SLQ density of the MNIST-1D MLP Hessian at initialisation and after training; on a small MLP the SLQ "
           "density against the exact eigh spectrum."),
    Figure(3, "sharpness", "Sharpness vs generalization gap",
           "a sweep over batch size, learning rate, loss, weight decay, model and seed on MNIST-1D, trained to a "
           "train-accuracy target; Kendall τ (bootstrap 95 % CI) and granulated τ of each measure vs the error gap."),
    Figure(4, "stability", "Edge of stability",
           "λ_max of the training-loss Hessian (Lanczos, in-graph probe) during full-batch GD for several η, "
           "with the 2/η stability thresholds, and the training loss."),
    Figure(5, "natural_gradient", "Natural gradient vs first-order optimizers",
           "steps and wall time to a fixed training loss for each optimizer at its best learning rate; top-k "
           "eigenspace overlaps between Hessian, GGN, Fisher, empirical Fisher and K-FAC."),
    Figure(6, "reparam", "Reparametrisation and sharpness",
           "a trained ReLU MLP rescaled layer-wise by α and node-wise at random; output change and "
           "measure(rescaled) / measure(original) per sharpness measure."),
    Figure(7, "loss_zoo", "The loss zoo",
           "one MLP trained under CE, label smoothing, focal, hinge and MSE (test accuracy, curvature, 1-D test-error "
           "slices); teacher–student regression with gross outliers under MSE, MAE and Huber (clean test MSE, "
           "curvature)."),
    Figure(8, "noise", "Early stopping and the loss floor",
           "train/val curves with the early-stopping point; best validation loss vs label noise p ∈ {0, 5, 10, 20} % "
           "against H(p); balanced accuracy and rare-class recall with CE vs focal under class imbalance."),
    Figure(9, "depth", "Gradient flow through depth",
           "singular values of the input–output Jacobian and per-layer gradient norms at initialisation, plain vs "
           "residual MLPs of depth 2–32, 3 seeds."),
    Figure(10, "train", "Common training claims on digits",
           "digits MLP with early stopping over 10 seeds: epochs to a validation-loss target, best validation loss "
           "(mean ± std) for L2 ∈ {0.001, 0.01, 0.1} and Dropout ∈ {0.1, 0.2, 0.3}.",
           (("seeds", tuple(range(10))),)),
    Figure(11, "connectivity", "Mode connectivity",
           "test loss and error along the linear path and along a trained quadratic Bezier curve between two "
           "MNIST-1D MLPs from different seeds."),
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


def config_for(fig: Figure, quick: bool):
    """The study config of a figure: the study's ``quick()``, or its default ``Config`` with the paper's overrides."""
    study = fig.module
    return study.quick() if quick else dataclasses.replace(study.Config(), **dict(fig.overrides))


def verdict_text(verdict: Verdict) -> str:
    """``"<status>: <summary>"``, the verdict as one line."""
    return f"{verdict.status}: {verdict.evidence['summary']}"


def caption(fig: Figure, verdict: Verdict) -> str:
    """The figure's caption, built from the study's verdict only."""
    return f"Fig. {fig.number}. {fig.title}. Claim: {verdict.claim} Verdict: {verdict_text(verdict)}"


def _study_seconds(out_dir: str, experiment: str) -> float:
    """Compute time of a study: the summed wall time of its stored runs."""
    return float(sum((run.provenance.get("wall_time") or 0.0) for run in RunStore(out_dir, experiment)))


def _readme(records: dict) -> str:
    lines = [
        "# Figures",
        "",
        "Every figure here is regenerated from scratch by `python -m experiments.paper` (all of them) or",
        "`python -m experiments.paper --only N` (one). Each caption states the claim tested and the verdict the",
        "data gave under the study's stated rule (holds / does not hold / inconclusive). Provenance (config hash,",
        "package versions, git commit) is in each file's metadata (PNG text chunks, PDF subject); `index.json`",
        "holds the same records with the numbers behind each verdict.",
        "",
        "| # | figure | claim | verdict | study compute (2 CPU cores) |",
        "|---|---|---|---|---|",
    ]
    # Records written before verdicts had a status (older index.json files) show their verdict text.
    shown = [(f, {"status": "n/a", "summary": records[str(f.number)].get("verdict"), "rule": "n/a",
                  "measured": f.measured, **records[str(f.number)]}) for f in FIGURES if str(f.number) in records]
    for f, r in shown:
        lines.append(f"| {f.number} | [{r['title']}]({r['name']}.png) | {r['claim']} | **{r['status']}**: "
                     f"{r['summary']} | {r['study_seconds'] / 60:.1f} min |")
    lines.append("")
    for f, r in shown:
        lines += [
            f"## Figure {f.number}: {r['title']}",
            "",
            f"![{r['title']}]({r['name']}.png)",
            "",
            f"- **Claim:** {r['claim']}",
            f"- **Measured:** {r['measured']}",
            f"- **Verdict:** **{r['status']}** — {r['summary']}",
            f"- **Rule:** {r['rule']}",
            f"- **Regenerate:** `python -m experiments.paper --only {f.number}` (study alone: "
            f"`python -m experiments.{f.study}`); PDF: [{r['name']}.pdf]({r['name']}.pdf)",
            f"- **Provenance:** config hash `{r['config_hash']}`, commit `{r.get('git_commit')}`, "
            f"{'quick' if r['quick'] else 'default'} configuration, {r['study_seconds'] / 60:.1f} min of study compute.",
            "",
        ]
    return "\n".join(lines)


def make(fig: Figure, *, quick: bool, out_dir: str, fig_dir: str, versions: dict, git_commit: str | None) -> dict:
    """Runs one figure's study (what is missing), saves its figure with caption and provenance; returns the record."""
    start = time.perf_counter()
    study = fig.module
    cfg = config_for(fig, quick)
    rows = study.run(cfg, out_dir)
    verdict = study.verdict(rows)
    chash = config_hash(dataclasses.asdict(cfg))
    meta = {"figure": fig.number, "study": fig.study, **versions, "git_commit": git_commit, "config_hash": chash,
            "status": verdict.status, "verdict": verdict_text(verdict)}
    paths = save_figure(study.figure(rows), os.path.join(fig_dir, fig.name), caption=caption(fig, verdict),
                        metadata=meta)
    return {
        "name": fig.name, "title": fig.title, "study": fig.study, "measured": fig.measured, "claim": verdict.claim,
        "status": verdict.status, "summary": verdict.evidence["summary"], "rule": verdict.evidence["rule"],
        "verdict": verdict_text(verdict), "evidence": verdict.evidence, "quick": quick,
        "config": dataclasses.asdict(cfg), "config_hash": chash, "git_commit": git_commit, "versions": versions,
        "study_seconds": _study_seconds(out_dir, study.EXPERIMENT), "draw_seconds": time.perf_counter() - start,
        "paths": [os.path.relpath(p, fig_dir) for p in paths],
    }


def run(only: Sequence[str] | None = None, *, quick: bool = False, out_dir: str = "results",
        fig_dir: str = "figures") -> dict:
    """Runs the missing studies and saves the selected figures; returns ``{number: record}``."""
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
        print(f"[paper] figure {fig.number} ({fig.name}) from experiments.{fig.study}", flush=True)
        record = make(fig, quick=quick, out_dir=out_dir, fig_dir=fig_dir, versions=versions,
                      git_commit=prov["git_commit"])
        records[str(fig.number)] = record
        atomic_write_json(index_path, records)
        print(f"[paper]   {record['verdict']}", flush=True)
    atomic_write_text(os.path.join(fig_dir, "README.md"), _readme(records))
    return {int(k): v for k, v in records.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m experiments.paper [--quick] [--only N,...] [--out DIR] [--figures DIR] [--list]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
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
