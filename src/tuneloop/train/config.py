"""Hyper-parameter rules: the user's `TrainConfig` + data size + hardware → the values a run actually uses.

Every derived value carries a one-line reason; the run card prints them, so no number in a run is unexplained.

```
TrainConfig (tuneloop.yaml / CLI)      data (after packing)           hardware
  method, effective_batch, lora_rank     rows, samples, samples/row      gpus, cuda?
            └──────────────────────────────┬──────────────────────────────┘
                                     derive_settings()
                                           │
   learning_rate · gradient_accumulation · achieved effective batch · optimizer steps · warmup steps
   lora_alpha · lora targets · scheduler · eval/save steps · precision
```
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.project import TrainConfig

LORA_LR = 2e-4
FULL_LR = 1e-5
OSCILLATION_LR = 5e-5
LORA_TARGETS = "all-linear"
MIN_STEPS_PER_EPOCH = 8


@dataclass
class Derived:
    """One value the rules chose, and why."""

    name: str
    value: Any
    reason: str


@dataclass
class TrainSettings:
    """Everything a run needs beyond the user's config, each value explained in `reasons`."""

    learning_rate: float
    gradient_accumulation: int
    per_device_batch: int
    achieved_effective_batch: float
    optimizer_steps: int
    steps_per_epoch: int
    warmup_steps: int
    eval_steps: int
    scheduler: str = "cosine"
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_targets: str | None = None
    precision: str = "fp32"
    reasons: list[Derived] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["reasons"] = [asdict(r) for r in self.reasons]
        return values


def default_learning_rate(method: str) -> float:
    return FULL_LR if method == "full" else LORA_LR


def derive_settings(config: TrainConfig, train_rows: int, train_samples: int, gpus: int = 1,
                    cuda: bool = False) -> TrainSettings:
    """The rules. `train_rows` are what one forward pass batches (packed bins when packing), `train_samples` the
    encoded samples inside them; the effective batch is counted in samples, as the field quotes it."""
    if train_rows < 1 or train_samples < 1:
        raise ValueError("no training rows: the train file is empty or every row was quarantined.")
    gpus = max(1, gpus)
    reasons: list[Derived] = []

    def explain(name: str, value: Any, reason: str) -> Any:
        reasons.append(Derived(name, value, reason))
        return value

    if config.learning_rate is not None:
        lr = explain("learning_rate", config.learning_rate, "set by the user (train.learning_rate or --lr)")
    else:
        lr = explain("learning_rate", default_learning_rate(config.method),
                     f"{config.method}: {'1e-5 for full fine-tuning' if config.method == 'full' else '2e-4 for LoRA/QLoRA'}")

    per_device = min(config.per_device_batch, train_rows)
    if config.packing and not cuda and per_device > 1:
        # a padding-free batch is one flattened sequence; CPU attention keeps its full (B·L)² mask and scores
        per_device = explain("per_device_batch", 1, "CPU with packing: one packed bin per forward pass keeps attention "
                             "memory at max_length² instead of (batch × max_length)²")
    elif per_device < config.per_device_batch:
        explain("per_device_batch", per_device, f"only {train_rows} training rows, fewer than per_device_batch")
    samples_per_row = train_samples / train_rows
    target = config.effective_batch
    ceiling = max(1, train_samples // MIN_STEPS_PER_EPOCH)
    if target > ceiling:
        target = explain("effective_batch_target", ceiling,
                         f"{train_samples} samples: the {config.effective_batch} target would leave fewer than "
                         f"{MIN_STEPS_PER_EPOCH} optimizer steps per epoch, so it is lowered to samples/{MIN_STEPS_PER_EPOCH}")
    rows_per_micro_step = per_device * gpus
    accumulation = max(1, math.ceil(target / (rows_per_micro_step * samples_per_row)))
    explain("gradient_accumulation", accumulation,
            f"ceil(target {target} / (per-device {per_device} × {gpus} GPU(s)"
            + (f" × {samples_per_row:.2f} samples per packed row" if samples_per_row > 1 else "") + "))")
    achieved = round(rows_per_micro_step * accumulation * samples_per_row, 1)
    explain("achieved_effective_batch", achieved, f"samples per optimizer step actually reached (target {config.effective_batch})")

    rows_per_step = rows_per_micro_step * accumulation
    steps_per_epoch = max(1, math.ceil(train_rows / rows_per_step))
    if config.max_steps:
        total = explain("optimizer_steps", config.max_steps, "max_steps set by the user")
    else:
        total = explain("optimizer_steps", max(1, math.ceil(steps_per_epoch * config.epochs)),
                        f"{steps_per_epoch} steps per epoch (from {train_rows} rows after packing) × {config.epochs} epochs")
    warmup = explain("warmup_steps", max(1, round(total * config.warmup_ratio)) if total > 1 else 0,
                     f"{config.warmup_ratio:.0%} of {total} optimizer steps (3–5 % rule), cosine decay after")
    eval_steps = min(config.eval_steps, max(1, total // 4)) if total >= 4 else 1
    explain("eval_steps", eval_steps, f"every {config.eval_steps} steps, at most a quarter of the run so early stopping can act"
            if eval_steps < config.eval_steps else f"train.eval_steps = {config.eval_steps}")

    settings = TrainSettings(learning_rate=lr, gradient_accumulation=accumulation, per_device_batch=per_device,
                             achieved_effective_batch=achieved, optimizer_steps=total, steps_per_epoch=steps_per_epoch,
                             warmup_steps=warmup, eval_steps=eval_steps, reasons=reasons)
    explain("scheduler", "cosine", "cosine decay to zero after warmup")
    if config.method != "full":
        settings.lora_rank = config.lora_rank
        settings.lora_alpha = explain("lora_alpha", config.lora_alpha or 2 * config.lora_rank,
                                      "set by the user" if config.lora_alpha else f"2 × rank {config.lora_rank}")
        settings.lora_targets = explain("lora_targets", LORA_TARGETS, "LoRA on every linear layer (attention and MLP), not only q/v")
    settings.precision = explain("precision", "bf16" if cuda else "fp32",
                                 "bf16 mixed precision on GPU" if cuda else "no GPU: fp32 (bf16 on CPU is many times slower)")
    return settings


def val_loss_oscillates(losses: list[float], evaluations: int) -> bool:
    """True when the last `evaluations` val losses went up and down without beating the best before them.

    >>> val_loss_oscillates([1.0, 0.8, 0.9, 0.85, 0.95, 0.82], 4)
    True
    >>> val_loss_oscillates([1.0, 0.9, 0.8, 0.7, 0.6], 4)
    False
    """
    if evaluations < 2 or len(losses) <= evaluations:
        return False
    before, window = losses[:-evaluations], losses[-evaluations:]
    if min(window) < min(before):
        return False
    diffs = [b - a for a, b in zip(window, window[1:])]
    sign_changes = sum(1 for a, b in zip(diffs, diffs[1:]) if a * b < 0)
    return sign_changes >= 1
