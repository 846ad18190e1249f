"""`tuneloop rounds list|diff`: the data rounds of a project and what changed between two."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@rounds_app.command("list")
@friendly_errors
def rounds_list(dir: Annotated[Path | None, typer.Option("--dir", help="Rounds folder (default: the project's).")] = None) -> None:
    """List the data rounds with their counts and whether the gate passed.

    Example: tuneloop rounds list
    """
    from tuneloop.data.gate.round import round_dirs
    from tuneloop.files import read_json

    rounds = round_dirs(_rounds_dir(dir))
    if not rounds:
        console.print("no rounds yet: run `tuneloop data gate`.")
    for folder in rounds:
        manifest = read_json(folder / "manifest.json")
        counts = manifest.get("counts", {})
        console.print(f"{folder.name}  {manifest.get('created_at', '')}  train {counts.get('train')}  "
                      f"val {counts.get('val')}  test {counts.get('test')}  quarantined {counts.get('quarantined')}  "
                      f"{'passed' if manifest.get('passed') else 'failed'}")


@rounds_app.command("diff")
@friendly_errors
def rounds_diff(
    old: Annotated[str, typer.Argument(help="Earlier round (name like r0001, or a folder).")],
    new: Annotated[str, typer.Argument(help="Later round.")],
    dir: Annotated[Path | None, typer.Option("--dir", help="Rounds folder (default: the project's).")] = None,
) -> None:
    """What changed between two rounds: counts, and rows added to / removed from each split.

    Example: tuneloop rounds diff r0001 r0002
    """
    from tuneloop.data.io.formats import load_samples

    folders = []
    for name in (old, new):
        folder = Path(name) if Path(name).is_dir() else _rounds_dir(dir) / name
        if not (folder / "manifest.json").exists():
            raise UserError(f"{folder}: not a round folder (no manifest.json); see `tuneloop rounds list`.")
        folders.append(folder)
    for split in ("train", "val", "test", "quarantine"):
        if split == "quarantine":
            import json

            ids = [{json.loads(line).get("sample_id") for line in (f / "quarantine.jsonl").read_text(encoding="utf-8").splitlines() if line}
                   for f in folders]
        else:
            rows = [{s.id: s.content_id() for s in load_samples(f / f"{split}.jsonl")} for f in folders]
            ids = [set(r) for r in rows]
            changed = sum(1 for i in ids[0] & ids[1] if rows[0][i] != rows[1][i])
        added, removed = ids[1] - ids[0], ids[0] - ids[1]
        extra = f", {changed} changed" if split != "quarantine" else ""
        console.print(f"{split:<10} {len(ids[0]):>7} → {len(ids[1]):<7} +{len(added)} -{len(removed)}{extra}")
