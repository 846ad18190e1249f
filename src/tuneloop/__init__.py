"""tuneloop: the whole fine-tuning loop for structured-output models, as one tool and one Python library.

The handful of entry points a notebook calls (docs/python-api.md walks them on the example project):

```
Project.load(dir) ─▶ run_gate ─▶ train_sft ─▶ run_eval ─▶ merge_run ─▶ serve_in_background
                      (a round)    (a run)      (an eval)   (an export)   (an OpenAI-compatible URL)
run_round(project): all of them as one round, the same as `tuneloop run`.
```

Each name is imported on first use, so `import tuneloop` stays fast and loads no torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("tuneloop")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# public name → "module:attribute"; the one list of what the Python API promises
_ENTRY_POINTS = {
    "Project": "tuneloop.project:Project",
    "ProjectError": "tuneloop.project:ProjectError",
    "Sample": "tuneloop.records:Sample",
    "init_example": "tuneloop.examples:init_example",
    "load_samples": "tuneloop.data.io.formats:load_samples",
    "write_samples": "tuneloop.data.io.formats:write_samples",
    "run_gate": "tuneloop.data.gate.round:run_gate",
    "train_sft": "tuneloop.train.sft:train_sft",
    "run_eval": "tuneloop.eval.runner:run_eval",
    "merge_run": "tuneloop.export.merge:merge_run",
    "create_app": "tuneloop.serve.server:create_app",
    "serve_in_background": "tuneloop.serve.server:serve_in_background",
    "LoopOptions": "tuneloop.loop:LoopOptions",
    "run_round": "tuneloop.loop:run_round",
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    target = _ENTRY_POINTS.get(name)
    if target is None:
        raise AttributeError(f"module 'tuneloop' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
