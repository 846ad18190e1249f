"""`tuneloop sop init`: the annotation SOP of a project."""

from __future__ import annotations

from collections import Counter

import typer

from tuneloop.cli.apps import sop_app
from tuneloop.cli.common import console, find_project, friendly_errors


@sop_app.command("init")
@friendly_errors
def sop_init(
    force: bool = typer.Option(False, "--force", help="Write over an existing SOP (your edits are lost)."),
    instruction: str = typer.Option("", "--instruction", help="The task instruction (default: the data's most common)."),
) -> None:
    """Write the project's annotation SOP (task.sop) from its task, schema, refusal and examples from its data.

    Example: tuneloop sop init --force
    """
    from tuneloop.data.io.formats import read_samples
    from tuneloop.annotate.sop import pick_examples, write_project_sop

    project = find_project()
    samples = []
    for source in project.config.data.sources:
        path = project.path(source.path)
        if path.is_file() and path.suffix == ".jsonl":
            samples += read_samples(path).samples
    if not instruction and samples:
        instruction = Counter(s.instruction for s in samples).most_common(1)[0][0]
    path = write_project_sop(project, examples=pick_examples(samples), instruction=instruction, force=force)
    console.print(f"wrote {path}")
