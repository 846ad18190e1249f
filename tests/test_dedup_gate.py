"""The gate with label conflicts and template siblings: conflicts leave train/val/test for review.jsonl, siblings
are kept on one side of the split, and rows in = accepted + quarantined + removed + sent to review."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.data.gate.round import COUNT_IDENTITY, run_gate_on
from tuneloop.project import DataConfig
from tuneloop.records import Sample
from tests.test_dedup_labels import FRAMES, templated_rows


def other_rows(count: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [Sample(id=f"u{i}", instruction="Extract the order fields as JSON.",
                   input=f"order U{i}: " + " ".join(rng.choice(vocab) for _ in range(20)),
                   output=json.dumps({"order_id": f"U{i}"}), lineage={"source_id": f"u{i}"}) for i in range(count)]


def split_of(round_dir) -> dict[str, str]:
    return {s.id: name for name in ("train", "val", "test") for s in load_samples(round_dir / f"{name}.jsonl")}


def assert_identity(counts: dict[str, int]) -> None:
    assert counts["rows_in"] == counts["accepted"] + counts["quarantined"] + counts["removed"] + counts["sent_to_review"]
    assert counts["accepted"] == counts["train"] + counts["val"] + counts["test"] - counts["carried_over"]
    assert counts["removed"] == counts["duplicates_removed"] + counts["mix_dropped"]


def test_template_siblings_are_all_kept_and_each_family_sits_on_one_side_of_the_split(tmp_path):
    rows = [*templated_rows(45), *other_rows(300)]
    source = write_samples(tmp_path / "rows.jsonl", rows)
    result = run_gate_on([source], tmp_path / "rounds", DataConfig())
    assert result.passed, result.failures
    counts = result.counts
    assert counts["duplicates_removed"] == 0 and counts["sent_to_review"] == 0
    assert counts["template_siblings"] == 45
    where = split_of(result.round_dir)
    assert {f"t{i}" for i in range(45)} <= set(where)  # every templated row survived into a split
    manifest = json.loads((result.round_dir / "manifest.json").read_text())
    families = manifest["template_siblings"]
    assert len(families) == len(FRAMES)
    for family in families:
        assert len({where[m] for m in family["members"]}) == 1, family
    assert_identity(counts)


def test_same_prompt_two_answers_goes_to_review_and_never_into_a_split(tmp_path):
    rows = other_rows(200)
    rows.append(rows[7].model_copy(update={"id": "second-opinion", "output": json.dumps({"order_id": "U8"}),
                                           "lineage": rows[7].lineage.model_copy(update={"source_id": "x"})}))
    rows.append(rows[9].model_copy(update={"id": "copy-of-u9"}))  # a plain duplicate still counts as removed
    source = write_samples(tmp_path / "rows.jsonl", rows)
    result = run_gate_on([source], tmp_path / "rounds", DataConfig())
    assert result.passed, result.failures
    where = split_of(result.round_dir)
    assert "u7" not in where and "second-opinion" not in where
    review = [json.loads(line) for line in (result.round_dir / "review.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["reason"], r["conflicts_with"]) for r in review] == [
        ("u7", "label_conflict", ["second-opinion"]), ("second-opinion", "label_conflict", ["u7"])]
    assert [(Path(r["source_file"]).name, r["line"]) for r in review] == [("rows.jsonl", 8), ("rows.jsonl", 201)]
    counts = result.counts
    assert counts["sent_to_review"] == 2 and counts["label_conflicts"] == 1 and counts["duplicates_removed"] == 1
    assert_identity(counts)
    manifest = json.loads((result.round_dir / "manifest.json").read_text())
    assert manifest["count_identity"].startswith(f"{COUNT_IDENTITY}: 202 = ")
    assert "review.jsonl" in manifest["files"]
    report = (result.round_dir / "report.html").read_text()
    assert "Label conflicts" in report and "second-opinion" in report and "Template siblings" in report


def test_a_new_row_with_a_frozen_items_prompt_and_another_answer_goes_to_review(tmp_path):
    rows = other_rows(200)
    source = write_samples(tmp_path / "rows.jsonl", rows)
    first = run_gate_on([source], tmp_path / "rounds", DataConfig())
    frozen = load_samples(first.round_dir / "test.jsonl")[0]
    rival = frozen.model_copy(update={"id": "rival", "output": json.dumps({"order_id": "other"}),
                                      "lineage": frozen.lineage.model_copy(update={"source_id": "new"})})
    # the frozen item has left the sources: the split finds the conflict against the frozen test item
    later = write_samples(tmp_path / "later.jsonl", [*(r for r in rows if r.id != frozen.id), rival])
    second = run_gate_on([later], tmp_path / "rounds", DataConfig())
    review = [json.loads(line) for line in (second.round_dir / "review.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["reason"], r["conflicts_with"]) for r in review] == [
        ("rival", "label_conflict", [frozen.id])]
    assert (Path(review[0]["source_file"]).name, review[0]["line"]) == ("later.jsonl", 200)
    assert not (second.round_dir / "quarantine.jsonl").read_text()  # a conflict, not a variant to quarantine
    where = split_of(second.round_dir)
    assert "rival" not in where and where[frozen.id] == "test"
    assert second.counts["sent_to_review"] == 1 and second.counts["label_conflicts"] == 1
    assert_identity(second.counts)

    # the frozen item still in the sources: dedup finds the conflict; the frozen item stays in test (frozen)
    again = write_samples(tmp_path / "again.jsonl", [*rows, rival])
    third = run_gate_on([again], tmp_path / "rounds", DataConfig())
    review = [json.loads(line) for line in (third.round_dir / "review.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in review) == sorted([frozen.id, "rival"])
    assert split_of(third.round_dir)[frozen.id] == "test" and "rival" not in split_of(third.round_dir)
    assert_identity(third.counts)


def test_the_cli_summary_names_review_and_siblings(tmp_path):
    rows = [*templated_rows(12), *other_rows(100)]
    rows.append(rows[20].model_copy(update={"id": "rival", "output": "{}"}))
    source = write_samples(tmp_path / "rows.jsonl", rows)
    out = CliRunner().invoke(app, ["data", "gate", str(source), "--out", str(tmp_path / "rounds")])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "sent_to_review 2" in text and "template_siblings 12" in text and "label_conflicts 1" in text


def test_data_dedup_keeps_siblings_and_writes_conflicts_beside_out(tmp_path):
    rows = [*templated_rows(12), *other_rows(30)]
    rows.append(rows[20].model_copy(update={"id": "rival", "output": "{}"}))
    rows.append(rows[25].model_copy(update={"id": "copy"}))
    source = write_samples(tmp_path / "rows.jsonl", rows)
    out = CliRunner().invoke(app, ["data", "dedup", str(source), "--out", str(tmp_path / "kept.jsonl")])
    assert out.exit_code == 0, out.output
    kept = {s.id for s in load_samples(tmp_path / "kept.jsonl")}
    assert {f"t{i}" for i in range(12)} <= kept and not kept & {"rival", rows[20].id, "copy"}
    review = [json.loads(line) for line in (tmp_path / "kept.review.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in review) == sorted(["rival", rows[20].id])
    text = " ".join(out.output.split())
    assert "12 template siblings" in text and "2 rows of 1 label conflicts" in text
    assert len(kept) + 1 + len(review) == len(rows)
