"""`tuneloop run`: one whole round of the loop on a project."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tuneloop.cli.apps import app
from tuneloop.cli.common import console, err_console, find_project, friendly_errors

EXIT_REFUSED = 1  # a check of the round said no; 2 is an error (friendly_errors), as for grep and diff


ProjectOption = Annotated[Path, typer.Option("--project", "-p", help="Project folder (default: here or a parent).")]
QuickOption = Annotated[bool, typer.Option("--quick", help="Shortened round (few steps, few eval samples), as CI runs it.")]
MaxStepsOption = Annotated[int | None, typer.Option("--max-steps", help="Cap SFT optimizer steps.")]
EvalSamplesOption = Annotated[int | None, typer.Option("--eval-samples", help="Evaluate on at most this many test samples.")]
NoServeOption = Annotated[bool, typer.Option("--no-serve", help="Skip the embedded-server smoke request.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Run every stage even when its inputs did not change.")]


@app.command("run")
@friendly_errors
def run(
    project_dir: ProjectOption = Path("."),
    quick: QuickOption = False,
    max_steps: MaxStepsOption = None,
    eval_samples: EvalSamplesOption = None,
    no_serve: NoServeOption = False,
    force: ForceOption = False,
) -> None:
    """Run one round: gate → baseline eval → SFT → eval after → compare → merge → serve → summary report.

    Rerunning skips stages whose inputs did not change and resumes an interrupted training run. A check that says
    no (data gate, eval gate, merge gate, served answer) stops the round before anything that depends on it.
    Exit code: 0 passed, 1 refused by a check (what failed and what to do are printed), 2 error.

    Example: tuneloop init demo --example json-extraction && cd demo && tuneloop run
    """
    from tuneloop.loop import LoopOptions, run_round

    project = find_project(project_dir)
    options = LoopOptions(quick=quick, max_steps=max_steps, eval_samples=eval_samples, serve=not no_serve, force=force)
    run_and_report(project, lambda say: run_round(project, options, say=say))


def run_and_report(project: Any, run_it: Callable[[Callable[[str], None]], dict[str, Any]]) -> dict[str, Any]:
    """Run a round (`run_it(say)` returns its summary), print its stage lines and results; a refusal prints what
    failed and what to do and exits 1."""
    from tuneloop.loop import RoundRefused

    try:
        summary = run_it(lambda line: console.print(line, highlight=False, markup=False))
    except RoundRefused as refusal:
        summary = _read_summary(refusal.summary_file)
        if summary:
            _print_results(project, summary)
        # one line each, never wrapped: scripts and CI logs grep for them
        err_console.print(f"[bold red]failed:[/] {escape(refusal.stage)}: " + escape("; ".join(refusal.reasons)),
                          highlight=False, soft_wrap=True)
        err_console.print(f"[bold]next:[/] {escape(refusal.advice)}", highlight=False, soft_wrap=True)
        if refusal.summary_file:
            console.print(f"  summary report: {refusal.summary_file}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED) from None
    _print_results(project, summary)
    console.print(f"  summary report: {project.root / 'loop' / summary['round'] / 'summary.html'}", highlight=False,
                  soft_wrap=True)
    return summary


def _read_summary(path: Path | None) -> dict[str, Any] | None:
    from tuneloop.files import read_json

    json_file = path.with_suffix(".json") if path else None
    return read_json(json_file) if json_file and json_file.exists() else None


def _print_results(project: Any, summary: dict[str, Any]) -> None:
    rows = [(name, v["before"], v["after"]) for name, v in summary["headline"].items()
            if v["before"] is not None and v["after"] is not None]
    if not rows:
        return
    console.rule(f"round {summary['round']}: before → after on {project.config.task.name}'s unseen test set")
    for name, before, after in rows:
        console.print(f"  {name:<22} {before:>7.3f} → {after:>7.3f}   ({after - before:+.3f})", highlight=False)
    verdict = summary.get("verdict")
    if verdict:
        colour = {"improved": "green", "worse": "red"}.get(verdict["verdict"], "yellow")
        evidence = ", ".join(f"{name} {v['verdict']} ({v['evidence']})" for name, v in verdict["metrics"].items())
        console.print(f"  verdict: [{colour}]{verdict['verdict']}[/] at alpha {verdict['alpha']}"
                      + (f": {escape(evidence)}" if evidence else ""), highlight=False)
    passed = summary["eval_gate"]["passed"]
    if passed is not None:
        gate = "[green]pass[/]" if passed else "[red]fail[/]: " + escape("; ".join(summary["eval_gate"]["reasons"]))
        console.print(f"  eval gate: {gate}", highlight=False)
    if summary.get("serve"):
        console.print(f"  served answer: {summary['serve'].get('answer')}", highlight=False, markup=False)
