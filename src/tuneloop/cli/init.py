"""`tuneloop init DIR --example NAME`: a new project with a task, schema, SOP and verified seed data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from tuneloop.cli.apps import app
from tuneloop.cli.common import UserError, console, friendly_errors


@app.command("init")
@friendly_errors
def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    example: str = typer.Option("json-extraction", "--example", help="Example project to write: json-extraction or tool-calling."),
    size: int = typer.Option(600, "--size", min=16, help="Rows in the seed file, clone variants included."),
    seed: int = typer.Option(0, "--seed", help="Seed of generation; the same seed gives the same files."),
    force: bool = typer.Option(False, "--force", help="Write over an existing project in the folder."),
) -> None:
    """Create a project with a task, JSON Schema, SOP and a verified, code-generated seed data set.

    Example: tuneloop init demo --example json-extraction && cd demo && tuneloop run
    """
    from tuneloop.examples import UnknownExample, init_example

    try:
        built = init_example(directory, example, size=size, seed=seed, force=force)
    except UnknownExample as err:
        raise UserError(str(err)) from None
    mix = Counter(row.sample_type for row in built.rows)
    console.print(f"wrote {directory}/ with {len(built.rows)} rows ({len(built.seeds)} seeds + clone variants): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())))
    if built.quarantined:
        console.print(f"[yellow]{len(built.quarantined)} generated rows failed verification[/]: see data/raw/seed.quarantine.jsonl")
    console.print(f"next: cd {directory} && tuneloop run")
