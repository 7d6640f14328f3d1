"""losslab: loss-landscape analysis for JAX / Flax NNX models.

Every tool is a plain function over a model's parameters, built around one
pure function, the :class:`Objective`'s ``loss(params)``.
"""

from losslab import (
    checkpoint,
    correlation,
    curvature,
    data,
    directions,
    display,
    kfac,
    layers,
    losses,
    models,
    natural,
    optim,
    probes,
    registry,
    results,
    sharpness,
    stream,
    surface,
    symmetry,
    train,
    trees,
    weights,
)
from losslab.objective import Objective, chunked_sum
from losslab.probes import Probe
from losslab.train import EarlyStopping, History, ReduceOnPlateau, TrainResult, diagnose
from losslab.version import __version__

__all__ = [
    "__version__",
    "EarlyStopping",
    "History",
    "Objective",
    "Probe",
    "ReduceOnPlateau",
    "TrainResult",
    "checkpoint",
    "chunked_sum",
    "correlation",
    "curvature",
    "data",
    "diagnose",
    "directions",
    "display",
    "kfac",
    "layers",
    "losses",
    "models",
    "natural",
    "optim",
    "probes",
    "registry",
    "results",
    "sharpness",
    "stream",
    "surface",
    "symmetry",
    "train",
    "trees",
    "weights",
]
