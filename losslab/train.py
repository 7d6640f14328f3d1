"""The one training engine: a jitted step for every optimizer, one compiled program per epoch.

:func:`train` runs an :class:`~losslab.Objective` with an optimizer from
:mod:`losslab.optim`. Each epoch over the device-resident training set is a
single ``lax.scan`` over minibatch steps (a seeded permutation per epoch), so
the hot loop never returns to Python; after the scan the same compiled program
evaluates the training and validation sets. Between epochs the host checks
for divergence, early stopping, learning-rate plateaus, snapshots and
checkpoints.

Probes (:class:`Probe`) run every ``probe_every`` steps *inside* the compiled
epoch (``lax.cond``) and may carry state from one call to the next (e.g. a
warm-started top eigenvector for λ_max).

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
import optax

from losslab import _display as fmt
from losslab import optim
from losslab.objective import Objective


class TrainingDivergedError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite; names the step and the config."""


class Probe(NamedTuple):
    """A measurement taken every k steps inside the compiled training loop.

    Attributes:
      init: ``(objective, params) -> state`` (any pytree, e.g. a warm-start vector).
      fn: ``(objective, params, batch, state, key) -> (value, new_state)``;
        ``value`` is a scalar or a flat dict of scalars; ``batch`` is the current minibatch
        and ``objective`` carries the current BatchNorm statistics.
    """

    init: Callable[[Objective, Any], Any]
    fn: Callable[..., tuple[Any, Any]]


def grad_norm_probe(full_batch: bool = False) -> Probe:
    r"""Probe of :math:`\lVert \nabla L(\theta) \rVert_2` on the minibatch (or the full training set)."""

    def fn(obj, params, batch, state, key):
        b = None if full_batch else batch
        g = jax.grad(obj.loss)(params, b)
        return optax.global_norm(g), state

    return Probe(lambda obj, params: (), fn)


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
    """What :func:`train` returns.

    Attributes:
      params: final params (the best epoch's when early stopping restored them).
      state: the matching non-trainable state (BatchNorm statistics).
      history: the :class:`History`.
      snapshots: list of ``(epoch, params)`` (host NumPy pytrees), epoch 0 = initial params,
        when ``snapshot_every > 0``.
      objective: the objective with its ``state`` set to the returned ``state``.
    """

    params: Any
    state: Any
    history: History
    snapshots: list
    objective: Objective

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

    A sweep over seeds (or any config whose optimizer spec repeats) compiles once.
    """
    try:
        key = (spec, steps, batch_size, probes, probe_every, mesh)
        hash(key)
    except TypeError:
        return _build_epoch(tx, steps, batch_size, probes, probe_every, mesh)
    if key not in _EPOCH_CACHE:
        if len(_EPOCH_CACHE) > 64:
            _EPOCH_CACHE.clear()
        _EPOCH_CACHE[key] = _build_epoch(tx, steps, batch_size, probes, probe_every, mesh)
    return _EPOCH_CACHE[key]


def _build_epoch(tx, steps: int, batch_size: int, probes: tuple, probe_every: int, mesh):
    """Returns a jitted ``epoch(obj, params, state, opt_state, probe_states, key, step0)``."""
    data_sharding = None
    if mesh is not None:
        data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def epoch(obj: Objective, params, state, opt_state, probe_states, key, step0):
        x, y = obj.batch("train")
        n = x.shape[0]
        perm_key, steps_key = jax.random.split(key)
        idx = jax.random.permutation(perm_key, n)[: steps * batch_size].reshape(steps, batch_size)
        step_keys = jax.random.split(steps_key, steps)

        def step(carry, inp):
            params, state, opt_state, probe_states = carry
            b_idx, k, i = inp
            batch = (x[b_idx], y[b_idx])
            if data_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, data_sharding)
            drop_key, probe_key = jax.random.split(k)

            def loss_fn(p):
                return obj.train_loss(p, state, batch, drop_key)

            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

            def grad_fn(p, _):
                return jax.grad(lambda q: loss_fn(q)[0])(p)

            updates, opt_state = tx.update(
                grads,
                opt_state,
                params,
                value=loss,
                grad_fn=grad_fn,
                batch=batch,
                key=drop_key,
                objective=obj.replace(state=state),
            )
            params = optax.apply_updates(params, updates)

            outs = []
            new_probe_states = []
            for probe, ps in zip(probes, probe_states):
                due = (step0 + i + 1) % probe_every == 0
                pobj = obj.replace(state=new_state)

                def run(args, probe=probe, pobj=pobj):
                    ps_, key_ = args
                    val, ps2 = probe.fn(pobj, params, batch, ps_, key_)
                    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), _flat_values(val)), ps2

                shapes = jax.eval_shape(run, (ps, probe_key))

                def skip(args, shapes=shapes):
                    vals = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes[0])
                    return vals, args[0]

                val, ps = jax.lax.cond(due, run, skip, (ps, probe_key))
                outs.append(val)
                new_probe_states.append(ps)
            return (params, new_state, opt_state, tuple(new_probe_states)), (loss, tuple(outs))

        carry = (params, state, opt_state, probe_states)
        (params, state, opt_state, probe_states), (losses, probe_vals) = jax.lax.scan(
            step, carry, (idx, step_keys, jnp.arange(steps))
        )
        return params, state, opt_state, probe_states, losses, probe_vals

    return jax.jit(epoch)


@jax.jit
def _evaluate(obj: Objective, params, state):
    """Eval-mode metrics on the training and validation sets (one compiled program)."""
    eobj = obj.replace(state=state)
    val = eobj.evaluate(params, "val") if "val" in obj.data else None
    return eobj.evaluate(params, "train"), val


# ----------------------------------------------------------------------------
# Host-side training loop


_NO_EVAL = {"loss": float("nan"), "accuracy": float("nan")}


def _first_nonfinite(losses: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _improved(value: float, best: float, min_delta: float) -> bool:
    return value < best - min_delta


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
      epochs: maximum number of epochs.
      key: PRNG key (or int seed) for batch order, dropout and probes. Same key, same run.
      early_stopping: an :class:`EarlyStopping` rule, or None.
      plateau: a :class:`ReduceOnPlateau` rule, or None.
      probes: named :class:`Probe` s run every ``probe_every`` steps inside the compiled loop.
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

    Returns:
      A :class:`TrainResult`.

    Raises:
      ValueError: bad configuration (names, sizes), before anything is compiled.
      TrainingDivergedError: the loss became NaN/Inf; the message names the step and config.
    """
    config = {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "optimizer_options": dict(optimizer_options or {}),
        "schedule": schedule,
        "batch_size": batch_size,
        "epochs": epochs,
        "loss": str(objective.loss_fn),
        "data": objective.name,
    }
    n = objective.num_examples("train")
    if batch_size is None or batch_size >= n:
        batch_size = n
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    probes = dict(probes or {})
    if probes and probe_every < 1:
        raise ValueError("probes were given but probe_every < 1; set probe_every to the period in steps")
    if mesh is not None:
        if "data" not in mesh.axis_names:
            raise ValueError(f"the mesh needs a 'data' axis, has {mesh.axis_names}")
        if batch_size % mesh.shape["data"]:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {mesh.shape['data']} data devices")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    if eval_every == 0 and (early_stopping is not None or plateau is not None or stop_below is not None):
        raise ValueError("early stopping, reduce-on-plateau and stop_below need evaluations: set eval_every >= 1")
    if schedule == "plateau" and plateau is None:
        plateau = ReduceOnPlateau()
    steps = n // batch_size
    tx, sched = optim.create(
        optimizer,
        learning_rate,
        schedule=schedule,
        total_steps=steps * epochs,
        schedule_options=dict(schedule_options or {}),
        **dict(optimizer_options or {}),
    )
    key = jax.random.key(key) if isinstance(key, int) else key

    params = objective.params if params is None else params
    state = objective.state
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        objective, params, state = jax.device_put((objective, params, state), replicated)
    opt_state = tx.init(params)
    names = tuple(probes)
    probe_states = tuple(probes[nm].init(objective, params) for nm in names)
    spec = (
        optimizer,
        learning_rate,
        tuple(sorted((optimizer_options or {}).items())),
        schedule,
        tuple(sorted((schedule_options or {}).items())),
        epochs,
    )
    epoch_fn = _cached_epoch(
        spec, tx, steps, batch_size, tuple(probes[nm] for nm in names), max(probe_every, 1), mesh
    )

    history = History(probes={})
    snapshots = [(0, jax.device_get(params))] if snapshot_every else []
    start_epoch = 0
    ckpt = None
    if checkpoint_dir is not None:
        from losslab import checkpoint as ckpt_lib

        ckpt = ckpt_lib
        restored = ckpt.restore_latest(checkpoint_dir, (params, state, opt_state, probe_states))
        if restored is not None:
            start_epoch, (params, state, opt_state, probe_states), meta = restored
            history = History.from_dict(meta["history"])
            key = jax.random.wrap_key_data(jnp.asarray(meta["key"], jnp.uint32))

    es_best = math.inf
    es_wait = 0
    best = None
    pl_best, pl_wait, pl_cool = math.inf, 0, 0
    if history.best_epoch is not None and early_stopping is not None:
        es_best = getattr(history, _monitor_name(early_stopping.monitor, objective))[history.best_epoch - 1]
    t0 = time.perf_counter() - (history.wall_time[-1] if history.wall_time else 0.0)

    for epoch in range(start_epoch + 1, epochs + 1):
        key, ekey = jax.random.split(key)
        step0 = (epoch - 1) * steps
        (params, state, opt_state, probe_states, losses, probe_vals) = epoch_fn(
            objective, params, state, opt_state, probe_states, ekey, step0
        )
        evaluated = eval_every > 0 and (epoch % eval_every == 0 or epoch == epochs)
        train_eval, val_eval = _evaluate(objective, params, state) if evaluated else (_NO_EVAL, None)
        losses = np.asarray(losses)
        bad = _first_nonfinite(losses)
        if bad is not None:
            raise TrainingDivergedError(
                f"training loss became {losses[bad]} at step {step0 + bad + 1} (epoch {epoch}, step {bad + 1} of "
                f"{steps}); the last finite parameters are those of epoch {epoch - 1}. Config: {config}"
            )
        history.epoch.append(epoch)
        history.step.append(epoch * steps)
        history.train_loss.append(float(losses.mean()))
        history.train_eval_loss.append(float(train_eval["loss"]))
        history.train_accuracy.append(float(train_eval["accuracy"]))
        history.val_loss.append(float(val_eval["loss"]) if val_eval is not None else float("nan"))
        history.val_accuracy.append(float(val_eval["accuracy"]) if val_eval is not None else float("nan"))
        history.learning_rate.append(float(sched(epoch * steps - 1)) * optim.lr_scale(opt_state))
        history.wall_time.append(time.perf_counter() - t0)
        for nm, vals in zip(names, probe_vals):
            vals = {k: np.asarray(v) for k, v in vals.items()}
            rows = np.flatnonzero(np.isfinite(next(iter(vals.values()))))
            for sub, arr in vals.items():
                rec = history.probes.setdefault(nm + (f"/{sub}" if sub else ""), {"step": [], "value": []})
                rec["step"].extend(int(step0 + r + 1) for r in rows)
                rec["value"].extend(float(arr[r]) for r in rows)
        if evaluated and not math.isfinite(history.train_eval_loss[-1]):
            raise TrainingDivergedError(
                f"eval-mode training loss became {history.train_eval_loss[-1]} after epoch {epoch} "
                f"(step {epoch * steps}). Config: {config}"
            )
        if verbose:
            print(
                f"epoch {epoch:4d}  train {history.train_loss[-1]:.4f}  val {history.val_loss[-1]:.4f}  "
                f"val acc {history.val_accuracy[-1]:.3f}  lr {history.learning_rate[-1]:.2e}"
            )
        if snapshot_every and epoch % snapshot_every == 0:
            snapshots.append((epoch, jax.device_get(params)))

        stop = ""
        if early_stopping is not None and evaluated:
            value = getattr(history, _monitor_name(early_stopping.monitor, objective))[-1]
            if _improved(value, es_best, early_stopping.min_delta):
                es_best, es_wait, history.best_epoch = value, 0, epoch
                if early_stopping.restore_best:
                    best = (params, state)
            else:
                es_wait += 1
                if es_wait >= early_stopping.patience:
                    stop = f"early stopping: no improvement of {early_stopping.monitor} for {es_wait} epochs"
        if plateau is not None and evaluated:
            value = history.val_loss[-1] if "val" in objective.data else history.train_eval_loss[-1]
            if pl_cool > 0:
                pl_cool -= 1
            elif _improved(value, pl_best, plateau.min_delta):
                pl_best, pl_wait = value, 0
            else:
                pl_wait += 1
                if pl_wait >= plateau.patience:
                    new = max(optim.lr_scale(opt_state) * plateau.factor, plateau.min_scale)
                    opt_state = optim.set_lr_scale(opt_state, new)
                    pl_wait, pl_cool = 0, plateau.cooldown
        if stop_below is not None and evaluated and history.train_eval_loss[-1] < stop_below:
            stop = f"training loss {history.train_eval_loss[-1]:.4g} below {stop_below}"
        if ckpt is not None and (epoch % max(checkpoint_every, 1) == 0 or stop or epoch == epochs):
            ckpt.save(
                checkpoint_dir,
                epoch,
                (params, state, opt_state, probe_states),
                {"history": history.as_dict(), "key": np.asarray(jax.random.key_data(key)).tolist()},
            )
        if callback is not None:
            callback(epoch, history)
        if stop:
            history.stop_reason = stop
            break
    history.stopped_epoch = history.epoch[-1] if history.epoch else start_epoch
    if not history.stop_reason:
        history.stop_reason = f"reached the epoch cap ({epochs})"
    if early_stopping is not None and early_stopping.restore_best and best is not None:
        params, state = best
    return TrainResult(params, state, history, snapshots, objective.replace(state=state))


def _monitor_name(monitor: str, objective: Objective) -> str:
    if monitor == "val_loss" and "val" not in objective.data:
        return "train_eval_loss"
    if monitor not in {f.name for f in dataclasses.fields(History)}:
        raise ValueError(f"unknown monitor {monitor!r}; use a History field such as val_loss, train_eval_loss")
    return monitor


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
