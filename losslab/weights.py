r"""Weights from elsewhere: params (or state) from ``.npz``, ``.safetensors`` and orbax checkpoints.

A stored file is a flat set of **named arrays**; a target is any params (or state) pytree — nested
dicts for Flax NNX / linen / haiku, an equinox module, tuples and lists for plain functions. Every
target leaf has a name, the :func:`losslab.trees.path_str` of its key path (``"layers/0/kernel"``;
equinox modules give attribute paths such as ``"d1/weight"``), and :func:`load` fills each leaf with
the stored array of that name — or of the name ``mapping`` gives it:

.. code-block:: text

    target name  ──mapping──►  stored name  ──read──►  array  ──transpose?──►  shape check  ──►  cast to the leaf's dtype

================  ====================  ======================================================================
format            path                  stored names
================  ====================  ======================================================================
``"npz"``         ``*.npz`` file        the archive's keys (read with ``allow_pickle=False``)
``"safetensors"`` ``*.safetensors``     the tensor names (needs the optional ``safetensors`` package)
``"orbax"``       a folder              the restored tree flattened to ``"a/b/c"`` names, as ``path_str`` does
================  ====================  ======================================================================

Everything that does not fit is collected first and raised as **one** :class:`MismatchError` (a
``ValueError``) listing every missing, unexpected and mis-shaped entry, so one run shows the whole
mapping problem. :func:`save` writes the same names atomically, so ``load(save(path, params), params)``
round-trips, and :func:`names` / :func:`read` show the two sides when a mapping has to be written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from losslab.registry import lookup
from losslab.trees import leaf_paths, path_str

PyTree = Any
NameMap = Mapping[str, str] | Callable[[str], str] | Sequence[tuple[str, Any]] | None
Transpose = Callable[[str], bool] | Sequence[str] | set | frozenset | None


# ----------------------------------------------------------------------------
# Names


def names(tree: PyTree) -> list[str]:
    """The target names of ``tree``'s leaves (``path_str`` of each key path), in flatten order.

    These are the names :func:`load` looks up (before ``mapping``) and :func:`save` writes, e.g.
    ``["head/bias", "head/kernel", "layers/0/bias", "layers/0/kernel"]`` for an NNX MLP.
    """
    return leaf_paths(tree)


def named_arrays(tree: PyTree) -> dict[str, np.ndarray]:
    """``{name: leaf as a NumPy array}`` for every leaf of ``tree``; ``ValueError`` if two leaves share a name.

    Two leaves can only share a name when keys collide as strings (a dict with both ``0`` and ``"0"``).
    """
    arrays: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = path_str(path)
        if name in arrays:
            raise ValueError(f"two leaves of the tree have the same name {name!r}; rename one of the keys")
        arrays[name] = np.asarray(leaf)
    if not arrays:
        raise ValueError("the tree has no array leaves: nothing to save")
    return arrays


# ----------------------------------------------------------------------------
# Formats: read(path) -> {name: array}, write(path, {name: array}) (atomic)


class Format(NamedTuple):
    """One stored format: ``read(path) -> {name: np.ndarray}``, an atomic ``write(path, arrays)``, and its layout.

    Attributes:
      read: reads the named arrays; ``ValueError`` naming the path and the format if it is not such a file.
      write: writes the named arrays atomically (temp file or folder next to ``path``, then a rename).
      folder: whether the format is a folder (orbax) rather than one file.
      suffix: the file-name ending that selects the format (``""`` for folders).
    """

    read: Callable[[str], dict[str, np.ndarray]]
    write: Callable[[str, dict[str, np.ndarray]], None]
    folder: bool
    suffix: str


def _corrupt(path: str, fmt: str, error: Exception) -> ValueError:
    return ValueError(f"{path!r} is not a readable {fmt} file (truncated or corrupt?): {type(error).__name__}: {error}")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise _corrupt(path, "npz", e) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single .npy array, not the named arrays of an npz archive (np.savez)")
    with archive:
        arrays = {}
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except ValueError as e:
                raise ValueError(
                    f"entry {name!r} of {path!r} is not a plain numeric array ({e}); losslab reads npz files with "
                    "allow_pickle=False, so object (pickled) arrays are refused: store numeric arrays (np.savez of "
                    "arrays, or weights.save)"
                ) from e
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise _corrupt(path, "npz", e) from e
    return arrays


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    odd = sorted(name for name, a in arrays.items() if a.dtype.kind not in "biufc")
    if odd:
        raise ValueError(f"npz cannot store the dtypes of {odd} (e.g. bfloat16); save as safetensors or orbax, "
                         "or cast the tree first")

    def write(f):
        # Written member by member (as np.savez does) so that any name is allowed, "file" included.
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, a in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)

    _atomic_file(path, write)


def _safetensors():
    """The optional ``safetensors`` package: its NumPy API and its error type."""
    try:
        import safetensors.numpy as st
        from safetensors import SafetensorError
    except ImportError as e:
        raise ImportError("the safetensors format needs the optional dependency safetensors: "
                          "pip install safetensors (or losslab[safetensors])") from e
    return st, SafetensorError


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    st, error = _safetensors()
    try:
        return dict(st.load_file(path))
    except (error, OSError, ValueError) as e:
        raise _corrupt(path, "safetensors", e) from e


def _write_safetensors(path: str, arrays: dict[str, np.ndarray]) -> None:
    st, _ = _safetensors()
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    _atomic_file(path, lambda f: f.write(st.save(contiguous)))


def _read_orbax(path: str) -> dict[str, np.ndarray]:
    try:
        tree = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        steps = sorted((d for d in os.listdir(path) if d.isdigit()), key=int)
        hint = (f"; it looks like a CheckpointManager folder: pass one step's item folder, e.g. "
                f"{os.path.join(path, steps[-1], 'default')!r}") if steps else ""
        raise ValueError(f"{path!r} is not an orbax checkpoint folder (or an incomplete one): "
                         f"{type(e).__name__}: {e}{hint}") from e
    return {path_str(p): np.asarray(leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _nested(arrays: dict[str, np.ndarray]) -> dict:
    """``{"a/b": x}`` as ``{"a": {"b": x}}``, so that orbax writes (and restores) plain nested string keys."""
    root: dict = {}
    for name, a in arrays.items():
        *parents, last = name.split("/")
        node = root
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"the name {name!r} runs through another leaf's name; rename one of them")
        if last in node:
            raise ValueError(f"the name {name!r} is both a leaf and a prefix of other names; rename one of them")
        node[last] = a
    return root


def _write_orbax(path: str, arrays: dict[str, np.ndarray]) -> None:
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
    try:
        written = os.path.join(staging, base)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(written, _nested(arrays))
            checkpointer.wait_until_finished()
        if os.path.isdir(path):
            # A folder cannot be replaced in one rename: move the old one aside first, then drop it.
            os.replace(path, os.path.join(staging, ".old"))
        os.replace(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _atomic_file(path: str, write: Callable) -> None:
    parent, base = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


FORMATS: dict[str, Format] = {
    "npz": Format(_read_npz, _write_npz, folder=False, suffix=".npz"),
    "safetensors": Format(_read_safetensors, _write_safetensors, folder=False, suffix=".safetensors"),
    "orbax": Format(_read_orbax, _write_orbax, folder=True, suffix=""),
}


def infer_format(path, *, saving: bool = False) -> str:
    """The format of ``path``: ``.npz`` → npz, ``.safetensors`` → safetensors, a folder → orbax.

    With ``saving=True`` a path without a file extension also means orbax (the folder does not exist yet).
    Raises ``ValueError`` naming the path and the valid formats otherwise.
    """
    path = os.fspath(path)
    for name, fmt in FORMATS.items():
        if fmt.suffix and path.endswith(fmt.suffix):
            return name
    if os.path.isdir(path) or (saving and not os.path.splitext(path)[1]):
        return "orbax"
    valid = ", ".join(f"{n} ({f.suffix + ' file' if f.suffix else 'a folder'})" for n, f in FORMATS.items())
    raise ValueError(f"cannot tell the weights format of {path!r} from its name; valid formats: {valid}. "
                     "Pass format= to say which it is")


def _format_name(path: str, format: str | None, *, saving: bool) -> str:
    if format is not None:
        lookup(FORMATS, format, "weights format")
        return format
    return infer_format(path, saving=saving)


def read(path, *, format: str | None = None) -> dict[str, np.ndarray]:
    """The stored named arrays of a file or folder, ``{stored name: np.ndarray}`` — to see what a mapping must reach.

    Args:
      path: an ``.npz`` / ``.safetensors`` file or an orbax checkpoint folder.
      format: ``"npz"``, ``"safetensors"`` or ``"orbax"``; None infers it from the path (:func:`infer_format`).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unknown ``format`` (or one that cannot be inferred), a folder given for a file format or a file
        for orbax, a truncated or corrupt file, a folder that is not an orbax checkpoint, an npz with object arrays.
    """
    path = os.fspath(path)
    if format is not None:
        lookup(FORMATS, format, "weights format")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file or checkpoint folder at {path!r}")
    name = format or infer_format(path)
    fmt = FORMATS[name]
    if fmt.folder != os.path.isdir(path):
        kind = "a folder" if os.path.isdir(path) else "a file"
        raise ValueError(f"{path!r} is {kind}, but {name} weights are {'a folder' if fmt.folder else 'one file'}")
    return fmt.read(path)


# ----------------------------------------------------------------------------
# Matching target names to stored names


def stored_name_fn(mapping: NameMap) -> Callable[[str], str]:
    """``mapping`` as a function target name → stored name (the identity for None).

    A dict maps the names it lists and leaves the others unchanged; a callable is used as is; a list of
    ``(regex, replacement)`` pairs is applied in order with ``re.sub`` (a replacement may be a function of
    the match). Raises ``ValueError`` for a malformed list or an invalid regex.
    """
    if mapping is None:
        return lambda name: name
    if isinstance(mapping, Mapping):
        return lambda name: mapping.get(name, name)
    if callable(mapping):
        return mapping
    rules = []
    for rule in mapping:
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(f"mapping rules are (regex, replacement) pairs; got {rule!r}")
        try:
            rules.append((re.compile(rule[0]), rule[1]))
        except re.error as e:
            raise ValueError(f"mapping regex {rule[0]!r} is invalid: {e}") from e

    def apply(name: str) -> str:
        for pattern, replacement in rules:
            name = pattern.sub(replacement, name)
        return name

    return apply


def transpose_fn(transpose: Transpose) -> Callable[[str], bool]:
    """``transpose`` as a predicate on target names: None → never, a set / list of names → membership."""
    if transpose is None:
        return lambda name: False
    if callable(transpose):
        return transpose
    if isinstance(transpose, str):
        raise ValueError(f"transpose takes a set of target names or a callable, got the string {transpose!r}")
    chosen = frozenset(transpose)
    return lambda name: name in chosen


class MismatchError(ValueError):
    """The stored entries do not fit the target; the message lists every problem at once.

    Attributes:
      missing: ``(target name, stored name looked for)`` for targets with no stored array.
      unexpected: stored names no target used (an error only with ``strict=True``).
      misshaped: ``(target name, stored name, stored shape, expected shape)``; the stored shape is the one after
        ``transpose`` (with the dtype when it is not numeric, e.g. bfloat16 stored in an npz).
      unknown: names in a dict ``mapping`` or a ``transpose`` set that are not target names.
    """

    def __init__(self, message: str, missing, unexpected, misshaped, unknown):
        super().__init__(message)
        self.missing, self.unexpected, self.misshaped, self.unknown = missing, unexpected, misshaped, unknown


class _Plan(NamedTuple):
    arrays: list  # per target leaf: the stored array (transposed as asked), or None when missing
    missing: list
    unexpected: list
    misshaped: list
    unknown: list
    transposed: set  # the target names whose stored array was transposed


def _leaf_spec(leaf) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    leaf = jnp.asarray(leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _plan(targets, stored, mapping: NameMap, transpose: Transpose) -> _Plan:
    """Matches every target leaf to its stored array; collects, rather than raises, what does not fit."""
    to_stored, transposed = stored_name_fn(mapping), transpose_fn(transpose)
    arrays, missing, misshaped, used, flipped = [], [], [], set(), set()
    for name, leaf in targets:
        key = to_stored(name)
        if not isinstance(key, str):
            raise TypeError(f"mapping gave {key!r} for target {name!r}; stored names are strings")
        if key not in stored:
            arrays.append(None)
            missing.append((name, key))
            continue
        used.add(key)
        a = np.asarray(stored[key])
        if transposed(name):
            a = np.transpose(a)
            flipped.add(name)
        expected, _ = _leaf_spec(leaf)
        numeric = jnp.issubdtype(a.dtype, jnp.number) or a.dtype == np.bool_  # ml_dtypes' bfloat16 included
        if a.shape != expected or not numeric:
            misshaped.append((name, key, a.shape if numeric else f"{a.shape} of non-numeric {a.dtype}", expected))
        arrays.append(a)
    target_names = {name for name, _ in targets}
    listed = list(mapping) if isinstance(mapping, Mapping) else []
    listed += [] if transpose is None or callable(transpose) else list(transpose)
    unknown = sorted({n for n in listed if n not in target_names})
    unexpected = sorted(k for k in stored if k not in used)
    return _Plan(arrays, missing, unexpected, misshaped, unknown, flipped)


def _message(path: str, fmt: str, plan: _Plan, strict: bool, stored) -> str:
    lines = [f"cannot load {path!r} ({fmt}) into the target pytree:"]
    if plan.missing:
        lines.append(f"  missing ({len(plan.missing)}), no stored array for these targets:")
        lines += [f"    {t!r} (looked for {s!r})" for t, s in plan.missing]
    if plan.misshaped:
        lines.append(f"  mis-shaped ({len(plan.misshaped)}), stored shape vs the target's:")
        for t, s, got, want in plan.misshaped:
            shown = f"{tuple(np.shape(stored[s]))}, transposed {got}" if t in plan.transposed else f"{got}"
            lines.append(f"    {t!r}{f' (stored as {s!r})' if s != t else ''}: stored {shown}, expected {want}")
    if plan.unknown:
        lines.append(f"  mapping / transpose name these non-targets ({len(plan.unknown)}): {plan.unknown}")
    if plan.unexpected:
        what = ("unexpected" if strict else "unused, ignored with strict=False")
        lines.append(f"  {what} ({len(plan.unexpected)}), stored arrays no target uses:")
        lines += [f"    {s!r} {tuple(np.shape(stored[s]))}" for s in plan.unexpected]
        if strict:
            lines.append("  (pass strict=False to ignore unused stored arrays)")
    lines.append("weights.names(like) lists the target names and weights.read(path) the stored ones; "
                 "mapping= translates target names to stored names, transpose= flips (out, in) kernels")
    return "\n".join(lines)


def _cast(a: np.ndarray, target_dtype: np.dtype, dtype) -> jax.Array:
    if dtype is not None and jnp.issubdtype(target_dtype, jnp.inexact):
        target_dtype = dtype
    return jnp.asarray(a, dtype=target_dtype)


def load(
    path,
    like: PyTree,
    *,
    mapping: NameMap = None,
    transpose: Transpose = None,
    format: str | None = None,
    strict: bool = True,
    dtype=None,
) -> PyTree:
    r"""Reads params (or state) from a file or folder into a pytree with exactly the structure of ``like``.

    Each leaf of ``like`` (e.g. ``objective.params`` or ``objective.state``; its arrays are used only for their
    shapes and dtypes, ``jax.ShapeDtypeStruct`` leaves work too) has a target name, ``path_str`` of its key path
    (see :func:`names`). ``mapping`` turns it into the stored name; the stored array is transposed if
    ``transpose`` says so, must then have the leaf's shape, and is cast to the leaf's dtype (or to ``dtype``).

    Args:
      path: an ``.npz`` or ``.safetensors`` file, or an orbax checkpoint folder (``StandardCheckpointer`` /
        ``PyTreeCheckpointer`` layout; its tree is restored as saved and flattened to ``"a/b/c"`` names).
      like: the target pytree (nested dicts, an equinox module's params, tuples / lists, any registered nodes).
      mapping: target name → stored name. A dict ``{target: stored}`` (unlisted names map to themselves), a
        callable, or a list of ``(regex, replacement)`` pairs applied in order with ``re.sub``, e.g.
        ``[(r"^layers/(\d+)/", lambda m: f"fc{int(m[1]) + 1}."), (r"kernel$", "weight")]`` reads the
        PyTorch-style ``"fc1.weight"`` into ``"layers/0/kernel"``.
      transpose: the target names whose stored array is transposed (all axes reversed, ``.T`` for 2-D): a set
        of names or a callable ``name -> bool``. The usual case is a PyTorch Linear weight ``(out, in)`` read
        into a Flax / haiku kernel ``(in, out)``: ``transpose=lambda name: name.endswith("kernel")``.
        (Conv kernels need a permutation other than the reversal: transpose those before saving.)
      format: ``"npz"``, ``"safetensors"`` or ``"orbax"``; None infers it from ``path`` (:func:`infer_format`).
      strict: with True (default) stored arrays that no target uses are an error; with False they are ignored.
      dtype: the dtype of every floating-point leaf (e.g. ``jnp.float64``; needs ``jax_enable_x64``); integer
        and boolean leaves keep the dtype of ``like``. None keeps each leaf's dtype.

    Returns:
      A pytree with the structure of ``like`` whose leaves are ``jax.Array`` s.

    Raises:
      MismatchError: (a ``ValueError``), before anything is returned, with one message listing every missing
        target (and the stored name it looked for), every mis-shaped entry (stored and expected shape), every
        unexpected stored array (only with ``strict=True``), and mapping / transpose names that are no targets.
      FileNotFoundError: ``path`` does not exist.
      ValueError: an unknown or uninferable format, a truncated or corrupt file, a folder that is not an orbax
        checkpoint, an npz holding object arrays (npz files are read with ``allow_pickle=False``); see :func:`read`.
      TypeError: a callable ``mapping`` returned something other than a string.
    """
    path = os.fspath(path)
    stored = read(path, format=format)
    fmt = _format_name(path, format, saving=False)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    targets = [(path_str(p), leaf) for p, leaf in leaves]
    plan = _plan(targets, stored, mapping, transpose)
    if plan.missing or plan.misshaped or plan.unknown or (strict and plan.unexpected):
        raise MismatchError(_message(path, fmt, plan, strict, stored), plan.missing,
                            plan.unexpected if strict else [], plan.misshaped, plan.unknown)
    cast = [_cast(a, _leaf_spec(leaf)[1], dtype) for a, (_, leaf) in zip(plan.arrays, targets)]
    return jax.tree_util.tree_unflatten(treedef, cast)


def save(path, tree: PyTree, *, format: str | None = None) -> str:
    """Writes ``tree``'s leaves as named arrays (the names of :func:`names`), atomically; returns ``path``.

    The file is written to a temporary file (an orbax checkpoint to a temporary folder) next to ``path`` and
    renamed into place, so ``path`` is either the old file or the complete new one. An existing orbax folder
    at ``path`` is replaced.

    Args:
      path: ``*.npz``, ``*.safetensors``, or a folder for orbax (an existing folder, or a path without extension).
      tree: any pytree of arrays (params, state, ``{"params": ..., "state": ...}``, a dict of PyTorch-style names).
      format: ``"npz"``, ``"safetensors"`` or ``"orbax"``; None infers it from ``path``.

    Raises:
      ValueError: an unknown or uninferable format, a tree without leaves, two leaves with the same name, a
        dtype npz cannot store (bfloat16: use safetensors or orbax).
    """
    path = os.fspath(path)
    FORMATS[_format_name(path, format, saving=True)].write(path, named_arrays(tree))
    return path


__all__ = [
    "FORMATS",
    "Format",
    "MismatchError",
    "infer_format",
    "load",
    "named_arrays",
    "names",
    "read",
    "save",
    "stored_name_fn",
    "transpose_fn",
]
