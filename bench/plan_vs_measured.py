"""The planner's memory estimate against the peak memory one real training step takes on this GPU.

  python bench/plan_vs_measured.py --case qwen2.5-0.5b:full --case qwen2.5-7b:lora --seq-len 2048
Each case builds a random-initialised model of that shape, trains `--steps` optimizer steps through
`tuneloop.train.sft.train_sft` (one GPU, packing on, one packed row of seq-len tokens per step, no val) and
compares `torch.cuda.max_memory_allocated()` with `tuneloop.train.plan.estimate` (no gradient checkpointing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import build_random_model, work_folder, qwen_config, write_samples  # noqa: E402


def measure(shape: str, method: str, seq_len: int, steps: int, work: Path) -> dict:
    import torch

    from tuneloop.project import TrainConfig
    from tuneloop.train.plan import estimate, shape_from_config
    from tuneloop.train.sft import train_sft

    cuda = torch.cuda.is_available()
    folder = build_random_model(shape, work / f"model-{shape}", device="cuda" if cuda else "cpu")
    # many short rows fill each bin almost completely: every step sees about seq_len tokens
    train = write_samples(work / f"train-{shape}.jsonl", 400, (seq_len // 40, seq_len // 25), seed=2)
    settings = TrainConfig(method=method, max_length=seq_len, per_device_batch=1, effective_batch=1, max_steps=steps)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = train_sft(train, None, work / f"run-{shape}-{method}", str(folder), settings, progress=False)
    measured = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    plan = estimate(shape_from_config(qwen_config(shape), shape), method, seq_len, batch=1)
    tokens = result.run["timings"]
    return {"shape": shape, "method": method, "seq_len": seq_len, "estimate_gib": round(plan.total_gib, 2),
            "measured_peak_allocated_gib": round(measured, 2),
            "error_pct": round(100 * (plan.total_gib - measured) / measured, 1) if cuda else None,
            "parts_gib": {k: round(v, 2) for k, v in plan.parts.items()},
            "packing_efficiency": result.run["packing_efficiency"], "timings": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", required=True, help="shape:method, e.g. qwen2.5-7b:lora")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = work_folder(args.work, "tl-plan-")
    for case in args.case:
        shape, method = case.split(":")
        print(json.dumps(measure(shape, method, args.seq_len, args.steps, work)), flush=True)


if __name__ == "__main__":
    main()
