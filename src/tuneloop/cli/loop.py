"""`tuneloop loop select|cluster`: real traffic's failures, with their reasons, grouped into named clusters.

```
traces.db ──loop select──▶ loop/traffic/failures.jsonl ──loop cluster──▶ loop/traffic/clusters.json + clusters.html
```
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from tuneloop.cli.apps import loop_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors
from tuneloop.cli.run import (EvalSamplesOption, ForceOption, MaxStepsOption, NoServeOption, ProjectOption,
                              QuickOption, run_and_report)


def since_time(since: str | None, days: float | None, default_days: float | None = None) -> float | None:
    """Unix time from `--since ISO` or `--days N` (default: `default_days`); None: all traffic."""
    if since is not None and days is not None:
        raise UserError("give --since or --days, not both.")
    if since is not None:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise UserError(f"--since {since!r}: not an ISO date or time; write e.g. 2026-12-01 or 2026-12-01T08:00.") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    days = days if days is not None else default_days
    return None if days is None else time.time() - days * 86400


@loop_app.command("select")
@friendly_errors
def loop_select(
    since: Annotated[str | None, typer.Option("--since", help="Only traffic at or after this ISO date/time (UTC when no zone).")] = None,
    days: Annotated[float | None, typer.Option("--days", min=0, help="Only traffic of the last N days (default: loop.since_days).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Failures file (default: loop/traffic/failures.jsonl).")] = None,
) -> None:
    """Select the failures in the project's traffic, with their reasons, redacted and deduplicated.

    Example: tuneloop loop select --days 7
    """
    from tuneloop.traces.select import failures_path, select_project_failures, write_failures

    project = find_project()
    if not project.traces_db.exists():
        raise UserError(f"{project.traces_db}: no trace store yet; serve the model (`tuneloop serve`) or pull traffic "
                        "(`tuneloop traces pull`).")
    selection = select_project_failures(project, since_time(since, days, project.config.loop.since_days))
    target = write_failures(out or failures_path(project), selection.failures)
    console.print(selection.summary(), highlight=False, soft_wrap=True)
    for reason, count in selection.reasons.most_common():
        console.print(f"  {count:5d}  {reason}", highlight=False)
    if selection.redacted:
        console.print("redacted: " + ", ".join(f"{k} {v}" for k, v in sorted(selection.redacted.items())), highlight=False)
    for error in selection.errors[:5]:
        console.print(f"server error {error['trace_id']}: {error['error'][:160]}", highlight=False)
    for row in selection.unreadable[:5]:
        console.print(f"unreadable {row['trace_id']}: {row['reason'][:160]}", highlight=False)
    console.print(f"wrote {target}", highlight=False)


@loop_app.command("cluster")
@friendly_errors
def loop_cluster(
    k: Annotated[int | None, typer.Option("--k", min=1, help="Clusters for k-means (default: loop.cluster.k, else by silhouette).")] = None,
    method: Annotated[str | None, typer.Option("--method", help="kmeans | hdbscan (default: loop.cluster.method).")] = None,
    failures_file: Annotated[Path | None, typer.Option("--failures", help="Failures file (default: loop/traffic/failures.jsonl).")] = None,
) -> None:
    """Group the selected failures by their prompts and name each group; writes clusters.json and clusters.html.

    Example: tuneloop loop cluster --method kmeans --k 4
    """
    from tuneloop.traces.cluster import cluster_failures, cluster_report, write_clusters
    from tuneloop.traces.select import failures_path, load_failures

    project = find_project()
    if method not in (None, "kmeans", "hdbscan"):
        raise UserError(f"--method {method!r}: use kmeans or hdbscan.")
    updates = {key: value for key, value in (("k", k), ("method", method)) if value is not None}
    config = project.config.loop.cluster.model_copy(update=updates)
    source = failures_file or failures_path(project)
    failures = load_failures(source)
    clustering = cluster_failures(failures, config)
    folder = source.parent
    write_clusters(folder / "clusters.json", clustering)
    report = cluster_report(clustering, failures, folder / "clusters.html")
    console.print(f"{len(failures)} failures → {clustering.k} clusters ({clustering.method}"
                  + (f", silhouette {clustering.silhouette:.3f}" if clustering.silhouette is not None else "") + ")",
                  highlight=False, soft_wrap=True)
    for cluster in clustering.clusters:
        reasons = ", ".join(f"{r} {n}" for r, n in cluster.reasons.most_common(3))
        console.print(f"  {cluster.id:3d}  {cluster.size:5d}  {cluster.name}  [{reasons}]", highlight=False, markup=False,
                      soft_wrap=True)
    console.print(f"wrote {folder / 'clusters.json'} and {report}", highlight=False, soft_wrap=True)


def _cycle_help() -> str:
    return (loop_cycle.__doc__ or "").replace("\n    ", "\n")


@friendly_errors
def loop_cycle(
    ctx: typer.Context,
    labels: Annotated[Path | None, typer.Option("--labels", help="A filled relabel export to import first (see loop/traffic/relabel-export.jsonl).")] = None,
    no_canary: Annotated[bool, typer.Option("--no-canary", help="Leave out the canary start.")] = False,
    only: Annotated[str | None, typer.Option("--only", help="Run this one stage (the earlier ones must have run), e.g. 'eval traffic'.")] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="Leave out this stage (repeatable): traces pull, select, cluster, relabel, eval traffic, serve smoke, canary start.")] = None,
    project_dir: ProjectOption = Path("."),
    quick: QuickOption = False,
    max_steps: MaxStepsOption = None,
    eval_samples: EvalSamplesOption = None,
    no_serve: NoServeOption = False,
    force: ForceOption = False,
) -> None:
    """Run one cycle: traces pull → select → cluster → relabel → traffic split → gate → baseline eval (current
    model) → train → eval after → eval traffic → compare → merge → serve smoke → canary start → summary report.

    The current model is the last passed round's export (else tuneloop.yaml's model). Relabeled traffic goes to
    data/traffic/relabeled.jsonl (trained on) and data/traffic/holdout.jsonl (a fresh test slice); with no accepted
    relabel yet the cycle stops after exporting the queue to fill. Rerunning skips what is unchanged.
    Exit code: 0 passed, 1 refused by a check, 2 error. The commands below run single steps.

    Example: tuneloop loop --labels loop/traffic/relabel-export.jsonl
    """
    if ctx.invoked_subcommand is not None:
        return
    from tuneloop.loop_traffic import CycleOptions, run_cycle

    project = find_project(project_dir)
    options = CycleOptions(quick=quick, max_steps=max_steps, eval_samples=eval_samples, serve=not no_serve,
                           force=force, labels=labels.resolve() if labels else None, canary=not no_canary,
                           skip=frozenset(skip or ()), only=only)
    if labels is not None and not labels.exists():
        raise UserError(f"--labels {labels}: no such file; export the queue with `tuneloop loop relabel --export FILE`.")
    run_and_report(project, lambda say: run_cycle(project, options, say=say))


# the callback's docstring, not the group's one-line help, is what `tuneloop loop --help` shows
loop_app.callback(invoke_without_command=True, help=_cycle_help())(loop_cycle)
