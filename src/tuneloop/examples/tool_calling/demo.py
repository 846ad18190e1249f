"""`tuneloop init DIR --example tool-calling`: a function-calling project whose test functions are unseen in training.

```
DIR/
  tuneloop.yaml                     the task (no answer schema: each row's own tools judge its call), split by
                                    function (lineage.source_id "fn:<name>"), CPU-sized train/eval settings
  data/raw/seed.jsonl               verified rows: calls over the catalogue (optional arguments omitted, enums,
                                    nested objects) and no-tool requests that must be refused
  data/raw/seed.quarantine.jsonl    generated rows that failed verification (normally empty)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.data.create.tool_tasks import ToolTaskGenerator, keep_verified_tasks
from tuneloop.data.io.formats import write_quarantine, write_samples
from tuneloop.examples.tool_calling import CATALOGUE
from tuneloop.files import write_text
from tuneloop.project import PROJECT_FILE, ProjectConfig, ProjectError, dump_config
from tuneloop.records import QuarantinedRow, Sample

TASK_NAME = "tool-calling"
SYSTEM = "You are an assistant that calls functions. Call the function that does what the user asks."
SEED_FILE = "data/raw/seed.jsonl"


def build_rows(size: int = 400, seed: int = 0) -> tuple[list[Sample], list[QuarantinedRow]]:
    """About `size` verified rows over the whole catalogue (the split decides which functions are test-only)."""
    generator = ToolTaskGenerator(CATALOGUE, meta={"domain": "assistant", "version": "demo-1"})
    return keep_verified_tasks(generator.generate(size, seed), source=SEED_FILE)


def demo_config() -> ProjectConfig:
    return ProjectConfig.model_validate({
        "task": {"name": TASK_NAME, "system": SYSTEM},
        "data": {"sources": [{"path": SEED_FILE, "license": "internal"}],
                 # the rows are calls and no-tool refusals: no negative or generic rows to mix in
                 "mix": {"golden": 0.85, "negative": 0.0, "boundary": 0.15, "generic": 0.0},
                 # one group per function: val and test functions are never trained on
                 "split": {"val": 0.1, "test": 0.2, "group_by": "lineage.source_id", "seed": 1}},
        "train": {"max_length": 640, "effective_batch": 8, "per_device_batch": 8, "epochs": 2, "eval_steps": 20,
                  "lora_rank": 16, "learning_rate": 1e-3},
        # the whole test set: every unseen function, and the power to tell an argument match from chance
        "eval": {"max_new_tokens": 96},
    })


def init_project(directory: str | Path, size: int = 400, seed: int = 0, force: bool = False) -> Any:
    """Write the demo project into `directory` (refuses to overwrite an existing project unless `force`)."""
    root = Path(directory)
    if (root / PROJECT_FILE).exists() and not force:
        raise ProjectError(f"{root / PROJECT_FILE}: a project is already here; choose another folder or pass --force.")
    rows, quarantined = build_rows(size, seed)
    write_samples(root / SEED_FILE, rows)
    write_quarantine(root / "data" / "raw" / "seed.quarantine.jsonl", quarantined)
    write_text(root / PROJECT_FILE, dump_config(demo_config()))
    return BuiltProject(rows, quarantined)


class BuiltProject:
    """What `init_project` wrote: the rows (the seeds: every row is its own) and the quarantined ones."""

    def __init__(self, rows: list[Sample], quarantined: list[QuarantinedRow]):
        self.rows, self.seeds, self.quarantined = rows, rows, quarantined
