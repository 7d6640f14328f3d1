"""Every study has the same shape; paper.py draws nothing; the one flag parser takes exact names only."""

import ast
import dataclasses
import importlib
import inspect
import os

import pytest

from experiments import common, paper
from experiments.common import Verdict, combine, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = sorted(
    name[:-3] for name in os.listdir(os.path.join(ROOT, "experiments"))
    if name.endswith(".py") and name not in ("__init__.py", "common.py", "paper.py")
)


def test_the_study_list_is_complete():
    assert STUDIES == ["connectivity", "depth", "loss_zoo", "natural_gradient", "noise", "reparam", "sharpness",
                       "spectrum", "stability", "surfaces", "train"]
    assert sorted(f.study for f in paper.FIGURES) == STUDIES


def _params(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_exposes_the_protocol(name):
    study = importlib.import_module(f"experiments.{name}")
    assert dataclasses.is_dataclass(study.Config) and study.Config.__dataclass_params__.frozen
    assert (study.Config.__doc__ or "").strip()
    config = study.quick()
    assert type(config) is study.Config
    assert config != study.Config(), "quick() must differ from the real run"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # noqa: B010 - every study's config is frozen (any field name raises)
    assert not hasattr(study, "quick_config")
    empty = inspect.Parameter.empty
    assert _params(study.run) == [("config", empty), ("out_dir", empty)]
    assert _params(study.figure) == [("rows", empty), ("ax", None)]
    assert _params(study.verdict) == [("rows", empty)]
    assert _params(study.main) == [("argv", None)]
    if hasattr(study, "extra_figures"):
        assert _params(study.extra_figures) == [("rows", empty)]
    for fn in (study.run, study.figure, study.verdict, study.main):
        assert (fn.__doc__ or "").strip(), f"{name}.{fn.__name__} has no docstring"
    assert isinstance(study.EXPERIMENT, str) and isinstance(study.FIGURE, str)
    assert isinstance(study.CLAIM, str) and study.CLAIM.strip()
    # The module docstring names the figure it feeds and the command.
    assert f"figures/{study.FIGURE}" in study.__doc__ and f"python -m experiments.{name}" in study.__doc__
    # main only parses flags through the common parser (no parser of its own).
    source = inspect.getsource(study)
    assert "argparse" not in source and "parse_config(Config" in inspect.getsource(study.main)


def _calls(tree) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value.id if isinstance(node.value, ast.Name) else ""
            out.append(f"{base}.{node.attr}")
        elif isinstance(node, ast.Name):
            out.append(node.id)
    return out


def test_paper_defines_no_figure_code():
    with open(paper.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("matplotlib" in (m or "") or "losslab.plot" in (m or "") or (m or "") == "PIL" for m in imported)
    functions = [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not [n for n in functions if n.startswith(("build", "draw", "plot", "_plt"))]
    names = _calls(tree)
    drawing = ("plt", "ax", "axes", "add_subplot", "subplots", "add_gridspec", "suptitle", "savefig", "subfigures",
               "plot", "errorbar", "contour", "imshow", "set_xlabel", "set_ylabel", "set_title", "legend")
    found = [n for n in names if n.split(".")[0] in ("plt", "ax", "axes") or n.split(".")[-1] in drawing]
    assert not found, f"paper.py draws: {found}"
    # Every caption is built from the study's verdict: no claim text lives in paper.py.
    source = ast.unparse(tree)
    for name in STUDIES:
        claim = importlib.import_module(f"experiments.{name}").CLAIM
        assert claim[:40] not in source, name


def test_caption_is_built_from_the_verdict():
    fig = paper.FIGURES[3]
    v = Verdict("λ_max hovers at 2/η.", "inconclusive", {"rule": "a rule", "summary": "the numbers."})
    text = paper.caption(fig, v)
    assert text == "Fig. 4. Edge of stability. Claim: λ_max hovers at 2/η. Verdict: inconclusive: the numbers."


# --------------------------------------------------------------------------
# Verdict values


def test_verdict_validates_status_and_evidence():
    with pytest.raises(ValueError, match="status must be one of"):
        Verdict("c", "holds in part", {"rule": "r", "summary": "s"})
    with pytest.raises(ValueError, match="'rule'"):
        Verdict("c", "holds", {"summary": "s"})
    with pytest.raises(ValueError, match="claim"):
        Verdict(" ", "holds", {"rule": "r", "summary": "s"})


@pytest.mark.parametrize("parts, status", [
    ({"a": True, "b": True}, "holds"),
    ({"a": False, "b": False}, "does not hold"),
    ({"a": False, "b": None}, "does not hold"),
    ({"a": True, "b": False}, "inconclusive"),
    ({"a": True, "b": None}, "inconclusive"),
    ({"a": None}, "inconclusive"),
    ({}, "inconclusive"),
])
def test_combine_reads_the_parts(parts, status):
    assert combine(parts) == status


# --------------------------------------------------------------------------
# The flag parser


@dataclasses.dataclass(frozen=True)
class _Cfg:
    epoch_cap: int = 60
    seeds: tuple[int, ...] = (0, 1)
    base_seed: int = 0
    rate: float = 0.1
    name: str = "x"
    flag: bool = False
    limit: int | None = None
    grid: tuple[tuple[str, tuple[float, ...]], ...] = (("a", (1.0,)),)


@pytest.mark.parametrize("flag, near", [("--epoch", "epoch_cap"), ("--seed", "seeds"), ("--epoch-c", "epoch_cap")])
def test_abbreviated_flags_are_rejected_listing_the_valid_fields(flag, near, capsys):
    with pytest.raises(SystemExit):
        parse_config(_Cfg, [flag, "1"])
    err = capsys.readouterr().err
    assert f"unknown flag {flag}" in err and f"--{near}" in err
    assert "Valid fields: epoch_cap, seeds, base_seed, rate, name, flag, limit, grid" in err


def test_real_study_flags_are_exact_too(capsys):
    from experiments import sharpness

    with pytest.raises(SystemExit):
        parse_config(sharpness.Config, ["--epoch", "1"], quick=sharpness.quick)
    err = capsys.readouterr().err
    assert "epoch_cap" in err and "measure_seed" in err and "--quick" in err
    with pytest.raises(SystemExit):
        parse_config(sharpness.Config, ["--seed", "3"])
    assert "did you mean --seeds" in capsys.readouterr().err


@pytest.mark.parametrize("argv, field, expected", [
    (["--epoch_cap", "many"], "epoch_cap", "int"),
    (["--rate", "fast"], "rate", "float"),
    (["--seeds", "0,x"], "seeds", "comma-separated int"),
    (["--flag", "maybe"], "flag", "bool"),
    (["--limit", "ten"], "limit", "int"),
    (["--grid", "a"], "grid", "cannot be set from the command line"),
])
def test_a_bad_value_names_the_field_and_the_type(argv, field, expected, capsys):
    with pytest.raises(SystemExit):
        parse_config(_Cfg, argv)
    err = capsys.readouterr().err
    assert f"--{field} (field {field!r} of type" in err and expected in err


def test_exact_flags_in_both_spellings_set_fields():
    cfg, out = parse_config(_Cfg, ["--epoch_cap", "7", "--epoch-cap", "8", "--seeds", "3,4", "--base-seed", "2",
                                   "--flag", "yes", "--limit", "none", "--out", "o"])
    assert cfg == _Cfg(epoch_cap=8, seeds=(3, 4), base_seed=2, flag=True) and out == "o"
    assert parse_config(_Cfg, ["--limit", "5"])[0].limit == 5


def test_start_points_quick_and_full_and_positional_leftovers(capsys):
    cfg, _ = parse_config(_Cfg, ["--quick", "--rate", "0.5"], quick=lambda: _Cfg(name="q"), full=lambda: _Cfg(name="f"))
    assert cfg == _Cfg(name="q", rate=0.5)
    assert parse_config(_Cfg, ["--full"], quick=_Cfg, full=lambda: _Cfg(name="f"))[0].name == "f"
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--quick", "--full"], quick=_Cfg, full=_Cfg)
    assert "exclusive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["7"])
    assert "every value follows a --<field> flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--quick"])  # no quick variant was given
    assert "unknown flag --quick" in capsys.readouterr().err


def test_panels_take_a_figure_or_subfigure_not_an_axes():
    import matplotlib.pyplot as plt

    fig = plt.figure()
    sub = fig.subfigures(1, 2)[0]
    assert common.panels(sub, (1, 1)) == (fig, sub)
    assert common.panels(fig, (1, 1)) == (fig, fig)
    with pytest.raises(TypeError, match="Figure or SubFigure"):
        common.panels(fig.add_subplot(), (1, 1))
    plt.close(fig)
