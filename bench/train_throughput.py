"""Training throughput through the real CLI path (`tuneloop train sft`, `--gpus N` → accelerate launch).

  CPU, embedded default:  python bench/train_throughput.py --model default --rows 300 --steps 20
  2×H200, Qwen2.5-0.5B shape, random weights:
                          python bench/train_throughput.py --shape qwen2.5-0.5b --gpus 2 --steps 30 --max-length 2048
Prints one JSON line: steps/s, tokens/s, packing efficiency, from the run's run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import build_random_model, work_folder, write_samples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model name/folder (default: a random model of --shape)")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--words", default="20,120", help="min,max words per input")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = work_folder(args.work, "tl-bench-")
    model = args.model or str(build_random_model(args.shape, work / f"model-{args.shape}"))
    low, high = (int(x) for x in args.words.split(","))
    train = write_samples(work / "train.jsonl", args.rows, (low, high), seed=1)
    out = work / f"run-{args.shape}-{args.method}-{args.gpus}gpu"
    command = [sys.executable, "-m", "tuneloop.cli.main", "train", "sft", "--train", str(train), "--out", str(out),
               "--model", model, "--method", args.method, "--max-steps", str(args.steps),
               "--max-length", str(args.max_length), "--gpus", str(args.gpus), "--quiet", "--no-resume"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    run = json.loads((out / "run.json").read_text())
    print(json.dumps({"model": args.model or f"random {args.shape}", "method": args.method, "gpus": args.gpus,
                      "steps": run["steps"], "max_length": args.max_length, "packing_efficiency": run["packing_efficiency"],
                      **run["timings"], "hardware": run["hardware"].get("gpus", run["hardware"]["platform"])}))


if __name__ == "__main__":
    main()
