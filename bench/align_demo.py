"""Cold-start SFT on a small set, then best-of-N + DPO: does alignment raise strict JSON and cut prefix noise?

  The issue-14 figure (embedded default, CPU, tens of minutes):
      flock /tmp/tuneloop-torch.lock python bench/align_demo.py --model default --rows 64 --markdown align_demo.md
  End to end on the tiny test model (a minute; the figures mean nothing, the path is the real one):
      flock /tmp/tuneloop-torch.lock python bench/align_demo.py --tiny --quick

Steps, each through tuneloop's own functions (what `tuneloop run` with `align.method: dpo` does):
  1. `tuneloop init --example json-extraction` + the data gate: train/val/test, the test set unseen by both models
  2. SFT on the first --rows train rows (cold start)                      → eval on test   (the baseline)
  3. best-of-N (N = --n) with the SFT model on the same prompts: failing candidates become `rejected` against the
     reference answer; the same on --val-prompts val prompts (DPO's val pairs: early stopping, best checkpoint);
     DPO from the SFT run on those pairs                                   → eval on test   (the candidate)
  (--grpo-steps N: GRPO from the same SFT run on the same prompts for N steps; its rewards and cut share are printed)
  4. `eval.compare.compare_evals`: strict JSON parse rate (json_valid) and noise (clean), McNemar p-values; the
     prefix-noise rate ("Here is the JSON:") is paired the same way with `eval.stats.compare_binary`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def prefix_noise(result: Any) -> bool:
    """An answer whose JSON is preceded by prose ("Here is the JSON: {...}")."""
    return "prefix" in (result.scores.get("noise") or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="Model to start from (default: the embedded default).")
    parser.add_argument("--tiny", action="store_true", help="Use the tiny random test model (the path, not the figures).")
    parser.add_argument("--rows", type=int, default=64, help="Cold-start SFT rows.")
    parser.add_argument("--n", type=int, default=4, help="Best-of-N candidates per prompt.")
    parser.add_argument("--size", type=int, default=600, help="Rows of the demo project (its test set is a tenth).")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT optimizer steps (default: 3 epochs).")
    parser.add_argument("--dpo-steps", type=int, default=None, help="DPO optimizer steps (default: --dpo-epochs).")
    parser.add_argument("--dpo-epochs", type=float, default=1, help="DPO passes over the pairs (align.epochs).")
    parser.add_argument("--val-prompts", type=int, default=32, help="Val prompts sampled for DPO's val pairs "
                        "(early stopping and the best checkpoint; `tuneloop run` samples every val prompt).")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=None, help="DPO learning rate (default: align's rule).")
    parser.add_argument("--sft-weight", type=float, default=0.0, help="align.sft_weight: an SFT term on the chosen "
                        "answer beside the DPO loss (0: DPO alone).")
    parser.add_argument("--ld-alpha", type=float, default=None, help="align.ld_alpha (length desensitization).")
    parser.add_argument("--sft-lr", type=float, default=None, help="Cold-start SFT learning rate (default: the "
                        "demo's train.learning_rate).")
    parser.add_argument("--grpo-steps", type=int, default=0, help="Also run GRPO from the SFT run for this many "
                        "steps on the same prompts and report its rewards and cut completions (0: not run).")
    parser.add_argument("--quick", action="store_true", help="A few steps and test samples (the tiny smoke).")
    parser.add_argument("--work", default=None, help="Scratch folder (default: a fresh temporary one).")
    parser.add_argument("--markdown", default=None, help="Write the result table here too.")
    args = parser.parse_args()

    from tuneloop.data.gate.round import run_gate
    from tuneloop.data.io.formats import load_samples, write_samples
    from tuneloop.eval.compare import compare_evals, pair_results
    from tuneloop.eval.runner import load_results, run_eval
    from tuneloop.eval.stats import compare_binary
    from tuneloop.examples import init_example
    from tuneloop.project import AlignConfig, Project
    from tuneloop.train.best_of_n import run_best_of_n
    from tuneloop.train.dpo import train_dpo
    from tuneloop.train.rewards import configured_weights
    from tuneloop.train.sft import train_sft

    work = Path(args.work or tempfile.mkdtemp(prefix="tuneloop-align-demo-"))
    timings: dict[str, float] = {}
    started = time.monotonic()
    model = args.model
    if args.tiny:
        from tuneloop.testing.tiny import build_tiny_model

        model = str(build_tiny_model(work / "tiny-model"))
    init_example(work / "demo", size=args.size, force=True)
    project = Project.load(work / "demo")
    config, schema, system = project.config, project.schema(), project.config.task.system
    gate = run_gate(project, progress=False)
    round_dir = Path(gate.round_dir)
    timings["gate_s"] = round(time.monotonic() - started, 1)

    train_rows = [s for s in load_samples(round_dir / "train.jsonl") if s.sample_type != "negative"][: args.rows]
    cold = write_samples(work / "cold-start.jsonl", [s.model_copy(update={"rejected": None}) for s in train_rows])
    settings = config.train.model_copy(update={"max_steps": args.sft_steps or (4 if args.quick else None),
                                               "learning_rate": args.sft_lr or config.train.learning_rate,
                                               "engine": "trl" if args.tiny else config.train.engine})
    eval_settings = config.eval.model_copy(update={"max_samples": 8 if args.quick else None})
    test = round_dir / "test.jsonl"

    mark = time.monotonic()
    sft = train_sft(cold, round_dir / "val.jsonl", work / "runs" / "sft", model, settings, system, progress=False)
    timings["sft_s"] = round(time.monotonic() - mark, 1)
    mark = time.monotonic()
    run_eval(str(sft.model_dir), test, work / "evals" / "sft", schema, eval_settings, default_system=system,
             progress=False)
    timings["eval_sft_s"] = round(time.monotonic() - mark, 1)

    align = AlignConfig(method="dpo", n=args.n, beta=args.beta, learning_rate=args.dpo_lr, epochs=args.dpo_epochs,
                        sft_weight=args.sft_weight, ld_alpha=args.ld_alpha,
                        max_steps=args.dpo_steps or (4 if args.quick else None))
    mark = time.monotonic()
    best, paths = run_best_of_n(load_samples(cold), str(sft.model_dir), work / "best-of-n", configured_weights(align),
                                schema, n=align.n, temperature=align.sample_temperature, default_system=system,
                                progress=False)
    counts = best.counts()
    val_rows = load_samples(round_dir / "val.jsonl")[: 4 if args.quick else args.val_prompts]
    _, val_paths = run_best_of_n(val_rows, str(sft.model_dir), work / "best-of-n-val", configured_weights(align),
                                 schema, n=align.n, temperature=align.sample_temperature, default_system=system,
                                 progress=False)
    timings["best_of_n_s"] = round(time.monotonic() - mark, 1)
    if not counts["dpo_pairs"]:
        print(f"best-of-{align.n}: no candidate failed ({counts}); nothing for DPO to learn from", file=sys.stderr)
        raise SystemExit(1)
    mark = time.monotonic()
    dpo = train_dpo(paths["samples"], val_paths["samples"], work / "runs" / "dpo", str(sft.out_dir), settings,
                    align, system, progress=False)
    timings["dpo_s"] = round(time.monotonic() - mark, 1)
    mark = time.monotonic()
    run_eval(str(dpo.model_dir), test, work / "evals" / "dpo", schema, eval_settings, default_system=system,
             progress=False)
    timings["eval_dpo_s"] = round(time.monotonic() - mark, 1)

    grpo_line = None
    if args.grpo_steps:
        from tuneloop.train.grpo import train_grpo

        mark = time.monotonic()
        grpo = train_grpo(cold, work / "runs" / "grpo", str(sft.out_dir), settings,
                          align.model_copy(update={"max_steps": args.grpo_steps}), system, schema, progress=False)
        timings["grpo_s"] = round(time.monotonic() - mark, 1)
        run, parses = grpo.run, [m["rewards/json_parses/mean"] for m in grpo.metrics if "rewards/json_parses/mean" in m]
        grpo_line = (f"GRPO from the SFT run, {run['steps']} steps × {run['num_generations']} completions "
                     f"(max_completion_length {run['max_completion_length']}: {run['max_completion_length_reason']}): "
                     f"reward {run['reward'][0]} → {run['reward'][-1]}, json_parses "
                     f"{parses[0] if parses else '-'} → {parses[-1] if parses else '-'}, cut completions "
                     f"{run['clipped_ratio']['first']} → {run['clipped_ratio']['last']}")

    comparison = compare_evals(work / "evals" / "sft", work / "evals" / "dpo", work / "evals" / "compare")
    metrics = comparison["modes"]["unconstrained"]["metrics"]
    pairs = pair_results(load_results(work / "evals" / "sft"), load_results(work / "evals" / "dpo"), "unconstrained")
    prefix = compare_binary([not prefix_noise(a) for a, _ in pairs], [not prefix_noise(b) for _, b in pairs])
    timings["total_s"] = round(time.monotonic() - started, 1)

    def row(name: str, stats: dict[str, Any] | None, invert: bool = False) -> str:
        if stats is None:  # e.g. noise is counted only on answers that hold JSON at all
            return f"| {name} | - | - | - | - (no answer it applies to) |"
        before, after = (1 - stats["baseline"], 1 - stats["candidate"]) if invert else (stats["baseline"], stats["candidate"])
        return (f"| {name} | {before:.3f} | {after:.3f} | {stats['better']} / {stats['worse']} | "
                f"{stats['p_value']:.4g} |")

    lines = [f"model {Path(model).name if args.tiny else model}; SFT on {len(train_rows)} rows "
             f"({sft.run['steps']} steps); best-of-{align.n} on the same prompts → {counts['dpo_pairs']} pairs "
             f"(of {counts['samples']} prompts); DPO beta {align.beta}, {dpo.run['steps']} steps "
             f"(lr {dpo.settings.learning_rate:g}; best val loss {dpo.run.get('best_val_loss')} at step "
             f"{dpo.run.get('best_step')}, the weights evaluated); test set {comparison['modes']['unconstrained']['n']} unseen samples",
             "", "| metric (test set) | SFT | SFT + best-of-N + DPO | samples better / worse | McNemar p |",
             "|---|---|---|---|---|",
             row("strict JSON parse rate (json_valid)", metrics.get("json_valid")),
             row("noise rate (any prose or fence around the JSON)", metrics.get("clean"), invert=True),
             row("prefix-noise rate (prose before the JSON)", prefix, invert=True)]
    if "schema_valid" in metrics:
        lines.append(row("schema-valid rate", metrics["schema_valid"]))
    if grpo_line:
        lines += ["", grpo_line]
    lines += ["", "timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
              f"comparison report: {work / 'evals' / 'compare' / 'report.html'}"]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    print(json.dumps({"counts": counts, "timings": timings}))


if __name__ == "__main__":
    main()
