"""Direct preference optimisation, top to bottom: pairs → rules → policy and reference → TRL DPOTrainer → run card.

```
train.jsonl (samples with `rejected`) ─ prefs.prepare_pairs ─▶ pairs (prompt_ids, chosen_ids, rejected_ids)
                                                           └─▶ quarantine.jsonl: pairs longer than max_length, chosen == rejected
--model (SFT run / adapter / merged model) ─ alignment.start_point ─▶ policy + reference (see tuneloop.train.alignment)
DPOTrainer(beta, loss_type, max_length=None: nothing is cut) ─ eval on val pairs, early stopping, best checkpoint
runs/<run-id>/  run.json (kind: dpo), config.json, adapter/ or model/, checkpoints/, metrics.jsonl (loss, rewards/margins,
                rewards/accuracies), quarantine.jsonl, run_card.html / run_card.md
```
A rerun of the same command resumes from the last checkpoint; a folder of another run is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import write_quarantine
from tuneloop.files import write_json
from tuneloop.project import AlignConfig, TrainConfig
from tuneloop.train.alignment import (align_settings, begin_run, callbacks, finish_run, load_policy,
                                     restore_policy_adapter, run_fingerprint, trainer_arguments)
from tuneloop.train.checkpoints import TrainError, open_run_folder
from tuneloop.train.config import Derived
from tuneloop.train.prefs import PreferenceDataError, PreparedPairs, prepare_pairs
from tuneloop.train.sft import RunResult

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "eval_rewards/margins", "eval_rewards/accuracies")


def _dpo_trainer_class():
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer over pairs tuneloop tokenized itself (`prefs.encode_pair`): the prompt is the one
        serving renders, and every pair's length was checked before training, so TRL's own tokenization is not run."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return TokenizedDPOTrainer


def _dataset(pairs: PreparedPairs):
    from datasets import Dataset

    return Dataset.from_list(pairs.rows())


def train_dpo(train_file: str | Path, val_file: str | Path | None, out_dir: str | Path, model: str,
              settings: TrainConfig | None = None, align: AlignConfig | None = None, default_system: str = "",
              resume: bool = True, progress: bool = True) -> RunResult:
    """DPO from `model` (an SFT run folder, an adapter folder or a model) on the pairs of `train_file`."""
    from transformers import PrinterCallback
    from trl import DPOConfig

    from tuneloop.train.templates import template_hash

    config, align, out, cuda, start, tokenizer, started = begin_run(model, out_dir, settings, align)
    try:
        train = prepare_pairs(tokenizer, train_file, config.max_length, default_system)
        val = prepare_pairs(tokenizer, val_file, config.max_length, default_system) if val_file else None
    except PreferenceDataError as err:
        raise TrainError(str(err)) from None
    if not train.pairs:
        reasons = "; ".join(sorted({q.reason for q in train.quarantined})[:2])
        raise TrainError(f"{train_file}: no preference pair to train on ({train.samples} samples, "
                         f"{train.without_rejected} without `rejected`{', ' + reasons if reasons else ''}); make pairs "
                         "with `tuneloop sample best-of-n` or give samples a `rejected` answer.")
    if val is not None and not val.pairs:
        val = None  # a val file without pairs cannot score DPO: no early stopping, the last step is kept
    derived = align_settings(config, align, len(train.pairs), cuda, "DPO")
    derived.reasons.append(Derived(
        "max_length", train.longest_pair,
        f"the longest prompt + answer of the pairs (train.max_length {config.max_length} is the ceiling; "
        f"{len(train.quarantined)} pair(s) over it quarantined); TRL gets max_length=None, so no answer is cut"))
    derived.reasons.append(Derived("beta", align.beta, "align.beta: higher stays closer to the reference"))
    derived.reasons.append(Derived("loss_type", align.loss_type, "align.loss_type (TRL's loss_type)"))
    losses, weights = [align.loss_type], [1.0]
    if align.sft_weight:
        losses, weights = [align.loss_type, "sft"], [1.0, align.sft_weight]
        derived.reasons.append(Derived("sft_weight", align.sft_weight, "align.sft_weight: the chosen answer's NLL "
                                       "beside the DPO loss"))
    if align.ld_alpha is not None:
        derived.reasons.append(Derived("ld_alpha", align.ld_alpha, "align.ld_alpha: tokens past the shorter answer "
                                       "of a pair count this much"))
    fingerprint = run_fingerprint("dpo", start.describe(), config, align, train.sha256,
                                  val.sha256 if val else None, default_system)
    checkpoints, resume_from = open_run_folder(out, fingerprint, resume)
    policy, peft_config, reference = load_policy(start, config, derived, cuda)
    derived.reasons.append(Derived("reference", reference, "what the implicit reward is measured "
                                                                            "against: the policy as the run starts"))
    write_json(out / "config.json", {
        "fingerprint": fingerprint, "kind": "dpo", "model": model, "base_model": start.base_model,
        "started_from": start.describe(), "train": {**config.model_dump(), **{f"align.{k}": v for k, v in
                                                                              align.model_dump().items()}},
        "derived": derived.as_dict(), "default_system": default_system, "chat_template": tokenizer.chat_template,
        "template_hash": template_hash(tokenizer),
        "data": {"train": train.summary(), "val": val.summary() if val else None}})
    write_quarantine(out / "quarantine.jsonl", train.quarantined + (val.quarantined if val else []))
    prepared_s = time.monotonic() - started

    args = DPOConfig(**trainer_arguments(config, derived, checkpoints, cuda, val is not None),
                     beta=align.beta, loss_type=losses, loss_weights=weights, ld_alpha=align.ld_alpha,
                     max_length=None, remove_unused_columns=False)
    trainer = _dpo_trainer_class()(
        model=policy, args=args, train_dataset=_dataset(train), eval_dataset=_dataset(val) if val else None,
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=callbacks(out, progress, val is not None, config.early_stopping_patience, DPO_METRICS))
    trainer.remove_callback(PrinterCallback)
    restore_policy_adapter(trainer.model, resume_from)
    train_started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_from)
    timings = {"prepare_s": round(prepared_s, 2), "train_s": round(time.monotonic() - train_started, 2)}
    notes = []
    if train.quarantined:
        notes.append(f"{len(train.quarantined)} pair(s) of the train file were left out (quarantine.jsonl says why).")
    if train.without_rejected:
        notes.append(f"{train.without_rejected} train sample(s) have no `rejected` answer and are not DPO data.")
    return finish_run(trainer, tokenizer, out, "dpo", start, config, derived,
                      {"train": train.summary(), "val": val.summary() if val else None}, resume_from, timings, started,
                      {"beta": align.beta, "loss_type": align.loss_type, "sft_weight": align.sft_weight,
                       "ld_alpha": align.ld_alpha, "reference": reference,
                       "pairs": {"train": len(train.pairs), "val": len(val.pairs) if val else 0},
                       "longest_pair_tokens": train.longest_pair, "notes": notes,
                       "final": _final_rewards(trainer.state.log_history)})


def _final_rewards(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last logged reward margin and accuracy (train and val), for the run card and the report line."""
    found: dict[str, Any] = {}
    for entry in history:
        for key in ("rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies"):
            if key in entry:
                found[key] = round(float(entry[key]), 4)
    return found
