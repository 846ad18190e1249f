"""Training throughput: tuneloop's engine against TRL, side by side, through the real `tuneloop train sft` path.

  CPU, embedded default on the demo's data and settings, before (TRL) and after (engine) in one run:
      flock /tmp/tuneloop-torch.lock python bench/train_throughput.py --model default --demo --steps 12
  One GPU, the issue-17 table (Qwen2.5-0.5B full and 7B LoRA r16 shapes, random weights, 8,192-token steps):
      python bench/train_throughput.py --gpu-table --markdown table.md
Cases: `tuneloop` (the engine, what `tuneloop train sft` does by default), `tuneloop-trl` (`--engine trl`: TRL's
SFTTrainer under tuneloop's data path, as tuneloop trained before the engine), `trl` / `trl-liger` (TRL's stock
settings: packing bfd + padding-free, without / with Liger; bench/_trl_stock.py). Tokens/s are real (unpadded)
tokens over the steady steps (the first --warmup steps, and steps that wrote a checkpoint, left out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shapes import build_random_model, parameter_count, work_folder, write_samples  # noqa: E402

HERE = Path(__file__).resolve().parent
GPU_CASES = {  # shape, method, steps, rows, cases (TRL's best stock for 7B needs gradient checkpointing to fit well)
    "qwen2.5-0.5b": ("full", 40, 6000, ["tuneloop+profile", "tuneloop+keep=0.5", "tuneloop+keep=0.25", "tuneloop+gc",
                                        "tuneloop+liger_chunk_mib=0", "trl-liger", "tuneloop+keep=0.5+recompute=layers",
                                        "tuneloop+mb=4+keep=0.25"]),
    "qwen2.5-7b": ("lora", 16, 2500, ["tuneloop", "tuneloop+keep=0.6", "tuneloop+keep=0.5", "trl"]),
}
# A tuneloop case is `tuneloop` plus `+`-joined modifiers: `gc` (train.gradient_checkpointing), `nocompile`,
# `trl` (--engine trl), `budget=G` (train.memory_budget_gib), `mb=N` (N packed bins per micro-step and step),
# `precision=P` (train.cpu_precision: auto | fp32 | bf16),
# `profile` (torch.profiler over the last 3 steps, left out of tokens/s), and the engine's measurement knobs
# (runtime.bench_knob: keep=S, recompute=layers|partitioner, loss=chunked, liger_chunk_mib=M, expandable=0).
PROFILE_STEPS = 3


def steady(metrics: list[dict], warmup: int, checkpoint_every: int | None, last: int | None = None) -> tuple[float, float]:
    """(tokens/s, seconds/step) over the steps after `warmup` (up to `last`), leaving out steps that follow a
    checkpoint write."""
    steps = [m for m in metrics if "loss" in m and "num_tokens" in m and (last is None or m["step"] <= last)]
    tokens = seconds = 0.0
    for before, after in zip(steps, steps[1:]):
        if after["step"] <= warmup or (checkpoint_every and before["step"] % checkpoint_every == 0):
            continue
        tokens += after["num_tokens"] - before["num_tokens"]
        seconds += after["time_s"] - before["time_s"]
    return (tokens / seconds if seconds else 0.0), (seconds / max(1, len(steps) - warmup - 1))


def run_tuneloop(case: str, model: str, train: Path, work: Path, method: str, steps: int, max_length: int,
                 warmup: int, project: Path | None = None, extra: dict | None = None, out_dir: Path | None = None) -> dict:
    out = work / f"run-{len(list(work.glob('run-*')))}"
    parts = case.split("+")[1:]
    engine = "trl" if "trl" in parts or case == "tuneloop-trl" else "tuneloop"
    command = [sys.executable, "-m", "tuneloop.cli.main", "train", "sft", "--train", str(train), "--out", str(out),
               "--model", model, "--method", method, "--max-steps", str(steps), "--quiet", "--no-resume",
               "--engine", engine]
    extra, knobs, profile = dict(extra or {}), [], None
    batch = 1
    for part in parts:
        key, _, value = part.partition("=")
        if key == "gc":
            extra["gradient_checkpointing"] = True
        elif key == "budget":
            extra["memory_budget_gib"] = float(value)
        elif key == "mb":
            batch = int(value)
        elif key == "precision":  # train.cpu_precision: auto | fp32 | bf16
            extra["cpu_precision"] = value
        elif key == "nocompile":
            command += ["--compile", "off"]
        elif key == "profile":
            profile = (out_dir or work) / f"profile-{len(list(work.glob('run-*')))}.txt"
            knobs.append(f"profile={profile}")
        elif key != "trl":
            knobs.append(part)
    if project is not None:
        command += ["--project", str(project)]
        if extra:  # the project's train settings with these changed (--config replaces the project's train section)
            import yaml

            section = (yaml.safe_load((project / "tuneloop.yaml").read_text()) or {}).get("train") or {}
            config = work / f"{out.name}.yaml"
            config.write_text(json.dumps({"train": {**section, **extra}}))
            command += ["--config", str(config)]
    else:
        config = work / f"{out.name}.yaml"
        config.write_text(json.dumps({"train": {"max_length": max_length, "per_device_batch": batch,
                                                "effective_batch": batch, "method": method, **extra}}))
        command += ["--config", str(config), "--max-length", str(max_length)]
    print("$", " ".join(command), "  # knobs:", ",".join(knobs), flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TUNELOOP_ENGINE_KNOBS": ",".join(knobs)})
    run = json.loads((out / "run.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    last = steps - PROFILE_STEPS if profile else None
    tokens_per_s, step_s = steady(metrics, warmup, config["derived"]["eval_steps"], last)
    losses = [m["loss"] for m in metrics if "loss" in m]
    described = run.get("engine") or {}
    return {"case": case, "tokens_per_s": round(tokens_per_s, 1), "step_s": round(step_s, 4),
            "peak_gib": run["timings"].get("peak_gpu_memory_gib"), "allocated_gib": described.get("peak_allocated_gib"),
            "recompute": described.get("recompute"), "losses": losses, "wall_s": round(time.monotonic() - started, 1),
            "engine": described, "steps": run["steps"], "tokens_per_step": batch * max_length}


def run_trl_stock(case: str, model: str, train: Path, work: Path, method: str, steps: int, max_length: int,
                  warmup: int) -> dict:
    out = work / f"{case}.json"
    command = [sys.executable, str(HERE / "_trl_stock.py"), "--model", model, "--train", str(train), "--method", method,
               "--steps", str(steps), "--max-length", str(max_length), "--warmup", str(warmup), "--json", str(out)]
    command += ["--liger"] if "liger" in case else []
    command += ["--gradient-checkpointing"] if case.endswith("-gc") else []
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return {"case": case, **json.loads(out.read_text()), "wall_s": round(time.monotonic() - started, 1)}


def run_case(case: str, *args, **kwargs) -> dict:
    """One case; a failing case is recorded as an error (and the bench exits non-zero), the others still run."""
    try:
        runner = run_trl_stock if case.startswith("trl") else run_tuneloop
        return runner(case, *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - reported in the table and in the exit status
        return {"case": case, "error": f"{type(error).__name__}: {error}"}


def matmul_peak_tflops() -> float:
    """Measured dense bf16 matrix rate: 8192³ products, median of 10 after 3 warm-ups."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12


def gpu_table(args) -> int:
    work = work_folder(args.work, "tl-gpu-bench-")
    peak = matmul_peak_tflops()
    rows, matches, failed = [], [], False
    for shape in args.shapes.split(","):
        method, steps, count, cases = GPU_CASES[shape]
        model = build_random_model(shape, work / f"model-{shape}", device="cuda")
        total, matmul_n = parameter_count(shape, method)
        train = write_samples(work / f"train-{shape}.jsonl", count, (20, 120), seed=1)
        shape_rows = []
        for case in args.cases.split(",") if args.cases else cases:  # any case name runs, in the order given
            more = {"out_dir": Path(args.out_dir)} if args.out_dir and case.startswith("tuneloop") else {}
            result = run_case(case, str(model), train, work, method, steps, 8192, args.warmup, **more)
            result.update(shape=shape, method=method, params=total, matmul_params=matmul_n)
            if "error" not in result:
                factor = 6 if method == "full" else 4
                result["mfu"] = round(factor * matmul_n * result["tokens_per_s"] / (peak * 1e12), 4)
                result["weights_gib"] = round(total * 2 / 2**30, 2)
                result["minus_weights_gib"] = round(result["peak_gib"] - result["weights_gib"], 2)
            failed |= "error" in result
            rows.append(result)
            shape_rows.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"peak_tflops": peak, "rows": rows, "loss_match": matches}, indent=1))
        match = loss_match(shape_rows)
        if match:
            match["shape"] = shape
            matches.append(match)
            print(json.dumps(match), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"peak_tflops": peak, "rows": rows, "loss_match": matches}, indent=1))
    table = markdown(rows, peak) + "".join(
        f"\n{m['shape']}: engine vs `--engine trl`, same data and seed, {m['steps']} steps: largest relative loss gap "
        f"{m['largest_relative_gap']:.2e} (step {m['at_step']})\n" for m in matches)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 1 if failed else 0


def loss_match(rows: list[dict]) -> dict | None:
    """The engine's loss curve against tuneloop's TRL path (`tuneloop-trl`: same rows, bins and seed) per step."""
    by_case = {r["case"]: r for r in rows if "error" not in r}
    engine, trl = by_case.get("tuneloop"), by_case.get("tuneloop-trl") or by_case.get("tuneloop+trl")
    if not engine or not trl:
        return None
    gaps = [abs(a - b) / abs(b) for a, b in zip(engine["losses"], trl["losses"])]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return {"steps": len(gaps), "largest_relative_gap": gaps[worst], "at_step": worst + 1,
            "final_losses": {"tuneloop": engine["losses"][-1], "tuneloop-trl": trl["losses"][-1]}}


def markdown(rows: list[dict], peak: float) -> str:
    lines = [f"measured bf16 matmul peak: {peak:.0f} TFLOP/s", "",
             "| shape | case | tokens/step | tokens/s | MFU | peak GiB | allocated GiB | minus weights GiB | recompute | "
             "loss first → last | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} {r['method']} | {r['case']} | - | - | - | - | - | - | - | - | {r['error'][:120]} |")
            continue
        loss = f"{r['losses'][0]:.3f} → {r['losses'][-1]:.3f}" if r.get("losses") else "-"
        recompute = r.get("recompute") or {}
        how = f"{recompute.get('how')} keep {recompute.get('keep')}" if recompute.get("how", "none") != "none" else "-"
        lines.append(f"| {r['shape']} {r['method']} | {r['case']} | {r.get('tokens_per_step', 8192)} | "
                     f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']} | {r.get('allocated_gib', '-')} | "
                     f"{r['minus_weights_gib']} | {how} | {loss} | |")
    return "\n".join(lines) + "\n"


def cpu_compare(args) -> int:
    """The embedded default (or --model) on the demo data: TRL under tuneloop (before) and the engine (after)."""
    work = work_folder(args.work, "tl-bench-")
    project = None
    if args.demo:
        from tuneloop.examples.json_extraction.demo import SEED_FILE, init_project

        project = work / "demo"
        if not (project / "tuneloop.yaml").exists():
            init_project(project)
        train = project / SEED_FILE
    else:
        low, high = (int(x) for x in args.words.split(","))
        train = write_samples(work / "train.jsonl", args.rows, (low, high), seed=1)
    model = args.model or str(build_random_model(args.shape, work / f"model-{args.shape}"))
    results = []
    for case in args.engines.split(","):
        name = "tuneloop-trl" if case == "trl" else case
        result = run_case(name, model, train, work, args.method, args.steps, args.max_length, args.warmup, project=project)
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]
        results.append(result)
        shown = {k: v for k, v in result.items() if k not in ("losses", "engine")}
        shown["precision"] = (result.get("engine") or {}).get("cpu_precision")
        print(json.dumps(shown), flush=True)
    good = [r for r in results if "error" not in r]
    summary = cpu_summary(good)
    if summary:
        print(json.dumps({**summary, "load": os.getloadavg()}))
    return 0 if len(good) == len(results) else 1


def cpu_summary(results: list[dict]) -> dict | None:
    """Mean tokens/s per case over the (alternated) runs, the last case against the first, and the largest relative
    loss gap between any run of the two at the same step."""
    cases = list(dict.fromkeys(r["case"] for r in results))
    if len(cases) != 2:
        return None
    runs = {case: [r for r in results if r["case"] == case] for case in cases}
    mean = {case: sum(r["tokens_per_s"] for r in rows) / len(rows) for case, rows in runs.items()}
    before, after = cases
    gaps = [abs(a - b) / b for x in runs[after] for y in runs[before] for a, b in zip(x["losses"], y["losses"])]
    return {"tokens_per_s": {case: [r["tokens_per_s"] for r in rows] for case, rows in runs.items()},
            "speedup": round(mean[after] / mean[before], 2), "largest_relative_loss_gap": round(max(gaps), 4),
            "final_losses": {case: [r["losses"][-1] for r in rows] for case, rows in runs.items()},
            "steps": min(len(r["losses"]) for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-table", action="store_true", help="the GPU table (one H200)")
    parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-7b")
    parser.add_argument("--cases", default=None, help="only these cases of the GPU table (comma-separated)")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--out-dir", default=None, help="where profile tables of `+profile` cases go")
    parser.add_argument("--model", help="model name/folder (default: a random model of --shape)")
    parser.add_argument("--demo", action="store_true", help="the json-extraction demo's data and train settings")
    parser.add_argument("--engines", default="trl,tuneloop", help="CPU comparison: before,after")
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--words", default="20,120", help="min,max words per input")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of tokens/s (compilation, caches)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    sys.exit(gpu_table(args) if args.gpu_table else cpu_compare(args))


if __name__ == "__main__":
    main()
