"""The live prompt preview: a sample rendered exactly as the model sees it, by the one prompt renderer
(`train/templates.py`) with the project model's tokenizer (no weights are loaded) and the task's system prompt."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tuneloop.project import Project
from tuneloop.records import Sample


class PreviewError(RuntimeError):
    """The project's tokenizer cannot be loaded here, with what to do."""


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a model name, folder or run adapter folder, with the chat template training uses."""
    from transformers import AutoTokenizer

    from tuneloop.models import ModelError, resolve_model
    from tuneloop.train.templates import ensure_chat_template

    try:
        path = Path(resolve_model(model, pull=False))
        adapter = path / "adapter_config.json"
        if adapter.exists() and not (path / "tokenizer_config.json").exists():
            path = Path(resolve_model(json.loads(adapter.read_text())["base_model_name_or_path"], pull=False))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (ModelError, OSError, ValueError, KeyError) as err:
        raise PreviewError(f"the prompt preview needs the tokenizer of {model!r} ({str(err).splitlines()[0][:200]})"
                           "; run `tuneloop models pull default` or set model: in tuneloop.yaml") from None
    ensure_chat_template(tokenizer)
    return tokenizer


class Preview:
    """Renders prompts with one tokenizer, loaded on first use (a tokenizer given up front is used as is)."""

    def __init__(self, project: Project, tokenizer: Any = None):
        self.project = project
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.project.config.model)
            return self._tokenizer

    def render(self, sample: Sample) -> str:
        from tuneloop.train.templates import prompt_text

        return prompt_text(self.tokenizer(), sample, default_system=self.project.config.task.system)
