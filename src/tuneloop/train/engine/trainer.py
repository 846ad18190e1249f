"""The optimisation loop: micro-steps → optimizer step → log → evaluate → checkpoint → early stop, resumable.

One optimizer step, as a reader would do it by hand:
```
for micro-batch in step (gradient_accumulation of them, bins chosen by the seeded epoch order):
    h = decoder(input_ids, position_ids | document BlockMask)          no LM head here
    loss_sum, correct = answer_loss(h[answer positions], lm_head, targets)
    (loss_sum / answer tokens of the whole step).backward()             the count is known on the host
clip grad norm 1.0 → fused AdamW → cosine-with-warmup schedule → one log line (the step's only host sync)
```
Checkpoints (`checkpoints/checkpoint-N/`: weights or adapter, `engine.pt` with optimizer, schedule, RNG and
early-stopping state, `trainer_state.json`) are written to a temporary folder and renamed, at every evaluation;
the last two and the best are kept. The Trainer-shaped surface (`train`, `state`, `save_model`) lets
`train/sft.py` finish a run the same way whichever engine trained it.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneloop.files import atomic_dir
from tuneloop.train.engine.batches import collate, optimizer_steps, steps_per_epoch
from tuneloop.train.engine.loss import LOGIT_BYTES_PER_CHUNK, answer_loss, liger_loss
from tuneloop.train.engine.runtime import Runtime, bench_knob, hidden_states, lm_head_of

MAX_GRAD_NORM = 1.0
KEEP_CHECKPOINTS = 2


@dataclass
class EngineState:
    """What the Trainer calls TrainerState, as far as the callbacks and the run record read it."""

    max_steps: int
    global_step: int = 0
    epoch: float = 0.0
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    evals_without_improvement: int = 0
    tokens_seen: int = 0
    is_world_process_zero: bool = True
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "log_history"}


class SFTEngine:
    def __init__(self, model: Any, runtime: Runtime, train_bins: list[dict], val_bins: list[dict] | None, *,
                 learning_rate: float, warmup_steps: int, max_steps: int, per_device_batch: int,
                 gradient_accumulation: int, eval_steps: int, patience: int, seed: int, checkpoints: Path,
                 callbacks: list[Any], pad_id: int, pad_to: int | None):
        from transformers import get_cosine_schedule_with_warmup

        self.model, self.runtime = model, runtime
        self.train_bins, self.val_bins = train_bins, val_bins
        self.per_device, self.accumulation, self.eval_steps = per_device_batch, gradient_accumulation, eval_steps
        self.patience, self.seed, self.checkpoints = patience, seed, checkpoints
        self.callbacks, self.pad_id, self.pad_to = callbacks, pad_id, pad_to
        self.state = EngineState(max_steps=max_steps)
        self.params = [p for p in model.parameters() if p.requires_grad]
        fused = {"fused": True} if runtime.device.type in ("cuda", "cpu") else {"foreach": True}
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0, **fused)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup_steps, max_steps)
        self.lm_head = lm_head_of(model)
        self.fused_loss = None
        if runtime.device.type == "cuda" and bench_knob("loss", "liger") == "liger":
            self.fused_loss = liger_loss(int(bench_knob("liger_chunk_mib", str(LOGIT_BYTES_PER_CHUNK["liger"] >> 20))) << 20)
        self.epoch_steps = steps_per_epoch(len(train_bins), per_device_batch, gradient_accumulation)

    # -- the Trainer-shaped surface -------------------------------------------------------------------------
    def is_world_process_zero(self) -> bool:
        return True

    def train(self, resume_from_checkpoint: str | None = None) -> EngineState:
        if resume_from_checkpoint:
            self._load(Path(resume_from_checkpoint))
        self._emit("on_train_begin")
        self.model.train()
        steps = optimizer_steps(len(self.train_bins), self.per_device, self.accumulation, self.seed,
                                start_epoch=self.state.global_step // self.epoch_steps,
                                skip_steps=self.state.global_step % self.epoch_steps)
        profile = _Profile(self.state.max_steps)
        while self.state.global_step < self.state.max_steps:
            epoch, micro = next(steps)
            profile.before(self.state.global_step)
            log = self._step([[self.train_bins[i] for i in m] for m in micro])
            self.state.global_step += 1
            profile.after(self.state.global_step)
            self.state.epoch = round(self.state.global_step / self.epoch_steps, 4)
            self._log({**log, "epoch": self.state.epoch})
            self._emit("on_step_end")
            if self.state.global_step % self.eval_steps == 0:  # evaluate and save together, as the Trainer does
                if self._evaluate_and_save():
                    break
        profile.close()
        if self.state.best_model_checkpoint:
            self._load_weights(Path(self.state.best_model_checkpoint))  # what load_best_model_at_end does
        self._emit("on_train_end")
        return self.state

    def save_model(self, path: str) -> None:
        self.model.save_pretrained(path)

    # -- one optimizer step ---------------------------------------------------------------------------------
    def _step(self, micro_bins: list[list[dict]]) -> dict[str, float]:
        batches = [collate(bins, self.pad_to, self.pad_id) for bins in micro_bins]
        answers = sum(b.answers for b in batches) or 1
        loss_total = torch.zeros((), device=self.runtime.device)
        correct_total = torch.zeros((), dtype=torch.int64, device=self.runtime.device)
        for batch in batches:
            batch = batch.to(self.runtime.device)
            hidden = hidden_states(self.model, self.runtime, batch).index_select(0, batch.answer_index)
            loss_sum, correct = answer_loss(hidden, self.lm_head, batch.answer_targets, self.fused_loss)
            (loss_sum / answers).backward()
            loss_total += loss_sum.detach()
            correct_total += correct
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step used, as the Trainer logs it
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.tokens_seen += sum(b.tokens for b in batches)
        loss, norm, correct = torch.stack([loss_total / answers, grad_norm.float().to(loss_total.device),
                                           correct_total.float() / answers]).tolist()  # the step's one sync
        return {"loss": loss, "grad_norm": norm, "learning_rate": learning_rate,
                "mean_token_accuracy": correct, "num_tokens": float(self.state.tokens_seen)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        loss_total = torch.zeros((), device=self.runtime.device)
        correct_total = torch.zeros((), dtype=torch.int64, device=self.runtime.device)
        answers = 0
        for start in range(0, len(self.val_bins), self.per_device):
            batch = collate(self.val_bins[start:start + self.per_device], self.pad_to, self.pad_id).to(self.runtime.device)
            hidden = hidden_states(self.model, self.runtime, batch).index_select(0, batch.answer_index)
            loss_sum, correct = answer_loss(hidden, self.lm_head, batch.answer_targets, self.fused_loss)
            loss_total += loss_sum
            correct_total += correct
            answers += batch.answers
        self.model.train()
        loss, accuracy = (torch.stack([loss_total, correct_total.float()]) / max(1, answers)).tolist()
        return {"eval_loss": loss, "eval_mean_token_accuracy": accuracy}

    def _evaluate_and_save(self) -> bool:
        """Evaluate (with val), checkpoint, track the best; True when early stopping says stop."""
        stop = False
        if self.val_bins:
            metrics = self.evaluate()
            self._log(metrics)
            improved = self.state.best_metric is None or metrics["eval_loss"] < self.state.best_metric
            if improved:
                self.state.best_metric = metrics["eval_loss"]
                self.state.evals_without_improvement = 0
                self.state.best_model_checkpoint = str(self.checkpoints / f"checkpoint-{self.state.global_step}")
            else:
                self.state.evals_without_improvement += 1
                stop = self.state.evals_without_improvement >= self.patience
        self._save_checkpoint()
        return stop

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        # built under a hidden name, fsynced and swapped in whole: a kill or a power cut leaves the last complete
        # checkpoint, never a half-written one under a checkpoint-N name
        with atomic_dir(self.checkpoints / f"checkpoint-{self.state.global_step}") as staging:
            self.model.save_pretrained(str(staging))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "state": self.state.as_dict(), "rng": _rng_state()}, staging / "engine.pt")
            (staging / "trainer_state.json").write_text(json.dumps({**self.state.as_dict(), "engine": "tuneloop",
                                                                    "log_history": self.state.log_history}, indent=1))
        self._rotate()

    def _rotate(self) -> None:
        found = sorted((p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                       key=lambda p: int(p.name.split("-")[-1]))
        keep = {p.name for p in found[-KEEP_CHECKPOINTS:]}
        if self.state.best_model_checkpoint:
            keep.add(Path(self.state.best_model_checkpoint).name)
        for path in found:
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def _load(self, checkpoint: Path) -> None:
        saved = torch.load(checkpoint / "engine.pt", map_location="cpu", weights_only=False)
        self._load_weights(checkpoint)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        for key, value in saved["state"].items():
            setattr(self.state, key, value)
        _set_rng_state(saved["rng"])

    def _load_weights(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        adapter = checkpoint / "adapter_model.safetensors"
        if adapter.exists():
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(str(adapter)))
            return
        for shard in sorted(checkpoint.glob("*.safetensors")):
            self.model.load_state_dict(load_file(str(shard)), strict=False)

    # -- logging --------------------------------------------------------------------------------------------
    def _log(self, logs: dict[str, float]) -> None:
        clean = {k: v for k, v in logs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        self.state.log_history.append({**clean, "step": self.state.global_step})
        self._emit("on_log", logs=clean)

    def _emit(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(None, self.state, None, **kwargs)


class _Profile:
    """Benchmark knob `profile=PATH`: torch.profiler over the last PROFILE_STEPS steps, its kernel table to PATH."""

    STEPS = 3

    def __init__(self, max_steps: int):
        self.path, self.start, self.profiler = bench_knob("profile", ""), max(0, max_steps - self.STEPS), None

    def before(self, step: int) -> None:
        if self.path and step == self.start and self.profiler is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()

    def after(self, step: int) -> None:
        if step >= self.start + self.STEPS:
            self.close()  # before the checkpoint write that may follow the last step

    def close(self) -> None:
        if self.profiler is None:
            return
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.profiler.__exit__(None, None, None)
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=70)
        Path(self.path).write_text(f"last {self.STEPS} steps\n{table}\n")
        self.profiler, self.path = None, ""


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

