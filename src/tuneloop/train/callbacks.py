"""What a run shows and records while it trains: metrics.jsonl, a rich progress bar, the best checkpoint mark.

Metrics are kept in memory and the whole file is rewritten atomically at each log, so a killed run leaves a
complete metrics.jsonl; on resume, entries after the checkpoint's step are dropped and the curve continues.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.files import write_jsonl, write_text

METRIC_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_mean_token_accuracy",
               "num_tokens", "epoch")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsFile(TrainerCallback):
    """Appends every train/eval log (step, loss, eval_loss, lr, tokens, seconds) to metrics.jsonl."""

    def __init__(self, path: Path, extra_keys: tuple[str, ...] = ()):
        self.path = path
        self.keys = (*METRIC_KEYS, *extra_keys)  # DPO's rewards/margins, GRPO's reward and clipped_ratio, ...
        self.entries = read_metrics(path)
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed run continues from its checkpoint's step: later entries belong to the killed attempt
        self.entries = [e for e in self.entries if e.get("step", 0) <= state.global_step]
        self._flush(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "time_s": round(time.monotonic() - self.started, 3)}
        entry.update({k: round(float(v), 6) for k, v in logs.items() if k in self.keys and v is not None})
        if len(entry) > 2:
            self.entries.append(entry)
            self._flush(state)

    def _flush(self, state) -> None:
        if state.is_world_process_zero:
            write_jsonl(self.path, self.entries)


class RichProgress(TrainerCallback):
    """A progress bar with the latest loss, val loss, tokens/s and ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.open: contextlib.ExitStack | None = None  # the bar lives from train begin to train end
        self.advance: Any = None
        self.step = 0
        self.parts: dict[str, str] = {}
        self.tokens_at_start = 0
        self.started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.enabled or not state.is_world_process_zero:
            return
        from tuneloop.progress import progress_bar

        self.open = contextlib.ExitStack()
        self.advance = self.open.enter_context(progress_bar())("train", state.max_steps, completed=state.global_step)
        self.step = state.global_step
        self.started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.open is None or not logs:
            return
        parts = self.parts
        if "loss" in logs:
            parts["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            parts["val"] = f"{logs['eval_loss']:.4f}"
        if "num_tokens" in logs:
            if not self.tokens_at_start:
                self.tokens_at_start = logs["num_tokens"]
                self.started = time.monotonic()
            elapsed = time.monotonic() - self.started
            if elapsed > 0 and logs["num_tokens"] > self.tokens_at_start:
                parts["tok/s"] = f"{(logs['num_tokens'] - self.tokens_at_start) / elapsed:.0f}"
        self.advance(0, label=" ".join(["train", *(f"{k}={v}" for k, v in parts.items())]))

    def on_step_end(self, args, state, control, **kwargs):
        if self.open is not None:
            self.advance(state.global_step - self.step)
            self.step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self.open is not None:
            self.open.close()
            self.open = None


def mark_best(checkpoints: Path, best_checkpoint: str | None, best_metric: float | None) -> None:
    """A `BEST` file naming the checkpoint with the lowest val loss (Trainer keeps it from rotation)."""
    if best_checkpoint:
        write_text(checkpoints / "BEST", f"{Path(best_checkpoint).name}\neval_loss={best_metric}\n")
