"""The data gate end to end: round folders, counts that add up, frozen val/test, atomic writes, the CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.data.gate.round import run_gate, run_gate_on
from tuneloop.data.gate.pii import find_pii
from tuneloop.files import file_digest, read_json
from tuneloop.project import DataConfig, Project, ProjectConfig, SourceConfig
from tuneloop.records import Sample

SCHEMA = {"type": "object", "properties": {"order": {"type": "integer"}, "phone": {"type": "string"}},
          "required": ["order"]}


def seed_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    rows = []
    for i in range(count):
        text = " ".join(rng.choice(vocab) for _ in range(20))
        rows.append({"id": f"r{i}", "instruction": "Extract the order as JSON.", "input": f"order {i}: {text}",
                     "output": json.dumps({"order": i}), "lineage": {"source_id": f"seed{i // 2}"},
                     "sample_type": ["golden", "boundary", "negative", "generic"][i % 4] if i % 5 else "golden"})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def make_project(root: Path, rows: list, **data: object) -> Project:
    write_jsonl(root / "data" / "raw" / "seed.jsonl", rows)
    config = ProjectConfig(data=DataConfig(sources=[SourceConfig(path="data/raw/seed.jsonl")], **data))
    config.task.schema_ = SCHEMA
    return Project(root, config)


def assert_round_is_complete(folder: Path) -> dict:
    manifest = read_json(folder / "manifest.json")
    for name, entry in manifest["files"].items():
        assert file_digest(folder / name) == entry["sha256"], name
    assert {"train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl", "report.html"} <= set(manifest["files"])
    return manifest


def test_a_round_holds_every_file_with_sha256_counts_settings_and_frozen_ids(tmp_path):
    rows = seed_rows(200)
    rows[3]["input"] += " call 13812345678 or mail li.lei@corp.cn"
    rows[4]["output"] = json.dumps({"order": 4, "phone": "13912345678"})
    rows[10] = dict(rows[9], id="dup")  # exact duplicate
    rows[11]["output"] = "not json"
    project = make_project(tmp_path, rows)
    result = run_gate(project, progress=False, tokenizer=None)
    assert result.passed, result.failures
    assert result.round_dir == project.rounds_dir / "r0001" and project.latest_round() == result.round_dir
    manifest = assert_round_is_complete(result.round_dir)
    counts = result.counts
    assert counts["rows_in"] == 200 and counts["quarantined"] == 1 and counts["duplicates_removed"] == 1
    assert counts["train"] + counts["val"] + counts["test"] + counts["quarantined"] + counts["duplicates_removed"] \
        + counts["mix_dropped"] == 200
    assert manifest["settings"]["split"]["group_by"] == "lineage.source_id"
    assert {e["id"] for e in manifest["frozen"]["test"]} == {s.id for s in load_samples(result.round_dir / "test.jsonl")}
    assert manifest["pii_redacted"] == {"PHONE": 2, "EMAIL": 1}
    for name in ("train", "val", "test"):
        for sample in load_samples(result.round_dir / f"{name}.jsonl"):
            assert not find_pii(sample.prompt + sample.output)
            json.loads(sample.output)
    [bad] = [json.loads(line) for line in (result.round_dir / "quarantine.jsonl").read_text().splitlines()]
    assert bad["sample_id"] == "r11" and bad["line"] == 12 and "not valid JSON" in bad["reason"]
    assert "<img" in (result.round_dir / "report.html").read_text()


def test_a_later_round_keeps_frozen_items_out_of_train_even_after_relabeling(tmp_path):
    rows = seed_rows(120)
    project = make_project(tmp_path, rows)
    first = run_gate(project, progress=False, tokenizer=None)
    frozen_test = load_samples(first.round_dir / "test.jsonl")
    target = frozen_test[0]
    by_id = {r["id"]: r for r in rows}
    by_id[target.id]["output"] = json.dumps({"order": 999})  # relabeled
    rows.append({"id": "new-variant", "instruction": "Extract the order as JSON.", "input": "a new wording of it",
                 "output": json.dumps({"order": 5}), "lineage": {"source_id": target.lineage.source_id}})
    rows.append({"id": "fresh", "instruction": "Extract the order as JSON.", "input": "order 777 is brand new",
                 "output": json.dumps({"order": 777})})
    write_jsonl(project.path("data/raw/seed.jsonl"), rows)
    second = run_gate(project, progress=False, tokenizer=None)
    assert second.passed, second.failures and second.round_dir.name == "r0002"
    train_ids = {s.id for s in load_samples(second.round_dir / "train.jsonl")}
    test_now = {s.id: s for s in load_samples(second.round_dir / "test.jsonl")}
    assert target.id not in train_ids and "new-variant" not in train_ids and "fresh" in train_ids
    assert json.loads(test_now[target.id].output) == {"order": 999}
    assert set(test_now) == {s.id for s in frozen_test}
    assert second.counts["relabeled"] == 1 and second.counts["held_out_variants"] == 1


def test_too_many_rejected_rows_fail_the_gate_into_a_failed_folder(tmp_path):
    rows = seed_rows(40)
    for row in rows[:15]:
        row["output"] = "plain text"
    project = make_project(tmp_path, rows, max_rejected_share=0.2)
    result = run_gate(project, progress=False, tokenizer=None)
    assert not result.passed and "max_rejected_share" in result.failures[0]
    assert result.round_dir.name == "r0001-failed" and project.latest_round() is None
    assert_round_is_complete(result.round_dir)


def test_an_unlicensed_source_is_quarantined_and_named(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", seed_rows(30))
    write_jsonl(tmp_path / "scraped.jsonl", seed_rows(5, seed=4))
    result = run_gate_on([tmp_path / "ok.jsonl", (tmp_path / "scraped.jsonl", "proprietary")], tmp_path / "rounds",
                         DataConfig(max_rejected_share=0.5))
    quarantine = [json.loads(line) for line in (result.round_dir / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == 5 and all("proprietary" in q["reason"] for q in quarantine)


def test_fuzz_ten_thousand_rows_every_row_is_accounted_for(tmp_path):
    rng = random.Random(11)
    base = seed_rows(2000, seed=5)
    lines: list = []
    for i in range(10_000):
        roll = rng.random()
        row = dict(rng.choice(base), id=f"f{i}")
        if roll < 0.05:
            lines.append(rng.choice(["{broken", "[1, 2]", "null", '{"instruction": 5, "output": []}', "\ufeff{"]))
            continue
        if roll < 0.10:
            row["output"] = rng.choice(["", "not json", '{"order": "x"}'])
        elif roll < 0.15:
            row["input"] += f" 电话 1{rng.randrange(3, 10)}{rng.randrange(10**8, 10**9)} mail u{i}@corp.cn"
        elif roll < 0.5:
            row["input"] += f" {i} " + " ".join(rng.choice(["a", "b", "c", "订单", "Ｆｕｌｌ"]) for _ in range(rng.randrange(30)))
        lines.append(row)
    write_jsonl(tmp_path / "fuzz.jsonl", lines)
    config = DataConfig(max_rejected_share=0.5)
    config.leakage.allow = True
    result = run_gate_on([tmp_path / "fuzz.jsonl"], tmp_path / "rounds", config, schema=SCHEMA)
    counts = result.counts
    assert counts["rows_in"] == 10_000
    assert counts["train"] + counts["val"] + counts["test"] + counts["quarantined"] + counts["duplicates_removed"] \
        + counts["mix_dropped"] == 10_000
    manifest = assert_round_is_complete(result.round_dir)
    assert len(manifest["duplicates"]) == counts["duplicates_removed"] and len(manifest["mix_dropped"]) == counts["mix_dropped"]
    written = sum(1 for name in ("train", "val", "test", "quarantine")
                  for _ in (result.round_dir / f"{name}.jsonl").read_text().splitlines())
    assert written == counts["train"] + counts["val"] + counts["test"] + counts["quarantined"]


KILL_SCRIPT = """
import sys
from tuneloop.data.gate.round import run_gate_on
from tuneloop.project import DataConfig
config = DataConfig()
config.leakage.allow = True
run_gate_on([sys.argv[1]], sys.argv[2], config)
"""


@pytest.mark.slow
def test_killing_the_gate_mid_write_leaves_the_old_round_or_the_complete_new_one(tmp_path):
    rows = seed_rows(6000, seed=2)
    write_jsonl(tmp_path / "seed.jsonl", rows)
    rounds = tmp_path / "rounds"
    first = run_gate_on([tmp_path / "seed.jsonl"], rounds, DataConfig())
    assert first.passed
    outcomes = set()
    for delay in (0.0, 0.5, 1.0, 1.5, 2.5, 4.0):
        process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "seed.jsonl"), str(rounds)],
                                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
        deadline = time.time() + 60
        while delay and time.time() < deadline and not list(rounds.glob(".r000*.tmp")) and process.poll() is None:
            time.sleep(0.01)
        time.sleep(delay / 10)
        process.send_signal(signal.SIGKILL)
        process.wait()
        complete = [p for p in rounds.iterdir() if not p.name.startswith(".")]
        for folder in complete:
            assert_round_is_complete(folder)
        half_built = [p for p in rounds.iterdir() if p.name.startswith(".r0002")]
        outcomes.add(("new round" if len(complete) == 2 else "old round only", "killed mid-write" if half_built else ""))
        for folder in complete:
            if folder.name != "r0001":
                shutil.rmtree(folder)
    recovered = run_gate_on([tmp_path / "seed.jsonl"], rounds, DataConfig())
    assert recovered.round_dir.name == "r0002" and not list(rounds.glob(".r*.tmp"))
    assert assert_round_is_complete(rounds / "r0001")
    assert ("old round only", "killed mid-write") in outcomes, outcomes


def test_cli_gate_on_the_llamafactory_demo_and_the_single_commands(tmp_path, llamafactory_demo):
    runner = CliRunner()
    demo = [Sample.model_validate(row) for row in json.loads((llamafactory_demo / "alpaca_en_demo.json").read_text())]
    source = write_samples(tmp_path / "alpaca_en.jsonl", demo)
    result = runner.invoke(app, ["data", "gate", str(source), "--out", str(tmp_path / "rounds")])
    assert result.exit_code == 0, result.output
    manifest = assert_round_is_complete(tmp_path / "rounds" / "r0001")
    assert manifest["counts"]["rows_in"] == len(demo)

    train = tmp_path / "rounds" / "r0001" / "train.jsonl"
    test = tmp_path / "rounds" / "r0001" / "test.jsonl"
    assert runner.invoke(app, ["data", "leakage", "--train", str(train), "--eval", str(test)]).exit_code == 0
    leaky = write_samples(tmp_path / "leaky.jsonl", [*load_samples(train), load_samples(test)[0]])
    assert runner.invoke(app, ["data", "leakage", "--train", str(leaky), "--eval", str(test)]).exit_code == 1

    doubled = write_samples(tmp_path / "doubled.jsonl", [*demo[:50], *demo[:10]])
    out = runner.invoke(app, ["data", "dedup", str(doubled), "--out", str(tmp_path / "d.jsonl")])
    assert out.exit_code == 0 and len(load_samples(tmp_path / "d.jsonl")) == 50

    pii = write_samples(tmp_path / "pii.jsonl", [Sample(instruction="Call 13812345678", output="ok")])
    assert runner.invoke(app, ["data", "redact", str(pii), "--out", str(tmp_path / "r.jsonl")]).exit_code == 0
    assert load_samples(tmp_path / "r.jsonl")[0].instruction == "Call [PHONE_1]"

    assert runner.invoke(app, ["data", "split", str(source), "--out-dir", str(tmp_path / "split")]).exit_code == 0
    assert runner.invoke(app, ["data", "mix", str(train), "--out", str(tmp_path / "m.jsonl")]).exit_code == 0
    checked = runner.invoke(app, ["data", "check", str(source), "--out", str(tmp_path / "c.jsonl")])
    assert checked.exit_code == 0 and f"{len(demo)} accepted" in checked.output.replace("\n", " ")

    second = write_samples(tmp_path / "more.jsonl", [*demo, Sample(instruction="A new question", output="An answer")])
    assert runner.invoke(app, ["data", "gate", str(second), "--out", str(tmp_path / "rounds")]).exit_code == 0
    listing = runner.invoke(app, ["rounds", "list", "--dir", str(tmp_path / "rounds")])
    assert "r0001" in listing.output and "r0002" in listing.output
    diff = runner.invoke(app, ["rounds", "diff", "r0001", "r0002", "--dir", str(tmp_path / "rounds")])
    assert diff.exit_code == 0 and "+1" in diff.output


def test_the_gate_reads_the_alpaca_json_array_directly(tmp_path, llamafactory_demo):
    result = run_gate_on([llamafactory_demo / "alpaca_zh_demo.json"], tmp_path / "rounds")
    assert result.counts["rows_in"] == len(json.loads((llamafactory_demo / "alpaca_zh_demo.json").read_text()))
    assert_round_is_complete(result.round_dir)


def test_a_project_reads_a_llamafactory_folder_entry_and_the_cli_gate_runs_in_it(tmp_path, llamafactory_demo, monkeypatch):
    from tuneloop.project import dump_config

    config = ProjectConfig(data=DataConfig(sources=[SourceConfig(path=str(llamafactory_demo), dataset="alpaca_zh_demo",
                                                                 license="apache-2.0")]))
    (tmp_path / "tuneloop.yaml").write_text(dump_config(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "gate", "--no-tokenizer"])
    assert result.exit_code == 0, result.output
    manifest = assert_round_is_complete(tmp_path / "data" / "rounds" / "r0001")
    assert manifest["sources"][0]["license"] == "apache-2.0" and manifest["counts"]["rows_in"] == 1000
    listing = CliRunner().invoke(app, ["rounds", "list"])
    assert "r0001" in listing.output and "passed" in listing.output


def test_cli_check_exits_non_zero_when_the_rejected_share_is_over_the_bound(tmp_path):
    rows = seed_rows(10)
    for row in rows[:5]:
        row["output"] = ""
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "check", str(source), "--out", str(tmp_path / "ok.jsonl")])
    assert result.exit_code == 1 and "max_rejected_share" in result.output
    assert len((tmp_path / "ok.quarantine.jsonl").read_text().splitlines()) == 5


def test_a_new_row_copying_a_frozen_test_item_is_held_out_or_fails_the_round_naming_the_pair(tmp_path):
    rows = seed_rows(120)
    project = make_project(tmp_path, rows)
    first = run_gate(project, progress=False, tokenizer=None)
    frozen = load_samples(first.round_dir / "test.jsonl")[0]
    copycat = {"id": "copycat", "instruction": "Summarize the order.", "input": "see: " + frozen.input,
               "output": json.dumps({"order": 1})}
    # the frozen item is still in the sources: the split sees the overlap and holds the copy out of train
    write_jsonl(project.path("data/raw/seed.jsonl"), [*rows, copycat])
    second = run_gate(project, progress=False, tokenizer=None)
    assert second.passed and second.counts["held_out_variants"] == 1
    quarantine = [json.loads(line) for line in (second.round_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["sample_id"], q["stage"]) for q in quarantine] == [("copycat", "split")]
    # the frozen item is gone from the sources (carried over): the leakage check finds the copy, and a copy of a
    # frozen item is held out of train (named with the frozen item), not a reason to fail the round
    write_jsonl(project.path("data/raw/seed.jsonl"), [*(r for r in rows if r["id"] != frozen.id), copycat])
    third = run_gate(project, progress=False, tokenizer=None)
    assert third.passed, third.failures
    assert third.manifest["leakage"]["hits"] == [] and third.counts["held_out_variants"] == 1
    [held] = [json.loads(line) for line in (third.round_dir / "quarantine.jsonl").read_text().splitlines()]
    assert held["sample_id"] == "copycat" and frozen.id in held["reason"] and "ngram-prompt" in held["reason"]
    assert "copycat" not in {s.id for s in load_samples(third.round_dir / "train.jsonl")}
    assert third.round_dir.name == "r0003" and frozen.id in {s.id for s in load_samples(third.round_dir / "test.jsonl")}
