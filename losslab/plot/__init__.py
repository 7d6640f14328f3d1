"""Matplotlib figures drawn from stored results (never recomputing them).

Every function takes an optional ``ax`` and returns the figure.
"""

from losslab.plot import natural, sharpness, spectrum, surface, training
from losslab.plot.training import save

__all__ = ["natural", "save", "sharpness", "spectrum", "surface", "training"]
