"""`tuneloop canary status`: both arms of a canary rollout and the gate's decision."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tuneloop.cli.apps import canary_app
from tuneloop.cli.common import UserError, console, friendly_errors
from tuneloop.cli.serve import store_path


@canary_app.command("status")
@friendly_errors
def canary_status_command(
    traces: Path = typer.Option(None, "--traces", help="Trace store the router writes (default: project traces.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print the state as JSON."),
) -> None:
    """Show both arms of the running (or last) canary and the gate's decision.

    Example: tuneloop canary status --traces traces.db
    """
    from rich.table import Table

    from tuneloop.serve.canary import canary_status, describe

    store = store_path(traces)
    if not store.exists():
        raise UserError(f"{store}: no trace store; start a canary with `tuneloop serve --stable A --canary B`.")
    state = canary_status(str(store))
    if not state or "arms" not in state:
        raise UserError(f"{store}: no canary has run on this trace store; start one with `tuneloop serve --stable A --canary B`.")
    if as_json:
        console.print_json(json.dumps(state))
        return
    rows = describe(state)
    table = Table(title=f"canary at {state['weight']:.0%}: {state['decision'].upper()}")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(table)
    console.print(f"SPRT log LR {state['log_likelihood_ratio']} (rollback ≥ {state['rollback_at']}, promote ≤ "
                  f"{state['promote_at']}); stable {state['stable_url']}, canary {state['canary_url']}", highlight=False)


@canary_app.command("stop")
@friendly_errors
def canary_stop_command(
    canary_file: Path = typer.Option(None, "--file", help="The canary.json of a round (default: every canary the "
                                     "project's loop started)."),
) -> None:
    """Stop the canary router that `tuneloop loop` started (its loop/<round>/canary.json).

    Example: tuneloop canary stop
    """
    from tuneloop.cli.common import find_project
    from tuneloop.loop_canary import running_canaries, stop_canary

    if canary_file is not None:
        files = [canary_file]
        if not canary_file.exists():
            raise UserError(f"{canary_file}: no such canary file; `tuneloop canary stop` without --file stops every "
                            "canary of the project.")
    else:
        project = find_project()
        files = running_canaries(project.root / "loop")
        if not files:
            console.print("no canary started by `tuneloop loop` is running in this project.")
            return
    for path in files:
        state = stop_canary(path)
        what = "stopped" if state["was_running"] else "was no longer running"
        console.print(f"canary {state['url']} (pid {state['pid']}) {what}; record kept in "
                      f"{path.with_name('canary.stopped.json')}", highlight=False, soft_wrap=True)
