"""`tuneloop loop relabel`: the relabel queue in the project's trace store, filled from a file or by a stronger model.

```
loop/traffic/failures.jsonl (+ clusters.json) ──queued (idempotent)──▶ relabel queue (traces.db)
  --export FILE       open rows as JSONL to fill in (output, annotator)        --prefill: proposals as outputs
  --import FILE       each row checked (JSON, schema, refusal, SOP, annotate.rules, frozen val/test) → submitted
  --propose           an OpenAI-compatible model proposes answers (stored as proposals, never as labels)
  --status            rows per status, cluster and origin
```
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tuneloop.cli.apps import loop_app
from tuneloop.cli.common import UserError, console, err_console, find_project, friendly_errors


@loop_app.command("relabel")
@friendly_errors
def loop_relabel(
    export: Annotated[Path | None, typer.Option("--export", help="Write the open rows (pending, draft) as JSONL to fill in.")] = None,
    prefill: Annotated[bool, typer.Option("--prefill", help="With --export: a row's proposal goes into its output (review it before importing).")] = False,
    import_: Annotated[Path | None, typer.Option("--import", help="Import a filled-in export: valid rows are submitted, invalid ones listed (exit 1).")] = None,
    annotator: Annotated[str | None, typer.Option("--annotator", help="Who filled in the file (for rows whose annotator is empty).")] = None,
    propose: Annotated[bool, typer.Option("--propose", help="Ask an OpenAI-compatible model to propose answers for open rows.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="Model proposing (default: augment.llm.model or TUNELOOP_LLM_MODEL).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="Its endpoint, e.g. http://127.0.0.1:8001/v1 (default: augment.llm.base_url or TUNELOOP_LLM_BASE_URL).")] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Environment variable with its API key (default: augment.llm.api_key_env).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Propose for at most this many rows.")] = None,
    redo: Annotated[bool, typer.Option("--redo", help="Propose again for rows that have a proposal.")] = False,
    status: Annotated[bool, typer.Option("--status", help="Show the queue: rows per status, cluster and origin.")] = False,
    failures_file: Annotated[Path | None, typer.Option("--failures", help="Failures to queue first (default: loop/traffic/failures.jsonl, when it exists).")] = None,
) -> None:
    """Relabel traffic failures: queue them, export them to fill in, import the labels, or let a model propose.

    Every imported label is checked against the task schema, the SOP rules, annotate.rules and the frozen val/test
    items of the latest round; a rejected row is listed with its file, line, id and reason.

    Example: tuneloop loop relabel --export loop/traffic/relabel-export.jsonl
    """
    from tuneloop.traces.queue import RelabelQueue
    from tuneloop.traces.relabel import LabelCheck
    from tuneloop.traces.store import TraceStore

    project = find_project()
    if not (export or import_ or propose or status):
        status = True
    failed = False
    with TraceStore(project.traces_db) as store:
        queue = RelabelQueue(store)
        queued = _queue_failures(project, queue, failures_file)
        if queued is not None:
            console.print(f"queued {queued} new failures ({len(queue)} rows in the queue)", highlight=False)
        check = LabelCheck.for_project(project)
        if import_ is not None:
            result = queue.import_labels(import_, check.schema, check.rules, annotator=annotator, frozen=check.frozen,
                                         dedup_config=check.dedup, leakage_config=check.leakage)
            console.print(result.summary(), highlight=False, soft_wrap=True)
            for line in result.lines():
                err_console.print(f"[bold red]rejected:[/] {escape(line)}", highlight=False, soft_wrap=True)
            failed |= bool(result.rejected)
        if propose:
            failed |= _propose(project, queue, check, model, base_url, api_key_env, limit, redo)
        if export is not None:
            written = queue.export(export, prefill=prefill)
            console.print(f"{written} open rows → {export} (fill in output and annotator, then `tuneloop loop "
                          f"relabel --import {export}`)", highlight=False, soft_wrap=True)
        if status:
            _show_status(queue)
    if failed:
        raise typer.Exit(1)


def _queue_failures(project, queue, failures_file: Path | None) -> int | None:
    """Queue loop select's failures (with loop cluster's clusters when they are of these failures)."""
    from tuneloop.traces.cluster import load_clustering
    from tuneloop.traces.select import failures_path, load_failures

    source = failures_file or failures_path(project)
    if not source.exists():
        if failures_file is not None:
            raise UserError(f"--failures {source}: no such file; run `tuneloop loop select` first.")
        return None
    failures = load_failures(source)
    clusters = source.parent / "clusters.json"
    clustering = load_clustering(clusters) if clusters.exists() else None
    if clustering is not None and set(clustering.trace_ids) != {f.trace_id for f in failures}:
        err_console.print(f"{clusters} is of other failures: queued without clusters (run `tuneloop loop cluster`).",
                          highlight=False)
        clustering = None
    return queue.add_failures(failures, clustering)


def _propose(project, queue, check, model, base_url, api_key_env, limit, redo) -> bool:
    """Proposals from the endpoint; True when a request failed (those rows got no proposal)."""
    from tuneloop.annotate.sop import load_sop
    from tuneloop.llm_client import ENV_BASE_URL, ENV_MODEL, Endpoint
    from tuneloop.project import ProjectError

    llm = project.config.augment.llm
    base_url = base_url or llm.base_url or os.environ.get(ENV_BASE_URL)
    model = model or llm.model or os.environ.get(ENV_MODEL)
    if not base_url or not model:
        raise UserError(f"--propose needs an endpoint: pass --base-url URL --model M (or set augment.llm in "
                        f"tuneloop.yaml, or {ENV_BASE_URL} and {ENV_MODEL}).")
    try:
        sop = load_sop(project)
    except ProjectError:
        sop = None  # no SOP written yet: the schema and its refusal form still go with every request
    endpoint = Endpoint(base_url, model, api_key=os.environ.get(api_key_env or llm.api_key_env),
                        concurrency=llm.concurrency, max_retries=llm.max_retries)
    result = queue.propose(endpoint, check, system=project.config.task.system, sop=sop, limit=limit, redo=redo)
    console.print(f"proposals from {model} at {base_url}: {result.summary()}", highlight=False, soft_wrap=True)
    for item_id, problems in result.invalid[:10]:
        console.print(f"  invalid proposal for {item_id} (not stored): {problems[0]}", highlight=False, markup=False,
                      soft_wrap=True)
    for item_id, error in result.errors:
        err_console.print(f"[bold red]request failed:[/] {escape(item_id)}: {escape(error)}", highlight=False,
                          soft_wrap=True)
    return bool(result.errors)


def _show_status(queue) -> None:
    counts = queue.counts()
    table = Table("status", "rows")
    for name, count in counts.items():
        table.add_row(name, str(count))
    console.print(table)
    items = queue.items()
    by_cluster = Counter((i.cluster, i.cluster_name or "") for i in items if i.cluster is not None)
    if by_cluster:
        clusters = Table("cluster", "name", "rows")
        for (cluster, name), count in sorted(by_cluster.items()):
            clusters.add_row(str(cluster), name, str(count))
        console.print(clusters)
    origins = Counter(i.origin for i in items)
    console.print("origin: " + (", ".join(f"{o} {n}" for o, n in sorted(origins.items())) or "none"), highlight=False)
