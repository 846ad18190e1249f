"""A run folder's checkpoints, for every trainer (SFT, DPO, GRPO): which one to resume, which step it holds, and
whether the folder belongs to this run at all.

```
<run>/config.json        the run's fingerprint (data, model, settings)
<run>/checkpoints/       checkpoint-<step>/ ... trainer_state.json written last
```
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tuneloop.files import read_json


class TrainError(RuntimeError):
    """A run that cannot start or continue, with what to do (every trainer raises it)."""


def last_checkpoint(checkpoints: Path) -> str | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a checkpoint killed mid-save
    (weights or optimizer half written) has none, or a truncated one, and is passed over."""
    complete = []
    for folder in checkpoints.glob("checkpoint-*") if checkpoints.exists() else []:
        number = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if number and folder.is_dir():
            complete.append((int(number.group(1)), str(folder)))
    return max(complete)[1] if complete else None


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The optimizer step a checkpoint folder (checkpoint-<step>) holds."""
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def open_run_folder(out: Path, fingerprint: str, resume: bool, main: bool = True) -> tuple[Path, str | None]:
    """The checkpoints folder and the checkpoint to resume from. A folder whose checkpoints belong to another run
    (other data, model or settings) is refused when resuming; without resume its checkpoints are cleared (by the
    main process only)."""
    checkpoints = out / "checkpoints"
    previous = out / "config.json"
    if resume and previous.exists() and read_json(previous).get("fingerprint") != fingerprint and \
            last_checkpoint(checkpoints):
        raise TrainError(f"{out}: holds a run with other data, model or settings; pass another --out, or "
                             "--no-resume to start this folder over.")
    if not resume and checkpoints.exists() and main:
        shutil.rmtree(checkpoints)
    return checkpoints, last_checkpoint(checkpoints) if resume else None
