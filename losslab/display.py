"""Formatting helpers for the one-line ``repr`` and the notebook (Markdown) display of result objects.

Every helper is safe on traced values: a result built inside ``jit`` prints ``?`` for its numbers
instead of raising, so a ``print`` while debugging a traced function never fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np


def as_array(x) -> np.ndarray | None:
    """``x`` as a numeric NumPy array, or None when it has no concrete numbers (tracer, shape struct)."""
    if isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct)):
        return None
    arr = np.asarray(x)
    return arr if arr.dtype.kind in "biuf" else None


def num(x, digits: int = 4) -> str:
    """Scalar ``x`` with ``digits`` significant digits (``?`` when not concrete, ``—`` for None)."""
    if x is None:
        return "—"
    arr = as_array(x)
    if arr is None or arr.size != 1:
        return "?"
    if arr.dtype == bool:
        return str(bool(arr))
    if arr.dtype.kind in "iu":
        return str(int(arr))
    return f"{float(arr):.{digits}g}"


def pm(value, std_error, digits: int = 4) -> str:
    """``value ± std_error`` (just the value when the error is None)."""
    if std_error is None:
        return num(value, digits)
    return f"{num(value, digits)} ± {num(std_error, 2)}"


def seconds(s: float, compiled: bool = False) -> str:
    """Wall time as ``0.31 s`` (``incl. compile`` when the call compiled)."""
    return f"{s:.2f} s" + (" incl. compile" if compiled else "")


def values(xs, digits: int = 4, limit: int = 5) -> str:
    """``[a, b, c, …]``: the first ``limit`` entries of a 1-D array."""
    arr = as_array(xs)
    if arr is None:
        return "[?]"
    flat = arr.reshape(-1)
    head = ", ".join(num(v, digits) for v in flat[:limit])
    return f"[{head}{', …' if flat.size > limit else ''}]"


def largest(xs, digits: int = 2) -> str:
    """The largest entry of an array (``?`` when not concrete or empty)."""
    arr = as_array(xs)
    if arr is None or arr.size == 0:
        return "?"
    return num(np.max(arr), digits)


def entry(xs, index: int, digits: int = 4) -> str:
    """``xs[index]`` of a 1-D array (``?`` when not concrete or out of range)."""
    arr = as_array(xs)
    if arr is None or arr.ndim != 1 or not -arr.size <= index < arr.size:
        return "?"
    return num(arr[index], digits)


def shape(x) -> tuple:
    """The shape of an array, tracer or shape struct (``()`` for anything else)."""
    return tuple(getattr(x, "shape", ()))


def span(xs, digits: int = 4) -> str:
    """``[min, max]`` over the finite entries of an array (``[?]`` when traced, ``[]`` when empty)."""
    arr = as_array(xs)
    if arr is None:
        return "[?]"
    arr = arr.astype(np.float64).reshape(-1)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return "[]"
    return f"[{num(arr.min(), digits)}, {num(arr.max(), digits)}]"


def scalars(info: Mapping, limit: int = 6) -> str:
    """``k=v, …`` for the scalar entries of a mapping (numbers, strings, bools, None)."""
    items = []
    for k, v in info.items():
        if isinstance(v, (bool, str)) or v is None:
            items.append(f"{k}={v}")
        elif isinstance(v, (int, float, np.number)) or (hasattr(v, "dtype") and np.ndim(v) == 0):
            items.append(f"{k}={num(v)}")
    more = len(items) > limit
    return ", ".join(items[:limit]) + (", …" if more else "")


def md_table(headers: Sequence[str], rows: Iterable[Sequence], caption: str = "") -> str:
    """A GitHub-flavoured Markdown table (with an optional bold caption line above it)."""
    lines = [f"**{caption}**", ""] if caption else []
    lines.append("| " + " | ".join(str(h) for h in headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)
