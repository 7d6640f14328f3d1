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
    kfac,
    losses,
    models,
    natural,
    optim,
    registry,
    results,
    sharpness,
    surface,
    symmetry,
    train,
)
from losslab.objective import Objective, chunked_sum
from losslab.train import EarlyStopping, History, Probe, ReduceOnPlateau, TrainResult, diagnose

__version__ = "0.1.0"

__all__ = [
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
    "kfac",
    "losses",
    "models",
    "natural",
    "optim",
    "registry",
    "results",
    "sharpness",
    "surface",
    "symmetry",
    "train",
]
