"""Strips outputs and execution counts from notebooks, or checks that they have none.

Notebooks are committed without outputs (small diffs, no stale numbers)::

    python examples/strip_outputs.py examples/tutorial.ipynb           # strip in place
    python examples/strip_outputs.py --check examples/tutorial.ipynb   # exit 1 if outputs are present

``tests/test_notebook.py`` runs the check on every notebook in ``examples/``.
"""

from __future__ import annotations

import argparse
import sys

import nbformat


def dirty_cells(nb) -> list[int]:
    """Indices of the code cells that carry outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def strip(nb):
    """Removes every code cell's outputs and execution count (in place); returns the notebook."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="notebooks")
    parser.add_argument("--check", action="store_true", help="only report notebooks with outputs (exit 1)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        nb = nbformat.read(path, as_version=4)
        dirty = dirty_cells(nb)
        if args.check:
            if dirty:
                print(f"{path}: outputs in code cells {dirty}; run python examples/strip_outputs.py {path}")
                status = 1
        elif dirty:
            nbformat.write(strip(nb), path)
            print(f"{path}: stripped {len(dirty)} cells")
    return status


if __name__ == "__main__":
    sys.exit(main())
