"""Shared plumbing of the studies: the protocol, one flag parser, resumable sweeps, verdicts, figure files.

The study protocol. Every ``experiments/<study>.py`` has the same shape:

* ``Config`` — a frozen dataclass whose defaults are the real run (its docstring says what
  is varied, what is held fixed, the stopping rule and the seeds);
* ``quick() -> Config`` — a tiny variant that finishes in seconds (tests, ``--quick``);
* ``run(config, out_dir) -> rows`` — runs what is missing through a
  :class:`losslab.results.RunStore` under ``<out_dir>/<EXPERIMENT>/`` and returns the study's
  stored results ("rows"; each study's docstring gives their shape);
* ``figure(rows, ax=None)`` — draws the study's paper figure from ``rows`` only (never
  recomputing) and returns the matplotlib ``Figure``; every study's figure has several panels,
  so ``ax`` is a ``Figure`` or ``SubFigure`` to draw them into (None: a new figure);
* ``verdict(rows) -> Verdict`` — the claim, its status under a stated rule, and the numbers;
* ``main(argv=None)`` — parses flags with :func:`parse_config` and calls ``run``, ``figure``
  and ``verdict`` (through :func:`finish`, which saves the figure and prints the verdict).

Studies with more views than the paper figure also define ``extra_figures(rows) -> {stem:
Figure}`` (drawn from ``rows`` only; :func:`finish` saves them next to the main figure).
``EXPERIMENT`` names the results folder and ``FIGURE`` the paper figure's file stem.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from losslab.results import RunStore

# ---------------------------------------------------------------------------
# Verdicts

STATUSES = ("holds", "does not hold", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a study's rows say about its claim.

    Attributes:
      claim: the claim tested, one sentence (with its reference).
      status: ``"holds"``, ``"does not hold"`` or ``"inconclusive"``.
      evidence: the numbers behind the status (JSON-able), with ``"rule"`` — the decision rule
        as a sentence — and ``"summary"`` — one sentence reading the numbers.
    """

    claim: str
    status: str
    evidence: dict

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not isinstance(self.claim, str) or not self.claim.strip():
            raise ValueError("claim must be a non-empty sentence")
        for key in ("rule", "summary"):
            if not isinstance(self.evidence.get(key), str):
                raise ValueError(f"evidence must hold a {key!r} string, got keys {sorted(self.evidence)}")


def combine(parts: Mapping[str, bool | None]) -> str:
    """The status of a claim made of parts, each ``True`` (holds), ``False`` (contradicted) or ``None`` (undecided).

    Every part holds: ``"holds"``. Some part contradicted and none holding: ``"does not hold"``.
    Anything else — parts undecided only, or some holding and some contradicted (the claim holds
    only in part, which directional rules without a test cannot settle): ``"inconclusive"``.
    """
    values = list(parts.values())
    if values and all(v is True for v in values):
        return "holds"
    if any(v is False for v in values) and not any(v is True for v in values):
        return "does not hold"
    return "inconclusive"


COMBINE_RULE = ("the claim holds when every part holds, does not hold when a part is contradicted and none holds, "
                "and is inconclusive otherwise (parts undecided, or some holding and some contradicted)")


def direction(a: float | None, b: float | None) -> bool | None:
    """``True`` if ``a < b``, ``False`` if ``a > b``, ``None`` if equal or either is missing (None)."""
    if a is None or b is None or a == b:
        return None
    return a < b


# ---------------------------------------------------------------------------
# Stored runs as rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One stored run as a plain value: its config, metrics and (loaded) arrays."""

    config: dict
    metrics: dict
    arrays: dict = dataclasses.field(default_factory=dict)


def load_row(store: RunStore, config: dict, *, arrays: bool = True) -> Row:
    """The finished run of ``config`` in ``store`` as a :class:`Row` (arrays loaded when asked)."""
    run = store.load(config, config.get("name"))
    return Row(run.config, run.metrics, run.arrays() if arrays else {})


# ---------------------------------------------------------------------------
# Flags


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _optional(annotation: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(typing.get_args(annotation)):
            return rest[0]
    return None


def _coerce(text: str, annotation: Any) -> Any:
    """Parses a flag value into a field's type; tuples are comma-separated.

    Raises ``ValueError`` naming the expected type.
    """
    inner = _optional(annotation)
    if inner is not None:
        return None if text.strip().lower() == "none" else _coerce(text, inner)
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[1] is not Ellipsis or typing.get_origin(args[0]) is not None:
            raise ValueError(f"a field of type {_type_name(annotation)} cannot be set from the command line")
        try:
            return tuple(_coerce(t.strip(), args[0]) for t in text.split(",") if t.strip())
        except ValueError:
            raise ValueError(f"expected comma-separated {_type_name(args[0])} values, got {text!r}") from None
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a bool (true/false), got {text!r}")
    if annotation in (int, float):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"expected {annotation.__name__}, got {text!r}") from None
    if annotation is str:
        return text
    raise ValueError(f"a field of type {_type_name(annotation)} cannot be set from the command line")


class _Parser(argparse.ArgumentParser):
    """``allow_abbrev=False``: only exact flag names; an unknown flag lists the valid ones."""

    def __init__(self, *args, fields: Sequence[str] = (), **kwargs):
        super().__init__(*args, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.fields = list(fields)

    def unknown(self, extras: Sequence[str]) -> None:
        flags = [e for e in extras if e.startswith("-")]
        if not flags:
            self.error(f"unexpected arguments {' '.join(extras)} (every value follows a --<field> flag)")
        name = flags[0].lstrip("-").split("=")[0].replace("-", "_")
        near = [f for f in self.fields if f.startswith(name)] or difflib.get_close_matches(name, self.fields, n=3)
        hint = f" (did you mean {' or '.join('--' + f for f in near)}?)" if near else ""
        others = [o for o in ("--out", "--quick", "--full") if o in self._option_string_actions]
        self.error(f"unknown flag {flags[0]}{hint}; flag names must be exact. Valid fields: "
                   + ", ".join(self.fields) + "; other flags: " + ", ".join(others))


def parse_config(
    config_cls: type,
    argv: Sequence[str] | None,
    *,
    description: str = "",
    quick: Callable[[], Any] | None = None,
    full: Callable[[], Any] | None = None,
    default_out: str = "results",
) -> tuple[Any, str]:
    """Builds ``(config, out_dir)`` from command-line flags: the one parser of every study.

    ``--quick`` / ``--full`` start from those configs instead of the defaults; then every
    ``--<field> <value>`` overrides one field (``--grid-points`` and ``--grid_points`` both
    work; tuples are comma-separated; ``none`` sets an optional field to None). Flag names
    must be exact (no prefix matching: ``--epoch`` never means ``--epoch_cap``). An unknown
    flag, or a value that does not parse as its field's type, exits with an error naming the
    flag and listing the valid fields or the expected type.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    parser = _Parser(description=description, fields=list(fields))
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds (tests)")
    if full is not None:
        parser.add_argument("--full", action="store_true", help="the larger sweep (meant for a GPU)")
    parser.add_argument("--out", default=default_out, help=f"results folder (default: {default_out})")
    hints = typing.get_type_hints(config_cls)
    defaults = config_cls()
    for name in fields:
        flags = dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}"))
        parser.add_argument(*flags, dest=name, default=None, metavar=_type_name(hints[name]).upper(),
                            help=f"(default {getattr(defaults, name)!r})")
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.unknown(extras)
    if getattr(args, "quick", False) and getattr(args, "full", False):
        parser.error("--quick and --full are exclusive")
    base = quick() if getattr(args, "quick", False) else full() if getattr(args, "full", False) else defaults
    changes = {}
    for name in fields:
        text = getattr(args, name)
        if text is not None:
            try:
                changes[name] = _coerce(text, hints[name])
            except ValueError as e:
                parser.error(f"--{name} (field {name!r} of type {_type_name(hints[name])}): {e}")
    return dataclasses.replace(base, **changes), args.out


# ---------------------------------------------------------------------------
# Sweeps


def run_sweep(
    store: RunStore,
    runs: Sequence[tuple[dict, Callable[[dict], dict]]],
    *,
    desc: str = "runs",
    name_key: str = "name",
) -> list[dict]:
    """Runs each ``(config, fn)`` whose result is not in ``store``; returns every run's metrics.

    ``fn(config) -> metrics`` (a JSON-able dict; a ``"_arrays"`` entry of NumPy arrays is
    stored as ``arrays.npz``). Finished runs are skipped, so a killed sweep resumes where it
    stopped. The progress bar counts runs done / left with an ETA over the runs still to do.
    """
    todo = [(c, fn) for c, fn in runs if not store.is_done(c, c.get(name_key))]
    done = len(runs) - len(todo)
    bar = tqdm(total=len(runs), initial=done, desc=desc, unit="run", dynamic_ncols=True)
    try:
        for config, fn in todo:
            start = time.perf_counter()
            metrics = dict(fn(config))
            arrays = metrics.pop("_arrays", None)
            store.save(
                config, metrics, arrays=arrays, name=config.get(name_key), seed=config.get("seed"),
                wall_time=time.perf_counter() - start,
            )
            bar.update(1)
    finally:
        bar.close()
    return [store.load(c, c.get(name_key)).metrics for c, _ in runs]


def mlp_objective(ds, loss, widths: Sequence[int], seed: int, *, regularizers=(), **model_options):
    """The studies' MLP on dataset ``ds`` under ``loss``: ``models.create("mlp", ...)`` + ``Objective``.

    ``model_options`` go to the model (``activation``, ``dropout``, ``residual``, ...).
    """
    from losslab import Objective, models

    model = models.create("mlp", input_shape=ds.input_shape, output_dim=ds.output_dim, widths=tuple(widths),
                          seed=seed, **model_options)
    return Objective(model, loss, ds, regularizers=list(regularizers))


def train_run(obj, cfg: dict, *, optimizer: str = "adam", epochs: int | None = None, patience: int | None = None,
              **train_options):
    """Trains ``obj`` with a run's ``learning_rate``, ``batch_size``, ``epochs`` and ``seed``.

    ``patience`` adds early stopping on the validation loss; ``train_options`` go to
    :func:`losslab.train.train` (``stop_below``, ...).
    """
    from losslab.train import EarlyStopping, train

    if patience is not None:
        train_options["early_stopping"] = EarlyStopping(patience=patience)
    return train(obj, optimizer=optimizer, learning_rate=cfg["learning_rate"], batch_size=cfg["batch_size"],
                 epochs=cfg["epochs"] if epochs is None else epochs, key=cfg["seed"], **train_options)


# ---------------------------------------------------------------------------
# Figures and the end of a study's main


def panels(ax, figsize: tuple[float, float]):
    """``(figure, host)`` for a multi-panel study figure.

    ``ax`` None: a new constrained-layout figure, which is also the host. ``ax`` a ``Figure``
    or ``SubFigure``: panels go into it and ``figure`` is the figure it belongs to. An
    ``Axes`` is refused: a study figure has several panels.
    """
    from matplotlib.figure import FigureBase

    if ax is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=figsize, layout="constrained")
        return fig, fig
    if not isinstance(ax, FigureBase):
        raise TypeError(f"ax must be a matplotlib Figure or SubFigure (the figure has several panels), got {type(ax)}")
    return ax.get_figure(root=True), ax


def save_figure(fig, stem: str, *, caption: str | None = None, metadata: Mapping | None = None) -> list[str]:
    """Writes ``fig`` to ``<stem>.png`` and ``<stem>.pdf`` (with ``metadata``), then closes it.

    ``caption`` becomes the figure's wrapped super-title. Returns the written paths.
    """
    import textwrap

    import matplotlib.pyplot as plt

    from losslab.plot.training import save

    if caption:
        fig.suptitle(textwrap.fill(caption, 150), fontsize=8.5)
    try:
        return save(fig, stem, metadata=metadata)
    finally:
        plt.close(fig)


def finish(out_dir: str, experiment: str, figures: Mapping[str, Any], verdict: Verdict) -> list[str]:
    """The end of every study's ``main``: saves ``figures`` (``{stem: Figure}``) under
    ``<out_dir>/<experiment>/``, prints the verdict, and returns the written paths."""
    import os

    paths = []
    for stem, fig in figures.items():
        paths += save_figure(fig, os.path.join(out_dir, experiment, stem))
    print(f"claim: {verdict.claim}\nstatus: {verdict.status}\nsummary: {verdict.evidence['summary']}\n"
          f"rule: {verdict.evidence['rule']}")
    numbers = {k: v for k, v in verdict.evidence.items() if k not in ("rule", "summary")}
    print("evidence:", json.dumps(numbers, indent=1, default=str))
    print("figures:", *paths[::2], sep="\n  ")
    return paths
