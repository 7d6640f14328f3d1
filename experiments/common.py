"""Shared plumbing for the experiment scripts: config overrides from flags, resumable sweeps.

Every study has a frozen ``Config`` dataclass whose defaults are the real run;
:func:`parse_config` turns ``--quick``, ``--full``, ``--out DIR`` and
``--<field> <value>`` flags into a config, and :func:`run_sweep` runs a list of
runs through a :class:`losslab.results.RunStore`, skipping finished ones and
showing progress (done / left / ETA) with tqdm.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from losslab.results import RunStore


def _coerce(text: str, annotation: Any, default: Any):
    """Parses a flag value into the type of a config field (tuples: comma-separated)."""
    origin = typing.get_origin(annotation)
    if isinstance(default, bool) or annotation in (bool, "bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(default, tuple) or origin is tuple or (isinstance(annotation, str) and annotation.startswith("tuple")):
        items = [t.strip() for t in text.split(",") if t.strip()]
        sample = default[0] if default else ""
        return tuple(_coerce(t, type(sample), sample) for t in items)
    if default is None:
        for caster in (int, float):
            try:
                return caster(text)
            except ValueError:
                pass
        return None if text.lower() == "none" else text
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def parse_config(
    config_cls: type,
    argv: Sequence[str] | None,
    *,
    description: str = "",
    quick: Callable[[], Any] | None = None,
    full: Callable[[], Any] | None = None,
    default_out: str = "results",
) -> tuple[Any, str]:
    """Builds ``(config, out_dir)`` from command-line flags.

    ``--quick`` / ``--full`` start from those configs instead of the defaults; then
    every ``--<field> <value>`` overrides one field (``-`` or ``_`` in names both work).
    Unknown fields raise an error listing the valid ones.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds (tests)")
    if full is not None:
        parser.add_argument("--full", action="store_true", help="the larger sweep (meant for a GPU)")
    parser.add_argument("--out", default=default_out, help=f"results folder (default: {default_out})")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, f in fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, default=None, help=f"(default {f.default!r})")
    args = parser.parse_args(argv)
    if getattr(args, "quick", False) and getattr(args, "full", False):
        parser.error("--quick and --full are exclusive")
    base = quick() if getattr(args, "quick", False) else full() if getattr(args, "full", False) else config_cls()
    hints = typing.get_type_hints(config_cls)
    changes = {}
    for name in fields:
        text = getattr(args, name)
        if text is not None:
            try:
                changes[name] = _coerce(text, hints.get(name), getattr(base, name))
            except ValueError as e:
                parser.error(f"--{name}: {e}")
    return dataclasses.replace(base, **changes), args.out


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
