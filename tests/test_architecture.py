"""The package's structure: layered imports (import-linter), no imports inside functions, short functions,
no private names across modules, and one protocol for every study."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "losslab"
MAX_FUNCTION_LINES = 80
# Function-level imports allowed only for optional or heavy third-party dependencies.
OPTIONAL_IMPORTS = {"pandas", "sklearn", "mnist1d", "importlib", "matplotlib", "os", "equinox", "haiku", "safetensors", "grain"}


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_level_losslab_imports():
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    root = (node.module or "").split(".")[0] if node.level == 0 else "losslab"
                elif isinstance(node, ast.Import):
                    root = node.names[0].name.split(".")[0]
                else:
                    continue
                if root == "losslab" or root not in OPTIONAL_IMPORTS:
                    offenders.append(f"{_module_name(path)}.{fn.name}:{node.lineno} imports {root}")
    assert not offenders, "imports inside functions (move the code to the right layer):\n" + "\n".join(offenders)


def _code_lines(fn) -> int:
    """Lines of a function from its ``def`` to its end, its docstring not counted (docstrings are encouraged)."""
    length = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        length -= first.end_lineno - first.lineno + 1
    return length


def test_no_function_longer_than_the_limit():
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for fn in _functions(tree):
            length = _code_lines(fn)
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{_module_name(path)}.{fn.name}: {length} lines")
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(offenders)


def test_no_private_names_across_modules():
    """No ``from losslab.x import _name``, no ``losslab`` module named ``_x``, no ``module._name`` use."""
    offenders = []
    imported_modules = {}
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("losslab"):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        offenders.append(f"{_module_name(path)}:{node.lineno} imports {alias.name}")
                    imported_modules[alias.asname or alias.name] = node.module
                if any(part.startswith("_") for part in node.module.split(".")):
                    offenders.append(f"{_module_name(path)}:{node.lineno} imports from {node.module}")
        names = {n for n, m in imported_modules.items()}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in names
            ):
                offenders.append(f"{_module_name(path)}:{node.lineno} uses {node.value.id}.{node.attr}")
        imported_modules.clear()
    for path in _modules():
        if path.name.startswith("_") and path.name != "__init__.py":
            offenders.append(f"private module {path.relative_to(ROOT)}")
    assert not offenders, "private names used across modules:\n" + "\n".join(offenders)


def test_no_private_jax_api():
    offenders = [
        f"{path.relative_to(ROOT)}"
        for path in _modules()
        if "_cache_size" in path.read_text() or "jax._src" in path.read_text()
    ]
    assert not offenders, f"private JAX APIs used in {offenders}"


@pytest.mark.skipif(shutil.which("lint-imports") is None and shutil.which(str(pathlib.Path(sys.executable).parent / "lint-imports")) is None, reason="import-linter is in the dev extra")
def test_import_layers_contract():
    exe = shutil.which(str(pathlib.Path(sys.executable).parent / "lint-imports")) or "lint-imports"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
