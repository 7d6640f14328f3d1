"""The example notebooks: committed without outputs (fast check) and executable top to bottom (slow)."""

import importlib.util
import pathlib
import time

import nbformat
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
TUTORIAL = EXAMPLES / "tutorial.ipynb"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
# Per-cell limit: the whole tutorial takes about three minutes on 2 CPU cores, its slowest cell well under one.
CELL_TIMEOUT = 600


def strip_outputs():
    spec = importlib.util.spec_from_file_location("strip_outputs", EXAMPLES / "strip_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_committed_without_outputs():
    assert TUTORIAL in NOTEBOOKS
    strip = strip_outputs()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = strip.dirty_cells(nb)
        assert not dirty, f"{path.name}: outputs in code cells {dirty}; run python examples/strip_outputs.py {path}"


def test_strip_outputs_script(tmp_path, capsys):
    strip = strip_outputs()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[1].execution_count = 1
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert strip.main(["--check", str(path)]) == 1 and "code cells [1]" in capsys.readouterr().out
    assert strip.main([str(path)]) == 0
    assert strip.main(["--check", str(path)]) == 0
    assert nbformat.read(path, as_version=4).cells[1].source == "1 + 1"


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{TUTORIAL.name}: a cell failed\n{err}", pytrace=False)
    print(f"{TUTORIAL.name} ran in {time.perf_counter() - start:.0f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
