"""The project's trace store: one SQLite file (`traces.db`) in WAL mode.

```
traces         one row per request: served here (embedded server, canary router) or pulled from elsewhere
               (Langfuse, another store): messages, output, model and version, latency, tokens, cost,
               json/schema validity, finish reason, arm, user, session, tags, error, `source_id` (where it came
               from: store:<id> | langfuse:<trace id>), `smoke` (tuneloop's own checks: never data)
feedback       scores and comments for a trace (POST /v1/feedback, Langfuse scores with their origin id)
canary_state   small persisted state (key -> JSON): the canary decision, pull cursors
relabel_queue  failures waiting for a corrected answer (the loop's queue, served by the annotation tool)
seed_queue     the project's seed set as the annotation tool edits it (the relabel queue's columns)
annotations    every label an annotator submitted (the agreement of two annotators on one sample)
```

A stage adds its own tables by appending a `(version, sql)` step to `MIGRATIONS`; `PRAGMA user_version` records how far a file has been migrated, so old files upgrade in place.
WAL lets the server write while `canary status` or the annotation tool read. One connection is shared by the
threads of a process behind a lock; SQLite serialises writers across processes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneloop.records import Trace


def _queue_table(name: str, status_index: str) -> str:
    """A queue of samples waiting for a label (the relabel queue, the annotation tool's seed set): one layout."""
    return f"""CREATE TABLE IF NOT EXISTS {name} (
        id TEXT PRIMARY KEY,
        trace_id TEXT,
        origin TEXT NOT NULL,
        reasons TEXT NOT NULL,
        cluster INTEGER,
        cluster_name TEXT,
        sample TEXT NOT NULL,
        proposal TEXT,
        proposed_by TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        label TEXT,
        annotator TEXT,
        reviewer TEXT,
        comment TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {status_index} ON {name}(status);
"""


MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE IF NOT EXISTS traces (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT,
        arm TEXT,
        user TEXT,
        messages TEXT NOT NULL,
        output TEXT NOT NULL,
        response_format TEXT,
        latency_ms REAL NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        json_valid INTEGER,
        schema_valid INTEGER,
        refusal INTEGER,
        finish_reason TEXT,
        error TEXT,
        extra TEXT
    );
    CREATE INDEX IF NOT EXISTS traces_created ON traces(created_at);
    CREATE INDEX IF NOT EXISTS traces_arm ON traces(arm);
    CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        trace_id TEXT NOT NULL REFERENCES traces(id),
        score REAL,
        comment TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS feedback_trace ON feedback(trace_id);
    CREATE TABLE IF NOT EXISTS canary_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """),
    # traffic from elsewhere (Langfuse, another store) lands in the same table; feedback pulled from Langfuse scores
    # keeps its origin id so a second pull adds nothing twice; the relabel queue that the loop and the annotation
    # tool share.
    (2, """
    ALTER TABLE traces ADD COLUMN source_id TEXT;
    ALTER TABLE traces ADD COLUMN session_id TEXT;
    ALTER TABLE traces ADD COLUMN tags TEXT;
    ALTER TABLE traces ADD COLUMN cost REAL;
    ALTER TABLE traces ADD COLUMN smoke INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX IF NOT EXISTS traces_source_id ON traces(source_id);
    ALTER TABLE feedback ADD COLUMN name TEXT;
    ALTER TABLE feedback ADD COLUMN source_id TEXT;
    CREATE UNIQUE INDEX IF NOT EXISTS feedback_source_id ON feedback(source_id);
    """ + _queue_table("relabel_queue", "relabel_status") + """
    """),
    # the annotation tool: the seed set's queue (the relabel queue's columns; apart, so the loop never reads seeds
    # as traffic) and every label an annotator submits (a queue row holds only the latest one), for the agreement
    # of two annotators on one sample
    (3, """
    """ + _queue_table("seed_queue", "seed_status") + """
    CREATE TABLE IF NOT EXISTS annotations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        item_id TEXT NOT NULL,
        annotator TEXT NOT NULL,
        label TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS annotations_item ON annotations(queue, item_id);
    """),
]

TRACE_COLUMNS = ("id", "created_at", "model", "model_version", "arm", "user", "messages", "output",
                  "response_format", "latency_ms", "prompt_tokens", "completion_tokens", "json_valid",
                  "schema_valid", "refusal", "finish_reason", "error", "source_id", "session_id", "tags", "cost",
                  "smoke", "extra")
_JSON_COLUMNS = {"messages", "response_format", "tags"}
_BOOL_COLUMNS = {"json_valid", "schema_valid", "refusal", "smoke"}


class TraceStoreError(RuntimeError):
    """A trace store that cannot be used (unknown trace id, unreadable file), with what to do."""


def new_trace_id() -> str:
    return f"tr-{uuid.uuid4().hex}"


class TraceStore:
    """Traces and feedback in one SQLite file; safe to share between threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise TraceStoreError(f"{self.path}: not a usable SQLite trace store ({err}); move it aside and retry.") from None

    def _migrate(self) -> None:
        with self._lock:
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            for version, sql in MIGRATIONS:
                if version > current:
                    self._db.executescript(f"BEGIN; {sql} PRAGMA user_version={version}; COMMIT;")

    @property
    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- traces --------------------------------------------------------------------------------------------------
    def record(self, trace: Trace) -> str:
        """Store one trace (fields records.Trace does not name go to `extra`); returns its id."""
        row = trace.model_dump()
        extra = {k: v for k, v in row.items() if k not in TRACE_COLUMNS}
        values = []
        for column in TRACE_COLUMNS:
            value = extra if column == "extra" else row.get(column)
            if column in _JSON_COLUMNS or column == "extra":
                value = None if value is None or value == {} else json.dumps(value, ensure_ascii=False)
            elif column in _BOOL_COLUMNS and value is not None:
                value = int(bool(value))
            values.append(value)
        placeholders = ",".join("?" for _ in TRACE_COLUMNS)
        with self._lock:
            self._db.execute(f"INSERT INTO traces ({','.join(TRACE_COLUMNS)}) VALUES ({placeholders})", values)
        return trace.id

    def get(self, trace_id: str) -> Trace:
        with self._lock:
            row = self._db.execute(f"SELECT {','.join(TRACE_COLUMNS)} FROM traces WHERE id=?", (trace_id,)).fetchone()
        if row is None:
            raise TraceStoreError(f"{self.path}: no trace with id {trace_id!r} in this store; check the id and the store path.")
        return trace_from_row(row)

    def traces(self, arm: str | None = None, since: float | None = None, limit: int | None = None) -> list[Trace]:
        """Traces oldest first, optionally of one arm and/or newer than `since` (unix time)."""
        where, params = _filters(arm, since)
        sql = f"SELECT {','.join(TRACE_COLUMNS)} FROM traces{where} ORDER BY created_at, rowid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [trace_from_row(row) for row in rows]

    def iter_outcomes(self, arm: str | None = None, since: float | None = None) -> Iterator[dict[str, Any]]:
        """The small per-trace fields metrics need (no messages/outputs), oldest first; smoke traffic (tuneloop's
        own checks) is no user's outcome and is left out."""
        where, params = _filters(arm, since, smoke=False)
        sql = ("SELECT arm, json_valid, schema_valid, refusal, latency_ms, error, response_format IS NOT NULL "
               f"FROM traces{where} ORDER BY created_at, rowid")
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        for arm_name, json_valid, schema_valid, refusal, latency, error, constrained in rows:
            yield {"arm": arm_name, "json_valid": _bool(json_valid), "schema_valid": _bool(schema_valid),
                   "refusal": _bool(refusal), "latency_ms": latency, "error": error, "constrained": bool(constrained)}

    def count(self, arm: str | None = None, since: float | None = None) -> int:
        where, params = _filters(arm, since)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM traces{where}", params).fetchone()[0]

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """One SQL statement under the store's lock, its rows returned: for the modules that own a table
        (`traces.queue`, `traces.pull`), so the connection and its lock stay here."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self, statements: list[tuple[str, tuple[Any, ...] | list[Any]]]) -> None:
        """Several statements as one transaction: all of them are written, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- feedback ------------------------------------------------------------------------------------------------
    def add_feedback(self, trace_id: str, score: float | None, comment: str | None = None) -> int:
        """Attach a score and/or comment to a stored trace; an unknown trace id is an error."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM traces WHERE id=?", (trace_id,)).fetchone() is None:
                raise TraceStoreError(f"{self.path}: no trace with id {trace_id!r}; send the id a completion returned.")
            cursor = self._db.execute(
                "INSERT INTO feedback (trace_id, score, comment, created_at) VALUES (?,?,?,?)",
                (trace_id, score, comment, time.time()),
            )
            return int(cursor.lastrowid)

    def feedback(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, trace_id, score, comment, created_at FROM feedback"
        params: tuple[Any, ...] = ()
        if trace_id is not None:
            sql, params = sql + " WHERE trace_id=?", (trace_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [dict(zip(("id", "trace_id", "score", "comment", "created_at"), row)) for row in rows]

    # -- small persisted state (canary decision) ------------------------------------------------------------------
    def set_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO canary_state (key, value, updated_at) VALUES (?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (key, json.dumps(value, ensure_ascii=False), time.time()),
            )

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM canary_state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])


def _filters(arm: str | None, since: float | None, smoke: bool = True) -> tuple[str, tuple[Any, ...]]:
    clauses, params = ([] if smoke else ["smoke=0"]), []
    if arm is not None:
        clauses.append("arm=?")
        params.append(arm)
    if since is not None:
        clauses.append("created_at>=?")
        params.append(since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def trace_from_row(row: tuple[Any, ...]) -> Trace:
    data = dict(zip(TRACE_COLUMNS, row))
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column]) if data[column] else None
    for column in _BOOL_COLUMNS:
        data[column] = _bool(data[column])
    raw_extra = data.pop("extra")  # popped even when NULL: else every plain trace came back with an `extra` field
    extra = json.loads(raw_extra) if raw_extra else {}
    return Trace(**data, **extra)
