"""`tuneloop run`: one whole round of the loop on a project."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneloop.cli.apps import app
from tuneloop.cli.common import console, find_project, friendly_errors


@app.command("run")
@friendly_errors
def run(
    project_dir: Path = typer.Option(Path("."), "--project", "-p", help="Project folder (default: here or a parent)."),
    quick: bool = typer.Option(False, "--quick", help="Shortened round (few steps, few eval samples), as CI runs it."),
    max_steps: int = typer.Option(None, "--max-steps", help="Cap SFT optimizer steps."),
    eval_samples: int = typer.Option(None, "--eval-samples", help="Evaluate on at most this many test samples."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Skip the embedded-server smoke request."),
    force: bool = typer.Option(False, "--force", help="Run every stage even when its inputs did not change."),
) -> None:
    """Run one round: gate → baseline eval → SFT → eval after → compare → merge → serve → summary report.

    Rerunning skips stages whose inputs did not change and resumes an interrupted training run.

    Example: tuneloop init demo --example json-extraction && cd demo && tuneloop run
    """
    from tuneloop.loop import LoopOptions, run_round

    project = find_project(project_dir)
    options = LoopOptions(quick=quick, max_steps=max_steps, eval_samples=eval_samples, serve=not no_serve, force=force)
    summary = run_round(project, options, say=lambda line: console.print(line, highlight=False, markup=False))
    console.rule(f"round {summary['round']}: before → after on {project.config.task.name}'s unseen test set")
    for name, values in summary["headline"].items():
        before, after = values["before"], values["after"]
        if before is None and after is None:
            continue
        console.print(f"  {name:<22} {before:>7.3f} → {after:>7.3f}   ({after - before:+.3f})", highlight=False)
    verdict = "[green]improved[/]" if summary["improved"] else "[red]not improved[/]"
    gate = "[green]pass[/]" if summary["eval_gate"]["passed"] else "[red]fail[/]: " + "; ".join(summary["eval_gate"]["reasons"])
    console.print(f"  verdict: {verdict}   eval gate: {gate}")
    if summary.get("serve"):
        console.print(f"  served answer: {summary['serve'].get('answer')}", highlight=False)
    console.print(f"  summary report: {project.root / 'loop' / summary['round'] / 'summary.html'}")
