"""Traffic into the project's trace store: from the store itself, another traces.db, or Langfuse.

```
source        what happens                                             incremental by
store         nothing to copy (serve and the canary write here): counts  -
PATH.db       its traces and feedback copied in (read-only open)        state pull:<path>  {traces_from}
langfuse      traces + their generations + scores (traces.langfuse)     state pull:langfuse {host, api, traces_from,
                                                                          scores_from, pending_scores}
```

Every trace keeps its origin in `source_id` (`store:<id>`, `langfuse:<trace id>`), every feedback row its origin
in `feedback.source_id` (`langfuse-score:<id>`), both unique: a second pull adds nothing twice. A pull resumes where
the last one ended (the newest timestamp it saw, inclusive: what sits exactly there is seen again and skipped; from
Langfuse 15 minutes before it, as its lists can lag) unless `since` is given. A score whose trace is not here yet (outside the window, or ingested later) waits in the pull state
and is attached by a later pull: feedback is never dropped. Smoke traffic keeps its flag.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.project import LoopConfig
from tuneloop.records import Trace
from tuneloop.traces.langfuse import LangfuseClient, LangfuseError, in_window
from tuneloop.traces.langfuse_map import feedback_row, iso, timestamp, to_trace, trace_of_generations
from tuneloop.traces.store import TRACE_COLUMNS, TraceStore, trace_from_row

# Langfuse's list endpoints may show a trace or score up to ~10 minutes after its timestamp: each pull looks this
# far behind its cursor again (what it sees twice is skipped by origin id), so nothing late is passed over
LANGFUSE_LAG_S = 900.0
MAX_PENDING_SCORES = 10_000  # scores kept waiting for their trace; the oldest go first, with a warning


class PullError(RuntimeError):
    """A source that cannot be pulled from (missing file, not a trace store), with what to do."""


@dataclass
class PullResult:
    """What one pull brought in; `warnings` are what the source said to heed (deprecations, dropped scores)."""

    source: str
    pulled: int = 0
    skipped_existing: int = 0
    feedback: int = 0
    cursor: str | None = None
    warnings: list[str] = field(default_factory=list)
    pending_feedback: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the terminal and the loop's stage log."""
        parts = [f"{self.source}: {self.pulled} new trace(s)", f"{self.skipped_existing} already here",
                 f"{self.feedback} feedback row(s) added"]
        if self.pending_feedback:
            parts.append(f"{self.pending_feedback} score(s) waiting for their trace")
        parts += [f"{count} {reason}" for reason, count in sorted(self.skipped.items()) if count]
        if self.cursor:
            parts.append(f"next pull from {self.cursor}")
        return "; ".join(parts)


def pull_traces(store: TraceStore, source: str, config: LoopConfig, since: float | None = None,
                until: float | None = None, say: Callable[[str], None] = print,
                langfuse: LangfuseClient | None = None) -> PullResult:
    """Bring `source`'s traffic in the window [since, until) into `store` (see the module doc).

    `since` None: from where the last pull of this source ended, else `config.since_days` back, else everything.
    `langfuse`: a client to use instead of one built from `config.langfuse` and the environment.
    """
    if until is not None and since is not None and until <= since:
        raise PullError(f"the window is empty: --until {iso(until)} is not after --since {iso(since)}.")
    if source == "store":
        return _count_store(store, since, until)
    if source == "langfuse":
        client = langfuse or LangfuseClient(config.langfuse)
        try:
            return _pull_langfuse(store, client, config, since, until, say)
        finally:
            if langfuse is None:
                client.close()
    path = Path(source)
    if path.resolve() == store.path.resolve():
        return _count_store(store, since, until)
    return _pull_store_file(store, path, config, since, until)


def _default_since(config: LoopConfig) -> float | None:
    return time.time() - config.since_days * 86400 if config.since_days else None


def _count_store(store: TraceStore, since: float | None, until: float | None) -> PullResult:
    where, params = _window_sql(since, until)
    count = store.query(f"SELECT COUNT(*) FROM traces{where}", params)[0][0]
    return PullResult("store", skipped_existing=count)


def _window_sql(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("created_at>=?")
        params.append(since)
    if until is not None:
        clauses.append("created_at<?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# -- writing ---------------------------------------------------------------------------------------------------------
def _known(store: TraceStore, source_id: str) -> str | None:
    """The store id of the trace with this origin, None when it is not here."""
    rows = store.query("SELECT id FROM traces WHERE source_id=?", (source_id,))
    return rows[0][0] if rows else None


def add_traces(store: TraceStore, traces: Iterable[Trace]) -> tuple[int, int]:
    """(added, already here): a trace whose `source_id` is stored is not stored again."""
    added = existing = 0
    for trace in traces:
        if _known(store, trace.source_id) is not None:
            existing += 1
            continue
        try:
            store.record(trace)
        except sqlite3.IntegrityError:  # another pull stored it between the check and the insert
            existing += 1
            continue
        added += 1
    return added, existing


def add_feedback(store: TraceStore, rows: Iterable[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """(rows added, rows whose trace is not here): each row names its trace by origin (`trace_source`)."""
    added, waiting = 0, []
    for row in rows:
        trace_id = _known(store, row["trace_source"])
        if trace_id is None:
            waiting.append(row)
            continue
        inserted = store.query(
            "INSERT OR IGNORE INTO feedback (trace_id, score, comment, created_at, name, source_id) "
            "VALUES (?,?,?,?,?,?) RETURNING id",
            (trace_id, row["score"], row["comment"], row["created_at"], row["name"], row["source_id"]))
        added += len(inserted)
    return added, waiting


# -- another traces.db -------------------------------------------------------------------------------------------
def _pull_store_file(store: TraceStore, path: Path, config: LoopConfig, since: float | None,
                     until: float | None) -> PullResult:
    if not path.is_file():
        raise PullError(f"{path}: no such trace store; pass `--from store`, `--from langfuse` or the path of a "
                        "traces.db that `tuneloop serve` wrote.")
    key = f"pull:{path.resolve()}"
    state = store.get_state(key, {})
    since = since if since is not None else state.get("traces_from", _default_since(config))
    try:
        other = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "traces" not in tables:
                raise PullError(f"{path}: a SQLite file without a traces table, not a tuneloop trace store.")
            traces, feedback = _read_store_file(other, since, until, "feedback" in tables)
        finally:
            other.close()
    except sqlite3.DatabaseError as err:
        raise PullError(f"{path}: not a readable trace store ({err}); check the path.") from None
    added, existing = add_traces(store, traces)
    attached, waiting = add_feedback(store, feedback)
    newest = max([t.created_at for t in traces] + [state.get("traces_from") or 0.0, since or 0.0])
    store.set_state(key, {"traces_from": newest})
    result = PullResult(str(path), added, existing, attached, iso(newest) if newest else None)
    if waiting:  # feedback on traces outside the window: it comes in with them, by a pull whose window holds them
        result.skipped["feedback row(s) on traces not pulled (outside the window)"] = len(waiting)
    return result


def _read_store_file(db: sqlite3.Connection, since: float | None, until: float | None,
                     has_feedback: bool) -> tuple[list[Trace], list[dict[str, Any]]]:
    """Traces (any schema version: columns it lacks read as empty) and their feedback, named by origin."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(traces)")}
    select = ",".join(c if c in columns else ("0" if c == "smoke" else "NULL") for c in TRACE_COLUMNS)
    where, params = _window_sql(since, until)
    traces = [trace_from_row(row) for row in db.execute(f"SELECT {select} FROM traces{where} ORDER BY created_at", params)]
    if not has_feedback:
        return traces, []
    # all of its feedback, not only the window's: a score given later on an older trace comes in too
    feedback_columns = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
    extra = ",".join(f"f.{c}" if c in feedback_columns else "NULL" for c in ("name", "source_id"))
    origin = "t.source_id" if "source_id" in columns else "NULL"
    rows = []
    for fid, score, comment, created, name, source_id, trace_source, trace_id in db.execute(
            f"SELECT f.id, f.score, f.comment, f.created_at, {extra}, {origin}, t.id FROM feedback f "
            "JOIN traces t ON t.id = f.trace_id ORDER BY f.id"):
        trace_source = trace_source or f"store:{trace_id}"
        rows.append({"trace_source": trace_source, "score": score, "comment": comment, "created_at": created,
                     "name": name, "source_id": source_id or f"{trace_source}/feedback:{fid}"})
    return traces, rows


# -- Langfuse ----------------------------------------------------------------------------------------------------
def _pull_langfuse(store: TraceStore, client: LangfuseClient, config: LoopConfig, since: float | None,
                   until: float | None, say: Callable[[str], None]) -> PullResult:
    state = store.get_state("pull:langfuse", {})
    result = PullResult("langfuse")
    if state and state.get("host") != client.host:
        result.warnings.append(f"the last Langfuse pull read {state.get('host')}, this one reads {client.host}: "
                               "starting that host from the beginning of the window.")
        state = {}
    api = client.generation()
    say(f"Langfuse {api} API at {client.host}")
    until = until if until is not None else time.time()
    def start(key: str) -> float | None:
        if since is not None:
            return since
        cursor = state.get(key)
        return cursor - LANGFUSE_LAG_S if cursor is not None else _default_since(config)

    traces_from, scores_from = start("traces_from"), start("scores_from")

    newest_trace = _pull_langfuse_traces(store, client, api, traces_from, until, result)
    pending = state.get("pending_scores", [])
    rows, newest_score = [], None
    for score in client.scores(scores_from, until):
        if not in_window(score.get("timestamp"), scores_from, until):
            continue
        row = feedback_row(score)
        newest_score = max(newest_score or 0.0, row["created_at"])
        if row["trace"] is None:
            result.skipped["score(s) on a session or experiment, not a trace"] = \
                result.skipped.get("score(s) on a session or experiment, not a trace", 0) + 1
            continue
        rows.append({**row, "trace_source": f"langfuse:{row.pop('trace')}"})
    fresh = {row["source_id"] for row in rows}
    result.feedback, waiting = add_feedback(store, rows + [row for row in pending if row["source_id"] not in fresh])
    if len(waiting) > MAX_PENDING_SCORES:
        result.warnings.append(f"{len(waiting) - MAX_PENDING_SCORES} score(s) waited too long for their trace and "
                               "were let go; pull with an earlier --since to bring those traces in.")
        waiting = sorted(waiting, key=lambda row: row["created_at"])[-MAX_PENDING_SCORES:]
    result.pending_feedback = len(waiting)
    traces_cursor = max(filter(None, [newest_trace, since, state.get("traces_from")]), default=None)
    store.set_state("pull:langfuse", {
        "host": client.host, "api": api, "traces_from": traces_cursor,
        "scores_from": max(filter(None, [newest_score, since, state.get("scores_from")]), default=None),
        "pending_scores": waiting})
    result.cursor = iso(traces_cursor) if traces_cursor else None
    result.warnings[:0] = client.warnings
    return result


def _pull_langfuse_traces(store: TraceStore, client: LangfuseClient, api: str, since: float | None, until: float,
                          result: PullResult) -> float | None:
    """Store the window's new traces; the newest timestamp seen."""
    newest: float | None = None
    no_generation = "trace(s) without a generation (nothing a model answered)"

    def keep(trace: Trace | None) -> None:
        if trace is None:
            result.skipped[no_generation] = result.skipped.get(no_generation, 0) + 1
            return
        added, existing = add_traces(store, [trace])
        result.pulled += added
        result.skipped_existing += existing

    if api == "v3":
        for item in client.traces_v3(since, until):
            if not in_window(item.get("timestamp"), since, until):
                continue
            newest = max(newest or 0.0, timestamp(item["timestamp"]))
            if _known(store, f"langfuse:{item['id']}") is not None:  # no need to ask for its generations again
                result.skipped_existing += 1
                continue
            # the list names each trace's observations: none, no request for them
            generations = client.generations_v3(item["id"]) if item.get("observations") != [] else []
            keep(_mapped(client, item, generations) if generations else None)
        return newest
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for generation in client.generations_v4(since, until):
        if in_window(generation.get("startTime"), since, until) and generation.get("traceId"):
            by_trace.setdefault(generation["traceId"], []).append(generation)
            newest = max(newest or 0.0, timestamp(generation["startTime"]))
    for generations in by_trace.values():
        keep(_mapped(client, trace_of_generations(generations), generations))
    return newest


def _mapped(client: LangfuseClient, trace: dict[str, Any], generations: list[dict[str, Any]]) -> Trace:
    """`to_trace`, its failure an error naming the trace (never a trace half-read)."""
    try:
        return to_trace(trace, generations)
    except (ValueError, TypeError, KeyError) as err:  # pydantic's ValidationError is a ValueError
        raise LangfuseError(f"Langfuse trace {trace.get('id')!r} at {client.host} has a shape tuneloop cannot read "
                            f"({type(err).__name__}: {str(err)[:200]}); nothing after it was pulled, the traces "
                            "before it are stored.") from None


__all__ = ["LangfuseError", "PullError", "PullResult", "add_feedback", "add_traces", "pull_traces"]
