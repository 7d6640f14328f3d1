"""`python -m experiments.paper --quick` draws every figure, with captions, provenance and figures/README.md."""

import json
import os

import pytest
from PIL import Image

from experiments import paper
from experiments.common import STATUSES


def test_figure_selection_by_number_or_name_and_clear_errors():
    assert [f.number for f in paper.select(["4", "loss_zoo"])] == [4, 7]
    assert len(paper.select(None)) == len(paper.FIGURES) == 11
    with pytest.raises(ValueError, match="valid: 1/sb_lb_surfaces"):
        paper.select(["12"])
    assert sorted(f.number for f in paper.FIGURES) == list(range(1, 12))
    assert len({f.name for f in paper.FIGURES}) == 11
    assert paper.FIGURES[9].name == "training_claims" and paper.config_for(paper.FIGURES[9], False).seeds == tuple(
        range(10))


@pytest.mark.slow
def test_quick_paper_draws_every_figure(tmp_path, quick_results):
    # Reuses the quick studies the end-to-end study tests stored (or runs them when alone).
    out, figs = str(quick_results), str(tmp_path / "figures")
    paper.main(["--quick", "--out", out, "--figures", figs])
    with open(os.path.join(figs, "index.json")) as fh:
        index = json.load(fh)
    assert sorted(map(int, index)) == list(range(1, 12))
    for f in paper.FIGURES:
        for ext in ("png", "pdf"):
            path = os.path.join(figs, f"{f.name}.{ext}")
            assert os.path.getsize(path) > 5000, path
        with Image.open(os.path.join(figs, f"{f.name}.png")) as im:
            meta = im.text
        record = index[str(f.number)]
        assert meta["figure"] == str(f.number) and meta["study"] == f.study
        assert meta["config_hash"] == record["config_hash"] and len(meta["config_hash"]) == 12 and meta["jax"]
        assert meta["status"] == record["status"] in STATUSES and meta["verdict"] == record["verdict"]
        # The claim is the study's own; the evidence holds the rule.
        assert record["claim"] == f.module.CLAIM and record["rule"] == record["evidence"]["rule"]
        assert record["quick"]
    with open(os.path.join(figs, "README.md")) as fh:
        readme = fh.read()
    for f in paper.FIGURES:
        record = index[str(f.number)]
        assert f"({f.name}.png)" in readme and f"--only {f.number}" in readme
        assert f"- **Verdict:** **{record['status']}**" in readme and record["claim"] in readme
    # A second run reuses every stored study result: nothing is retrained.
    before = {r["study"]: r["study_seconds"] for r in index.values()}
    paper.main(["--quick", "--only", "9", "--out", out, "--figures", figs])
    with open(os.path.join(figs, "index.json")) as fh:
        again = json.load(fh)
    assert again["9"]["study_seconds"] == before["depth"]
