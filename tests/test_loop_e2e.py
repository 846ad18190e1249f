"""The main job, shortened: a new project through a whole round on the embedded default model, on the CPU.

`tuneloop init` → `tuneloop run --quick` runs the real gate, baseline eval, LoRA SFT on SmolLM2-135M, eval after,
paired comparison, merge with its reload gate and template parity, and an answer from the embedded server through
the official openai client. A second run must skip every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli.main import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_round(tmp_path_factory) -> tuple[Path, CliRunner, str]:
    project = tmp_path_factory.mktemp("loop") / "demo"
    runner = CliRunner()
    made = runner.invoke(app, ["init", str(project), "--example", "json-extraction", "--size", "240"])
    assert made.exit_code == 0, made.output
    # six steps cannot reach the demo's 0.98 schema-valid minimum, and the round obeys its gate (it would stop
    # before the merge): the shortened round keeps only the gate's "not significantly worse than baseline" checks
    config = yaml.safe_load((project / "tuneloop.yaml").read_text())
    config["eval"]["gate"]["schema_valid"] = None
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    ran = runner.invoke(app, ["run", "--project", str(project), "--quick"])
    assert ran.exit_code == 0, ran.output + repr(ran.exception)
    return project, runner, ran.output


def test_a_round_runs_every_stage_and_prints_before_and_after(finished_round):
    project, _, output = finished_round
    summary = json.loads((project / "loop" / "r0001" / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [
        "gate", "baseline eval", "train", "eval after", "compare", "merge", "serve smoke"]
    assert all(s["status"] == "done" for s in summary["stages"])
    assert summary["outcome"]["status"] == "passed" and summary["eval_gate"]["passed"] is True
    for name in ("schema_valid", "field_accuracy"):
        assert summary["headline"][name]["before"] is not None and summary["headline"][name]["after"] is not None
        assert f"{name}" in output
    assert "→" in output and "summary report" in output


def test_every_stage_report_exists_and_is_linked_from_the_summary(finished_round):
    project, _, _ = finished_round
    summary = json.loads((project / "loop" / "r0001" / "summary.json").read_text())
    for name, path in summary["reports"].items():
        assert Path(path).exists(), f"{name} report missing: {path}"
    page = (project / "loop" / "r0001" / "summary.html").read_text()
    assert "data:image/png;base64" in page
    assert "report.html" in page and "run_card.html" in page


def test_the_served_answer_parses_and_matches_the_schema(finished_round):
    project, _, _ = finished_round
    summary = json.loads((project / "loop" / "r0001" / "summary.json").read_text())
    schema = json.loads((project / "schemas" / "ticket.json").read_text())
    jsonschema.validate(summary["serve"]["answer"], schema)
    merge = summary["merge"]
    assert merge, "the merge report is missing"
    assert (project / "traces.db").exists()


def test_a_rerun_skips_every_stage_whose_inputs_did_not_change(finished_round):
    project, runner, _ = finished_round
    again = runner.invoke(app, ["run", "--project", str(project), "--quick"])
    assert again.exit_code == 0, again.output
    summary = json.loads((project / "loop" / "r0001" / "summary.json").read_text())
    assert all(s["status"] == "skipped" for s in summary["stages"]), summary["stages"]
    assert len(list((project / "data" / "rounds").glob("r0*"))) == 1
