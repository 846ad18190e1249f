"""`tuneloop run` obeys every check of its round, on a tiny-model project that runs in seconds.

A check that says no (data gate, eval gate, merge gate, served answer) stops the round before anything that depends
on it, prints what failed and what to do (one line each), writes the reasons into the summary page, and exits 1.
A refused stage is never recorded as done, so a rerun with unchanged inputs checks again instead of skipping ahead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli.main import app

RELAXED_GATE = {"schema_valid": None, "json_valid": None, "field_accuracy": None, "refusal_ok": None, "not_worse": []}


@pytest.fixture(scope="module")
def template_project(tiny_model_dir, tmp_path_factory) -> Path:
    """The json-extraction demo, small, on the tiny random model, with a 2-step training."""
    project = tmp_path_factory.mktemp("template") / "demo"
    made = CliRunner().invoke(app, ["init", str(project), "--example", "json-extraction", "--size", "80"])
    assert made.exit_code == 0, made.output
    config = yaml.safe_load((project / "tuneloop.yaml").read_text())
    config["model"] = str(tiny_model_dir)
    config["eval"].update(max_new_tokens=12, max_samples=8)
    config["train"].update(max_steps=2, eval_steps=2)
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    return project


def project_copy(template: Path, tmp_path: Path, **changes) -> Path:
    project = tmp_path / "demo"
    shutil.copytree(template, project)
    config = yaml.safe_load((project / "tuneloop.yaml").read_text())
    for section, values in changes.items():
        for key, value in values.items():
            target = config[section]
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    return project


def run(project: Path, *extra: str):
    return CliRunner().invoke(app, ["run", "--project", str(project), *extra])


def summary_of(project: Path, round_name: str = "r0001") -> dict:
    return json.loads((project / "loop" / round_name / "summary.json").read_text())


def exports(project: Path) -> list[str]:
    folder = project / "exports"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_says_what_failed_and_what_to_do(output: str, stage: str) -> None:
    failed = [line for line in output.splitlines() if line.startswith("failed:")]
    advice = [line for line in output.splitlines() if line.startswith("next:")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: {stage}"), output
    assert len(advice) == 1 and "tuneloop run" in advice[0], output


def test_a_candidate_that_fails_its_eval_gate_is_not_merged_or_served_and_the_run_exits_1(template_project, tmp_path):
    # the tiny random model writes no valid JSON: schema_valid 0.0 is below the gate's 0.98
    project = project_copy(template_project, tmp_path)
    result = run(project)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert_says_what_failed_and_what_to_do(result.output, "eval gate")
    assert "schema_valid is 0.0000, below the minimum 0.98" in result.output
    assert exports(project) == []
    summary = summary_of(project)
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [
        ("gate", "done"), ("baseline eval", "done"), ("train", "done"), ("eval after", "done"), ("compare", "refused")]
    assert summary["outcome"]["status"] == "refused" and summary["outcome"]["stage"] == "eval gate"
    assert any("schema_valid" in reason for reason in summary["outcome"]["reasons"])
    assert summary["eval_gate"]["passed"] is False and summary["serve"] == {}
    page = (project / "loop" / "r0001" / "summary.html").read_text()
    assert "refused by the eval gate" in page and "below the minimum 0.98" in page and "what to do" in page

    # a rerun with unchanged inputs skips the finished stages but checks the gate again, and refuses again
    again = run(project)
    assert again.exit_code == 1, again.output
    stages = {s["name"]: s["status"] for s in summary_of(project)["stages"]}
    assert stages == {"gate": "skipped", "baseline eval": "skipped", "train": "skipped", "eval after": "skipped",
                      "compare": "refused"}
    state = json.loads((project / "loop" / "r0001" / "state.json").read_text())["stages"]
    assert "compare" not in state and "merge" not in state
    assert exports(project) == []


def test_a_state_that_recorded_a_refused_comparison_as_done_does_not_let_the_merge_run(template_project, tmp_path):
    project = project_copy(template_project, tmp_path)
    assert run(project).exit_code == 1
    state_file = project / "loop" / "r0001" / "state.json"
    state = json.loads(state_file.read_text())
    compare_dir = project / "evals" / "r0001-compare"
    from tuneloop.loop import files_key
    from tuneloop.project import Project

    gate = Project.load(project).config.eval.gate
    key = files_key(project / "evals" / "r0001-baseline" / "results.jsonl",
                    project / "evals" / "r0001-candidate" / "results.jsonl", settings=gate.model_dump(mode="json"))
    # what tuneloop before this fix wrote: the comparison "done" although its gate said no
    state["stages"]["compare"] = {"key": key, "status": "done", "seconds": 1.0, "finished_at": 0,
                                  "outputs": {"compare_dir": str(compare_dir), "passed": False, "reasons": ["x"]}}
    state_file.write_text(json.dumps(state))
    again = run(project)
    assert again.exit_code == 1, again.output
    assert exports(project) == []


def test_a_round_that_passes_every_check_is_merged_and_exits_0(template_project, tmp_path):
    project = project_copy(template_project, tmp_path, eval={"gate": RELAXED_GATE})
    result = run(project, "--no-serve")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "failed:" not in result.output
    summary = summary_of(project)
    assert summary["outcome"]["status"] == "passed"
    assert [s["status"] for s in summary["stages"]] == ["done"] * 6
    assert exports(project) == ["ticket-extraction-r0001"]
    # two random models on 8 samples: no metric can differ significantly, whatever the raw numbers say
    assert summary["verdict"]["verdict"] == "no significant change" and summary["improved"] is False
    assert "verdict: no significant change at alpha 0.05" in result.output


def test_a_failed_data_gate_stops_the_round_before_any_model_runs(template_project, tmp_path):
    project = project_copy(template_project, tmp_path, data={"license_allowlist": ["apache-2.0"]})
    result = run(project)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert_says_what_failed_and_what_to_do(result.output, "data gate")
    assert not (project / "evals").exists() and not (project / "runs").exists()
    failed_round = next((project / "data" / "rounds").glob("r0001*"))
    summary = summary_of(project, failed_round.name)
    assert summary["outcome"]["stage"] == "data gate" and summary["stages"][0]["status"] == "refused"
    again = run(project)  # a failed gate is never a round to reuse: the rerun gates again and refuses again
    assert again.exit_code == 1 and "failed: data gate" in again.output
    assert [p.name for p in (project / "data" / "rounds").iterdir() if not p.name.startswith(".")] == [failed_round.name]


def test_a_merge_whose_reload_gate_fails_is_not_exported_or_served(template_project, tmp_path, monkeypatch):
    import tuneloop.export.merge as merge

    project = project_copy(template_project, tmp_path, eval={"gate": RELAXED_GATE})
    # the merged folder answers differently from base + adapter (what a wrong base model or a bad save gives)
    monkeypatch.setattr(merge, "compare_with_reference", lambda *args: (0.5, False))
    result = run(project)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert_says_what_failed_and_what_to_do(result.output, "merge gate")
    assert "greedy answers differ" in result.output
    assert exports(project) == []
    stages = [(s["name"], s["status"]) for s in summary_of(project)["stages"]]
    assert stages[-1] == ("merge", "refused") and "serve smoke" not in dict(stages)


@contextlib.contextmanager
def misbehaving_server(*args, **kwargs):
    """An OpenAI-compatible endpoint whose answer was cut at max_tokens: what a broken export serves."""
    from fastapi import FastAPI

    from tuneloop.serve.server import run_in_background

    stub = FastAPI()

    @stub.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "export", "object": "model", "created": 0, "owned_by": "me"}]}

    @stub.post("/v1/chat/completions")
    def chat():
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": "export",
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": '{"intent": "refu'}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 200, "total_tokens": 201}}

    with run_in_background(stub, "127.0.0.1", 0) as root:
        yield f"{root}/v1"


def test_a_served_answer_that_fails_its_check_refuses_the_round(template_project, tmp_path, monkeypatch):
    import tuneloop.serve.server as server

    project = project_copy(template_project, tmp_path, eval={"gate": RELAXED_GATE})
    monkeypatch.setattr(server, "serve_in_background", misbehaving_server)
    result = run(project)
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert_says_what_failed_and_what_to_do(result.output, "serve smoke")
    assert "finish_reason 'length'" in result.output
    summary = summary_of(project)
    assert summary["stages"][-1]["name"] == "serve smoke" and summary["stages"][-1]["status"] == "refused"
    state = json.loads((project / "loop" / "r0001" / "state.json").read_text())["stages"]
    assert "serve smoke" not in state


def test_a_stage_that_breaks_stops_the_round_with_exit_2_and_a_summary(template_project, tmp_path):
    project = project_copy(template_project, tmp_path, train={"method": "qlora"})  # QLoRA needs a GPU
    result = run(project)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "error: stage 'train' failed: QLoRA needs a CUDA GPU" in result.output
    summary = summary_of(project)
    assert summary["outcome"]["status"] == "failed" and summary["stages"][-1] == {"name": "train", "status": "failed",
                                                                                  "seconds": summary["stages"][-1]["seconds"]}
    state = json.loads((project / "loop" / "r0001" / "state.json").read_text())["stages"]
    assert "train" not in state and "baseline eval" in state


def test_a_defect_inside_a_stage_keeps_its_traceback_and_still_writes_the_summary(template_project, tmp_path,
                                                                                  monkeypatch):
    import tuneloop.train.sft as sft

    project = project_copy(template_project, tmp_path)

    def broken(*args, **kwargs):
        return {}["adapter_dir"]  # a bug, not an error a user can act on

    monkeypatch.setattr(sft, "train_sft", broken)
    result = run(project)
    assert result.exit_code == 70, result.output + repr(result.exception)
    assert "Traceback" in result.output and "tuneloop bug: KeyError" in result.output
    summary = summary_of(project)
    assert summary["outcome"] == {"status": "failed", "reasons": ["KeyError: 'adapter_dir'"], "advice": None}
