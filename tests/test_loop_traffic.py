"""The loop of rounds, without a model: the traffic split, the current model, and frozen val/test items that no
relabeled row, variant or copy ever carries into train (the gate with relabeled traffic beside the sources)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneloop.data.gate.round import run_gate
from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.files import write_json
from tuneloop.loop_stage import LoopError
from tuneloop.loop_intake import split_traffic
from tuneloop.loop_rounds import current_model
from tuneloop.loop_traffic import CycleOptions, STAGE_NAMES, stages_for
from tuneloop.project import DataConfig, Project, ProjectConfig, SourceConfig
from tuneloop.records import Lineage, Meta, Sample

SCHEMA = {"type": "object", "properties": {"order": {"type": "integer"}}, "required": ["order"]}


def traffic_rows(count: int, start: int = 0) -> list[Sample]:
    return [Sample(id=f"tr-{i}", input=f"traffic message number {i} about parcel {i * 7}", output=json.dumps({"order": i}),
                   meta=Meta(source="traffic"), lineage=Lineage(source_id=f"trace:{i}"))
            for i in range(start, start + count)]


# -- the traffic split ------------------------------------------------------------------------------------------------
def test_the_traffic_split_is_stable_and_cut_by_lineage_group():
    rows = traffic_rows(40)
    # two relabels of one trace share a group: they land on one side
    rows.append(rows[0].model_copy(update={"id": "tr-0-again", "input": "the same trace relabeled again"}))
    train, holdout, sides = split_traffic(rows, 0.25, {})
    again = split_traffic(list(reversed(rows)), 0.25, {})
    assert {s.id for s in again[1]} == {s.id for s in holdout}  # order of the queue does not matter
    assert len(sides) == 40 and sum(v == "holdout" for v in sides.values()) == 10
    held_groups = {s.lineage.source_id for s in holdout}
    assert not held_groups & {s.lineage.source_id for s in train}
    assert ("tr-0" in {s.id for s in holdout}) == ("tr-0-again" in {s.id for s in holdout})
    assert len(train) + len(holdout) == len(rows)


def test_an_item_once_held_out_stays_held_out_and_a_trained_one_stays_in_train_in_later_cycles():
    first_train, first_holdout, sides = split_traffic(traffic_rows(20), 0.25, {})
    # later cycles: more traffic, and even a share turned up or down moves no earlier group
    for share in (0.25, 0.9, 0.05):
        train, holdout, later = split_traffic(traffic_rows(60), share, sides)
        assert {s.id for s in first_holdout} <= {s.id for s in holdout}
        assert {s.id for s in first_train} <= {s.id for s in train}
        assert all(later[g] == side for g, side in sides.items())
    train, holdout, _ = split_traffic(traffic_rows(60), 0.25, sides)
    assert len(holdout) == 15  # new groups fill the holdout to its share of all groups


def test_a_handful_of_relabels_still_holds_one_out_and_a_single_one_trains():
    assert [len(part) for part in split_traffic(traffic_rows(2), 0.25, {})[:2]] == [1, 1]
    assert [len(part) for part in split_traffic(traffic_rows(1), 0.25, {})[:2]] == [1, 0]
    assert [len(part) for part in split_traffic(traffic_rows(5), 0.0, {})[:2]] == [5, 0]


# -- the model a cycle starts from ----------------------------------------------------------------------------------
def fake_round(project: Project, name: str, status: str | None, export: bool = True) -> Path:
    folder = project.rounds_dir / name
    folder.mkdir(parents=True)
    write_json(folder / "manifest.json", {"round": name, "passed": True})
    if status is not None:
        export_dir = project.exports_dir / f"task-{name}"
        if export:
            export_dir.mkdir(parents=True)
        write_json(project.root / "loop" / name / "summary.json", {
            "outcome": {"status": status},
            "stages": [{"name": "gate", "status": "done"}, {"name": "merge", "status": "done",
                                                           "export_dir": str(export_dir)}]})
    return folder


def test_the_current_model_is_the_latest_passed_rounds_export_else_the_configured_model(tmp_path):
    project = Project(tmp_path, ProjectConfig(model="base-model"))
    assert current_model(project) == "base-model"
    fake_round(project, "r0001", "passed")
    assert current_model(project) == str(project.exports_dir / "task-r0001")
    fake_round(project, "r0002", "refused")  # its eval gate said no: the r0001 export stays current
    fake_round(project, "r0003", None)  # a gate-only round (`tuneloop data gate`): no model
    assert current_model(project) == str(project.exports_dir / "task-r0001")
    fake_round(project, "r0004", "passed", export=False)  # passed but its export was removed
    assert current_model(project) == str(project.exports_dir / "task-r0001")
    fake_round(project, "r0005", "passed")
    assert current_model(project) == str(project.exports_dir / "task-r0005")
    # the round a cycle is making (or reusing) never starts from its own export
    assert current_model(project, before=project.rounds_dir / "r0005") == str(project.exports_dir / "task-r0001")
    assert current_model(project, before=project.rounds_dir / "r0001") == "base-model"
    assert CycleOptions().start_model(project, project.rounds_dir / "r0006") == str(project.exports_dir / "task-r0005")


def test_stages_can_be_named_left_out_or_run_alone():
    with pytest.raises(LoopError, match="no stage named 'trian'"):
        stages_for(CycleOptions(skip=frozenset({"trian"})))
    only = [s.name for s in stages_for(CycleOptions(only="merge"))]
    # the stages nothing reads are left out before it; the others are reused, never run, by --only (alignment
    # among them, which the round itself leaves out unless align.method asks for it)
    assert only == ["traffic split", "gate", "baseline eval", "train", "best-of-n", "dpo", "eval after", "compare",
                    "merge"]
    assert "canary start" in CycleOptions(canary=False).left_out()
    assert "serve smoke" in CycleOptions(serve=False).left_out()
    assert set(STAGE_NAMES) >= {"traces pull", "select", "cluster", "relabel", "eval traffic", "canary start"}


# -- frozen val/test never reach train ------------------------------------------------------------------------------
def seed_rows(count: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    rows = []
    for i in range(count):
        text = " ".join(rng.choice(vocab) for _ in range(20))
        rows.append(Sample(id=f"r{i}", instruction="Extract the order as JSON.", input=f"order {i}: {text}",
                           output=json.dumps({"order": i}), lineage=Lineage(source_id=f"seed{i // 2}"),
                           meta=Meta(source="data/raw/seed.jsonl")))
    return rows


def make_project(root: Path, rows: list[Sample]) -> Project:
    write_samples(root / "data" / "raw" / "seed.jsonl", rows)
    config = ProjectConfig(data=DataConfig(sources=[SourceConfig(path="data/raw/seed.jsonl")]))
    config.task.schema_ = SCHEMA
    return Project(root, config)


def gate_with_traffic(project: Project, traffic: list[Sample]):
    target = project.root / "data" / "traffic" / "relabeled.jsonl"
    write_samples(target, traffic)
    return run_gate(project, progress=False, tokenizer=None, extra_sources=[target])


def relabeled(sample: Sample, new_id: str, **changes) -> Sample:
    """A traffic row relabeled from a trace whose message repeats `sample`."""
    fields = {"id": new_id, "output": json.dumps({"order": 4242}), "meta": Meta(source="traffic"),
              "lineage": Lineage(source_id=f"trace:{new_id}", augment_type="relabel"), **changes}
    return sample.model_copy(update=fields)


def quarantine_of(round_dir: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (round_dir / "quarantine.jsonl").read_text().splitlines()]
    return {r["sample_id"]: r for r in rows}


def test_a_relabeled_row_identical_or_near_identical_to_a_frozen_test_item_is_held_out_not_trained(tmp_path):
    rows = seed_rows(120)
    project = make_project(tmp_path, rows)
    first = run_gate(project, progress=False, tokenizer=None)
    frozen = load_samples(first.round_dir / "test.jsonl")
    a, b = frozen[0], frozen[1]
    words = b.input.split()
    traffic = [relabeled(a, "copy"),  # the same message, relabeled with another answer
               relabeled(b, "near", input=" ".join(words[:-1] + ["zzz"])),  # one word changed
               *traffic_rows(6)]
    second = gate_with_traffic(project, traffic)
    assert second.passed, second.failures
    train = {s.id for s in load_samples(second.round_dir / "train.jsonl")}
    held = {**quarantine_of(second.round_dir), **{r["sample_id"]: r for r in
                                                  map(json.loads, (second.round_dir / "review.jsonl").read_text().splitlines())}}
    assert "copy" not in train and "near" not in train
    assert a.id in held["copy"]["reason"] or a.id in str(held["copy"].get("conflicts_with"))
    assert b.id in held["near"]["reason"]
    assert {f"tr-{i}" for i in range(6)} <= train  # fresh traffic trains

    # the frozen items are gone from the sources (carried over): the leakage check finds the copies, and holds
    # them out instead of failing the round (before: "train/val/test overlaps" and an r0003-failed folder)
    project_rows = [r for r in rows if r.id not in (a.id, b.id)]
    write_samples(project.path("data/raw/seed.jsonl"), project_rows)
    third = gate_with_traffic(project, [relabeled(b, "near", input=" ".join(words[:-1] + ["zzz"])), *traffic_rows(6)])
    assert third.passed, third.failures
    assert third.round_dir.name == "r0003"
    assert "near" not in {s.id for s in load_samples(third.round_dir / "train.jsonl")}
    reason = quarantine_of(third.round_dir)["near"]["reason"]
    assert b.id in reason and "kept out of train" in reason
    assert b.id in {s.id for s in load_samples(third.round_dir / "test.jsonl")}


def test_no_frozen_val_test_id_nor_a_row_derived_from_one_ever_enters_train_in_any_round(tmp_path):
    """Four rounds, each trying every way a frozen item could slip into train through the loop."""
    rows = seed_rows(160)
    project = make_project(tmp_path, rows)
    first = run_gate(project, progress=False, tokenizer=None)
    assert first.passed
    frozen = {s.id: s for split in ("val", "test") for s in load_samples(first.round_dir / f"{split}.jsonl")}
    frozen_sources = {s.lineage.source_id for s in frozen.values()}
    rng = random.Random(7)
    traffic: list[Sample] = []
    for cycle in range(1, 4):
        for number, item in enumerate(rng.sample(sorted(frozen.values(), key=lambda s: s.id), 8)):
            tag = f"c{cycle}-{number}"
            words = item.input.split()
            traffic += [
                # the frozen item itself sent as traffic and relabeled under its own id
                item.model_copy(update={"output": json.dumps({"order": 1000 + cycle}), "meta": Meta(source="traffic")}),
                # a relabeled copy under a new id (exact prompt, other answer)
                relabeled(item, f"copy-{tag}"),
                # a variant of it: same seed lineage, other words
                relabeled(item, f"variant-{tag}", input=f"please look at order again {rng.random()}",
                          lineage=Lineage(source_id=item.lineage.source_id, parent_id=item.id)),
                # an eval bad case exported as a new row: own source id, parent the test item, words shuffled a bit
                relabeled(item, f"export-bad-{tag}", input=" ".join(words[:3] + ["kindly"] + words[3:]),
                          lineage=Lineage(source_id=f"eval-variant:{tag}", parent_id=item.id, augment_type="export-bad")),
                # derived from it by parent id only, with new text
                relabeled(item, f"child-{tag}", input=f"completely new wording {tag} {rng.random()}",
                          lineage=Lineage(source_id=f"child:{tag}", parent_id=item.id)),
                # naming the frozen item as its source id
                relabeled(item, f"named-{tag}", input=f"other new wording {tag} {rng.random()}",
                          lineage=Lineage(source_id=item.id)),
                # near-identical text: one word changed, unrelated lineage
                relabeled(item, f"near-{tag}", input=" ".join(words[:-1] + [f"x{cycle}"])),
            ]
        traffic += traffic_rows(5, start=cycle * 100)
        if cycle == 2:  # drop some frozen items from the sources: they are carried over, not re-read
            rows = [r for r in rows if r.id not in sorted(frozen)[:10]]
            write_samples(project.path("data/raw/seed.jsonl"), rows)
        result = gate_with_traffic(project, traffic)
        assert result.passed, result.failures
        assert result.counts["rows_in"] == (result.counts["accepted"] + result.counts["quarantined"]
                                            + result.counts["removed"] + result.counts["sent_to_review"])
        train = load_samples(result.round_dir / "train.jsonl")
        leaked = [s.id for s in train if s.id in frozen or s.lineage.source_id in frozen_sources | set(frozen)
                  or s.lineage.parent_id in set(frozen) | frozen_sources]
        assert leaked == [], f"round {result.round_dir.name}: {leaked}"
        assert not any(s.id.startswith(("copy-", "near-", "variant-", "export-bad-", "child-", "named-")) for s in train)
        held = {s.id for split in ("val", "test") for s in load_samples(result.round_dir / f"{split}.jsonl")}
        assert held == set(frozen)  # val/test never change
        assert {f"tr-{i}" for i in range(cycle * 100, cycle * 100 + 5)} <= {s.id for s in train}


# -- the stages before the gate, on a real trace store (no model) ----------------------------------------------------
TICKET = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "address_change",
                                                                                 "out_of_scope"]},
                                           "order_id": {"type": ["string", "null"]}},
          "required": ["intent", "order_id"], "additionalProperties": False,
          "x-refusal": {"intent": "out_of_scope", "order_id": None}}


def traffic_project(root: Path, broken: int = 8) -> Project:
    from tuneloop.records import Trace
    from tuneloop.traces.store import TraceStore

    config = ProjectConfig(data=DataConfig(sources=[SourceConfig(path="data/raw/seed.jsonl")]))
    config.task.schema_ = TICKET
    config.task.system = "You extract ticket fields as JSON."
    project = Project(root, config)
    with TraceStore(project.traces_db) as store:
        for i in range(broken):
            messages = [{"role": "system", "content": config.task.system},
                        {"role": "user", "content": f"Refund order A-{1000 + i} please, item {i} arrived broken"}]
            store.record(Trace(id=f"tr-bad-{i}", created_at=1000.0 + i, model="m", messages=messages,
                               output='{"intent": "refund", "order_id": ', latency_ms=5.0))
        messages = [{"role": "user", "content": "Move A-2000 to my new address in Berlin"}]
        store.record(Trace(id="tr-disliked", created_at=2000.0, model="m", messages=messages,
                           output='{"intent": "refund", "order_id": "A-2000"}', latency_ms=5.0))
        store.add_feedback("tr-disliked", 0.0, "wrong intent")
        store.record(Trace(id="tr-good", created_at=2001.0, model="m", messages=[
            {"role": "user", "content": "Refund A-3000"}], output='{"intent": "refund", "order_id": "A-3000"}',
            latency_ms=5.0))
    return project


def run_traffic_stages(project: Project, **options):
    from tuneloop.loop import Round
    from tuneloop.loop_stage import run_stages
    from tuneloop.loop_intake import INTAKE_STAGES

    said: list[str] = []
    round_ = Round(project, CycleOptions(**options), said.append)
    stages = [s for s in INTAKE_STAGES if s.name != "cluster"]  # clustering embeds (torch): its own tests
    run_stages(stages, round_, said.append)
    return round_, said


def order_of(row: dict) -> str:
    import re

    return re.search(r"A-\d+", row["instruction"] + row["input"]).group()


def fill(export_file: Path, out: Path, answer=lambda row: {"intent": "refund", "order_id": order_of(row)}) -> Path:
    rows = [json.loads(line) for line in export_file.read_text().splitlines()]
    for row in rows:
        row["output"] = json.dumps(answer(row))
        row["annotator"] = "tester"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_a_cycle_without_relabels_stops_and_says_how_to_fill_the_queue_then_the_labels_split_into_train_and_holdout(tmp_path):
    from tuneloop.loop_stage import RoundRefused

    project = traffic_project(tmp_path)
    with pytest.raises(RoundRefused) as refused:
        run_traffic_stages(project)
    export_file = tmp_path / "loop" / "traffic" / "relabel-export.jsonl"
    assert refused.value.stage == "relabel" and "no accepted relabeled rows: 9 failures wait" in refused.value.reasons[0]
    assert str(export_file) in refused.value.advice and "tuneloop loop --labels" in refused.value.advice
    assert len(export_file.read_text().splitlines()) == 9  # 8 broken answers + 1 disliked one, the good one passed

    labels = fill(export_file, tmp_path / "labels.jsonl",
                  lambda row: {"intent": "address_change" if "Berlin" in row["instruction"] else "refund",
                               "order_id": order_of(row)})
    round_, said = run_traffic_stages(project, labels=labels)
    assert round_.outputs["relabel"]["accepted"] == 9 and round_.outputs["relabel"]["pending"] == 0
    counts = round_.outputs["traffic split"]["counts"]
    assert counts == {"accepted": 9, "train": 7, "holdout": 2}  # 9 groups × 0.25, rounded half up
    train = load_samples(tmp_path / "data" / "traffic" / "relabeled.jsonl")
    holdout = load_samples(tmp_path / "data" / "traffic" / "holdout.jsonl")
    assert not {s.id for s in train} & {s.id for s in holdout}
    assert all(s.meta.source == "traffic" and s.lineage.source_id.startswith("trace:") for s in train + holdout)
    assert all(json.loads(s.output)["intent"] in ("refund", "address_change") for s in train + holdout)

    # a rerun with nothing new reuses every stage but the pull (only the source knows what is new)
    again, said = run_traffic_stages(project, labels=labels)
    assert [r.status for r in again.records] == ["done", "skipped", "skipped", "skipped"], said
    assert load_samples(tmp_path / "data" / "traffic" / "holdout.jsonl") == holdout


def test_a_rejected_label_stops_the_cycle_naming_the_file_and_line(tmp_path):
    from tuneloop.loop_stage import RoundRefused

    project = traffic_project(tmp_path, broken=3)
    with pytest.raises(RoundRefused):
        run_traffic_stages(project)
    labels = fill(tmp_path / "loop" / "traffic" / "relabel-export.jsonl", tmp_path / "labels.jsonl")
    lines = labels.read_text().splitlines()
    row = json.loads(lines[1])
    row["output"] = json.dumps({"intent": "refund", "order_id": "N/A"})  # the SOP: an absent value is null
    lines[1] = json.dumps(row)
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(RoundRefused) as refused:
        run_traffic_stages(project, labels=labels)
    assert refused.value.reasons[0].startswith(f"{labels}, line 2 ({row['id']}): ")
    assert "N/A" in refused.value.reasons[0] and "fix those rows" in refused.value.advice
    assert refused.value.outputs["imported"] == 3


def test_a_cycle_on_a_project_without_traffic_stops_saying_where_traffic_comes_from(tmp_path):
    from tuneloop.loop import Round
    from tuneloop.loop_stage import RoundRefused, run_stages
    from tuneloop.loop_intake import INTAKE_STAGES

    project = Project(tmp_path, ProjectConfig(model="base-model"))
    round_ = Round(project, CycleOptions(), lambda _: None)
    with pytest.raises(RoundRefused) as refused:
        run_stages(INTAKE_STAGES, round_, lambda _: None)  # no failures: the clustering has nothing to embed
    assert refused.value.reasons == ["no failures in the traffic and no relabeled rows yet"]
    assert "tuneloop serve --model base-model" in refused.value.advice and "loop.traces" in refused.value.advice


def test_the_cli_names_the_stages_when_one_is_misspelt(tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    (tmp_path / "tuneloop.yaml").write_text("model: base-model\n")
    result = CliRunner().invoke(app, ["loop", "--project", str(tmp_path), "--skip", "clustr"])
    assert result.exit_code == 2, result.output
    assert "no stage named 'clustr'" in result.output and "eval traffic" in result.output
    result = CliRunner().invoke(app, ["loop", "--project", str(tmp_path), "--skip", "train"])
    assert result.exit_code == 2 and "cannot be left out" in result.output, result.output


def test_a_run_that_left_stages_out_keeps_the_rounds_earlier_record_of_them(tmp_path):
    from tuneloop.loop_traffic import _keep_what_was_left_out

    project = Project(tmp_path, ProjectConfig(model="base-model"))
    fake_round(project, "r0001", "passed")
    before = json.loads((project.root / "loop" / "r0001" / "summary.json").read_text())
    before.update(round="r0001", project=str(project.root), merge={"identical": True}, serve={},
                  verdict={"verdict": "improved", "alpha": 0.05, "mode": "unconstrained", "metrics": {}},
                  improved=True, eval_gate={"passed": True, "reasons": []}, reports={"export": "x"}, traffic={},
                  headline={"field_accuracy": {"before": 0.5, "after": 0.7}})
    after = {"round": "r0001", "project": str(project.root), "outcome": {"status": "passed", "reasons": []},
             "stages": [{"name": "gate", "status": "skipped", "seconds": 0},
                        {"name": "eval traffic", "status": "done", "seconds": 3}],
             "merge": {}, "serve": {}, "verdict": None, "improved": False, "eval_gate": {"passed": None, "reasons": []},
             "headline": {"field_accuracy": {"before": None, "after": None}}, "reports": {"traffic eval": "y"},
             "traffic": {"eval traffic": {"n": 0}}}
    merged = _keep_what_was_left_out(project, before, after)
    assert [(s["name"], s["status"], s.get("earlier_run", False)) for s in merged["stages"]] == [
        ("gate", "skipped", False), ("eval traffic", "done", False), ("merge", "done", True)]
    assert merged["verdict"]["verdict"] == "improved" and merged["eval_gate"]["passed"] is True
    assert merged["merge"] == {"identical": True} and merged["reports"] == {"export": "x", "traffic eval": "y"}
    assert merged["headline"]["field_accuracy"]["after"] == 0.7
    assert current_model(project) == str(project.exports_dir / "task-r0001")
    assert json.loads((project.root / "loop" / "r0001" / "summary.json").read_text()) == merged


def test_a_plain_round_after_a_cycle_keeps_the_relabeled_traffic(tmp_path):
    from tuneloop.loop import LoopOptions

    project = make_project(tmp_path, seed_rows(60))
    assert LoopOptions().extra_sources(project) == []
    first = run_gate(project, progress=False, tokenizer=None)
    write_samples(project.relabeled_file, traffic_rows(6))
    assert LoopOptions().extra_sources(project) == [project.relabeled_file]  # in the round's key too
    second = run_gate(project, progress=False, tokenizer=None)  # `tuneloop run` / `data gate`: no extra_sources
    train = {s.id for s in load_samples(second.round_dir / "train.jsonl")}
    assert {f"tr-{i}" for i in range(6)} <= train
    assert second.counts["rows_in"] == first.counts["rows_in"] + 6
    again = run_gate(project, progress=False, tokenizer=None, extra_sources=[project.relabeled_file])
    assert again.counts["rows_in"] == second.counts["rows_in"]  # named twice, read once
