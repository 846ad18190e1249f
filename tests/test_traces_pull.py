"""`pull_traces` from the project store and from another traces.db: idempotent, incremental, smoke kept flagged,
feedback carried with its origin; `tuneloop traces pull|list|show` over them."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.project import LoopConfig
from tuneloop.records import Trace
from tuneloop.traces.pull import PullError, pull_traces
from tuneloop.traces.store import TraceStore, new_trace_id

T0 = 1_767_000_000.0


def served(at: float, **overrides) -> Trace:
    values = dict(id=new_trace_id(), created_at=at, model="tiny", messages=[
        {"role": "system", "content": "Extract."}, {"role": "user", "content": f"ticket at {at:.0f}"}],
        output='{"order": "1"}', latency_ms=20.0, json_valid=True, refusal=False, finish_reason="stop")
    return Trace(**{**values, **overrides})


@pytest.fixture
def other(tmp_path):
    """Another project's store: three served traces (one of them smoke), feedback on one."""
    path = tmp_path / "elsewhere" / "traces.db"
    with TraceStore(path) as store:
        good, bad, smoke = served(T0), served(T0 + 60, output="not json", json_valid=False), served(T0 + 120, smoke=True)
        for trace in (good, bad, smoke):
            store.record(trace)
        store.add_feedback(bad.id, 0.0, "the answer is not JSON")
    return path, (good, bad, smoke)


def test_another_store_is_copied_with_feedback_and_smoke_flags_and_a_second_pull_adds_nothing(other, tmp_path):
    path, (good, bad, smoke) = other
    with TraceStore(tmp_path / "traces.db") as store:
        first = pull_traces(store, str(path), LoopConfig())
        second = pull_traces(store, str(path), LoopConfig())
        assert (first.pulled, first.skipped_existing, first.feedback) == (3, 0, 1)
        assert (second.pulled, second.feedback) == (0, 0) and second.skipped_existing == 1  # the one at the cursor
        assert store.get(bad.id) == bad and store.get(bad.id).source_id == f"store:{bad.id}"
        assert store.get(smoke.id).smoke is True and store.get(good.id).smoke is False
        rows = store.query("SELECT trace_id, score, comment, source_id FROM feedback")
        assert rows == [(bad.id, 0.0, "the answer is not JSON", f"store:{bad.id}/feedback:1")]


def test_a_trace_without_extras_reads_back_equal(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        plain = served(T0)
        store.record(plain)
        assert store.get(plain.id) == plain and "extra" not in store.get(plain.id).model_dump()


def test_the_other_store_is_opened_read_only_and_left_as_it_was(other, tmp_path):
    path, _ = other
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        with TraceStore(tmp_path / "traces.db") as store:
            assert pull_traces(store, str(path), LoopConfig()).pulled == 3
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before


def test_new_traffic_and_late_feedback_on_an_old_trace_come_in_on_the_next_pull(other, tmp_path):
    path, (good, _, _) = other
    with TraceStore(tmp_path / "traces.db") as store:
        pull_traces(store, str(path), LoopConfig())
        with TraceStore(path) as elsewhere:
            newer = served(T0 + 600)
            elsewhere.record(newer)
            elsewhere.add_feedback(good.id, 1.0, "thanks")  # feedback on a trace older than the cursor
        again = pull_traces(store, str(path), LoopConfig())
        assert (again.pulled, again.feedback) == (1, 1)
        assert [f["comment"] for f in store.feedback(good.id)] == ["thanks"]
        assert store.count() == 4


def test_the_window_bounds_what_is_copied(other, tmp_path):
    path, (_, bad, _) = other
    with TraceStore(tmp_path / "traces.db") as store:
        result = pull_traces(store, str(path), LoopConfig(), since=T0 + 30, until=T0 + 120)
        assert [t.id for t in store.traces()] == [bad.id]  # T0 is before, T0+120 is the exclusive end
        assert result.feedback == 1
    with pytest.raises(PullError, match="window is empty"):
        pull_traces(TraceStore(tmp_path / "x.db"), str(path), LoopConfig(), since=T0 + 10, until=T0)


def test_a_schema_one_store_is_read_too(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE traces (id TEXT PRIMARY KEY, created_at REAL NOT NULL, model TEXT NOT NULL, model_version TEXT,
            arm TEXT, user TEXT, messages TEXT NOT NULL, output TEXT NOT NULL, response_format TEXT,
            latency_ms REAL NOT NULL, prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0, json_valid INTEGER, schema_valid INTEGER, refusal INTEGER,
            finish_reason TEXT, error TEXT, extra TEXT);
        CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, trace_id TEXT NOT NULL, score REAL,
            comment TEXT, created_at REAL NOT NULL);
        INSERT INTO traces (id, created_at, model, messages, output, latency_ms)
            VALUES ('tr-old', 1.0, 'm', '[{"role": "user", "content": "hi"}]', 'hello', 3.0);
        INSERT INTO feedback (trace_id, score, comment, created_at) VALUES ('tr-old', 0.0, 'meh', 2.0);
        PRAGMA user_version=1;""")
    db.close()
    with TraceStore(tmp_path / "traces.db") as store:
        assert (pull_traces(store, str(path), LoopConfig()).feedback) == 1
        trace = store.get("tr-old")
        assert trace.source_id == "store:tr-old" and trace.smoke is False and trace.output == "hello"


def test_a_missing_file_and_a_file_that_is_no_store_are_errors(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        with pytest.raises(PullError, match="no such trace store"):
            pull_traces(store, str(tmp_path / "nope.db"), LoopConfig())
        (tmp_path / "notes.db").write_text("hello")
        with pytest.raises(PullError, match="not a readable trace store"):
            pull_traces(store, str(tmp_path / "notes.db"), LoopConfig())
        sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE t (x)").connection.close()
        with pytest.raises(PullError, match="without a traces table"):
            pull_traces(store, str(tmp_path / "empty.db"), LoopConfig())


def test_the_project_store_itself_is_only_counted(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        for at in (T0, T0 + 1, T0 + 2):
            store.record(served(at))
        assert pull_traces(store, "store", LoopConfig()).skipped_existing == 3
        assert pull_traces(store, "store", LoopConfig(), since=T0 + 1).skipped_existing == 2
        assert pull_traces(store, str(tmp_path / "traces.db"), LoopConfig()).pulled == 0  # its own path
        assert store.count() == 3


def test_cli_pull_list_and_show_over_a_copied_store(other, tmp_path, monkeypatch):
    path, (good, bad, smoke) = other
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "traces.db"
    runner = CliRunner()
    pulled = runner.invoke(app, ["traces", "pull", "--from", str(path), "--traces", str(db)])
    assert pulled.exit_code == 0, pulled.output
    assert "3 new trace(s)" in pulled.output and "3 trace(s) in all" in pulled.output
    table = runner.invoke(app, ["traces", "list", "--traces", str(db)], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert bad.id in table.output and "smoke" in table.output and "score=0" in table.output
    failures = runner.invoke(app, ["traces", "list", "--failures-only", "--json", "--traces", str(db)])
    assert [json.loads(line)["id"] for line in failures.output.splitlines()] == [bad.id]
    shown = runner.invoke(app, ["traces", "show", bad.id, "--traces", str(db)])
    assert shown.exit_code == 0 and "ticket at" in shown.output and "not json" in shown.output
    assert "the answer is not JSON" in shown.output and "json valid: NO" in shown.output
    missing = runner.invoke(app, ["traces", "show", "tr-nope", "--traces", str(db)])
    assert missing.exit_code == 2 and "traces list" in missing.output
    both = runner.invoke(app, ["traces", "pull", "--days", "2", "--since", "2026-01-01", "--traces", str(db)])
    assert both.exit_code == 2 and "not both" in both.output
    bad_time = runner.invoke(app, ["traces", "pull", "--until", "yesterday", "--traces", str(db)])
    assert bad_time.exit_code == 2 and "--until 'yesterday' is not an ISO 8601" in bad_time.output
    nowhere = runner.invoke(app, ["traces", "list", "--traces", str(tmp_path / "none.db")])
    assert nowhere.exit_code == 2 and "no trace store" in nowhere.output
