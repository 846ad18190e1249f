"""`tuneloop eval run|compare|gate|export-bad`: before/after evaluation on unseen data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tuneloop.cli.apps import eval_app
from tuneloop.cli.common import UserError, console, err_console, find_project, friendly_errors
from tuneloop.records import content_hash


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-")[:40] or "model"


COUNT_ROWS = ("n", "errors", "judge_errors", "constraint_failures")
RATE_ROWS = ("ok", "json_valid", "schema_valid", "field_accuracy", "field_accuracy_lenient", "exact_match", "noise_rate",
             "refusal_ok", "truncated", "judge_mean")


def _rates_table(modes: dict[str, Any]) -> Table:
    """Counts (answers scored, failed requests) then rates; field_accuracy is strict, _lenient reads through noise."""
    table = Table("metric", *modes)
    for metric in COUNT_ROWS:
        values = [modes[m].get(metric) for m in modes]
        if metric == "judge_errors" and all(v in (None, 0) for v in values) and all(modes[m].get("judge_mean") is None for m in modes):
            continue
        if metric == "constraint_failures" and "constrained" not in modes:
            continue
        style = "bold red" if metric != "n" and any(values) else ""
        table.add_row(metric, *(f"[{style}]{v}[/]" if style else str(v or 0) for v in values))
    for metric in RATE_ROWS:
        values = [modes[m].get(metric) for m in modes]
        if metric == "judge_mean" and all(v is None for v in values):
            continue
        table.add_row(metric, *("—" if v is None else f"{v:.3f}" for v in values))
    return table


@eval_app.command("run")
@friendly_errors
def run(
    model: str = typer.Argument(None, help="default, a model or export folder, or a run's adapter folder (default: the project's model)."),
    test: Path = typer.Option(None, "--test", help="Test samples (JSONL). In a project: the latest round's test.jsonl."),
    out: Path = typer.Option(None, "--out", help="Output folder. In a project: evals/<model>-<key of model, test "
                                                 "file and settings>, so the same command resumes it."),
    schema: Path = typer.Option(None, "--schema", help="JSON Schema of the answer (default: the project's task.schema)."),
    system: str = typer.Option(None, "--system", help="Default system prompt (default: the project's task.system)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Evaluate an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1."),
    endpoint_model: str = typer.Option("default", "--endpoint-model", help="Model name sent to the endpoint."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable with the endpoint's API key."),
    constrained: bool = typer.Option(None, "--constrained/--no-constrained", help="Also run schema-constrained decoding."),
    max_samples: int = typer.Option(None, "--max-samples", help="Evaluate at most this many samples."),
    batch_size: int = typer.Option(None, "--batch-size", help="Prompts per batch (local model)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Longest answer generated."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint of an LLM judge (rubric scores)."),
    judge_model: str = typer.Option("judge", "--judge-model", help="Model name of the judge."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore answers a previous run left in the output folder."),
) -> None:
    """Evaluate a model or endpoint on unseen test data: JSON, schema, fields, noise, refusals, truncation.

    Answers are kept as they arrive; rerunning the same command after a kill resumes where it stopped. A request
    that fails is counted under errors (exit 1), never scored as a wrong answer.

    Example: tuneloop eval run runs/r0001-lora/adapter --test data/rounds/r0001/test.jsonl --out evals/after
    """
    from tuneloop.eval.runner import run_eval
    from tuneloop.project import EvalConfig, resolve_schema

    project = find_project(required=False)
    settings = project.config.eval.model_copy(deep=True) if project else EvalConfig()
    overrides = {"constrained": constrained, "max_samples": max_samples, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if judge_url:
        settings = settings.model_copy(update={"judge": {"base_url": judge_url, "model": judge_model}})
    if test is None:
        latest = project.latest_round() if project else None
        if latest is None:
            raise UserError("no --test given and no data round found: pass --test FILE or run `tuneloop data split` in a project.")
        test = latest / "test.jsonl"
    model = model or (project.config.model if project else "default")
    label = _slug(endpoint_model if endpoint else model)
    task_schema = resolve_schema(str(schema), Path.cwd()) if schema else (project.schema() if project else None)
    default_system = system if system is not None else (project.config.task.system if project else "")
    target = {"base_url": endpoint, "model": endpoint_model, "api_key_env": api_key_env} if endpoint else None
    if out is None:
        if project is None:
            raise UserError("outside a project, pass --out DIR for the results.")
        # one folder per model + test file + settings: the same command again resumes it instead of starting over
        run_key = content_hash(target or model, str(Path(test).resolve()), settings.model_dump(mode="json"),
                               task_schema, default_system, length=8)
        out = project.evals_dir / f"{label}-{run_key}"
    summary = run_eval(model, test, out, task_schema, settings, default_system=default_system, endpoint=target,
                       progress=not quiet, fresh=fresh,
                       tool_format=project.config.train.tool_format if project else "auto")
    console.print(_rates_table(summary["modes"]))
    console.print(f"{summary['samples']} samples → {out}/results.jsonl, report: {out}/report.html "
                  f"(max_tokens {summary['max_tokens']}: {summary['max_tokens_reason']})", highlight=False)
    if summary["quarantined"]:
        err_console.print(f"{summary['quarantined']} test rows could not be read: see {out}/quarantine.jsonl")
    failures = sum(m.get("errors", 0) + m.get("judge_errors", 0) for m in summary["modes"].values())
    if failures > settings.gate.max_errors:
        err_console.print(f"[bold red]error:[/] {failures} requests failed after retries (not scored): see "
                          f"{out}/errors.jsonl; run the same command again to retry only those.", highlight=False)
        raise typer.Exit(1)


@eval_app.command("compare")
@friendly_errors
def compare(
    baseline: Path = typer.Argument(..., help="Eval folder of the baseline (before)."),
    candidate: Path = typer.Argument(..., help="Eval folder of the candidate (after)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: compare-<baseline>-vs-<candidate> beside the candidate)."),
    alpha: float = typer.Option(None, "--alpha", help="Significance level (default: eval.gate.alpha, 0.05)."),
    judge_url: str = typer.Option(None, "--judge-url", help="Endpoint of an LLM judge for pairwise judging."),
    judge_model: str = typer.Option("judge", "--judge-model", help="Model name of the judge."),
) -> None:
    """Paired before/after: McNemar per binary metric, bootstrap CIs, slices, per-field accuracy, bad cases.

    Example: tuneloop eval compare evals/before evals/after --out evals/before-vs-after
    """
    from tuneloop.eval.compare import compare_evals

    project = find_project(required=False)
    alpha = alpha if alpha is not None else (project.config.eval.gate.alpha if project else 0.05)
    judge = {"base_url": judge_url, "model": judge_model} if judge_url else (project.config.eval.judge if project else None)
    out = out or candidate.resolve().parent / f"compare-{baseline.resolve().name}-vs-{candidate.resolve().name}"
    comparison = compare_evals(baseline, candidate, out, alpha=alpha, judge=judge)
    for mode, data in comparison["modes"].items():
        table = Table("metric", "baseline", "candidate", "delta", "95% CI", "p", "verdict", title=f"{mode} ({data['n']} pairs)")
        for name, s in data["metrics"].items():
            p = s.get("p_value")
            table.add_row(name, f"{s['baseline']:.3f}", f"{s['candidate']:.3f}", f"{s['delta']:+.3f}",
                          f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]", "—" if p is None else f"{p:.3g}", s["verdict"])
        console.print(table)
        console.print(f"{mode} verdict: {data['verdict']['verdict']} (paired tests at alpha {alpha})", highlight=False)
    console.print(f"comparison: {out}/comparison.json, report: {out}/report.html")


@eval_app.command("gate")
@friendly_errors
def gate(
    path: Path = typer.Argument(..., help="A comparison folder (or comparison.json), or one eval folder (or summary.json)."),
    mode: str = typer.Option(None, "--mode", help="unconstrained | constrained (default: eval.gate.mode)."),
) -> None:
    """Pass or fail a candidate against eval.gate in tuneloop.yaml; exits 1 naming each failed metric.

    Example: tuneloop eval gate evals/before-vs-after
    """
    from tuneloop.eval.gate import gate_eval
    from tuneloop.project import EvalGate

    project = find_project(required=False)
    settings = project.config.eval.gate if project else EvalGate()
    if mode:
        settings = settings.model_copy(update={"mode": mode})
    decision = gate_eval(path, settings)
    table = Table("check", "value", "result")
    for check in decision.checks:
        style = "green" if check["result"] == "pass" else "red" if check["result"] == "fail" else "yellow"
        table.add_row(check["check"], "—" if check["value"] is None else str(check["value"]), f"[{style}]{check['result']}[/]")
    console.print(table)
    if not decision.passed:
        for reason in decision.reasons:
            err_console.print(f"[bold red]gate failed:[/] {reason}", highlight=False)
        raise typer.Exit(1)
    console.print("[green]gate passed[/]")


@eval_app.command("export-bad")
@friendly_errors
def export_bad(
    eval_dir: Path = typer.Argument(..., help="Eval folder written by `tuneloop eval run`."),
    out: Path = typer.Option(None, "--out", help="Samples file to write (default: EVAL_DIR/bad_cases.jsonl)."),
    mode: str = typer.Option("unconstrained", "--mode", help="unconstrained | constrained | all."),
    queue: bool = typer.Option(False, "--queue", help="Also queue a new variant of each failure (clone rules, its own "
                                                      "id and source id; never the test item) in the project's "
                                                      "relabel queue."),
) -> None:
    """Write failed answers as samples for relabeling, with lineage to their test items (parent_id = test id).

    With --queue each failure also becomes a new message for the relabel queue: a clone-rule variant of the test
    item whose prompt is not near-identical to any frozen val/test item (else it is not queued, and counted), so
    no test item reaches train through the loop.

    Example: tuneloop eval export-bad evals/after --queue
    """
    from tuneloop.data.io.formats import write_samples
    from tuneloop.eval.bad_cases import export_bad as export
    from tuneloop.eval.runner import load_results

    if mode not in ("unconstrained", "constrained", "all"):
        raise UserError(f"--mode {mode}: expected unconstrained, constrained or all.")
    project = find_project() if queue else None  # the queue is the project's: find it before writing anything
    results = load_results(eval_dir)
    samples = export(results, eval_dir, None if mode == "all" else mode)
    out = out or eval_dir / "bad_cases.jsonl"
    write_samples(out, samples)
    console.print(f"{len(samples)} failures → {out} (augment_type eval_failure, difficulty hard)")
    if project is not None:
        _queue_variants(project, results, eval_dir, None if mode == "all" else mode)


def _queue_variants(project: Any, results: list[Any], eval_dir: Path, mode: str | None) -> None:
    """Variants of the failures into the project's relabel queue, with what was not queued and why."""
    from tuneloop.cli.data.create import load_pools
    from tuneloop.traces.eval_queue import queue_eval_failures
    from tuneloop.traces.frozen import frozen_items
    from tuneloop.traces.queue import RelabelQueue
    from tuneloop.traces.store import TraceStore

    config = project.config
    with TraceStore(project.traces_db) as store:
        outcome = queue_eval_failures(RelabelQueue(store), results, eval_dir, mode,
                                      frozen=frozen_items(project.latest_round()), rules=config.augment.rules,
                                      pools=load_pools(config.augment.pools, project.root), seed=config.augment.seed,
                                      config=config.data.dedup, leakage=config.data.leakage)
    console.print(f"relabel queue: {outcome.summary()}", highlight=False, soft_wrap=True)
    for test_id, match in outcome.near_frozen[:10]:
        console.print(f"  not queued: the variant of {test_id} has {match.message}", highlight=False, markup=False,
                      soft_wrap=True)
    if outcome.no_variant:
        console.print(f"  no variant keeps the answer contract for: {', '.join(outcome.no_variant[:10])}",
                      highlight=False, markup=False, soft_wrap=True)
    console.print("label them with `tuneloop loop relabel --export FILE`", highlight=False)
