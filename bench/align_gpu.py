"""DPO and GRPO mechanics on one GPU: a Qwen2.5-0.5B-shaped model with RANDOM weights, through tuneloop's own paths.

  One GPU (the docs/benchmarks.md row):   python bench/align_gpu.py --shape qwen2.5-0.5b --markdown $OUT/align.md
  CPU smoke of the same script:           flock /tmp/tuneloop-torch.lock python bench/align_gpu.py --shape tiny --quick

Cases, each a real `train_dpo` / `train_grpo` call (the run folder, run card and metrics.jsonl of a user's run):
  dpo-lora   a new LoRA r16 on the model; the reference is the model itself (adapter disabled)
  dpo-full   full fine-tuning; the reference is a frozen copy of the model
  grpo-lora  LoRA r16, the `strict` rewards, num_generations 8, max_completion_length from the longest reference
Random weights never close a JSON answer or end a turn: rewards stay flat and every GRPO completion is cut (the
clipped share is 1.0). What this measures is the machinery (steps/s, tokens/s, peak memory, loss moving for DPO),
not answer quality; docs/benchmarks.md says so beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import WORDS, build_random_model, parameter_count, work_folder  # noqa: E402

SYSTEM = "You extract ticket fields as JSON."
SCHEMA = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "delivery", "complaint"]},
                                           "order_id": {"type": "string"}},
          "required": ["intent", "order_id"], "additionalProperties": False}


def write_pairs(path: Path, count: int, seed: int) -> Path:
    """Ticket samples whose rejected answer carries the prefix noise DPO is meant to remove."""
    from tuneloop.data.io.formats import write_samples
    from tuneloop.records import Sample

    rng = random.Random(seed)
    rows = []
    for i in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        answer = json.dumps({"intent": rng.choice(["refund", "delivery", "complaint"]),
                             "order_id": f"A{rng.randint(10000, 99999)}"})
        rows.append(Sample(id=f"a{seed}-{i}", instruction="Extract the ticket fields as JSON.", input=text,
                           output=answer, rejected=f"Here is the JSON: {answer}"))
    return write_samples(path, rows)


def summarize(case: str, result, seconds: float) -> dict:
    run, metrics = result.run, result.metrics
    losses = [m["loss"] for m in metrics if "loss" in m]
    timed = [m for m in metrics if "loss" in m and "num_tokens" in m]
    steady = timed[2:] if len(timed) > 4 else timed  # the first steps hold compilation and allocator warm-up
    tokens_s = ((steady[-1]["num_tokens"] - steady[0]["num_tokens"]) / (steady[-1]["time_s"] - steady[0]["time_s"])
                if len(steady) > 1 and steady[-1]["time_s"] > steady[0]["time_s"] else None)
    row = {"case": case, "steps": run["steps"], "wall_s": round(seconds, 1),
           "s_per_step": round(run["timings"]["train_s"] / max(1, run["steps"]), 3),
           "tokens_per_s": round(tokens_s) if tokens_s else None,
           "peak_gib": run["timings"].get("peak_gpu_memory_gib"),
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
           "reference": run.get("reference")}
    if run["kind"] == "dpo":
        row["margin_last"] = run["final"].get("rewards/margins")
    else:
        row.update(max_completion_length=run["max_completion_length"], clipped_last=run["clipped_ratio"]["last"],
                   reward_last=run["reward"][-1] if run["reward"] else None)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-0.5b")
    parser.add_argument("--work", default=None, help="Scratch folder (default: a fresh temporary one).")
    parser.add_argument("--quick", action="store_true", help="A few steps of each case (CPU smoke).")
    parser.add_argument("--markdown", default=None, help="Write the table here too.")
    parser.add_argument("--json", default=None, help="Write every figure here.")
    args = parser.parse_args()

    import torch

    from tuneloop.project import AlignConfig, TrainConfig
    from tuneloop.train.dpo import train_dpo
    from tuneloop.train.grpo import train_grpo

    cuda = torch.cuda.is_available()
    work = work_folder(args.work, "tuneloop-align-gpu-")
    model = build_random_model(args.shape, work / "model", device="cuda" if cuda else "cpu")
    train = write_pairs(work / "train.jsonl", 64 if args.quick else 1024, 1)
    val = write_pairs(work / "val.jsonl", 8 if args.quick else 64, 2)
    steps = (3, 2, 2) if args.quick else (60, 30, 12)
    base = TrainConfig(max_length=512, per_device_batch=8, effective_batch=32, eval_steps=20, lora_dropout=0.0)
    rows = []
    cases = [("dpo-lora", base, AlignConfig(max_steps=steps[0])),
             ("dpo-full", base.model_copy(update={"method": "full"}), AlignConfig(max_steps=steps[1])),
             ("grpo-lora", base, AlignConfig(max_steps=steps[2], num_generations=8, preset="strict"))]
    for case, settings, align in cases:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.monotonic()
        if case.startswith("dpo"):
            result = train_dpo(train, val, work / case, str(model), settings, align, SYSTEM, resume=False, progress=False)
        else:
            result = train_grpo(train, work / case, str(model), settings, align, SYSTEM, SCHEMA, resume=False,
                                progress=False)
        rows.append(summarize(case, result, time.monotonic() - started))
        print(json.dumps(rows[-1]), flush=True)
        if cuda:
            torch.cuda.empty_cache()
    total, _ = parameter_count(args.shape)
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    head = ["case", "steps", "s_per_step", "tokens_per_s", "peak_gib", "loss_first", "loss_last", "margin_last",
            "max_completion_length", "clipped_last", "reward_last"]
    lines = [f"{args.shape} ({total / 1e6:.0f}M parameters, random weights) on {device}; torch {torch.__version__}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("-" if r.get(h) is None else str(r[h]) for h in head) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "device": device, "rows": rows}, indent=1),
                                   encoding="utf-8")


if __name__ == "__main__":
    main()
