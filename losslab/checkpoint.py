"""Training checkpoints with orbax: a pytree per epoch plus a JSON sidecar.

A checkpoint lives in ``<dir>/epoch_<N>/`` (orbax's atomic commit) with its
metadata in ``<dir>/epoch_<N>.json`` written by temp file + rename after the
pytree is committed, so a checkpoint with a sidecar is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

_NAME = re.compile(r"^epoch_(\d+)\.json$")


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save(directory: str, epoch: int, tree: Any, meta: dict, *, keep: int = 2) -> str:
    """Saves ``tree`` (any pytree of arrays) and JSON ``meta`` as the checkpoint of ``epoch``.

    Keeps the newest ``keep`` checkpoints. Returns the checkpoint path.
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"epoch_{epoch}")
    if os.path.exists(path):
        shutil.rmtree(path)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, tree)
    ckptr.wait_until_finished()
    tmp = os.path.join(directory, f".epoch_{epoch}.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"epoch": epoch, **meta}, f)
    os.replace(tmp, os.path.join(directory, f"epoch_{epoch}.json"))
    for old in list_epochs(directory)[:-keep]:
        os.remove(os.path.join(directory, f"epoch_{old}.json"))
        shutil.rmtree(os.path.join(directory, f"epoch_{old}"), ignore_errors=True)
    return path


def list_epochs(directory: str) -> list[int]:
    """Epochs with a complete checkpoint in ``directory``, ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for f in os.listdir(directory) if (m := _NAME.match(f)))


def restore_latest(directory: str, target: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest complete checkpoint as ``(epoch, tree, meta)``, or None if there is none.

    ``target`` is a pytree with the structure, shapes and dtypes to restore into.
    """
    epochs = list_epochs(directory)
    if not epochs:
        return None
    epoch = epochs[-1]
    directory = os.path.abspath(directory)
    tree = ocp.StandardCheckpointer().restore(os.path.join(directory, f"epoch_{epoch}"), _abstract(target))
    with open(os.path.join(directory, f"epoch_{epoch}.json")) as f:
        meta = json.load(f)
    return epoch, tree, meta
