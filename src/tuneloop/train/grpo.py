"""GRPO, top to bottom: prompts → completion length from the data → rewards → TRL GRPOTrainer → run card.

```
train.jsonl ─ prompts (rendered as serving renders them, tools included) + the columns the rewards read
            (rewards.sample_columns: output, expected, sample_type, output_schema, tools, answer_kind, turn_roles)
            └─ max_completion_length = longest reference answer in tokens × (1 + align.completion_margin)
               (align.max_completion_length when set; never TRL's own default); prompt + that over
               train.max_length ─▶ quarantine.jsonl
rewards     align.rewards / align.preset (train/rewards.py), bound to the task schema and the end-of-turn tokens
rollouts    TRL's sampling (num_generations per prompt), or, with align.constrained_rollouts, tuneloop's own
            decoder (tuneloop.decoding.Engine) constrained to the answer's JSON Schema
per step    metrics.jsonl: reward, reward_std, rewards/<name>/mean, completions/clipped_ratio (the share of completions
            cut by max_completion_length), completions/mean_length, kl
runs/<run-id>/  run.json (kind: grpo, clipped share first/last/max), config.json, adapter/ or model/, checkpoints/,
                metrics.jsonl, quarantine.jsonl, run_card.html / run_card.md
```
A rerun of the same command resumes from the last checkpoint; a folder of another run is refused. The last step
is kept: GRPO has no val loss to stop early on (eval the result with `tuneloop eval run`).

Constrained rollouts are off-policy in one way: the grammar masks tokens the policy might have sampled, while the
loss scores the completion under the unmasked policy. Every completion then parses, so the rewards rank answers by
content (fields, refusals) rather than by format; use them once the format is learned, or to rescue a model that
never produces JSON at all.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import read_samples, write_quarantine
from tuneloop.files import file_digest, write_json
from tuneloop.project import AlignConfig, TrainConfig
from tuneloop.records import QuarantinedRow, Sample, to_messages
from tuneloop.train.alignment import (align_settings, begin_run, callbacks, finish_run, load_policy,
                                     restore_policy_adapter, run_fingerprint, trainer_arguments)
from tuneloop.train.checkpoints import TrainError, open_run_folder
from tuneloop.train.config import Derived
from tuneloop.train.sft import RunResult

GRPO_METRICS = ("reward", "reward_std", "kl", "frac_reward_zero_std", "completions/clipped_ratio",
                "completions/mean_length", "completions/max_length", "completions/mean_terminated_length")
CLIPPED = "completions/clipped_ratio"
CLIPPED_WARNING = 0.1  # a run whose completions are cut more often than this learns the cut, not the answer


def completion_budget(tokenizer: Any, samples: list[Sample], margin: float, default_system: str = "") -> tuple[int, str]:
    """max_completion_length from the longest reference answer (tokens, with its end-of-turn token), and why."""
    from tuneloop.train.templates import end_of_turn_id, prompt_ids, response_ids

    end = end_of_turn_id(tokenizer)
    lengths = [(len(response_ids(tokenizer, s, prompt_ids(tokenizer, s, default_system), default_system, end)), s.id)
               for s in samples]
    longest, sample_id = max(lengths)
    budget = max(8, math.ceil(longest * (1 + margin)))
    return budget, (f"longest reference answer {longest} tokens (sample {sample_id}) + {margin:.0%} margin "
                    "(align.completion_margin); TRL's default is not used")


def prompt_rows(tokenizer: Any, samples: list[Sample], max_completion: int, max_length: int, default_system: str,
                source_file: str) -> tuple[list[dict[str, Any]], list[QuarantinedRow]]:
    """GRPOTrainer's rows (the prompt as chat messages + the columns the rewards read) and the prompts that cannot
    fit max_length with a whole completion after them."""
    from tuneloop.train.rewards import sample_columns
    from tuneloop.train.templates import prompt_ids, prompt_text

    rows, quarantined = [], []
    for number, sample in enumerate(samples, start=1):
        prompt_length = len(prompt_ids(tokenizer, sample, default_system))
        if prompt_length + max_completion > max_length:
            quarantined.append(QuarantinedRow(
                source_file=source_file, line=number, sample_id=sample.id, stage="train.grpo.prompts", raw=sample.model_dump(),
                reason=f"prompt {prompt_length} + max_completion_length {max_completion} tokens exceed max_length "
                       f"{max_length}; raise train.max_length (or --max-length) or shorten the prompt"))
            continue
        # the prompt as tuneloop renders it (with the sample's tools): TRL would render chat prompts without them
        rows.append({"prompt": prompt_text(tokenizer, to_messages(sample, default_system, with_answer=False)),
                     "id": sample.id, **sample_columns(sample)})
    return rows, quarantined


def _grpo_trainer_class():
    from trl import GRPOTrainer

    class RenderedPromptGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer over prompts tuneloop rendered itself (`templates.prompt_text`, the serving prompt with
        the row's tools): tokenized as `prompt_ids` does, without special tokens added on top of the template's."""

        def _tokenize_prompts(self, prompts: list):
            ids = self.processing_class(text=list(prompts), add_special_tokens=False)["input_ids"]
            return ids, None, {}

    return RenderedPromptGRPOTrainer


def constrained_rollout(schema: dict[str, Any] | None, temperature: float, max_tokens: int, end_of_turn: int):
    """TRL's `rollout_func`: one completion per prompt (the batch already repeats each prompt num_generations
    times) from tuneloop's decoder, constrained to the row's schema (the task's when the row has none)."""
    from tuneloop.decoding.engine import Engine, GenerationRequest

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine = Engine(model, trainer.processing_class)
        response_format = ({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
                           if schema else {"type": "json_object"})
        encoded = trainer.processing_class(text=list(prompts), add_special_tokens=False)["input_ids"]
        requests = [GenerationRequest(list(ids), max_tokens=max_tokens, temperature=temperature,
                                      response_format=response_format) for ids in encoded]
        was_training = model.training
        model.eval()  # no dropout while sampling; the loss pass runs in train mode again
        try:
            results = engine.generate(requests)
        finally:
            model.train(was_training)
        completions = [r.token_ids + ([end_of_turn] if r.finish_reason == "stop" else []) for r in results]
        return {"prompt_ids": [r.prompt_ids for r in requests], "completion_ids": completions, "logprobs": None}

    return rollout


def train_grpo(train_file: str | Path, out_dir: str | Path, model: str,
               settings: TrainConfig | None = None, align: AlignConfig | None = None, default_system: str = "",
               schema: dict[str, Any] | None = None, resume: bool = True, progress: bool = True) -> RunResult:
    """GRPO from `model` (an SFT run folder, an adapter folder or a model) on the prompts of `train_file`."""
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from tuneloop.train.rewards import bound_rewards, configured_weights
    from tuneloop.train.templates import end_of_turn_id, template_hash

    config, align, out, cuda, start, tokenizer, started = begin_run(model, out_dir, settings, align)
    train_path = Path(train_file)
    if not train_path.exists():
        raise TrainError(f"{train_path}: no such data file; pass --train or run `tuneloop data gate` to make a round.")
    read = read_samples(train_path, stage="train.read")
    if not read.samples:
        raise TrainError(f"{train_path}: no sample to take prompts from.")
    if align.max_completion_length:
        budget, why = align.max_completion_length, "align.max_completion_length set by the user"
    else:
        budget, why = completion_budget(tokenizer, read.samples, align.completion_margin, default_system)
    rows, quarantined = prompt_rows(tokenizer, read.samples, budget, config.max_length, default_system, str(train_path))
    quarantined = list(read.quarantined) + quarantined
    if not rows:
        raise TrainError(f"{train_path}: no prompt fits max_length {config.max_length} with {budget} completion "
                         "tokens after it; raise train.max_length.")
    derived = align_settings(config, align, len(rows), cuda, "GRPO")
    # one prompt's group per micro-step, so every generation batch holds whole groups: the prompts SFT's rules put in
    # one optimizer step become that many accumulated micro-steps of num_generations completions each
    prompts_per_step = derived.per_device_batch * derived.gradient_accumulation
    derived.per_device_batch, derived.gradient_accumulation = align.num_generations, prompts_per_step
    derived.reasons += [
        Derived("max_completion_length", budget, why),
        Derived("prompts_per_step", prompts_per_step, f"micro-steps of one prompt × {align.num_generations} "
                "completions, accumulated (the effective batch of SFT's rules, counted in prompts)"),
        Derived("num_generations", align.num_generations, "align.num_generations: the group the advantage is "
                "computed over; one prompt's group per forward pass"),
        Derived("kl_beta", 0.0, "TRL's default for GRPO: no reference model is held (the clip keeps steps small)"),
        Derived("rollouts", "constrained" if align.constrained_rollouts else "sampled",
                "align.constrained_rollouts: tuneloop's decoder with the task schema" if align.constrained_rollouts
                else f"TRL's sampling at temperature {align.temperature} (align.temperature)")]
    weights = configured_weights(align)
    derived.reasons.append(Derived("rewards", json.dumps(weights), f"align.rewards or align.preset {align.preset!r}"))
    train_sha = file_digest(train_path)
    fingerprint = run_fingerprint("grpo", start.describe(), config, align, train_sha,
                                  default_system, schema)
    checkpoints, resume_from = open_run_folder(out, fingerprint, resume)
    policy, peft_config, reference = load_policy(start, config, derived, cuda)
    end = end_of_turn_id(tokenizer)
    stops = list(dict.fromkeys([end, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])]))
    policy.generation_config.eos_token_id = stops  # generation stops, and TRL counts a completion finished, on these
    summary = {"file": str(train_path), "sha256": train_sha, "samples": len(read.samples), "rows": len(rows),
               "quarantined": len(quarantined), "longest_row_tokens": budget}
    write_json(out / "config.json", {
        "fingerprint": fingerprint, "kind": "grpo", "model": model, "base_model": start.base_model,
        "started_from": start.describe(), "train": {**config.model_dump(), **{f"align.{k}": v for k, v in
                                                                              align.model_dump().items()}},
        "derived": derived.as_dict(), "default_system": default_system, "chat_template": tokenizer.chat_template,
        "template_hash": template_hash(tokenizer), "data": {"train": summary, "val": None}})
    write_quarantine(out / "quarantine.jsonl", quarantined)
    prepared_s = time.monotonic() - started

    from datasets import Dataset

    arguments = trainer_arguments(config, derived, checkpoints, cuda, False)
    args = GRPOConfig(**arguments, num_generations=align.num_generations, max_completion_length=budget,
                      temperature=align.temperature, reward_weights=None, remove_unused_columns=False,
                      log_completions=False, shuffle_dataset=True)
    functions, function_weights = bound_rewards(weights, schema, stops)
    args.reward_weights = function_weights
    rollout = constrained_rollout(schema, align.temperature, budget, end) if align.constrained_rollouts else None
    trainer = _grpo_trainer_class()(
        model=policy, reward_funcs=functions, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=peft_config, rollout_func=rollout,
        callbacks=callbacks(out, progress, False, config.early_stopping_patience,
                            GRPO_METRICS + tuple(f"rewards/{n}/mean" for n in weights)))
    trainer.remove_callback(PrinterCallback)
    restore_policy_adapter(trainer.model, resume_from)
    train_started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_from)
    timings = {"prepare_s": round(prepared_s, 2), "train_s": round(time.monotonic() - train_started, 2)}
    clipped = [float(e[CLIPPED]) for e in trainer.state.log_history if CLIPPED in e]
    notes = []
    if clipped and clipped[-1] > CLIPPED_WARNING:
        notes.append(f"{clipped[-1]:.0%} of the last step's completions were cut at max_completion_length {budget}: "
                     "raise align.max_completion_length or align.completion_margin.")
    if quarantined:
        notes.append(f"{len(quarantined)} prompt(s) were left out (quarantine.jsonl says why).")
    return finish_run(trainer, tokenizer, out, "grpo", start, config, derived, {"train": summary, "val": None},
                      resume_from, timings, started,
                      {"reference": reference, "num_generations": align.num_generations,
                       "max_completion_length": budget, "max_completion_length_reason": why,
                       "constrained_rollouts": align.constrained_rollouts, "rewards": weights,
                       "clipped_ratio": {"first": clipped[0] if clipped else None,
                                         "last": clipped[-1] if clipped else None,
                                         "max": max(clipped) if clipped else None, "per_step": clipped},
                       "reward": [round(float(e["reward"]), 4) for e in trainer.state.log_history if "reward" in e],
                       "notes": notes, "prompts": len(rows)})
