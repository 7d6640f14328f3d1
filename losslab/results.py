"""The results store: one folder per run, keyed by a hash of its full config.

Layout: ``<root>/<experiment>/<run-id>/`` with ``config.json``,
``metrics.json``, ``provenance.json`` and any arrays in ``arrays.npz``; the
run-id is ``<name>-<hash of the config>``. Every file is written to a temporary
name and renamed (atomic on POSIX); ``metrics.json`` is written last, so a run
is *finished* exactly when it exists. Rerunning a sweep skips finished runs —
a sweep killed half-way resumes where it stopped, keeping every finished run.

Reading results back takes one call: :func:`load` returns every finished run of an
experiment as flat dicts (``run_id``, ``config.*``, ``metrics.*``), or a
``pandas.DataFrame`` with ``as_dataframe=True`` (pandas is optional:
``pip install losslab[pandas]``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import flax
import jax
import numpy as np
import optax

from losslab.version import __version__

CONFIG, METRICS, PROVENANCE, ARRAYS = "config.json", "metrics.json", "provenance.json", "arrays.npz"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    return obj


def config_hash(config: Any, length: int = 12) -> str:
    """A stable hash of a JSON-able config (dataclass or mapping): sorted keys, no whitespace."""
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and ``os.replace``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (sorted keys; NumPy and dataclasses converted) via :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True, default=str))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(seed: int | None = None, wall_time: float | None = None, **extra) -> dict:
    """Package versions, backend, devices, seed, wall time and git commit of this process."""
    return {
        "losslab": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(),
        "seed": seed,
        "wall_time": wall_time,
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class Run:
    """A stored run: its folder, config and metrics (and arrays, loaded on demand)."""

    path: str
    config: dict
    metrics: dict
    provenance: dict

    @property
    def run_id(self) -> str:
        """The run's folder name, ``<name>-<config hash>``."""
        return os.path.basename(self.path)

    def arrays(self) -> dict[str, np.ndarray]:
        """The run's ``arrays.npz`` as ``{name: array}`` (empty when the run stored none)."""
        p = os.path.join(self.path, ARRAYS)
        if not os.path.exists(p):
            return {}
        with np.load(p) as f:
            return {k: f[k] for k in f.files}


class RunStore:
    """Runs of one experiment under ``<root>/<experiment>/``.

    Example::

        store = RunStore("results", "sharpness")
        if not store.is_done(cfg):
            metrics = expensive(cfg)
            store.save(cfg, metrics, seed=cfg["seed"])
        table = store.load_all()
    """

    def __init__(self, root: str, experiment: str):
        self.root = root
        self.experiment = experiment
        self.directory = os.path.join(root, experiment)

    def run_id(self, config: Any, name: str | None = None) -> str:
        """``<name>-<config hash>``; ``name`` defaults to ``config["name"]``, else ``"run"``."""
        name = name or (config.get("name") if isinstance(config, Mapping) else None) or "run"
        return f"{name}-{config_hash(config)}"

    def path(self, config: Any, name: str | None = None) -> str:
        """The run's folder, ``<root>/<experiment>/<run-id>``."""
        return os.path.join(self.directory, self.run_id(config, name))

    def is_done(self, config: Any, name: str | None = None) -> bool:
        """True when the run with this config finished (its metrics were written)."""
        return os.path.exists(os.path.join(self.path(config, name), METRICS))

    def save(
        self,
        config: Any,
        metrics: Mapping,
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
        name: str | None = None,
        seed: int | None = None,
        wall_time: float | None = None,
    ) -> str:
        """Writes a finished run atomically (config, provenance, arrays, then metrics last)."""
        path = self.path(config, name)
        os.makedirs(path, exist_ok=True)
        atomic_write_json(os.path.join(path, CONFIG), config)
        atomic_write_json(os.path.join(path, PROVENANCE), provenance(seed=seed, wall_time=wall_time))
        if arrays:
            fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-", suffix=".npz")
            os.close(fd)
            np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, os.path.join(path, ARRAYS))
        atomic_write_json(os.path.join(path, METRICS), metrics)
        return path

    def load(self, config: Any, name: str | None = None) -> Run:
        """The stored run with this config (``FileNotFoundError`` if it is not finished)."""
        return _read_run(self.path(config, name))

    def __iter__(self) -> Iterator[Run]:
        if not os.path.isdir(self.directory):
            return
        for entry in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, entry)
            if os.path.exists(os.path.join(path, METRICS)):
                yield _read_run(path)

    def load_all(self) -> list[Run]:
        """Every finished run of the experiment, sorted by run-id."""
        return list(self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _read_run(path: str) -> Run:
    def read(name):
        p = os.path.join(path, name)
        if not os.path.exists(p):
            return {}
        with open(p) as f:
            return json.load(f)

    if not os.path.exists(os.path.join(path, METRICS)):
        raise FileNotFoundError(f"no finished run at {path} (missing {METRICS})")
    return Run(path, read(CONFIG), read(METRICS), read(PROVENANCE))


def load_table(root: str, experiment: str, *, provenance: bool = False) -> list[dict]:
    """Every finished run of an experiment as flat dicts ``{"run_id", "config.*", "metrics.*"}``.

    Nested keys are joined with dots (``{"train": {"lr": 0.1}}`` becomes ``"config.train.lr"``);
    lists stay values. ``provenance=True`` adds the ``"provenance.*"`` columns (versions, seed,
    wall time, git commit). Runs are in run-id order; a missing experiment folder gives ``[]``.
    See :func:`load` for the one-call version that can return a DataFrame.
    """
    rows = []
    for run in RunStore(root, experiment):
        row = {"run_id": run.run_id}
        row.update(_flatten(run.config, "config"))
        row.update(_flatten(run.metrics, "metrics"))
        if provenance:
            row.update(_flatten(run.provenance, "provenance"))
        rows.append(row)
    return rows


def load(root: str, experiment: str, *, as_dataframe: bool = False, provenance: bool = False):
    """The stored results of an experiment in one call: config + metrics of every finished run.

    Example::

        rows = results.load("results", "sharpness")                      # list of flat dicts
        df = results.load("results", "sharpness", as_dataframe=True)     # pandas.DataFrame
        df.groupby("config.batch_size")["metrics.gap_error"].mean()

    Args:
      root: the results root (the ``--out`` folder of a study, default ``results``).
      experiment: the experiment folder under ``root`` (e.g. ``"train"``, ``"sharpness"``).
      as_dataframe: return a ``pandas.DataFrame`` (one row per run) instead of a list of dicts;
        needs the optional dependency ``pip install losslab[pandas]``.
      provenance: also include the ``"provenance.*"`` columns.

    Returns:
      ``[{"run_id", "config.*", "metrics.*"}, ...]`` (see :func:`load_table`), or a DataFrame.

    Raises:
      FileNotFoundError: ``<root>/<experiment>`` does not exist (the message lists the
        experiments found under ``root``).
      ImportError: ``as_dataframe=True`` without pandas installed.
    """
    directory = os.path.join(root, experiment)
    if not os.path.isdir(directory):
        found = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))) if os.path.isdir(root) else []
        raise FileNotFoundError(f"no experiment {experiment!r} under {root!r}; found: {found}")
    rows = load_table(root, experiment, provenance=provenance)
    return to_frame(rows) if as_dataframe else rows


def to_frame(rows):
    """A ``pandas.DataFrame`` with one row per dict of ``rows`` (e.g. from :func:`load_table`).

    Raises:
      ImportError: pandas is not installed (it is an optional dependency:
        ``pip install losslab[pandas]``).
    """
    if importlib.util.find_spec("pandas") is None:
        raise ImportError(
            "results as a DataFrame need pandas, an optional dependency of losslab: "
            "pip install 'losslab[pandas]' (or pip install pandas)"
        )
    import pandas

    return pandas.DataFrame(list(rows))


def _flatten(d: Mapping, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
