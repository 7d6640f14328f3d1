"""The one training engine: a small loop over one compiled program per epoch, calling rule and hook objects.

:func:`train` runs an :class:`~losslab.Objective` with an optimizer from
:mod:`losslab.optim`. Each epoch over the device-resident training set is a
single ``lax.scan`` over minibatch steps (a seeded permutation per epoch), each
step the one optimizer step :func:`losslab.optim.step`, so the hot loop never
returns to Python; after the scan the same compiled program evaluates the
training and validation sets. Between epochs the engine records the history
and calls its *hooks* in order: snapshots, early stopping, reduce-on-plateau,
``stop_below``, checkpoints, the user callback. A hook is any object with
``after_epoch(loop) -> None`` that reads and may change the :class:`Loop`
(set ``loop.stop`` to end training, replace ``loop.opt_state``, keep
``loop.best``); pass extra ones with ``hooks=``.

Probes (:class:`losslab.probes.Probe`) run every ``probe_every`` steps *inside*
the compiled epoch (``lax.cond``) and may carry state from one call to the next
(e.g. a warm-started top eigenvector for λ_max).

Training continues exactly where a previous call stopped: ``train(..., epochs=20,
resume=result)`` takes that result's params, optimizer state, epoch, key and
history, so one call of 20 epochs and two calls of 10 give bitwise-identical
params on CPU (for schedules that do not depend on the horizon: constant,
plateau; a cosine schedule spans the ``epochs`` of the call that builds it).

Data parallelism: pass a ``jax.sharding.Mesh`` with a ``"data"`` axis; each
minibatch is sharded along it and params are replicated (XLA inserts the
gradient all-reduce). Results equal the single-device run up to float
summation order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from losslab import checkpoint as ckpt_lib
from losslab import display as fmt
from losslab import optim
from losslab.objective import Objective
from losslab.probes import Probe, grad_norm_probe
from losslab.stream import is_stream


class TrainingDivergedError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite; names the step and the config."""


@dataclasses.dataclass
class History:
    """Per-epoch record of a training run (plain lists, JSON-friendly).

    ``train_loss`` is the mean minibatch training objective of the epoch (train
    mode, with regularizers); ``train_eval_loss`` / ``train_accuracy`` are eval-mode
    values on the whole training set at the end of the epoch; ``val_*`` likewise on the
    validation set (NaN when there is none). ``probes`` maps a probe name to
    ``{"step": [...], "value": [...]}``.
    """

    epoch: list[int] = dataclasses.field(default_factory=list)
    step: list[int] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    train_eval_loss: list[float] = dataclasses.field(default_factory=list)
    train_accuracy: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    learning_rate: list[float] = dataclasses.field(default_factory=list)
    wall_time: list[float] = dataclasses.field(default_factory=list)
    probes: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    stop_reason: str = ""

    def as_dict(self) -> dict:
        """The history as a plain JSON-friendly dict (what the results store writes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> History:
        """Rebuilds a :class:`History` from :meth:`as_dict` output (e.g. loaded from JSON)."""
        return cls(**d)

    def __len__(self) -> int:
        return len(self.epoch)

    def _trend(self, name: str) -> str:
        vals = [v for v in getattr(self, name) if math.isfinite(v)]
        if not vals:
            return ""
        return f", {name} {fmt.num(vals[0])} → {fmt.num(vals[-1])}"

    def summary(self) -> str:
        """One line: epochs, steps, first → last losses, best epoch and why training stopped."""
        if not self.epoch:
            return "no epochs"
        trends = "".join(self._trend(n) for n in ("train_eval_loss", "val_loss", "val_accuracy"))
        probes = f", probes {sorted(self.probes)}" if self.probes else ""
        stop = f", stop: {self.stop_reason}" if self.stop_reason else ""
        return (
            f"{len(self.epoch)} epochs, {self.step[-1]} steps{trends}, best_epoch={self.best_epoch}{probes}{stop}"
        )

    def __repr__(self) -> str:
        return f"History({self.summary()})"

    def _repr_markdown_(self) -> str:
        cols = ("epoch", "step", "train_loss", "train_eval_loss", "train_accuracy", "val_loss", "val_accuracy")
        n = len(self.epoch)
        shown = list(range(n)) if n <= 8 else [*range(3), None, *range(n - 4, n)]
        rows = []
        for i in shown:
            rows.append(["…"] * len(cols) if i is None else [fmt.num(getattr(self, c)[i]) for c in cols])
        return fmt.md_table(cols, rows, f"History: {self.summary()}")


class TrainResult(NamedTuple):
    """What :func:`train` returns; pass it as ``resume=`` to continue training.

    Attributes:
      params: final params (the best epoch's when early stopping restored them).
      state: the matching non-trainable state (BatchNorm statistics).
      history: the :class:`History`.
      snapshots: list of ``(epoch, params)`` (host NumPy pytrees), epoch 0 = initial params,
        when ``snapshot_every > 0``.
      objective: the objective with its ``state`` set to the returned ``state``.
      opt_state: the optimizer state after the last epoch (momentum, Adam moments, ...).
      key: the PRNG key the next epoch would split.
      epoch: the last epoch trained.
    """

    params: Any
    state: Any
    history: History
    snapshots: list
    objective: Objective
    opt_state: Any = None
    key: Any = None
    epoch: int = 0

    def _summary(self) -> str:
        num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(self.params))
        snaps = f", {len(self.snapshots)} snapshots" if self.snapshots else ""
        return f"{num_params} params{snaps}; {self.history.summary()}"

    def __repr__(self) -> str:
        return f"TrainResult({self._summary()})"

    def _repr_markdown_(self) -> str:
        return f"**TrainResult** ({self.objective!r})\n\n{self.history._repr_markdown_()}"


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor`` is "val_loss" (falls back to "train_eval_loss" without a validation split)
    or any list field of :class:`History`; ``restore_best`` returns the best epoch's weights.
    """

    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True
    monitor: str = "val_loss"


@dataclasses.dataclass(frozen=True)
class ReduceOnPlateau:
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement of val loss."""

    factor: float = 0.5
    patience: int = 3
    min_delta: float = 0.0
    min_scale: float = 1e-3
    cooldown: int = 0


# ----------------------------------------------------------------------------
# The compiled epoch


def _flat_values(value) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {"": value}


_EPOCH_CACHE: dict = {}


def _cached_epoch(spec: tuple, tx, steps: int, batch_size: int, probes: tuple, probe_every: int, mesh):
    """The compiled epoch for a hashable optimizer/loop spec, reused across :func:`train` calls.

    A sweep over seeds (or any config whose optimizer spec repeats) compiles once. A spec that
    cannot be hashed (an unhashable optimizer option) is built afresh.
    """
    key = (spec, steps, batch_size, probes, probe_every, mesh)
    if not _hashable(key):
        return _build_epoch(tx, steps, batch_size, probes, probe_every, mesh)
    if key not in _EPOCH_CACHE:
        if len(_EPOCH_CACHE) > 64:
            _EPOCH_CACHE.clear()
        _EPOCH_CACHE[key] = _build_epoch(tx, steps, batch_size, probes, probe_every, mesh)
    return _EPOCH_CACHE[key]


def _hashable(value) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(_hashable(v) for v in value)
    return getattr(type(value), "__hash__", None) is not None


def _run_probes(probes, probe_states, due, pobj, params, batch, probe_key):
    """Each probe under ``lax.cond(due, ...)``: its values (NaN when not due) and new states."""
    outs, new_states = [], []
    for probe, ps in zip(probes, probe_states):

        def run(args, probe=probe):
            ps_, key_ = args
            val, ps2 = probe.fn(pobj, params, batch, ps_, key_)
            return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), _flat_values(val)), ps2

        shapes = jax.eval_shape(run, (ps, probe_key))

        def skip(args, shapes=shapes):
            return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes[0]), args[0]

        val, ps = jax.lax.cond(due, run, skip, (ps, probe_key))
        outs.append(val)
        new_states.append(ps)
    return tuple(outs), tuple(new_states)


def _build_epoch(tx, steps: int, batch_size: int, probes: tuple, probe_every: int, mesh):
    """Returns a jitted ``epoch(obj, params, state, opt_state, probe_states, key, step0)``."""
    data_sharding = None
    if mesh is not None:
        data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def epoch(obj: Objective, params, state, opt_state, probe_states, key, step0):
        x, y = obj.batch("train")
        perm_key, steps_key = jax.random.split(key)
        idx = jax.random.permutation(perm_key, x.shape[0])[: steps * batch_size].reshape(steps, batch_size)

        def body(carry, inp):
            params, state, opt_state, probe_states = carry
            b_idx, k, i = inp
            batch = (x[b_idx], y[b_idx])
            if data_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, data_sharding)
            drop_key, probe_key = jax.random.split(k)
            params, new_state, opt_state, loss = optim.step(tx, obj, params, state, opt_state, batch, drop_key)
            due = (step0 + i + 1) % probe_every == 0
            outs, probe_states = _run_probes(
                probes, probe_states, due, obj.replace(state=new_state), params, batch, probe_key
            )
            return (params, new_state, opt_state, probe_states), (loss, outs)

        carry = (params, state, opt_state, probe_states)
        inputs = (idx, jax.random.split(steps_key, steps), jnp.arange(steps))
        (params, state, opt_state, probe_states), (losses, probe_vals) = jax.lax.scan(body, carry, inputs)
        return params, state, opt_state, probe_states, losses, probe_vals

    return jax.jit(epoch)


@jax.jit
def _evaluate(obj: Objective, params, state):
    """Eval-mode metrics on the training and validation sets (one compiled program)."""
    eobj = obj.replace(state=state)
    val = eobj.evaluate(params, "val") if "val" in obj.data else None
    return eobj.evaluate(params, "train"), val


# ----------------------------------------------------------------------------
# The loop state and the hooks


_NO_EVAL = {"loss": float("nan"), "accuracy": float("nan")}


@dataclasses.dataclass
class Loop:
    """The host-side state the engine passes to every hook after each epoch.

    Attributes:
      objective: the (possibly mesh-replicated) objective.
      params, state, opt_state, probe_states, key: the training state after ``epoch``.
      epoch: the epoch just finished; steps: steps per epoch; epochs: the epoch cap.
      evaluated: whether this epoch evaluated the training/validation sets.
      history: the :class:`History` so far (this epoch included).
      snapshots: ``(epoch, params)`` pairs kept so far.
      best: ``(params, state)`` to return instead of the final ones (early stopping), or None.
      stop: a non-empty reason ends training after this epoch.
    """

    objective: Objective
    params: Any
    state: Any
    opt_state: Any
    probe_states: Any
    key: Any
    epoch: int
    steps: int
    epochs: int
    history: History
    snapshots: list
    evaluated: bool = False
    best: tuple | None = None
    stop: str = ""


def _improved(value: float, best: float, min_delta: float) -> bool:
    return value < best - min_delta


def monitor_name(monitor: str, objective: Objective) -> str:
    """The :class:`History` field a rule monitors ("val_loss" falls back to "train_eval_loss" without val data)."""
    if monitor == "val_loss" and "val" not in objective.data:
        return "train_eval_loss"
    if monitor not in {f.name for f in dataclasses.fields(History)}:
        raise ValueError(f"unknown monitor {monitor!r}; use a History field such as val_loss, train_eval_loss")
    return monitor


class SnapshotHook:
    """Keeps the params every ``every`` epochs (host copies) in ``loop.snapshots``."""

    def __init__(self, every: int):
        self.every = every

    def after_epoch(self, loop: Loop) -> None:
        """Appends ``(epoch, params)`` on every ``every``-th epoch."""
        if loop.epoch % self.every == 0:
            loop.snapshots.append((loop.epoch, jax.device_get(loop.params)))


class EarlyStoppingHook:
    """The :class:`EarlyStopping` rule: stop after ``patience`` evaluated epochs without improvement."""

    def __init__(self, rule: EarlyStopping, objective: Objective, history: History):
        self.rule = rule
        self.field = monitor_name(rule.monitor, objective)
        self.best = math.inf
        self.wait = 0
        if history.best_epoch is not None:  # resumed: the best value so far is in the history
            self.best = getattr(history, self.field)[history.best_epoch - 1]

    def after_epoch(self, loop: Loop) -> None:
        """Records a new best (and its weights) or counts the epoch; sets ``loop.stop`` at ``patience``."""
        if not loop.evaluated:
            return
        value = getattr(loop.history, self.field)[-1]
        if _improved(value, self.best, self.rule.min_delta):
            self.best, self.wait, loop.history.best_epoch = value, 0, loop.epoch
            if self.rule.restore_best:
                loop.best = (loop.params, loop.state)
        else:
            self.wait += 1
            if self.wait >= self.rule.patience:
                loop.stop = f"early stopping: no improvement of {self.rule.monitor} for {self.wait} epochs"


class PlateauHook:
    """The :class:`ReduceOnPlateau` rule: scales the learning rate down in the optimizer state (no recompilation)."""

    def __init__(self, rule: ReduceOnPlateau):
        self.rule = rule
        self.best, self.wait, self.cool = math.inf, 0, 0

    def after_epoch(self, loop: Loop) -> None:
        """Counts epochs without improvement of the validation (else training) loss; lowers the rate at ``patience``."""
        if not loop.evaluated:
            return
        h = loop.history
        value = h.val_loss[-1] if "val" in loop.objective.data else h.train_eval_loss[-1]
        if self.cool > 0:
            self.cool -= 1
        elif _improved(value, self.best, self.rule.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.rule.patience:
                new = max(optim.lr_scale(loop.opt_state) * self.rule.factor, self.rule.min_scale)
                loop.opt_state = optim.set_lr_scale(loop.opt_state, new)
                self.wait, self.cool = 0, self.rule.cooldown


class StopBelowHook:
    """Stops once the evaluated eval-mode training loss falls below ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def after_epoch(self, loop: Loop) -> None:
        """Sets ``loop.stop`` when this epoch's training loss is below the threshold."""
        loss = loop.history.train_eval_loss[-1]
        if loop.evaluated and loss < self.threshold:
            loop.stop = f"training loss {loss:.4g} below {self.threshold}"


class CheckpointHook:
    """Saves an orbax checkpoint every ``every`` epochs, on stopping and at the last epoch."""

    def __init__(self, directory: str, every: int):
        self.directory = directory
        self.every = max(every, 1)

    def tree(self, loop: Loop):
        """The checkpointed pytree: params, state, optimizer state and probe states."""
        return (loop.params, loop.state, loop.opt_state, loop.probe_states)

    def after_epoch(self, loop: Loop) -> None:
        """Saves the training state and the history/key sidecar when due."""
        if loop.epoch % self.every == 0 or loop.stop or loop.epoch == loop.epochs:
            meta = {"history": loop.history.as_dict(), "key": np.asarray(jax.random.key_data(loop.key)).tolist()}
            ckpt_lib.save(self.directory, loop.epoch, self.tree(loop), meta)

    def restore(self, loop: Loop) -> None:
        """Resumes ``loop`` from the newest checkpoint in the folder, if there is one."""
        restored = ckpt_lib.restore_latest(self.directory, self.tree(loop))
        if restored is not None:
            loop.epoch, (loop.params, loop.state, loop.opt_state, loop.probe_states), meta = restored
            loop.history = History.from_dict(meta["history"])
            loop.key = jax.random.wrap_key_data(jnp.asarray(meta["key"], jnp.uint32))


class CallbackHook:
    """Calls ``fn(epoch, history)`` after each epoch (progress bars) and, with ``verbose``, prints a line."""

    def __init__(self, fn: Callable[[int, History], None] | None, verbose: bool):
        self.fn = fn
        self.verbose = verbose

    def after_epoch(self, loop: Loop) -> None:
        """Prints the epoch's line (``verbose``) and calls the user callback."""
        h = loop.history
        if self.verbose:
            print(
                f"epoch {loop.epoch:4d}  train {h.train_loss[-1]:.4f}  val {h.val_loss[-1]:.4f}  "
                f"val acc {h.val_accuracy[-1]:.3f}  lr {h.learning_rate[-1]:.2e}"
            )
        if self.fn is not None:
            self.fn(loop.epoch, h)


# ----------------------------------------------------------------------------
# The engine


class _Run(NamedTuple):
    """The static pieces of one :func:`train` call."""

    config: dict
    tx: Any
    schedule: Callable[[int], float]
    epoch_fn: Callable
    names: tuple
    eval_every: int


def _validate(objective, n, batch_size, epochs, probes, probe_every, mesh, eval_every, rules, resume):
    """Eager checks of :func:`train`'s arguments (before anything is compiled); returns the batch size."""
    if not isinstance(objective, Objective):
        raise TypeError(f"train needs a losslab.Objective, got {type(objective).__name__}")
    if is_stream(objective.batch("train")):
        raise ValueError(
            "train() shuffles in-memory training data; this objective streams its data (analysis only: loss, "
            "gradients, curvature, surfaces). Train on an in-memory Objective, then analyse with the streamed one."
        )
    batch_size = n if batch_size is None or batch_size >= n else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if probes and probe_every < 1:
        raise ValueError("probes were given but probe_every < 1; set probe_every to the period in steps")
    if mesh is not None:
        if "data" not in mesh.axis_names:
            raise ValueError(f"the mesh needs a 'data' axis, has {mesh.axis_names}")
        if batch_size % mesh.shape["data"]:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {mesh.shape['data']} data devices")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    if eval_every == 0 and any(r is not None for r in rules):
        raise ValueError("early stopping, reduce-on-plateau and stop_below need evaluations: set eval_every >= 1")
    if resume is not None:
        if not isinstance(resume, TrainResult) or resume.opt_state is None:
            raise ValueError("resume= takes the TrainResult of an earlier train() call")
        if epochs <= resume.epoch:
            raise ValueError(f"epochs={epochs} is the total to reach; the run to resume already has {resume.epoch}")
    return batch_size


def _compile(objective, optimization, steps, batch_size, epochs, probes, probe_every, mesh, eval_every) -> _Run:
    """The optimizer, its schedule and the compiled epoch (cached across calls with the same spec)."""
    optimizer, learning_rate, optimizer_options, schedule, schedule_options = optimization
    opts, sched_opts = dict(optimizer_options or {}), dict(schedule_options or {})
    tx, sched = optim.create(
        optimizer, learning_rate, schedule=schedule, total_steps=steps * epochs, schedule_options=sched_opts, **opts
    )
    names = tuple(probes)
    spec = (optimizer, learning_rate, tuple(sorted(opts.items())), schedule, tuple(sorted(sched_opts.items())), epochs)
    epoch_fn = _cached_epoch(spec, tx, steps, batch_size, tuple(probes[nm] for nm in names), max(probe_every, 1), mesh)
    config = {"optimizer": optimizer, "learning_rate": learning_rate, "optimizer_options": opts, "schedule": schedule,
              "batch_size": batch_size, "epochs": epochs, "loss": str(objective.loss_fn), "data": objective.name}
    return _Run(config, tx, sched, epoch_fn, names, eval_every)


def _start(objective, params, tx, probes, names, key, mesh, resume, snapshot_every, epochs, steps) -> Loop:
    """The loop state at the first epoch: fresh, or continued from ``resume``."""
    params = objective.params if params is None else objective.check_params(params)
    state = objective.state
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        objective, params, state = jax.device_put((objective, params, state), replicated)
    key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    opt_state = tx.init(params)
    probe_states = tuple(probes[nm].init(objective, params) for nm in names)
    loop = Loop(objective, params, state, opt_state, probe_states, key, 0, steps, epochs, History(probes={}), [])
    if resume is not None:
        if jax.tree.structure(resume.opt_state) != jax.tree.structure(opt_state):
            raise ValueError("resume=: the optimizer state does not match this optimizer; resume with the same one")
        loop.params, loop.state, loop.opt_state = resume.params, resume.state, resume.opt_state
        loop.key, loop.epoch = resume.key, resume.epoch
        loop.history = History.from_dict(resume.history.as_dict())
        loop.snapshots = list(resume.snapshots)
    elif snapshot_every:
        loop.snapshots.append((0, jax.device_get(params)))
    return loop


def _record(loop: Loop, run: _Run, losses, probe_vals, evals, t0: float) -> None:
    """Appends the epoch to the history; raises :class:`TrainingDivergedError` on a non-finite loss."""
    epoch, steps, h = loop.epoch, loop.steps, loop.history
    step0 = (epoch - 1) * steps
    losses = np.asarray(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise TrainingDivergedError(
            f"training loss became {losses[bad[0]]} at step {step0 + bad[0] + 1} (epoch {epoch}, step {bad[0] + 1} "
            f"of {steps}); the last finite parameters are those of epoch {epoch - 1}. Config: {run.config}"
        )
    train_eval, val_eval = evals
    h.epoch.append(epoch)
    h.step.append(epoch * steps)
    h.train_loss.append(float(losses.mean()))
    h.train_eval_loss.append(float(train_eval["loss"]))
    h.train_accuracy.append(float(train_eval["accuracy"]))
    h.val_loss.append(float(val_eval["loss"]) if val_eval is not None else float("nan"))
    h.val_accuracy.append(float(val_eval["accuracy"]) if val_eval is not None else float("nan"))
    h.learning_rate.append(float(run.schedule(epoch * steps - 1)) * optim.lr_scale(loop.opt_state))
    h.wall_time.append(time.perf_counter() - t0)
    for nm, vals in zip(run.names, probe_vals):
        vals = {k: np.asarray(v) for k, v in vals.items()}
        rows = np.flatnonzero(np.isfinite(next(iter(vals.values()))))
        for sub, arr in vals.items():
            rec = h.probes.setdefault(nm + (f"/{sub}" if sub else ""), {"step": [], "value": []})
            rec["step"].extend(int(step0 + r + 1) for r in rows)
            rec["value"].extend(float(arr[r]) for r in rows)
    if loop.evaluated and not math.isfinite(h.train_eval_loss[-1]):
        raise TrainingDivergedError(
            f"eval-mode training loss became {h.train_eval_loss[-1]} after epoch {epoch} "
            f"(step {epoch * steps}). Config: {run.config}"
        )


def _run_epoch(loop: Loop, run: _Run) -> tuple:
    """Runs one compiled epoch and (when due) the evaluation; updates ``loop``; returns losses, probes, evals."""
    loop.epoch += 1
    loop.key, ekey = jax.random.split(loop.key)
    step0 = (loop.epoch - 1) * loop.steps
    out = run.epoch_fn(loop.objective, loop.params, loop.state, loop.opt_state, loop.probe_states, ekey, step0)
    loop.params, loop.state, loop.opt_state, loop.probe_states, losses, probe_vals = out
    loop.evaluated = run.eval_every > 0 and (loop.epoch % run.eval_every == 0 or loop.epoch == loop.epochs)
    evals = _evaluate(loop.objective, loop.params, loop.state) if loop.evaluated else (_NO_EVAL, None)
    return losses, probe_vals, evals


def _finish(loop: Loop, restore_best: bool) -> TrainResult:
    h = loop.history
    h.stopped_epoch = h.epoch[-1] if h.epoch else loop.epoch
    if loop.stop:
        h.stop_reason = loop.stop
    else:
        h.stop_reason = f"reached the epoch cap ({loop.epochs})"
    params, state = loop.best if (restore_best and loop.best is not None) else (loop.params, loop.state)
    return TrainResult(
        params, state, h, loop.snapshots, loop.objective.replace(state=state), loop.opt_state, loop.key, loop.epoch
    )


def _hooks(loop, snapshot_every, early_stopping, plateau, stop_below, checkpoint, callback, verbose) -> list:
    """The built-in hooks, in the order the engine calls them."""
    built_in = [
        SnapshotHook(snapshot_every) if snapshot_every else None,
        EarlyStoppingHook(early_stopping, loop.objective, loop.history) if early_stopping is not None else None,
        PlateauHook(plateau) if plateau is not None else None,
        StopBelowHook(stop_below) if stop_below is not None else None,
        checkpoint,
        CallbackHook(callback, verbose),
    ]
    return [h for h in built_in if h is not None]


def train(
    objective: Objective,
    params=None,
    *,
    optimizer: str = "adam",
    learning_rate: float = 1e-3,
    optimizer_options: Mapping[str, Any] | None = None,
    schedule: str = "constant",
    schedule_options: Mapping[str, Any] | None = None,
    batch_size: int | None = 32,
    epochs: int = 50,
    key: jax.Array | int = 0,
    early_stopping: EarlyStopping | None = None,
    plateau: ReduceOnPlateau | None = None,
    probes: Mapping[str, Probe] | None = None,
    probe_every: int = 0,
    snapshot_every: int = 0,
    stop_below: float | None = None,
    eval_every: int = 1,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    callback: Callable[[int, History], None] | None = None,
    verbose: bool = False,
    resume: TrainResult | None = None,
    hooks: Sequence[Any] = (),
) -> TrainResult:
    """Trains ``params`` on ``objective`` with one compiled program per epoch.

    Args:
      objective: the :class:`~losslab.Objective` (model, loss, regularizers, data).
      params: start point; None uses ``objective.params``.
      optimizer: a key of :data:`losslab.optim.OPTIMIZERS`.
      learning_rate: base learning rate η.
      optimizer_options: keyword options of the optimizer (e.g. ``{"rho": 0.05}`` for SAM).
      schedule: "constant", "cosine" or "plateau" (then ``plateau`` defaults to
        :class:`ReduceOnPlateau()`).
      schedule_options: schedule keyword options (``alpha``, ``warmup_steps``).
      batch_size: minibatch size; None (or >= n) is full-batch gradient descent. The
        last partial batch of an epoch is dropped (each epoch draws a new permutation).
      epochs: the epoch to train up to (with ``resume``: the total, counting the resumed epochs).
      key: PRNG key (or int seed) for batch order, dropout and probes. Same key, same run.
      early_stopping: an :class:`EarlyStopping` rule, or None.
      plateau: a :class:`ReduceOnPlateau` rule, or None.
      probes: named :class:`~losslab.probes.Probe` s run every ``probe_every`` steps inside the
        compiled loop.
      probe_every: probe period in steps (required > 0 when probes are given).
      snapshot_every: keep params every this many epochs (plus the initial ones) for
        trajectory plots; 0 keeps none.
      stop_below: stop once the eval-mode training loss falls below this value.
      eval_every: evaluate the training and validation sets (eval mode) every this many
        epochs and at the last one; other epochs record NaN there. 0 never evaluates
        (pure training throughput); early stopping, plateaus and ``stop_below`` act on
        evaluated epochs only and need ``eval_every >= 1``.
      checkpoint_dir: if given, save an orbax checkpoint every ``checkpoint_every`` epochs
        (default: every epoch) and resume from the latest one found there.
      mesh: a ``jax.sharding.Mesh`` with a "data" axis for data-parallel training.
      callback: called as ``callback(epoch, history)`` after each epoch (progress bars).
      verbose: print one line per epoch.
      resume: a previous :class:`TrainResult` to continue from (its params, optimizer state,
        epoch, key and history); the optimizer and its options must be the same.
      hooks: extra hook objects (``after_epoch(loop)``, see :class:`Loop`), called after the
        built-in ones.

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: bad configuration (names, sizes), before anything is compiled.
      TrainingDivergedError: the loss became NaN/Inf; the message names the step and config.
    """
    n = objective.num_examples("train") if isinstance(objective, Objective) else 0
    rules = (early_stopping, plateau, stop_below)
    probes = dict(probes or {})
    batch_size = _validate(objective, n, batch_size, epochs, probes, probe_every, mesh, eval_every, rules, resume)
    if schedule == "plateau" and plateau is None:
        plateau = ReduceOnPlateau()
    steps = n // batch_size
    optimization = (optimizer, learning_rate, optimizer_options, schedule, schedule_options)
    run = _compile(objective, optimization, steps, batch_size, epochs, probes, probe_every, mesh, eval_every)
    tx, names = run.tx, run.names
    loop = _start(objective, params, tx, probes, names, key, mesh, resume, snapshot_every, epochs, steps)
    checkpoint = CheckpointHook(checkpoint_dir, checkpoint_every) if checkpoint_dir is not None else None
    if checkpoint is not None:
        checkpoint.restore(loop)
    rules = (snapshot_every, early_stopping, plateau, stop_below, checkpoint, callback, verbose)
    all_hooks = _hooks(loop, *rules) + list(hooks)
    t0 = time.perf_counter() - (loop.history.wall_time[-1] if loop.history.wall_time else 0.0)
    while loop.epoch < epochs and not loop.stop:
        losses, probe_vals, evals = _run_epoch(loop, run)
        _record(loop, run, losses, probe_vals, evals, t0)
        for hook in all_hooks:
            hook.after_epoch(loop)
    return _finish(loop, early_stopping is not None and early_stopping.restore_best)


# ----------------------------------------------------------------------------
# Diagnosis


class Diagnosis(NamedTuple):
    """A label for a finished run with the evidence.

    Attributes:
      label: "over-fitting", "under-fitting", "still improving" or "good fit".
      turn_epoch: for over-fitting, the epoch where validation loss was lowest (it turned).
      reason: one sentence with the numbers behind the label.
    """

    label: str
    turn_epoch: int | None
    reason: str


def diagnose(
    history: History,
    *,
    window: int = 5,
    rise: float = 0.05,
    plateau_tol: float = 0.01,
    underfit_ratio: float = 0.5,
) -> Diagnosis:
    """Labels a run from its train/validation curves (the README's rules, in order).

    1. **over-fitting**: the validation loss rose more than ``rise`` (relative) above its
       minimum, reached at epoch e* before the last ``window`` epochs... or anywhere before the
       end, while the training loss kept falling after e*. ``turn_epoch`` = e*.
    2. **still improving**: the validation loss (or the training loss without validation data)
       fell by more than ``plateau_tol`` (relative) over the last ``window`` epochs.
    3. **under-fitting**: the curves are flat, yet the final training loss is still above
       ``underfit_ratio`` × its first-epoch value and the train–val gap is small (less than
       ``rise`` relative): the model cannot fit the data.
    4. otherwise **good fit**: converged with no sign of over-fitting.

    Args:
      history: a :class:`History` (or its dict).
      window: epochs looked back for trends.
      rise: relative rise of validation loss above its minimum that counts as over-fitting.
      plateau_tol: relative improvement over ``window`` epochs that counts as still improving.
      underfit_ratio: final/initial training-loss ratio above which a flat run is under-fitting.
    """
    h = history if isinstance(history, History) else History.from_dict(history)
    if not h.epoch:
        raise ValueError("cannot diagnose an empty history")
    train = np.asarray(h.train_eval_loss, float)
    val = np.asarray(h.val_loss, float)
    has_val = np.isfinite(val).all()
    w = min(window, len(train) - 1) if len(train) > 1 else 0
    if has_val:
        e_star = int(np.argmin(val))
        if val[-1] > val[e_star] * (1 + rise) + 1e-12 and train[-1] < train[e_star] and e_star < len(val) - 1:
            return Diagnosis(
                "over-fitting",
                h.epoch[e_star],
                f"validation loss was lowest ({val[e_star]:.4g}) at epoch {h.epoch[e_star]} and rose to "
                f"{val[-1]:.4g} by epoch {h.epoch[-1]} while training loss fell from {train[e_star]:.4g} to {train[-1]:.4g}",
            )
    curve = val if has_val else train
    if w > 0:
        before = curve[-w - 1]
        change = (before - curve[-1]) / max(abs(before), 1e-12)
        if change > plateau_tol:
            which = "validation" if has_val else "training"
            return Diagnosis(
                "still improving",
                None,
                f"{which} loss fell {100 * change:.1f}% over the last {w} epochs ({before:.4g} -> {curve[-1]:.4g})",
            )
    gap = (val[-1] - train[-1]) / max(abs(train[-1]), 1e-12) if has_val else 0.0
    if train[-1] > underfit_ratio * train[0] and gap < rise:
        return Diagnosis(
            "under-fitting",
            None,
            f"training loss plateaued at {train[-1]:.4g}, still {100 * train[-1] / train[0]:.0f}% of its first-epoch "
            f"value {train[0]:.4g}, with a small train-val gap",
        )
    return Diagnosis("good fit", None, f"converged: train {train[-1]:.4g}, val {val[-1] if has_val else float('nan'):.4g}")


def make_mesh(num_devices: int | None = None, devices: Sequence | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with a ``"data"`` axis over ``num_devices`` devices (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available")
        devices = devices[:num_devices]
    return jax.sharding.Mesh(np.array(devices), ("data",))


__all__ = [
    "CallbackHook",
    "CheckpointHook",
    "Diagnosis",
    "EarlyStopping",
    "EarlyStoppingHook",
    "History",
    "Loop",
    "PlateauHook",
    "Probe",
    "ReduceOnPlateau",
    "SnapshotHook",
    "StopBelowHook",
    "TrainResult",
    "TrainingDivergedError",
    "diagnose",
    "grad_norm_probe",
    "make_mesh",
    "monitor_name",
    "train",
]
