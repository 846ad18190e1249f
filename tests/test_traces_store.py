"""The SQLite trace store: WAL mode, round-trips of traces, feedback, persisted state, concurrent writers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tuneloop.records import Trace
from tuneloop.traces.store import TraceStore, TraceStoreError, new_trace_id


def trace(**overrides) -> Trace:
    values = dict(id=new_trace_id(), created_at=1.0, model="m", model_version="v1",
                  messages=[{"role": "user", "content": "订单 A12345"}], output='{"intent": "refund"}',
                  response_format={"type": "json_object"}, latency_ms=12.5, prompt_tokens=5, completion_tokens=7,
                  json_valid=True, schema_valid=None, finish_reason="stop", user="u1")
    return Trace(**{**values, **overrides})


def test_store_is_in_wal_mode_and_round_trips_a_trace_with_extras(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        assert store.journal_mode == "wal"
        original = trace(arm="canary", refusal=False, status_code=200)
        store.record(original)
        assert store.get(original.id) == original


def test_unknown_trace_ids_are_errors_for_reads_and_feedback(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        with pytest.raises(TraceStoreError, match="no trace with id"):
            store.get("tr-missing")
        with pytest.raises(TraceStoreError, match="no trace with id"):
            store.add_feedback("tr-missing", 1.0)


def test_feedback_is_kept_per_trace(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        first, second = trace(), trace()
        store.record(first), store.record(second)
        store.add_feedback(first.id, 0.0, "wrong order id")
        store.add_feedback(first.id, 1.0, None)
        assert [(f["score"], f["comment"]) for f in store.feedback(first.id)] == [(0.0, "wrong order id"), (1.0, None)]
        assert store.feedback(second.id) == []


def test_traces_filter_by_arm_and_time_oldest_first(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        for when, arm in [(3.0, "stable"), (1.0, "canary"), (2.0, "stable")]:
            store.record(trace(created_at=when, arm=arm))
        assert [t.created_at for t in store.traces()] == [1.0, 2.0, 3.0]
        assert store.count(arm="stable") == 2 and store.count(since=2.0) == 2
        assert [o["arm"] for o in store.iter_outcomes(since=1.5)] == ["stable", "stable"]


def test_state_survives_reopening_and_the_schema_version_is_recorded(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        store.set_state("canary", {"decision": "rollback"})
    with TraceStore(tmp_path / "t.db") as store:
        assert store.get_state("canary") == {"decision": "rollback"}
        assert store.get_state("other", "none") == "none"
    assert sqlite3.connect(tmp_path / "t.db").execute("PRAGMA user_version").fetchone()[0] >= 1


def test_concurrent_writers_lose_no_trace(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    other_process_view = TraceStore(tmp_path / "t.db")

    def write(n: int) -> None:
        for _ in range(n):
            (store if n % 2 else other_process_view).record(trace())

    threads = [threading.Thread(target=write, args=(25 + i % 2,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 4 * 25 + 4 * 26
    store.close(), other_process_view.close()


def test_a_file_that_is_not_sqlite_is_reported(tmp_path):
    bad = tmp_path / "t.db"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(TraceStoreError, match="not a usable SQLite trace store"):
        TraceStore(bad)


def test_smoke_traffic_is_kept_but_never_a_canary_outcome(tmp_path):
    from tuneloop.serve.canary import arm_metrics

    with TraceStore(tmp_path / "t.db") as store:
        store.record(trace(arm="canary", json_valid=False, smoke=True))
        store.record(trace(arm="canary", json_valid=True))
        assert store.count() == 2 and [t.smoke for t in store.traces()] == [True, False]
        assert [o["json_valid"] for o in store.iter_outcomes()] == [True]
        assert arm_metrics(store)["canary"]["requests"] == 1
