"""What DPO and GRPO share: where a run starts, which model is the reference, the settings, the finished run folder.

```
--model  runs/<sft-run>/      run.json → its adapter on its base model     continue that adapter
         .../adapter/         adapter_config.json → base_model_name_or_path  continue that adapter
         exports/<merged>/    a plain model (or hub id, or 'default')      a new LoRA on it (or full fine-tuning)

reference (what DPO's implicit reward and GRPO's KL are measured against) = the policy as the run starts:
  continued adapter  TRL's frozen copy of the SFT adapter (adapter `ref`): the SFT model, not the bare base
  new LoRA           the start model itself (the new adapter disabled)
  full               a frozen copy of the start model
```
The SFT model is the right reference: DPO's loss starts at log 2 with zero margin only when the reference is the
policy it starts from; the bare base (adapter disabled) would score SFT's own format lessons as preference signal.

The run folder has SFT's layout (run.json, config.json, adapter/ or model/, checkpoints/, metrics.jsonl,
quarantine.jsonl, run_card.html/md), so `tuneloop export merge`, eval and the loop read it the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tuneloop.files import atomic_dir, read_json, write_json
from tuneloop.models import resolve_model
from tuneloop.project import AlignConfig, TrainConfig
from tuneloop.records import content_hash
from tuneloop.train.config import TrainSettings, derive_settings
from tuneloop.train.checkpoints import TrainError, checkpoint_step, open_run_folder
from tuneloop.train.sft import RunResult, hardware, load_base_model, settings_key

ALIGN_LORA_LR = 2e-5
ALIGN_FULL_LR = 1e-6


@dataclass
class StartPoint:
    """The model a run starts from: base weights, and the adapter on them to continue (None: none)."""

    model: str  # as the user named it
    base_model: str  # the weights under the policy: what run.json `base_model` says for merge
    adapter_dir: str | None
    tokenizer_dir: str

    def describe(self) -> str:
        return f"adapter {self.adapter_dir} on {self.base_model}" if self.adapter_dir else self.base_model


def start_point(model: str) -> StartPoint:
    """A run folder, an adapter folder, or any model name `tuneloop.models.resolve_model` knows."""
    folder = Path(model)
    if (folder / "run.json").exists():
        run = read_json(folder / "run.json")
        if run.get("adapter_dir"):
            adapter = folder / run["adapter_dir"]
            return StartPoint(model, resolve_model(run["base_model"]), str(adapter), str(adapter))
        full = folder / run["model_dir"]
        return StartPoint(model, str(full), None, str(full))
    if (folder / "adapter_config.json").exists():
        base = resolve_model(read_json(folder / "adapter_config.json")["base_model_name_or_path"])
        tokenizer = folder if (folder / "tokenizer_config.json").exists() else Path(base)
        return StartPoint(model, base, str(folder), str(tokenizer))
    path = resolve_model(model)
    return StartPoint(model, path, None, path)


class RunStart(NamedTuple):
    """What every alignment run sets up before its data: settings with defaults filled, where it starts from, the
    seed set, and that start's tokenizer (with a chat template)."""

    config: TrainConfig
    align: AlignConfig
    out: Path
    cuda: bool
    start: StartPoint
    tokenizer: Any
    started: float  # time.monotonic() at the start, for the run's timings


def begin_run(model: str, out_dir: str | Path, settings: TrainConfig | None, align: AlignConfig | None) -> RunStart:
    import torch
    from transformers import AutoTokenizer, set_seed

    from tuneloop.train.templates import ensure_chat_template, use_tool_format

    started = time.monotonic()
    config, align = settings or TrainConfig(), align or AlignConfig()
    start = start_point(model)
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(start.tokenizer_dir)
    ensure_chat_template(tokenizer)
    use_tool_format(tokenizer, config.tool_format, model)  # auto keeps the format an SFT run saved
    return RunStart(config, align, Path(out_dir), torch.cuda.is_available(), start, tokenizer, started)


def load_policy(start: StartPoint, config: TrainConfig, derived: TrainSettings, cuda: bool) -> tuple[Any, Any, str]:
    """(model, peft_config for the trainer or None, what the reference is) for a start point and method."""
    if start.adapter_dir and config.method == "full":
        raise TrainError(f"{start.model}: a LoRA adapter is continued as LoRA; use --method lora, or start full "
                         "fine-tuning from a merged model (`tuneloop export merge`).")
    model = load_base_model(start.base_model, config.method, cuda)
    model.config.use_cache = False
    if start.adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start.adapter_dir, is_trainable=True)
        return model, None, f"the start adapter, frozen (TRL's `ref` copy of {start.adapter_dir})"
    if config.method == "full":
        return model, None, f"a frozen copy of the start model {start.base_model}"
    from peft import LoraConfig

    peft_config = LoraConfig(r=derived.lora_rank, lora_alpha=derived.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=derived.lora_targets, task_type="CAUSAL_LM", bias="none")
    return model, peft_config, f"the start model {start.base_model} (the new adapter disabled)"


def align_settings(config: TrainConfig, align: AlignConfig, rows: int, cuda: bool, what: str) -> TrainSettings:
    """SFT's rules (`train.config.derive_settings`) with alignment's own learning rate, epochs and max_steps."""
    if align.learning_rate is not None:
        lr, why = align.learning_rate, "set by the user (align.learning_rate or --lr)"
    elif config.method == "full":
        lr, why = ALIGN_FULL_LR, f"{what}, full fine-tuning: 1e-6 (a tenth of SFT's 1e-5): it moves a trained model"
    else:
        lr, why = ALIGN_LORA_LR, f"{what}, LoRA: 2e-5 (a tenth of SFT's 2e-4): it moves a trained model, gently"
    rules = config.model_copy(update={"learning_rate": lr, "packing": False, "epochs": align.epochs,
                                      "max_steps": align.max_steps})
    settings = derive_settings(rules, rows, rows, 1, cuda)
    for reason in settings.reasons:
        if reason.name == "learning_rate":
            reason.reason = why
        elif reason.name == "optimizer_steps" and align.max_steps:
            reason.reason = "align.max_steps set by the user"
    return settings


# AlignConfig fields added after runs existed, with their defaults
ALIGN_LATER_DEFAULTS = {"sft_weight": 0.0, "ld_alpha": None}


def run_fingerprint(kind: str, start: str, config: TrainConfig, align: AlignConfig, *parts: Any) -> str:
    """What makes two alignment runs the same run; settings added later count only when set (see `settings_key`)."""
    return content_hash(kind, start, settings_key(config), settings_key(align, ALIGN_LATER_DEFAULTS), *parts)


def trainer_arguments(config: TrainConfig, derived: TrainSettings, checkpoints: Path, cuda: bool,
                      has_val: bool) -> dict[str, Any]:
    """The TrainingArguments SFT uses too: cosine schedule, eval/save every eval_steps, the best checkpoint kept."""
    return dict(
        output_dir=str(checkpoints), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=derived.per_device_batch, per_device_eval_batch_size=derived.per_device_batch,
        gradient_accumulation_steps=derived.gradient_accumulation, learning_rate=derived.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=derived.warmup_steps, max_steps=derived.optimizer_steps,
        logging_steps=1, eval_strategy="steps" if has_val else "no", eval_steps=derived.eval_steps,
        save_strategy="steps", save_steps=derived.eval_steps, save_total_limit=2,
        load_best_model_at_end=has_val, metric_for_best_model="eval_loss", greater_is_better=False,
        bf16=cuda, fp16=False, use_cpu=not cuda, gradient_checkpointing=config.gradient_checkpointing,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )


def callbacks(out: Path, progress: bool, has_val: bool, patience: int, extra_keys: tuple[str, ...]) -> list[Any]:
    from transformers import EarlyStoppingCallback

    from tuneloop.train.callbacks import MetricsFile, RichProgress

    found = [MetricsFile(out / "metrics.jsonl", extra_keys), RichProgress(progress)]
    if has_val:
        found.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return found


def restore_policy_adapter(model: Any, checkpoint: str | None) -> None:
    """Load a checkpoint's policy adapter (`default`, at the checkpoint's root) before the Trainer resumes.

    A checkpoint of a model holding two adapters keeps the second (TRL's frozen `ref`) in a subfolder, and the
    Trainer's resume then loads only the subfolders' adapters: the policy would silently restart from its start
    weights while the optimizer and the step count continue. Loading it here makes the resume whole.
    """
    if checkpoint is None or not hasattr(model, "peft_config") or len(model.peft_config) < 2:
        return
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(checkpoint) / "adapter_model.safetensors"
    if not weights.exists():
        raise TrainError(f"{checkpoint}: the checkpoint has no adapter_model.safetensors; pass --no-resume to start over.")
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise TrainError(f"{weights}: the checkpoint's adapter does not fit this model ({result.unexpected_keys[0]}); "
                         "pass --no-resume to start over.")


def finish_run(trainer: Any, tokenizer: Any, out: Path, kind: str, start: StartPoint, config: TrainConfig,
               derived: TrainSettings, data: dict[str, Any], resume_from: str | None, timings: dict[str, float],
               started: float, extra: dict[str, Any]) -> RunResult:
    """Save the best policy (adapter or full model) with its tokenizer, write run.json and the run card."""
    from tuneloop.train.callbacks import mark_best, read_metrics
    from tuneloop.train.runcard import write_run_card

    state = trainer.state
    target = "model" if config.method == "full" else "adapter"
    save_started = time.monotonic()
    with atomic_dir(out / target) as staging:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if target == "adapter":
            # the policy adapter only: TRL's frozen `ref` copy is training machinery, not part of the result
            model.save_pretrained(str(staging), selected_adapters=["default"])
        else:
            trainer.save_model(str(staging))
        tokenizer.save_pretrained(str(staging))
    metrics = read_metrics(out / "metrics.jsonl")
    timings.update(save_s=round(time.monotonic() - save_started, 2), total_s=round(time.monotonic() - started, 2))
    timings["steps_per_s"] = round(state.global_step / timings["train_s"], 3) if timings["train_s"] else None
    tokens = max((m.get("num_tokens", 0) for m in metrics), default=0)
    timings["train_tokens_per_s"] = round(tokens / timings["train_s"], 1) if timings["train_s"] and tokens else None
    import torch

    if torch.cuda.is_available():
        timings["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    has_val = data.get("val") is not None
    run = {
        "kind": kind, "base_model": start.base_model, "model": start.model, "method": config.method,
        "started_from": start.describe(),
        "adapter_dir": "adapter" if target == "adapter" else None, "model_dir": "model" if target == "model" else None,
        "max_length": config.max_length, "packing": False,
        "data": {split: {"file": s["file"], "sha256": s["sha256"]} if s else None for split, s in data.items()},
        "steps": state.global_step, "max_steps": derived.optimizer_steps,
        "best_step": checkpoint_step(state.best_model_checkpoint) or (state.global_step if not has_val else None),
        "best_checkpoint": state.best_model_checkpoint, "best_val_loss": state.best_metric,
        "stopped_early": has_val and state.global_step < derived.optimizer_steps,
        "resumed_from": resume_from, "val_loss_oscillating": False, "suggested_learning_rate": None,
        "packing_efficiency": None, "timings": timings, "hardware": hardware(), "engine": {"engine": "trl"},
        **extra,
    }
    mark_best(out / "checkpoints", state.best_model_checkpoint, state.best_metric)
    write_json(out / "run.json", run)
    write_run_card(out, run, read_json(out / "config.json"), metrics)
    return RunResult(out, run, derived, metrics)
