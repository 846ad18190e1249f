"""`tuneloop eval run|compare|gate|export-bad`: before/after evaluation on unseen data."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tuneloop.cli.apps import eval_app
from tuneloop.cli.common import UserError, console, err_console, find_project, friendly_errors


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-")[:40] or "model"


def _rates_table(modes: dict[str, Any]) -> Table:
    table = Table("metric", *modes)
    for metric in ("ok", "json_valid", "schema_valid", "field_accuracy", "exact_match", "noise_rate", "refusal_ok", "truncated"):
        values = [modes[m].get(metric) for m in modes]
        table.add_row(metric, *("—" if v is None else f"{v:.3f}" for v in values))
    return table


@eval_app.command("run")
@friendly_errors
def run(
    model: str = typer.Argument(None, help="default, a model or export folder, or a run's adapter folder (default: the project's model)."),
    test: Path = typer.Option(None, "--test", help="Test samples (JSONL). In a project: the latest round's test.jsonl."),
    out: Path = typer.Option(None, "--out", help="Output folder. In a project: evals/<time>-<model>."),
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
) -> None:
    """Evaluate a model or endpoint on unseen test data: JSON, schema, fields, noise, refusals, truncation.

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
    if out is None:
        if project is None:
            raise UserError("outside a project, pass --out DIR for the results.")
        out = project.evals_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    task_schema = resolve_schema(str(schema), Path.cwd()) if schema else (project.schema() if project else None)
    default_system = system if system is not None else (project.config.task.system if project else "")
    target = {"base_url": endpoint, "model": endpoint_model, "api_key_env": api_key_env} if endpoint else None
    summary = run_eval(model, test, out, task_schema, settings, default_system=default_system, endpoint=target,
                       progress=not quiet)
    console.print(_rates_table(summary["modes"]))
    console.print(f"{summary['samples']} samples → {out}/results.jsonl, report: {out}/report.html")
    if summary["quarantined"]:
        err_console.print(f"{summary['quarantined']} test rows could not be read: see {out}/quarantine.jsonl")


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
) -> None:
    """Write failed answers as samples for relabeling, with lineage to their test items (parent_id = test id).

    Example: tuneloop eval export-bad evals/after --out data/raw/relabel.jsonl
    """
    from tuneloop.data.formats import write_samples
    from tuneloop.eval.bad_cases import export_bad as export
    from tuneloop.eval.runner import load_results

    if mode not in ("unconstrained", "constrained", "all"):
        raise UserError(f"--mode {mode}: expected unconstrained, constrained or all.")
    samples = export(load_results(eval_dir), eval_dir, None if mode == "all" else mode)
    out = out or eval_dir / "bad_cases.jsonl"
    write_samples(out, samples)
    console.print(f"{len(samples)} failures → {out} (augment_type eval_failure, difficulty hard)")
