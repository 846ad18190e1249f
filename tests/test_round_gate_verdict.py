"""The round's verdict is the paired tests' (McNemar for rates, bootstrap for field accuracy), never after > before."""

from __future__ import annotations

import pytest

from tuneloop.eval.compare import round_verdict
from tuneloop.eval.runner import EvalError
from tuneloop.eval.stats import compare_binary, compare_scores


def comparison(schema_before, schema_after, fields_before, fields_after, alpha=0.05) -> dict:
    return {"kind": "comparison", "alpha": alpha, "modes": {"unconstrained": {"metrics": {
        "schema_valid": compare_binary(schema_before, schema_after, alpha),
        "field_accuracy": compare_scores(fields_before, fields_after, alpha)}}}}


def test_a_higher_rate_within_chance_is_no_significant_change():
    # 10/20 → 12/20 schema-valid and a slightly higher mean field accuracy: higher, but chance explains it
    before = [True] * 10 + [False] * 10
    after = [True] * 10 + [True, True] + [False] * 8
    fields_before = [0.5, 0.6, 0.4, 0.7, 0.5] * 4
    fields_after = [0.6, 0.5, 0.5, 0.6, 0.6] * 4
    verdict = round_verdict(comparison(before, after, fields_before, fields_after))
    assert verdict["verdict"] == "no significant change"
    assert verdict["metrics"]["schema_valid"]["delta"] > 0
    assert verdict["metrics"]["schema_valid"]["verdict"] == "no change"


def test_a_significant_gain_without_a_loss_is_improved():
    before = [False] * 30
    after = [True] * 25 + [False] * 5
    verdict = round_verdict(comparison(before, after, [0.1] * 30, [0.8] * 25 + [0.1] * 5))
    assert verdict["verdict"] == "improved"
    assert verdict["metrics"]["schema_valid"]["evidence"].startswith("McNemar p = ")
    assert verdict["metrics"]["field_accuracy"]["verdict"] == "better"


def test_a_significant_loss_on_any_metric_is_worse_even_beside_a_gain():
    before, after = [False] * 30, [True] * 25 + [False] * 5
    verdict = round_verdict(comparison(before, after, [0.9] * 30, [0.2] * 30))
    assert verdict["verdict"] == "worse"


def test_the_configured_alpha_decides():
    # 9 discordant pairs, all better: exact McNemar p = 2 * 0.5**9 ≈ 0.0039
    before, after = [False] * 9 + [True] * 11, [True] * 20
    data = {"kind": "comparison", "alpha": 0.05,
            "modes": {"unconstrained": {"metrics": {"schema_valid": compare_binary(before, after, 0.05)}}}}
    assert round_verdict(data, alpha=0.05)["verdict"] == "improved"
    assert round_verdict(data, alpha=0.001)["verdict"] == "no significant change"


def test_a_bootstrap_interval_drawn_at_another_alpha_is_refused():
    data = comparison([True] * 10, [True] * 10, [0.5] * 10, [0.6] * 10, alpha=0.05)
    with pytest.raises(EvalError, match="compare again"):
        round_verdict(data, alpha=0.01)


def test_without_schema_metrics_exact_match_decides():
    data = {"kind": "comparison", "alpha": 0.05, "modes": {"unconstrained": {"metrics": {
        "exact_match": compare_binary([True] * 30, [True] * 5 + [False] * 25)}}}}
    verdict = round_verdict(data)
    assert verdict["verdict"] == "worse" and list(verdict["metrics"]) == ["exact_match"]


def eval_tests():
    """The eval tests' module, for its maker of eval folders (one definition, not a copy)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_run_tests", Path(__file__).with_name("test_eval_run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_compare_writes_and_prints_the_verdict(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from tuneloop.cli.main import app
    from tuneloop.records import Sample

    write_run = eval_tests().write_run  # finished eval folders from hand-made answers

    samples = [Sample(id=f"s{i}", instruction="Extract the intent as JSON.", input=f"ticket {i}",
                      output={"intent": "refund"}) for i in range(30)]
    before = write_run(tmp_path / "before", samples, ["no idea"] * 30, "base")
    after = write_run(tmp_path / "after", samples, ['{"intent": "refund"}'] * 28 + ["no idea"] * 2, "tuned")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "compare", str(before), str(after), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "unconstrained verdict: improved (paired tests at alpha 0.05)" in result.output
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["modes"]["unconstrained"]["verdict"]["verdict"] == "improved"
