r"""The model protocol: any JAX model as pure functions of a params pytree.

Every landscape tool looks at one pure function, ``loss(params)``; a model only has to say how
to compute outputs from ``(params, state, x)``. A :class:`Model` is that description — static and
hashable, so an :class:`~losslab.Objective` built twice from the same model compiles once:

.. code-block:: text

    model.apply(params, state, x, train=False, key=None) -> outputs                 (eval mode)
    model.apply(params, state, x, train=True,  key=k)    -> (outputs, new_state)    (training)

``params`` is any pytree of arrays (nested dicts, tuples, lists, equinox modules, registered
nodes); ``state`` holds the non-trainable arrays (BatchNorm statistics), ``{}`` when there are none.
The adapters below turn the models of each JAX framework into a :class:`Bound` model (a
:class:`Model` with its params and state), which :class:`~losslab.Objective` accepts directly:

================  =========================================================  =======================
framework         adapter                                                     state
================  =========================================================  =======================
Flax NNX          ``Objective(module, ...)`` (or :func:`nnx`)                 non-``Param`` variables
Flax linen        :func:`linen` ``(module, variables)``                        collections but params
equinox           :func:`equinox` ``(model, state=None)``                      ``eqx.nn.State``
haiku             :func:`haiku` ``(transformed, params, state=None)``          haiku state
plain JAX         ``Objective.from_apply(apply_fn, params, ...)``              optional
================  =========================================================  =======================

Kernel layouts differ between frameworks and matter to filter normalisation
(:func:`losslab.directions.normalize_direction`'s ``filter_axis``): Flax NNX, linen and haiku store
Dense kernels ``(in, out)`` and Conv kernels ``(..., in, out)`` (the output unit is the **last**
axis); equinox stores ``(out, in)`` and ``(out, in, ...)`` (the **first** axis). ``Model.filter_axis``
records the convention; plain functions default to the last axis.

What only NNX models offer: the layer tap (:mod:`losslab.layers`), i.e. K-FAC and the Dense-layer
shortcut of the exact backprop diagonals (which fall back to exact per-example gradients elsewhere).
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import linen as flax_linen
from flax import nnx

KINDS = ("nnx", "linen", "equinox", "haiku", "function")


class Model(abc.ABC):
    """A model as pure functions (the protocol above). Subclasses implement :meth:`apply`.

    Attributes:
      kind: one of :data:`KINDS`.
      filter_axis: the axis of a kernel that indexes output units / filters (-1 or 0).
    """

    kind = "function"
    filter_axis = -1

    @abc.abstractmethod
    def apply(self, params, state, x, *, train: bool = False, key=None):
        """Eval-mode outputs, or ``(outputs, new_state)`` with ``train=True``."""

    def module(self, params, state):
        """The framework's module object for ``(params, state)`` (NNX only; the layer tap needs it)."""
        raise ValueError(
            f"the layer tap (K-FAC, the Dense shortcut of the backprop diagonals) needs a Flax NNX model; this is a "
            f"{self.kind} model. Use operator='fisher' with the CG natural gradient (optimizer='ngd') instead of K-FAC."
        )

    def name(self) -> str:
        """A short name for printing."""
        return self.kind


class Bound(NamedTuple):
    """A :class:`Model` with its parameters and state: what the adapters return and ``Objective`` accepts."""

    model: Model
    params: Any
    state: Any


# ----------------------------------------------------------------------------
# Flax NNX


@functools.cache
def _nnx_call_options(cls: type) -> tuple[bool, bool]:
    """Whether ``cls.__call__`` takes ``train=`` and ``key=`` keywords (losslab's models do; yours need not)."""
    params = inspect.signature(cls.__call__).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return var_kw or "train" in params, var_kw or "key" in params


def call_nnx(module, x, train: bool, key):
    """Calls an NNX module with ``train=``/``key=`` when its ``__call__`` takes them."""
    takes_train, takes_key = _nnx_call_options(type(module))
    kwargs = {}
    if takes_train:
        kwargs["train"] = train
    if takes_key and train:
        kwargs["key"] = key
    return module(x, **kwargs)


class NNXModel(Model):
    """A Flax NNX module split once into a graph definition (static) and pure-dict params and state."""

    kind = "nnx"

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __eq__(self, other):
        return isinstance(other, NNXModel) and self.graphdef == other.graphdef

    def __hash__(self):
        return hash(("nnx", self.graphdef))

    def module(self, params, state):
        """A fresh NNX module merged from ``(params, state)``."""
        return nnx.merge(self.graphdef, params, state)

    def apply(self, params, state, x, *, train: bool = False, key=None, module_hook=None):
        """Calls the merged module; ``module_hook(module)`` runs first (the layer tap switches layers there)."""
        module = nnx.merge(self.graphdef, params, state)
        if module_hook is not None:
            module_hook(module)
        if not train:
            return call_nnx(module, x, False, None)
        out = call_nnx(module, x, True, key)
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        return out, new_state.to_pure_dict()



def nnx_model(module: nnx.Module) -> Bound:
    """A Flax NNX module as a :class:`Bound` model: params are its ``nnx.Param`` s, state the rest (pure dicts)."""
    graphdef, params, state = nnx.split(module, nnx.Param, ...)
    return Bound(NNXModel(graphdef), params.to_pure_dict(), state.to_pure_dict())


# ----------------------------------------------------------------------------
# Plain functions


class FunctionModel(Model):
    """``apply_fn(params, x)``, or with state ``apply_fn(params, state, x, *, train, key)``.

    With state, training calls must return ``(outputs, new_state)`` and eval calls the outputs.
    """

    kind = "function"

    def __init__(self, apply_fn: Callable, with_state: bool, filter_axis: int = -1):
        if not callable(apply_fn):
            raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
        self.apply_fn = apply_fn
        self.with_state = with_state
        self.filter_axis = filter_axis

    def __eq__(self, other):
        return (
            isinstance(other, FunctionModel)
            and self.apply_fn is other.apply_fn
            and self.with_state == other.with_state
            and self.filter_axis == other.filter_axis
        )

    def __hash__(self):
        return hash(("function", id(self.apply_fn), self.with_state, self.filter_axis))

    def apply(self, params, state, x, *, train: bool = False, key=None):
        """``apply_fn(params, x)``; with state ``apply_fn(params, state, x, train=..., key=...)``."""
        if not self.with_state:
            out = self.apply_fn(params, x)
            return (out, state) if train else out
        return self.apply_fn(params, state, x, train=train, key=key)

    def name(self) -> str:
        """The function's name."""
        return getattr(self.apply_fn, "__name__", "function")


# ----------------------------------------------------------------------------
# Flax linen


def _train_keyword(fn) -> tuple[str, bool] | None:
    """``(name, value means training)`` of the train-mode keyword ``fn`` takes, if any."""
    params = inspect.signature(fn).parameters
    for name, means_train in (("train", True), ("training", True), ("is_training", True),
                              ("deterministic", False), ("use_running_average", False)):
        if name in params:
            return name, means_train
    return None


class LinenModel(Model):
    """A ``flax.linen`` module: ``module.apply({"params": params, **state}, x, ...)``.

    The train-mode keyword is found from ``__call__``'s signature (``train``, ``training``,
    ``is_training``, or the negated ``deterministic`` / ``use_running_average``); in training the
    state collections are mutable and dropout draws from the ``"dropout"`` rng.
    """

    kind = "linen"

    def __init__(self, module, collections: tuple[str, ...]):
        self.module_def = module
        self.collections = collections
        self.train_keyword = _train_keyword(type(module).__call__)

    def __eq__(self, other):
        return isinstance(other, LinenModel) and self.module_def is other.module_def and self.collections == other.collections

    def __hash__(self):
        return hash(("linen", id(self.module_def), self.collections))

    def apply(self, params, state, x, *, train: bool = False, key=None):
        """Calls ``module.apply`` with the train keyword, mutable state and the dropout rng in training."""
        kwargs = {}
        if self.train_keyword is not None:
            name, means_train = self.train_keyword
            kwargs[name] = train if means_train else not train
        variables = {"params": params, **state}
        if not train:
            return self.module_def.apply(variables, x, **kwargs)
        rngs = {"dropout": key} if key is not None else {}
        out, new_state = self.module_def.apply(variables, x, rngs=rngs, mutable=list(self.collections), **kwargs)
        return out, dict(new_state)

    def name(self) -> str:
        """The module's class name."""
        return type(self.module_def).__name__


def linen(module, variables) -> Bound:
    """A ``flax.linen`` module with its ``variables`` (``module.init(...)``): params = ``variables["params"]``.

    Every other collection (``batch_stats``, ...) is state, updated in training.
    """
    if "params" not in variables:
        raise ValueError(f"linen variables need a 'params' collection; found {sorted(variables)}")
    state = {k: v for k, v in variables.items() if k != "params"}
    return Bound(LinenModel(module, tuple(sorted(state))), variables["params"], state)


# ----------------------------------------------------------------------------
# equinox


class EquinoxModel(Model):
    """An equinox module, partitioned into inexact-array params and the static rest.

    Equinox layers take one example; the batch is ``vmap`` ed (``batched=True`` if your model takes
    batches itself). With an ``eqx.nn.State`` the model is called as ``model(x, state)`` and the
    batch axis is named ``"batch"`` (``eqx.nn.BatchNorm(..., axis_name="batch")``). Eval mode is
    ``eqx.nn.inference_mode``; training passes per-example keys when ``__call__`` takes ``key``.
    """

    kind = "equinox"
    filter_axis = 0

    def __init__(self, static, with_state: bool, batched: bool):
        self.static = static
        self.with_state = with_state
        self.batched = batched
        self.takes_key = "key" in inspect.signature(type(static).__call__).parameters

    def __eq__(self, other):
        return isinstance(other, EquinoxModel) and self.static is other.static and (self.with_state, self.batched) == (
            other.with_state, other.batched)

    def __hash__(self):
        return hash(("equinox", id(self.static), self.with_state, self.batched))

    def apply(self, params, state, x, *, train: bool = False, key=None):
        """Combines params with the static part and maps the model over the batch."""
        import equinox as eqx

        model = eqx.nn.inference_mode(eqx.combine(params, self.static), value=not train)
        n = jax.tree.leaves(x)[0].shape[0]
        keys = jax.random.split(key, n) if (train and key is not None and self.takes_key) else None

        def one(xi, ki, st):
            kw = {"key": ki} if ki is not None else {}
            return model(xi, st, **kw) if self.with_state else (model(xi, **kw), st)

        if self.batched:
            out, new_state = one(x, key if keys is not None else None, state)
        else:
            in_keys = 0 if keys is not None else None
            mapped = jax.vmap(one, in_axes=(0, in_keys, None), out_axes=(0, None), axis_name="batch")
            out, new_state = mapped(x, keys, state)
        return (out, new_state) if train else out

    def name(self) -> str:
        """The module's class name."""
        return type(self.static).__name__


def equinox(model, state=None, *, batched: bool = False) -> Bound:
    """An equinox module (and its ``eqx.nn.State`` for BatchNorm-style layers) as a :class:`Bound` model.

    Params are the inexact (float) arrays of the module (``eqx.partition(model, eqx.is_inexact_array)``),
    a pytree with the module's own structure; everything else is static.
    """
    import equinox as eqx

    params, static = eqx.partition(model, eqx.is_inexact_array)
    return Bound(EquinoxModel(static, state is not None, batched), params, state if state is not None else {})


# ----------------------------------------------------------------------------
# haiku


class HaikuModel(Model):
    """A ``hk.transform`` / ``hk.transform_with_state`` function; ``train_keyword`` names its train flag."""

    kind = "haiku"

    def __init__(self, transformed, with_state: bool, train_keyword: str | None):
        self.transformed = transformed
        self.with_state = with_state
        self.train_keyword = train_keyword

    def __eq__(self, other):
        return isinstance(other, HaikuModel) and self.transformed is other.transformed and (
            self.with_state, self.train_keyword) == (other.with_state, other.train_keyword)

    def __hash__(self):
        return hash(("haiku", id(self.transformed), self.with_state, self.train_keyword))

    def apply(self, params, state, x, *, train: bool = False, key=None):
        """``transformed.apply(params, [state,] rng, x, **{train_keyword: train})``."""
        kwargs = {self.train_keyword: train} if self.train_keyword else {}
        rng = key if train else None
        if self.with_state:
            out, new_state = self.transformed.apply(params, state, rng, x, **kwargs)
        else:
            out, new_state = self.transformed.apply(params, rng, x, **kwargs), state
        return (out, new_state) if train else out


def haiku(transformed, params, state=None, *, train_keyword: str | None = None) -> Bound:
    """A haiku ``transform`` (or ``transform_with_state``) with its params (and state) as a :class:`Bound` model.

    ``train_keyword``: the keyword argument of your function that switches training on
    (e.g. ``"is_training"`` for ``hk.BatchNorm``); None passes nothing.
    """
    return Bound(HaikuModel(transformed, state is not None, train_keyword), params, state if state is not None else {})


# ----------------------------------------------------------------------------
# Dispatch


def bind(model) -> Bound:
    """Whatever ``Objective`` was given as its model, as a :class:`Bound` model; ``TypeError`` otherwise."""
    if isinstance(model, Bound):
        return model
    if isinstance(model, nnx.Module):
        return nnx_model(model)
    origins = {c.__module__.split(".")[0] for c in type(model).__mro__}
    if isinstance(model, flax_linen.Module):
        hint = "a flax.linen module, pass losslab.adapters.linen(module, variables)"
    elif "equinox" in origins:
        hint = "an equinox module, pass losslab.adapters.equinox(model, state)"
    elif "haiku" in origins:
        hint = "a haiku transform, pass losslab.adapters.haiku(transformed, params, state)"
    else:
        hint = "a plain function, use Objective.from_apply(apply_fn, params, loss, data)"
    raise TypeError(
        f"Objective takes a Flax NNX module or a losslab.adapters.Bound model (from adapters.linen, .equinox, "
        f".haiku), got {type(model).__module__}.{type(model).__name__}; for {hint}"
    )


__all__ = [
    "KINDS",
    "Bound",
    "EquinoxModel",
    "FunctionModel",
    "HaikuModel",
    "LinenModel",
    "Model",
    "NNXModel",
    "bind",
    "call_nnx",
    "equinox",
    "haiku",
    "linen",
    "nnx_model",
]
