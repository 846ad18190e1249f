"""One TRL SFTTrainer run with TRL's stock settings (the reference of bench/train_throughput.py).

Packing `bfd` + padding-free, prompt-completion chat data (loss on completions), bf16, SDPA, one bin per step;
`--liger` adds `use_liger_kernel`. Writes {tokens_per_s, step_s, peak_gib, losses} to --json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepClock(TrainerCallback):
    def __init__(self):
        self.marks: list[tuple[int, float, float]] = []  # step, seconds, cumulative tokens
        self.losses: list[float] = []
        self.started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # TRL logs every step; the loss .item() has synchronised the GPU
            self.marks.append((state.global_step, time.monotonic() - self.started, float(logs.get("num_tokens", 0))))
            self.losses.append(float(logs["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.train).read_text().splitlines()]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}],
                               "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa")
    peft_config = None
    if args.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(output_dir=str(Path(args.json).with_suffix("")), max_steps=args.steps, per_device_train_batch_size=1,
                       gradient_accumulation_steps=1, learning_rate=2e-4 if args.method == "lora" else 1e-5,
                       lr_scheduler_type="cosine", warmup_steps=1, logging_steps=1, save_strategy="no", report_to="none",
                       bf16=True, packing=True, packing_strategy="bfd", padding_free=True, max_length=args.max_length,
                       use_liger_kernel=args.liger, gradient_checkpointing=args.gradient_checkpointing,
                       disable_tqdm=True, dataloader_num_workers=0, seed=42)
    clock = StepClock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[clock])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steady = [m for m in clock.marks if m[0] > args.warmup]
    tokens = steady[-1][2] - steady[0][2]
    seconds = steady[-1][1] - steady[0][1]
    Path(args.json).write_text(json.dumps({
        "tokens_per_s": round(tokens / seconds, 1), "step_s": round(seconds / (len(steady) - 1), 4),
        "peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2), "losses": clock.losses,
        "engine": {"engine": "trl stock", "liger": args.liger, "gradient_checkpointing": args.gradient_checkpointing},
        "steps": len(clock.marks)}))


if __name__ == "__main__":
    main()
