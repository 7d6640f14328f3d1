"""The reparametrization study: the function is preserved, curvature moves, invariant measures do not."""

import pytest

from experiments import reparam

# Rescaled float32 networks agree to round-off (~1e-7 relative); 1e-4 catches any real change.
OUTPUT_RTOL = 1e-4
# Declared-invariant measures move by round-off only (ascent/bisection paths included; the quick
# model's magnitude-aware average sharpness is a ~4e-5 difference of O(1) float32 losses, ~0.5 %
# round-off); a wrong rescaling (a sign, α instead of 1/α) moves them by factors.
INVARIANT_RTOL = 0.03


def _row(kind, x, ratios, invariant, diff=1e-6):
    cfg = {"kind": kind, **({"alpha": x, "layer": 0} if kind == "layer" else {"log_std": x})}
    measures = {n: {"before": 1.0, "after": r, "ratio": r, "relative_change": abs(r - 1),
                    "declared_invariant": invariant[n], "consistent": not (invariant[n] and abs(r - 1) > 1e-2)}
                for n, r in ratios.items()}
    return cfg, {"output_max_abs_diff": diff, "output_max_abs": 10.0, "measures": measures}


def test_summary_and_verdict_read_the_ratios():
    # The rescalings of reparam.run's rows, as (config, metrics) pairs.
    inv = {"data_hessian_trace": False, "path_norm": True}
    rows = [_row("layer", 1.0, {"data_hessian_trace": 1.0, "path_norm": 1.0}, inv, diff=0.0),
            _row("layer", 10.0, {"data_hessian_trace": 100.0, "path_norm": 1.0 + 1e-6}, inv),
            _row("node", 1.0, {"data_hessian_trace": 0.1, "path_norm": 1.0}, inv)]
    s = reparam.summarize(rows)
    per = {e["measure"]: e for e in s["per_measure"]}
    assert per["data_hessian_trace"]["layer_max_abs_log10_ratio"] == pytest.approx(2.0)
    assert per["data_hessian_trace"]["node_max_abs_log10_ratio"] == pytest.approx(1.0)
    assert per["path_norm"]["layer_invariant"] and per["path_norm"]["layer_consistent"]
    assert s["output_max_abs_diff"] == pytest.approx(1e-6)
    text = reparam.verdict({"model": {}, "rescalings": rows}).evidence["summary"]
    assert "EXCEPT" not in text and "data_hessian_trace ×10^2 (layer-wise)" in text
    # A declared invariance that fails is named in the verdict, and contradicts the claim.
    bad = rows + [_row("layer", 5.0, {"data_hessian_trace": 20.0, "path_norm": 5.0}, inv)]
    v = reparam.verdict({"model": {}, "rescalings": bad})
    assert "EXCEPT path_norm (layer-wise" in v.evidence["summary"]
    assert v.evidence["parts"]["invariant_measures_unmoved"] is False


@pytest.mark.slow
def test_quick_reparam_study_preserves_the_function_and_moves_curvature(quick_results):
    config = reparam.quick()
    result = reparam.run(config, str(quick_results))
    rows = result["rescalings"]
    assert {(c["kind"], c.get("alpha", c.get("log_std"))) for c, _ in rows} == {
        ("layer", a) for a in config.alphas} | {("node", s) for s in config.node_log_stds}
    for cfg, m in rows:
        assert m["output_max_abs_diff"] <= OUTPUT_RTOL * m["output_max_abs"], cfg["name"]
        for name, r in m["measures"].items():
            if r["declared_invariant"]:
                assert r["ratio"] == pytest.approx(1.0, rel=INVARIANT_RTOL), (cfg["name"], name, r)
        if cfg["kind"] == "layer" and cfg["alpha"] == 1.0:
            assert all(r["ratio"] == pytest.approx(1.0, rel=1e-6) for r in m["measures"].values())
    ten = next(m for c, m in rows if c["kind"] == "layer" and c["alpha"] == 10.0)
    assert ten["measures"]["data_hessian_trace"]["ratio"] > 2
    assert ten["measures"]["data_hessian_lambda_max"]["ratio"] > 2
    # The product of spectral norms is invariant layer-wise only.
    assert ten["measures"]["spectral_product"]["declared_invariant"]
    node = next(m for c, m in rows if c["kind"] == "node")
    assert not node["measures"]["spectral_product"]["declared_invariant"]
    per = {e["measure"]: e for e in reparam.summarize(rows)["per_measure"]}
    assert per["data_hessian_trace"]["layer_max_abs_log10_ratio"] > 0.3
    v = reparam.verdict(result)
    assert v.evidence["function_preserved"] and v.evidence["parts"]["invariant_measures_unmoved"] is True
    assert v.evidence["summary"].startswith("outputs change by at most")
    fig = reparam.figure(result)
    assert [ax.get_yscale() for ax in fig.axes] == ["log"] * 3
