"""`tuneloop loop` end to end on the tiny model, offline: real traffic with broken answers and negative feedback (through
the embedded server, or from a loopback server shaped like Langfuse) → failures selected and clustered → a stop that
says how to relabel → relabeled from a file → the next round trained from the current model → eval gate → canary
started and stopped; `rounds list|diff` show what the cycle added.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.examples.json_extraction.demo import synth_spec
from tuneloop.examples.json_extraction.templates import GOLDEN
from tuneloop.records import to_messages

pytestmark = pytest.mark.slow

RELAXED_GATE = {"schema_valid": None, "json_valid": None, "field_accuracy": None, "refusal_ok": None, "not_worse": []}
SYSTEM = "You extract ticket fields as JSON."


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def first_round(tiny_model_dir, tmp_path_factory) -> Path:
    """The demo project on the tiny model after one `tuneloop run` (r0001 and its export: the current model)."""
    project = tmp_path_factory.mktemp("cycle") / "demo"
    assert cli("init", str(project), "--example", "json-extraction", "--size", "80").exit_code == 0
    config = yaml.safe_load((project / "tuneloop.yaml").read_text())
    config["model"] = str(tiny_model_dir)
    config["eval"].update(max_new_tokens=12, max_samples=8, gate=RELAXED_GATE)
    config["train"].update(max_steps=2, eval_steps=2)
    config["loop"].update(holdout=0.25)
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    ran = cli("run", "--project", str(project), "--no-serve")
    assert ran.exit_code == 0, ran.output + repr(ran.exception)
    return project


def copy_of(template: Path, tmp_path: Path, **loop) -> Path:
    project = tmp_path / "demo"
    shutil.copytree(template, project)
    summary = project / "loop" / "r0001" / "summary.json"  # the export's path moves with the copy
    summary.write_text(summary.read_text().replace(str(template), str(project)))
    if loop:
        config = yaml.safe_load((project / "tuneloop.yaml").read_text())
        config["loop"].update(loop)
        (project / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    return project


def new_messages(count: int) -> list[tuple[list[dict], str]]:
    """Messages the data never held (a seed of the generator the project was not made with) and their truth."""
    rows = synth_spec().generator.generate(count, seed=4242, templates=GOLDEN)
    return [(to_messages(row, SYSTEM, with_answer=False), row.output) for row in rows]


def truth_by_prompt(traffic: list[tuple[list[dict], str]]) -> dict[str, str]:
    return {" ".join(messages[-1]["content"].split()): truth for messages, truth in traffic}


def fill_from_truth(export_file: Path, truth: dict[str, str], out: Path) -> int:
    """The export filled with the generator's answers (annotator "generator"); rows it cannot match stay empty."""
    rows, filled = [], 0
    for line in export_file.read_text().splitlines():
        row = json.loads(line)
        prompt = " ".join("\n\n".join(p for p in (row["instruction"], row["input"]) if p).split())
        if prompt in truth:
            row.update(output=truth[prompt], annotator="generator")
            filled += 1
        rows.append(row)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return filled


def assert_cycle_trained_from_the_current_model(project: Path, result, canary: bool) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((project / "loop" / "r0002" / "summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    expected = ["traces pull", "select", "cluster", "relabel", "traffic split", "gate", "baseline eval", "train",
                "eval after", "eval traffic", "compare", "merge", *(["canary start"] if canary else [])]
    assert names == expected, names
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    # select and cluster ran in the cycle that stopped for labels; unchanged traffic reuses them
    assert statuses["select"] == statuses["cluster"] == "skipped", statuses
    assert all(statuses[name] == "done" for name in expected if name not in ("select", "cluster")), statuses
    assert summary["outcome"]["status"] == "passed" and summary["eval_gate"]["passed"] is True
    current = str(project / "exports" / "ticket-extraction-r0001")
    assert json.loads((project / "evals" / "r0002-baseline" / "summary.json").read_text())["model"] == current
    run_dir = next(Path(s["run_dir"]) for s in summary["stages"] if s["name"] == "train")
    assert json.loads((run_dir / "run.json").read_text())["base_model"] == current
    train = [json.loads(line) for line in (project / "data" / "rounds" / "r0002" / "train.jsonl").read_text().splitlines()]
    relabeled = [json.loads(line) for line in (project / "data" / "traffic" / "relabeled.jsonl").read_text().splitlines()]
    holdout = [json.loads(line) for line in (project / "data" / "traffic" / "holdout.jsonl").read_text().splitlines()]
    assert relabeled and holdout
    train_ids = {r["id"] for r in train}
    assert {r["id"] for r in relabeled} <= train_ids and not {r["id"] for r in holdout} & train_ids
    for report in ("failures", "failure clusters", "traffic eval", "data gate"):
        assert Path(summary["reports"][report]).exists(), report
    page = (project / "loop" / "r0002" / "summary.html").read_text()
    assert "clusters.html" in page and "held-out traffic" in page and "McNemar" in page
    return summary


def test_traffic_from_the_embedded_server_runs_a_whole_cycle_to_a_canary(first_round, tmp_path):
    from tuneloop.llm_client import Endpoint
    from tuneloop.serve.server import serve_in_background

    project = copy_of(first_round, tmp_path)
    traffic = new_messages(10)
    with serve_in_background(project / "exports" / "ticket-extraction-r0001", project / "traces.db") as url:
        endpoint = Endpoint(url, model="", api_key="local", max_retries=0)
        endpoint.model = endpoint.client.models.list().data[0].id
        ids = [endpoint.create(messages=messages, max_tokens=16, temperature=0).id for messages, _ in traffic]
        sent = httpx.post(f"{url}/feedback", json={"trace_id": ids[0], "score": 0, "comment": "wrong order id"})
        assert sent.status_code == 200, sent.text

    stopped = cli("loop", "--project", str(project), "--quick", "--no-serve")
    assert stopped.exit_code == 1, stopped.output
    export_file = project / "loop" / "traffic" / "relabel-export.jsonl"
    assert "failed: relabel: no accepted relabeled rows" in stopped.output and "--labels" in stopped.output
    failures = [json.loads(line) for line in (project / "loop" / "traffic" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) >= 8 and any("negative feedback" in f["reasons"] for f in failures)
    assert (project / "loop" / "traffic" / "clusters.html").exists()

    labels = tmp_path / "labels.jsonl"
    assert fill_from_truth(export_file, truth_by_prompt(traffic), labels) >= 8
    canary_file = project / "loop" / "r0002" / "canary.json"
    try:
        result = cli("loop", "--project", str(project), "--quick", "--no-serve", "--labels", str(labels))
        assert_cycle_trained_from_the_current_model(project, result, canary=True)
        state = json.loads(canary_file.read_text())
        assert httpx.get(f"{state['url']}/models", timeout=10).status_code == 200
        stop = cli("canary", "stop", "--file", str(canary_file))
        assert stop.exit_code == 0 and "stopped" in stop.output, stop.output
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{state['url']}/models", timeout=2)
        assert not canary_file.exists()
    finally:  # a failed assertion never leaves the detached router running
        if canary_file.exists():
            from tuneloop.loop_canary import stop_canary

            stop_canary(canary_file)

    listed = cli("rounds", "list", "--dir", str(project / "data" / "rounds"))
    r2 = next(line for line in listed.output.splitlines() if line.startswith("r0002"))
    assert re.search(r"traffic \d+", r2) and "verdict" in r2
    diff = cli("rounds", "diff", "r0001", "r0002", "--dir", str(project / "data" / "rounds"), "--json")
    change = json.loads(diff.output)
    assert change["splits"]["train"]["by_source"]["added"]["traffic"] >= 1
    assert change["splits"]["test"]["added"] == 0 and change["splits"]["val"]["added"] == 0  # frozen

    # a rerun with nothing new reuses every stage after the pull (the canary was stopped: it starts again only
    # when asked; here it is left out)
    again = cli("loop", "--project", str(project), "--quick", "--no-serve", "--no-canary", "--labels", str(labels))
    assert again.exit_code == 0, again.output
    summary = json.loads((project / "loop" / "r0002" / "summary.json").read_text())
    this_run = [s for s in summary["stages"][1:] if not s.get("earlier_run")]
    assert [s["status"] for s in this_run] == ["skipped"] * len(this_run) and len(this_run) == 11
    # what this run left out is kept from the earlier one: the canary, and the export the next cycle starts from
    assert [s["name"] for s in summary["stages"] if s.get("earlier_run")] == ["canary start"]
    from tuneloop.loop_rounds import current_model
    from tuneloop.project import Project

    assert current_model(Project.load(project)) == str(project / "exports" / "ticket-extraction-r0002")

    # one stage alone: the stages it reads are reused, it runs, the round's record keeps everything else
    alone = cli("loop", "--project", str(project), "--quick", "--no-serve", "--only", "eval traffic")
    assert alone.exit_code == 0, alone.output
    summary = json.loads((project / "loop" / "r0002" / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["eval traffic"]["status"] == "done" and stages["train"]["status"] == "skipped"
    assert stages["merge"].get("earlier_run") and stages["canary start"].get("earlier_run")
    assert summary["merge"] and summary["verdict"] and "traffic eval" in summary["reports"]
    assert current_model(Project.load(project)) == str(project / "exports" / "ticket-extraction-r0002")


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_traffic_from_a_langfuse_shaped_server_runs_the_same_cycle(first_round, tmp_path, monkeypatch, api):
    from tuneloop.testing.langfuse_fake import FakeLangfuse

    fake = FakeLangfuse(api)
    traffic = new_messages(9)
    start = time.time() - 3600
    for n, (messages, _) in enumerate(traffic):
        fake.add_trace(f"lf-{n}", start + 60 * n, messages, {"role": "assistant", "content": '{"intent": "refund", "pro'},
                       metadata={"finish_reason": "length"})
    fake.add_score("s-0", "lf-0", start + 30, value=False, comment="the answer is cut")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", fake.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", fake.secret_key)
    with fake.serve() as url:
        # pages of 4: full pages, a short last page (v3) or an empty last page after a cursor (v4); one 429 first
        traces_path = "/api/public/traces" if api == "v3" else "/api/public/v2/observations"
        fake.fail(traces_path, 429, headers={"Retry-After": "0"})
        fake.deprecate(traces_path, {"message": "use the v3 endpoint", "sunset": "2027-01-01"})
        project = copy_of(first_round, tmp_path, traces=["langfuse"], langfuse={"host": url, "api": api, "page_size": 4})
        stopped = cli("loop", "--project", str(project), "--quick", "--no-serve", "--no-canary")
        assert stopped.exit_code == 1 and "failed: relabel" in stopped.output, stopped.output
        assert "langfuse: 9 new" in stopped.output and "deprecat" in stopped.output.lower()
        labels = tmp_path / "labels.jsonl"
        assert fill_from_truth(project / "loop" / "traffic" / "relabel-export.jsonl", truth_by_prompt(traffic),
                               labels) == 9
        result = cli("loop", "--project", str(project), "--quick", "--no-serve", "--no-canary", "--labels", str(labels))
        summary = assert_cycle_trained_from_the_current_model(project, result, canary=False)
    assert "langfuse: 0 new" in result.output  # the second pull found nothing new (incremental)
    assert len(summary["traffic"]["traffic split"]["counts"]) == 3
