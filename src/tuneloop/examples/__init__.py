"""Example projects `tuneloop init DIR --example NAME` writes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

EXAMPLES = {"json-extraction": "tuneloop.examples.json_extraction.demo",
            "tool-calling": "tuneloop.examples.tool_calling.demo"}


class UnknownExample(ValueError):
    """An example name that tuneloop does not ship."""


def init_example(directory: str | Path, example: str = "json-extraction", size: int = 600, seed: int = 0,
                 force: bool = False) -> Any:
    """Write example project `example` into `directory`; returns what was built (rows, seeds, quarantined)."""
    if example not in EXAMPLES:
        raise UnknownExample(f"--example {example!r}: no such example; choose from {sorted(EXAMPLES)}.")
    return importlib.import_module(EXAMPLES[example]).init_project(directory, size=size, seed=seed, force=force)
