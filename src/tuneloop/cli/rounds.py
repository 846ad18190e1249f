"""`tuneloop rounds list|diff`: the data rounds of a project and what changed between two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.apps import rounds_app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors


def _rounds_dir(path: Path | None) -> Path:
    if path is not None:
        return path
    project = find_project(required=False)
    if project is None:
        raise UserError("not in a project: pass --dir ROUNDS_DIR.")
    return project.rounds_dir


def _project_and_rounds(path: Path | None) -> tuple[Any, Path]:
    """The rounds folder, and the project it belongs to (whose loop summaries hold each round's verdict)."""
    from tuneloop.project import PROJECT_FILE, Project

    folder = _rounds_dir(path)
    root = folder.resolve().parent.parent  # <project>/data/rounds
    if (root / PROJECT_FILE).exists():
        return Project.load(root), folder
    return find_project(required=False), folder


@rounds_app.command("list")
@friendly_errors
def rounds_list(
    dir: Annotated[Path | None, typer.Option("--dir", help="Rounds folder (default: the project's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rounds as JSON.")] = False,
) -> None:
    """List the data rounds: counts, where train's rows came from (seed, traffic, synth, ...), the gate and, where
    the round ran through `tuneloop run` or `tuneloop loop`, its outcome and eval verdict.

    Example: tuneloop rounds list
    """
    from tuneloop.data.gate.round import round_dirs
    from tuneloop.loop_rounds import round_row

    project, folder = _project_and_rounds(dir)
    rows = [round_row(f, project) for f in round_dirs(folder)]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no rounds yet: run `tuneloop data gate`.")
    for row in rows:
        sources = ", ".join(f"{k} {v}" for k, v in row["sources"].items()) or "—"
        verdict = f"  round {row['outcome']}, verdict {row['verdict']}" if row["outcome"] else ""
        console.print(f"{row['round']}  {row['created_at']}  train {row['train']}  val {row['val']}  test "
                      f"{row['test']}  quarantined {row['quarantined']}  [{sources}]  gate {row['gate']}{verdict}",
                      highlight=False, markup=False, soft_wrap=True)


@rounds_app.command("diff")
@friendly_errors
def rounds_diff(
    old: Annotated[str, typer.Argument(help="Earlier round (name like r0001, or a folder).")],
    new: Annotated[str, typer.Argument(help="Later round.")],
    dir: Annotated[Path | None, typer.Option("--dir", help="Rounds folder (default: the project's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the difference as JSON.")] = False,
) -> None:
    """What changed between two rounds: rows added / removed / relabeled per split, by source and cluster; train's
    sample_type mix; each verdict metric with its paired test in both rounds; the held-out traffic slice.

    Example: tuneloop rounds diff r0001 r0002
    """
    from tuneloop.loop_rounds import diff_lines, diff_rounds

    project, rounds = _project_and_rounds(dir)
    folders = []
    for name in (old, new):
        folder = Path(name) if Path(name).is_dir() else rounds / name
        if not (folder / "manifest.json").exists():
            raise UserError(f"{folder}: not a round folder (no manifest.json); see `tuneloop rounds list`.")
        folders.append(folder)
    diff = diff_rounds(folders[0], folders[1], project)
    if as_json:
        console.print_json(json.dumps(diff))
        return
    for line in diff_lines(diff):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
