"""The one registry pattern: plain dicts from a name to a factory, and one lookup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """Returns ``table[name]``, or raises ``ValueError`` listing the valid names.

    Args:
      table: a registry such as ``LOSSES`` or ``MODELS``.
      name: the requested entry.
      kind: what the table holds ("loss", "model", ...), used in the message.
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; valid {kind} names: {valid}") from None
