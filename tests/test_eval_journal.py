"""The journal that lets a killed eval (or judge) run resume: what it keeps, what it drops, what it repairs."""

from __future__ import annotations

import json

from tuneloop.eval.journal import Journal


def test_finished_items_are_read_back_by_the_same_run_key(tmp_path):
    journal = Journal(tmp_path / "answers.jsonl", "k1")
    journal.append([("a", {"text": "x"}), ("b", {"text": "y"})])
    again = Journal(tmp_path / "answers.jsonl", "k1")
    assert set(again.done) == {"a", "b"} and again.done["a"]["text"] == "x"


def test_a_half_written_last_line_from_a_kill_is_cut_and_appending_goes_on(tmp_path):
    path = tmp_path / "answers.jsonl"
    Journal(path, "k").append([("a", {"text": "x"})])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "k", "id": "b", "te')  # the process died mid-write
    journal = Journal(path, "k")
    assert set(journal.done) == {"a"}
    journal.append([("b", {"text": "y"})])
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_another_run_key_starts_over_and_fresh_discards_everything(tmp_path):
    path = tmp_path / "answers.jsonl"
    Journal(path, "old").append([("a", {"text": "x"})])
    other = Journal(path, "new")
    assert other.done == {} and path.read_text() == ""  # another model or setting: nothing reusable is kept
    other.append([("a", {"text": "z"})])
    assert Journal(path, "new", fresh=True).done == {} and not path.exists()
