"""`tuneloop doctor`: what this machine can run (Python, torch, GPUs, engines, the default model)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from tuneloop.cli.apps import app
from tuneloop.cli.common import console, friendly_errors

LEVEL_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}


@app.command("doctor")
@friendly_errors
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check Python, torch/CUDA, GPUs, bf16, attention backends, memory, optional engines and the default model.

    Example: tuneloop doctor --json
    """
    from tuneloop.doctor import as_json as checks_as_json
    from tuneloop.doctor import run_checks

    checks = run_checks()
    if as_json:
        typer.echo(json.dumps(checks_as_json(checks), indent=2, default=str))
    else:
        table = Table("check", "status", "value", "what to do")
        for check in checks:
            style = LEVEL_STYLE[check.level]
            table.add_row(check.name, f"[{style}]{check.level}[/]", str(check.value), check.fix)
        console.print(table)
    if any(c.level == "fail" for c in checks):
        raise typer.Exit(1)
