"""Every code block of the README runs: Python blocks execute, shell blocks name real commands."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def blocks(language: str) -> list[str]:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_has_code_blocks():
    assert len(blocks("python")) >= 3
    assert len(blocks("bash")) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, tmp_path):
    code = blocks("python")[index]
    # A stored run for the "loading stored results" block to find.
    from losslab.results import RunStore

    RunStore(str(tmp_path / "results"), "sharpness").save({"name": "demo", "batch_size": 64}, {"gap_error": 0.1})
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"README python block {index} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_quick_start_is_two_commands_and_ci_runs_the_test_command():
    quick = blocks("bash")[0].strip().splitlines()
    assert len(quick) == 2
    install_run, install_test = quick
    assert install_run.startswith("pip install -e . && python -m experiments.")
    assert install_test == 'pip install -e ".[dev]" && python -m pytest'
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert 'pip install --quiet -e ".[dev]"' in ci and "python -m pytest" in ci


def test_every_shell_command_names_an_existing_module_with_a_main():
    for block in blocks("bash"):
        for line in block.strip().splitlines():
            for command in line.split("&&"):
                argv = shlex.split(command)
                if argv[:2] == ["python", "-m"] and argv[2] != "pytest":
                    spec = importlib.util.find_spec(argv[2])
                    assert spec is not None, f"README names a missing module {argv[2]}"
                    with open(spec.origin, encoding="utf-8") as f:
                        assert "def main(" in f.read(), argv[2]


def test_main_job_is_the_sharpness_study():
    """Its quick configuration runs end to end in tests/test_experiment_sharpness.py."""
    assert blocks("bash")[0].strip().splitlines()[0] == "pip install -e . && python -m experiments.sharpness"
