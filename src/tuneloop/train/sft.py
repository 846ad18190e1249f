"""Supervised fine-tuning, top to bottom: data → rules → model → TRL SFTTrainer → best adapter → run card.

```
runs/<run-id>/
  run.json          what ran: base model, method, data hashes, best step and val loss, early stop, timings
  config.json       the TrainConfig used and every derived value with its reason
  adapter/          best checkpoint's LoRA adapter + tokenizer + chat template (LoRA/QLoRA)
  model/            best full model + tokenizer (full fine-tuning)
  checkpoints/      Trainer checkpoints (resume from the last; BEST names the best)
  metrics.jsonl     one line per log: step, loss, eval_loss, lr, tokens
  quarantine.jsonl  rows that could not fit max_length even with windowing, with the reason
  run_card.html / run_card.md
```
A rerun of the same command on the same data resumes from the last checkpoint (a changed fingerprint — data,
model or settings — is refused, so two different runs never mix in one folder).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import write_quarantine
from tuneloop.files import atomic_dir, read_json, write_json
from tuneloop.models import resolve_model
from tuneloop.project import TrainConfig
from tuneloop.records import content_hash
from tuneloop.train.checkpoints import TrainError, checkpoint_step, open_run_folder
from tuneloop.train.config import OSCILLATION_LR, TrainSettings, derive_settings, val_loss_oscillates
from tuneloop.train.prepare import PreparedSplit, prepare_data


@dataclass
class RunResult:
    out_dir: Path
    run: dict[str, Any]
    settings: TrainSettings
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def adapter_dir(self) -> Path | None:
        return self.out_dir / self.run["adapter_dir"] if self.run.get("adapter_dir") else None

    @property
    def model_dir(self) -> Path:
        """The folder that `tuneloop.models.load_causal_lm` loads: the adapter (LoRA/QLoRA) or the full model."""
        return self.out_dir / (self.run.get("adapter_dir") or self.run["model_dir"])

    @property
    def suggested_learning_rate(self) -> float | None:
        return self.run.get("suggested_learning_rate")


# TrainConfig fields added after runs existed, with their defaults
LATER_DEFAULTS = {"cpu_precision": "auto", "tool_format": "auto"}


def settings_key(config: Any, later: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config as a run's fingerprint hashes it: fields added after runs existed (`later`, with their defaults)
    are left out while at their default, so those runs still resume."""
    later = LATER_DEFAULTS if later is None else later
    return config.model_dump(exclude={k for k, v in later.items() if getattr(config, k) == v})


def fingerprint(model_path: str, config: TrainConfig, train: PreparedSplit, val: PreparedSplit | None,
                default_system: str) -> str:
    """What makes two runs the same run: model, settings, data bytes, system prompt.

    Settings added after runs existed are left out while at their default, so those runs still resume."""
    return content_hash(model_path, settings_key(config), train.sha256, val.sha256 if val else None, default_system)


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if torch.cuda.is_available():
        info["gpus"] = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
                        for i in range(torch.cuda.device_count())]
    return info


def load_base_model(model_path: str, method: str, cuda: bool):
    """The model to train: bf16 on GPU, fp32 on CPU; 4-bit NF4 for QLoRA (GPU and bitsandbytes required)."""
    import torch
    from transformers import AutoModelForCausalLM

    if method == "qlora":
        if not cuda:
            raise TrainError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); on this machine use --method lora.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainError("QLoRA needs bitsandbytes: `pip install bitsandbytes`, or use --method lora.") from None
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quantization, dtype=torch.bfloat16,
                                                    device_map={"": local_rank})
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if cuda else torch.float32)


def _records(split: PreparedSplit):
    from datasets import Dataset

    return Dataset.from_list(split.batches)


def train_sft(train_file: str | Path, val_file: str | Path | None, out_dir: str | Path, model: str = "default",
              settings: TrainConfig | None = None, default_system: str = "", gpus: int = 1, resume: bool = True,
              progress: bool = True) -> RunResult:
    """Train `model` on `train_file` (tuneloop JSONL), evaluate on `val_file`, write `out_dir` (see module doc)."""
    import torch

    started = time.monotonic()
    config = settings or TrainConfig()
    out = Path(out_dir)
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gpus > 1 and world == 1:
        raise TrainError(f"--gpus {gpus} needs one process per GPU: run `tuneloop train sft --gpus {gpus}`, "
                         "which starts them through `accelerate launch`.")
    if world > 1 and not cuda:
        raise TrainError("multi-process training needs CUDA GPUs; drop --gpus on a CPU machine.")
    model_path = resolve_model(model)

    from transformers import AutoTokenizer, set_seed

    from tuneloop.train.templates import ensure_chat_template, template_hash, use_tool_format

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ensure_chat_template(tokenizer)
    use_tool_format(tokenizer, config.tool_format, model)  # into the template saved with the model (templates.py)
    train, val = prepare_data(tokenizer, train_file, val_file, config, default_system)
    derived = derive_settings(config, len(train.batches), len(train.rows), world, cuda)
    run_fingerprint = fingerprint(model_path, config, train, val, default_system)
    checkpoints, resume_from = open_run_folder(out, run_fingerprint, resume, main=_is_main())
    prepared_s = time.monotonic() - started

    config_record = {"fingerprint": run_fingerprint, "model": model, "base_model": model_path,
                     "train": config.model_dump(), "derived": derived.as_dict(), "default_system": default_system,
                     "chat_template": tokenizer.chat_template, "template_hash": template_hash(tokenizer),
                     "data": {"train": train.summary(), "val": val.summary() if val else None}}
    if _is_main():
        write_json(out / "config.json", config_record)
        write_quarantine(out / "quarantine.jsonl", train.quarantined + (val.quarantined if val else []))

    build = _build_engine if uses_engine(config, world) else _build_trainer
    trainer = build(model_path, tokenizer, config, derived, train, val, checkpoints, cuda, progress, out)
    train_started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.monotonic() - train_started
    return _finish(trainer, tokenizer, out, model, model_path, config, derived, train, val, resume_from,
                   {"prepare_s": round(prepared_s, 2), "train_s": round(train_s, 2)}, started)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def uses_engine(config: TrainConfig, world: int) -> bool:
    """tuneloop's own step for single-process runs; TRL for `train.engine: trl` and for DDP/FSDP2 launches."""
    return config.engine == "tuneloop" and world == 1


def _build_engine(model_path: str, tokenizer: Any, config: TrainConfig, derived: TrainSettings, train: PreparedSplit,
                  val: PreparedSplit | None, checkpoints: Path, cuda: bool, progress: bool, out: Path):
    from tuneloop.train.callbacks import MetricsFile, RichProgress
    from tuneloop.train.engine import SFTEngine, prepare_runtime
    from tuneloop.train.engine.memory import choose_recompute

    model = load_base_model(model_path, config.method, cuda)
    model.config.use_cache = False
    # selective activation checkpointing: the share of activations kept, from the planner and train.memory_budget_gib
    random_layers = config.method != "full" and config.lora_dropout > 0  # dropout masks: the partitioner cannot replay them
    keep, why = choose_recompute(model.config, config.method, derived.per_device_batch * config.max_length,
                                 config.memory_budget_gib, config.gradient_checkpointing, cuda,
                                 compiled=cuda and config.compile != "off", random_layers=random_layers)
    if config.method != "full":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=derived.lora_rank, lora_alpha=derived.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules=derived.lora_targets,
                                                 task_type="CAUSAL_LM", bias="none"))
    runtime = prepare_runtime(model, cuda, config.compile, keep=keep, random_layers=random_layers, reason=why,
                              cpu_precision=config.cpu_precision)
    model.to(runtime.device)
    # a compiled step sees one shape: every micro-batch is padded to per_device_batch bins of max_length
    pad_to = derived.per_device_batch * config.max_length if runtime.compiled else None
    engine = SFTEngine(model, runtime, train.batches, val.batches if val else None,
                       learning_rate=derived.learning_rate, warmup_steps=derived.warmup_steps,
                       max_steps=derived.optimizer_steps, per_device_batch=derived.per_device_batch,
                       gradient_accumulation=derived.gradient_accumulation, eval_steps=derived.eval_steps,
                       patience=config.early_stopping_patience, seed=config.seed, checkpoints=checkpoints,
                       callbacks=[MetricsFile(out / "metrics.jsonl"), RichProgress(progress)],
                       pad_id=tokenizer.pad_token_id or 0, pad_to=pad_to)
    return engine


def _build_trainer(model_path: str, tokenizer: Any, config: TrainConfig, derived: TrainSettings, train: PreparedSplit,
                   val: PreparedSplit | None, checkpoints: Path, cuda: bool, progress: bool, out: Path):
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tuneloop.train.callbacks import MetricsFile, RichProgress

    args = SFTConfig(
        output_dir=str(checkpoints), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=derived.per_device_batch, per_device_eval_batch_size=derived.per_device_batch,
        gradient_accumulation_steps=derived.gradient_accumulation, learning_rate=derived.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=derived.warmup_steps, max_steps=derived.optimizer_steps,
        logging_steps=1, eval_strategy="steps" if val else "no", eval_steps=derived.eval_steps,
        save_strategy="steps", save_steps=derived.eval_steps, save_total_limit=2,
        load_best_model_at_end=val is not None, metric_for_best_model="eval_loss", greater_is_better=False,
        bf16=cuda, fp16=False, use_cpu=not cuda, gradient_checkpointing=config.gradient_checkpointing,
        report_to="none", disable_tqdm=True, dataset_kwargs={"skip_prepare_dataset": True}, packing=False,
        max_length=None, dataloader_num_workers=0, ddp_find_unused_parameters=False, remove_unused_columns=False,
    )
    peft_config = None
    if config.method != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=derived.lora_rank, lora_alpha=derived.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=derived.lora_targets, task_type="CAUSAL_LM", bias="none")
    # packed bins go padding-free: position_ids restart per sample and transformers masks across samples
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=config.packing)
    callbacks = [MetricsFile(out / "metrics.jsonl"), RichProgress(progress)]
    if val is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(model=load_base_model(model_path, config.method, cuda), args=args, data_collator=collator,
                         train_dataset=_records(train), eval_dataset=_records(val) if val else None,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # metrics.jsonl and the progress bar replace raw dict prints
    return trainer


def _finish(trainer, tokenizer, out: Path, model: str, model_path: str, config: TrainConfig, derived: TrainSettings,
            train: PreparedSplit, val: PreparedSplit | None, resume_from: str | None, timings: dict[str, float],
            started: float) -> RunResult:
    from tuneloop.train.callbacks import mark_best, read_metrics
    from tuneloop.train.runcard import write_run_card

    state = trainer.state
    target = "model" if config.method == "full" else "adapter"
    save_started = time.monotonic()
    if trainer.is_world_process_zero():
        # weights and tokenizer (with its chat template) appear together or not at all: a kill mid-save leaves
        # the previous adapter, never a folder with a config and half its weights
        with atomic_dir(out / target) as staging:
            trainer.save_model(str(staging))  # the best checkpoint when val exists (load_best_model_at_end)
            tokenizer.save_pretrained(str(staging))
    else:
        trainer.save_model(str(out / target))  # other ranks join the collective gather; only rank 0 writes
    metrics = read_metrics(out / "metrics.jsonl")
    eval_losses = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    oscillating = val_loss_oscillates(eval_losses, config.oscillation_evals)
    tokens = max((m.get("num_tokens", 0) for m in metrics), default=0)
    timings.update(save_s=round(time.monotonic() - save_started, 2), total_s=round(time.monotonic() - started, 2))
    timings["steps_per_s"] = round(state.global_step / timings["train_s"], 3) if timings["train_s"] else None
    timings["train_tokens_per_s"] = round(tokens / timings["train_s"], 1) if timings["train_s"] and tokens else None
    import torch

    if torch.cuda.is_available():
        timings["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    run = {
        "base_model": model_path, "model": model, "method": config.method,
        "adapter_dir": "adapter" if target == "adapter" else None, "model_dir": "model" if target == "model" else None,
        "max_length": config.max_length, "packing": config.packing,
        "data": {"train": {"file": str(train.path), "sha256": train.sha256},
                 "val": {"file": str(val.path), "sha256": val.sha256} if val else None},
        "steps": state.global_step, "max_steps": derived.optimizer_steps,
        "best_step": checkpoint_step(state.best_model_checkpoint) or (state.global_step if not val else None),
        "best_checkpoint": state.best_model_checkpoint, "best_val_loss": state.best_metric,
        "stopped_early": bool(val) and state.global_step < derived.optimizer_steps,
        "resumed_from": resume_from, "val_loss_oscillating": oscillating,
        "suggested_learning_rate": OSCILLATION_LR if oscillating and derived.learning_rate != OSCILLATION_LR else None,
        "packing_efficiency": train.packing.efficiency if train.packing else None,
        "timings": timings, "hardware": hardware(),
        "engine": trainer.runtime.describe() if hasattr(trainer, "runtime") else {"engine": "trl"},
    }
    if trainer.is_world_process_zero():
        mark_best(out / "checkpoints", state.best_model_checkpoint, state.best_metric)
        write_json(out / "run.json", run)
        write_run_card(out, run, read_json(out / "config.json"), metrics)
    return RunResult(out, run, derived, metrics)


def launch_command(argv: list[str], gpus: int, method: str) -> list[str]:
    """`accelerate launch` of the same `tuneloop` command on `gpus` processes: DDP, or FSDP2 for full fine-tuning."""
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    if method == "full":
        command += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                    "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true"]
    else:
        command += ["--multi_gpu"]
    return command + ["-m", "tuneloop.cli.main", *argv]
