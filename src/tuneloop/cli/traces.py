"""`tuneloop traces pull|list|show`: traffic into the project's trace store, and a look at it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.apps import traces_app
from tuneloop.cli.common import UserError, console, err_console, find_project, friendly_errors
from tuneloop.cli.serve import store_path

TRACES_OPTION = typer.Option("--traces", help="Trace store (default: the project's traces.db).")


def parse_time(text: str, option: str) -> float:
    """Unix seconds of an ISO 8601 date or time (UTC when it names no zone); `--until`'s twin of
    `cli.loop.since_time`, whose errors name `--since`."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{option} {text!r} is not an ISO 8601 date or time; write e.g. 2026-11-30 or "
                        "2026-11-30T08:00:00Z.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _open_store(traces: Path | None, must_exist: bool = True):
    from tuneloop.traces.store import TraceStore

    path = store_path(traces)
    if must_exist and not path.exists():
        raise UserError(f"{path}: no trace store; serve a model (`tuneloop serve`) or pull traffic in "
                        "(`tuneloop traces pull --from langfuse`).")
    return TraceStore(path)


@traces_app.command("pull")
@friendly_errors
def traces_pull(
    source: Annotated[list[str] | None, typer.Option("--from", help="store | langfuse | PATH of another traces.db "
                                                      "(repeatable; default: tuneloop.yaml loop.traces).")] = None,
    days: Annotated[float | None, typer.Option("--days", min=0, help="Only traffic of the last N days.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only traffic at or after this ISO time (UTC).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only traffic before this ISO time (UTC).")] = None,
    traces: Annotated[Path | None, TRACES_OPTION] = None,
) -> None:
    """Bring traffic into the trace store: from Langfuse, another traces.db, or the store itself (counted).

    Incremental: a pull resumes where the last one ended, and never adds a trace or a score twice. Langfuse's
    self-hosted v3 and Cloud v4 APIs are detected (or set loop.langfuse.api).

    Langfuse needs LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_HOST (or loop.langfuse in tuneloop.yaml).

    Example: tuneloop traces pull --from langfuse --days 7
    """
    from tuneloop.project import LoopConfig
    from tuneloop.traces.langfuse import LangfuseError
    from tuneloop.traces.pull import PullError, pull_traces

    from tuneloop.cli.loop import since_time

    start = since_time(since, days)
    end = parse_time(until, "--until") if until else None
    project = find_project(required=False)
    config = project.config.loop if project else LoopConfig()
    sources = source or config.traces
    store = _open_store(traces, must_exist=False)
    try:
        for name in sources:
            try:
                result = pull_traces(store, name, config, since=start, until=end,
                                     say=lambda line: console.print(line, highlight=False, soft_wrap=True))
            except (LangfuseError, PullError) as err:
                raise UserError(str(err)) from None
            for warning in result.warnings:
                err_console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)
            console.print(result.line(), highlight=False, soft_wrap=True)
        total = store.count()
    finally:
        store.close()
    console.print(f"{store.path}: {total} trace(s) in all", highlight=False, soft_wrap=True)


def _feedback(store, trace_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for trace_id in trace_ids:
        rows = store.query("SELECT name, score, comment, source_id, created_at FROM feedback WHERE trace_id=? "
                           "ORDER BY created_at, id", (trace_id,))
        found[trace_id] = [dict(zip(("name", "score", "comment", "source_id", "created_at"), row)) for row in rows]
    return found


def is_failure(trace: Any, feedback: list[dict[str, Any]], negative_below: float) -> bool:
    """What `traces list --failures-only` keeps: an error, a broken answer, a cut answer, or negative feedback
    (the full selection with reasons is `tuneloop loop select`)."""
    return bool(trace.error or trace.json_valid is False or trace.schema_valid is False
                or trace.finish_reason in ("length", "schema_invalid")
                or any(f["score"] is not None and f["score"] < negative_below for f in feedback))


def _flag(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "NO"


@traces_app.command("list")
@friendly_errors
def traces_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N traces.")] = 20,
    failures_only: Annotated[bool, typer.Option("--failures-only", help="Only errors, answers that are not JSON or "
                                                "fail the schema, cut answers, and negative feedback.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines (one trace with its feedback a line) instead "
                                          "of a table.")] = False,
    traces: Annotated[Path | None, TRACES_OPTION] = None,
) -> None:
    """List the newest traces: time, model, arm, JSON/schema validity, finish reason, feedback, smoke.

    Example: tuneloop traces list --limit 50 --failures-only
    """
    from rich.table import Table

    from tuneloop.project import LoopConfig

    project = find_project(required=False)
    negative_below = (project.config.loop if project else LoopConfig()).select.negative_below
    with _open_store(traces) as store:
        ids = [row[0] for row in store.query("SELECT id FROM traces ORDER BY created_at DESC, rowid DESC")]
        shown: list[tuple[Any, list[dict[str, Any]]]] = []
        for trace_id in ids:
            trace = store.get(trace_id)
            feedback = _feedback(store, [trace_id])[trace_id]
            if not failures_only or is_failure(trace, feedback, negative_below):
                shown.append((trace, feedback))
            if len(shown) == limit:
                break
    if as_json:
        for trace, feedback in shown:
            typer.echo(json.dumps({**trace.model_dump(mode="json"), "feedback": feedback}, ensure_ascii=False))
        return
    if not shown:
        console.print("no failures in this store." if failures_only and ids else "no traces yet.")
        return
    table = Table(title=f"{len(shown)} newest trace(s)" + (" with a failure" if failures_only else ""))
    for column in ("id", "time (UTC)", "model", "arm", "json", "schema", "finish", "feedback", "smoke"):
        table.add_column(column, overflow="fold")
    for trace, feedback in shown:
        scores = [f"{f['name'] or 'score'}={f['score']:g}" if f["score"] is not None else (f["name"] or "comment")
                  for f in feedback]
        table.add_row(trace.id, dt.datetime.fromtimestamp(trace.created_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      trace.model, trace.arm or "", _flag(trace.json_valid), _flag(trace.schema_valid),
                      trace.finish_reason or ("error" if trace.error else ""), ", ".join(scores),
                      "smoke" if trace.smoke else "")
    console.print(table)


@traces_app.command("show")
@friendly_errors
def traces_show(
    trace_id: Annotated[str, typer.Argument(help="Trace id as `traces list` shows it (e.g. tr-… or langfuse:…).")],
    as_json: Annotated[bool, typer.Option("--json", help="The trace and its feedback as JSON.")] = False,
    traces: Annotated[Path | None, TRACES_OPTION] = None,
) -> None:
    """Show one trace whole: the messages the model saw, its answer, the numbers, and its feedback.

    Example: tuneloop traces show langfuse:7f3c2a
    """
    from tuneloop.traces.store import TraceStoreError

    with _open_store(traces) as store:
        try:
            trace = store.get(trace_id)
        except TraceStoreError as err:
            raise UserError(f"{err} `tuneloop traces list` shows the ids.") from None
        feedback = _feedback(store, [trace_id])[trace_id]
    data = trace.model_dump(mode="json")
    if as_json:
        console.print_json(json.dumps({**data, "feedback": feedback}, ensure_ascii=False))
        return
    when = dt.datetime.fromtimestamp(trace.created_at, dt.timezone.utc).isoformat(timespec="seconds")
    console.print(f"[bold]{trace.id}[/bold]  {when}  from {trace.source_id}" + ("  [yellow]smoke[/yellow]" if trace.smoke else ""))
    facts = {"model": trace.model, "version": trace.model_version, "arm": trace.arm, "user": trace.user,
             "session": trace.session_id, "tags": ", ".join(trace.tags or []) or None,
             "latency": f"{trace.latency_ms:.0f} ms", "tokens": f"{trace.prompt_tokens} in / {trace.completion_tokens} out",
             "cost": f"${trace.cost:.6f}" if trace.cost is not None else None, "json valid": _flag(trace.json_valid),
             "schema valid": _flag(trace.schema_valid), "finish": trace.finish_reason, "error": trace.error}
    for key, value in facts.items():
        if value not in (None, ""):
            console.print(f"  {key}: {value}", highlight=False, markup=False)
    if trace.response_format:
        console.print(f"  response_format: {json.dumps(trace.response_format, ensure_ascii=False)[:300]}",
                      highlight=False, markup=False)
    console.print("[bold]messages[/bold]")
    for message in trace.messages:
        console.print(f"  [{message.get('role', '?')}] {message.get('content', '')}", highlight=False, markup=False)
    console.print("[bold]output[/bold]")
    console.print(f"  {trace.output}", highlight=False, markup=False)
    console.print(f"[bold]feedback[/bold] ({len(feedback)})")
    for row in feedback:
        score = "" if row["score"] is None else f"{row['score']:g}"
        console.print(f"  {row['name'] or 'score'} {score} {row['comment'] or ''}  ({row['source_id'] or 'local'})",
                      highlight=False, markup=False)
