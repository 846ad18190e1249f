"""One `tuneloop loop` cycle on simulated traffic whose failures are the current model's own mistakes: does relabeling
them raise the failing slice's field accuracy, by a paired test?

  The issue-13 figure (embedded default, CPU; the first `tuneloop run` and the cycle each take a while):
      flock /tmp/tuneloop-torch.lock python bench/loop_demo.py --project demo --traffic 300 --markdown loop_demo.md
  End to end on the tiny test model (about a minute; the figures mean nothing, the path is the real one):
      flock /tmp/tuneloop-torch.lock python bench/loop_demo.py --model tiny --quick

Steps, each the command a user runs:
  1. `tuneloop init DIR --example json-extraction` + `tuneloop run` (skipped when DIR already has a passed round):
     the current model is that round's export
  2. traffic: NEW messages from the example's own generator (a seed the project was not made with; any message
     whose text is in the project's data is dropped), sent to the current model on the embedded server the way the
     test set is asked (no response_format); a simulated user sends negative feedback (POST /v1/feedback) when the
     answer's fields are not the generator's truth. So a failure is the model's real mistake: not JSON, a broken
     schema, or wrong fields a user noticed.
  3. `tuneloop loop` stops at the relabel queue (nothing relabeled yet) and exports it; each exported row gets the
     generator's answer and sample type (annotator "generator", the truth it was generated from; a message that
     repeats a frozen val/test item is discarded, as the import would reject it); `tuneloop loop --labels FILE`
     runs the cycle: relabeled rows join train, a held-out share of them (loop.holdout) is the failing slice.
  4. the round's summary (loop/<round>/summary.json) reports field accuracy of the current model and of the candidate
     on that held-out failing slice, with McNemar's exact test on fully-right answers; printed here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def tuneloop(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A tuneloop command as a user runs it; its output streams to this terminal."""
    command = [sys.executable, "-m", "tuneloop.cli.main", *args]
    print("$ tuneloop " + " ".join(args), flush=True)
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    if check and done.returncode != 0:
        raise SystemExit(f"`tuneloop {' '.join(args)}` exited {done.returncode}")
    return done


def normalized(text: str) -> str:
    return " ".join(text.split())


def prepare(project: Path, model: str, size: int, quick: bool, holdout: float) -> None:
    """Step 1: the demo project after one passed `tuneloop run`."""
    import yaml

    if not (project / "tuneloop.yaml").exists():
        tuneloop("init", str(project), "--example", "json-extraction", "--size", str(size))
    config = yaml.safe_load((project / "tuneloop.yaml").read_text())
    config["loop"]["holdout"] = holdout
    if model == "tiny":
        from tuneloop.testing.tiny import build_tiny_model

        tiny = project / ".tiny-model"
        if not (tiny / "config.json").exists():
            build_tiny_model(tiny)
        config["model"] = str(tiny)
        config["eval"].update(max_new_tokens=16, max_samples=8)
        config["train"].update(max_steps=2, eval_steps=2)
        # a random model writes no valid JSON: the demo's 0.98 gate would stop the round before its export
        config["eval"]["gate"].update(schema_valid=None, json_valid=None, field_accuracy=None, refusal_ok=None,
                                      not_worse=[])
    elif model != "default":
        config["model"] = model
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    from tuneloop.loop_rounds import current_model
    from tuneloop.project import Project

    if current_model(Project.load(project)) == Project.load(project).config.model:
        tuneloop("run", "--project", str(project), *(["--quick"] if quick else []),
                 *(["--no-serve"] if model == "tiny" else []))


def new_traffic(project: Path, count: int, seed: int) -> list[Any]:
    """Step 2a: generator rows whose messages the project's data does not hold."""
    from tuneloop.data.gate.checks import read_source
    from tuneloop.examples.json_extraction.demo import synth_spec
    from tuneloop.examples.json_extraction.templates import GOLDEN
    from tuneloop.project import Project

    known = set()
    for source in Project.load(project).config.data.sources:
        known |= {normalized(s.prompt) for s in read_source(project / source.path, source.format).samples}
    rows, drawn = [], 0
    generator = synth_spec().generator
    while len(rows) < count and drawn < count * 10:
        batch = generator.generate(count, seed=seed + drawn, templates=GOLDEN)
        drawn += count
        rows += [r for r in batch if normalized(r.prompt) not in known]
        known |= {normalized(r.prompt) for r in batch}
    return rows[:count]


def send(project: Path, rows: list[Any]) -> dict[str, Any]:
    """Step 2b: ask the current model on the embedded server; negative feedback where its fields are wrong."""
    from tuneloop.answers import parse_json
    from tuneloop.llm_client import Endpoint
    from tuneloop.loop_rounds import current_model
    from tuneloop.project import Project
    from tuneloop.records import to_messages
    from tuneloop.serve.server import serve_in_background

    loaded = Project.load(project)
    model, system = current_model(loaded), loaded.config.task.system
    max_tokens = loaded.config.eval.max_new_tokens
    from concurrent.futures import ThreadPoolExecutor

    counts = {"sent": 0, "right": 0, "negative_feedback": 0}
    with serve_in_background(model, loaded.traces_db) as url:
        endpoint = Endpoint(url, model="", api_key="local", max_retries=1)
        endpoint.model = endpoint.client.models.list().data[0].id

        def ask(row: Any) -> tuple[Any, Any]:
            return row, endpoint.create(messages=to_messages(row, system, with_answer=False), max_tokens=max_tokens,
                                        temperature=0)

        # users arrive together: the server batches what is in flight
        with ThreadPoolExecutor(max_workers=8) as pool:
            for row, reply in pool.map(ask, rows):
                counts["sent"] += 1
                ok, answer = parse_json(reply.choices[0].message.content or "")
                if ok and answer == json.loads(row.output):
                    counts["right"] += 1
                    continue
                counts["negative_feedback"] += 1
                httpx.post(f"{url}/feedback", json={"trace_id": reply.id, "score": 0,
                                                    "comment": "wrong ticket fields"}, timeout=30).raise_for_status()
    print(f"traffic: {counts['sent']} new messages to {model}: {counts['right']} right, "
          f"{counts['negative_feedback']} with negative feedback", flush=True)
    return {"model": model, **counts}


def fill_labels(project: Path, export_file: Path, rows: list[Any], out: Path) -> dict[str, int]:
    """Step 3: the generator's truth into each exported row it can match (annotator "generator"); a message that
    repeats a frozen val/test item (by the check the import applies) is discarded, as a relabeler would."""
    from tuneloop.project import Project
    from tuneloop.records import Sample
    from tuneloop.traces.relabel import LabelCheck
    from tuneloop.traces.frozen import frozen_matches

    truth = {normalized(r.prompt): r for r in rows}
    exported = [json.loads(line) for line in export_file.read_text(encoding="utf-8").splitlines()]
    check = LabelCheck.for_project(Project.load(project))
    repeats = frozen_matches([Sample(system=r["system"], history=r["history"], instruction=r["instruction"],
                                     input=r["input"]) for r in exported], check.frozen, check.dedup, check.leakage)
    filled, unmatched, discarded, lines = 0, 0, 0, []
    for index, row in enumerate(exported):
        prompt = normalized(row["instruction"] + "\n" + row["input"] if row["input"] else row["instruction"])
        if index in repeats:
            row.update(discard=True, annotator="generator", comment=repeats[index].message)
            discarded += 1
        elif prompt in truth:
            # the generator knows each row's type too (select guesses `negative` for a wrong answer; the mix
            # would cut such rows down to data.mix.negative)
            row.update(output=truth[prompt].output, sample_type=truth[prompt].sample_type, annotator="generator",
                       comment="the truth the generator drew it from")
            filled += 1
        else:  # redacted text (a phone number, an e-mail) no longer matches: it stays in the queue
            unmatched += 1
        lines.append(json.dumps(row, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"labeled": filled, "unmatched": unmatched, "discarded (repeat a frozen item)": discarded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=None, help="Demo project folder (made when absent; default: temporary).")
    parser.add_argument("--model", default="default", help="default (embedded), tiny (the test model), or a model id.")
    parser.add_argument("--traffic", type=int, default=300, help="New messages sent to the current model.")
    parser.add_argument("--size", type=int, default=600, help="Rows of a new demo project.")
    parser.add_argument("--holdout", type=float, default=0.3, help="Share of relabeled failures held out (the slice).")
    parser.add_argument("--seed", type=int, default=1000, help="Generator seed of the traffic (the data used 0..3).")
    parser.add_argument("--quick", action="store_true", help="tuneloop's shortened round (few steps, few samples).")
    parser.add_argument("--markdown", default=None, help="Write the result table here too.")
    args = parser.parse_args()

    import tempfile

    started = time.time()
    project = Path(args.project or tempfile.mkdtemp(prefix="loop-demo-")) / ("" if args.project else "demo")
    project = project.resolve()
    prepare(project, args.model, args.size, args.quick, args.holdout)
    rows = new_traffic(project, args.traffic, args.seed)
    sent = send(project, rows)
    quick = ["--quick"] if args.quick else []
    no_serve = ["--no-serve", "--no-canary"]  # the figure is the offline eval; serving is `tuneloop loop`'s own test
    first = tuneloop("loop", "--project", str(project), *quick, *no_serve, check=False)
    export_file = project / "loop" / "traffic" / "relabel-export.jsonl"
    if first.returncode != 1 or not export_file.exists():
        raise SystemExit("the first `tuneloop loop` should stop at the relabel queue and export it")
    labels = fill_labels(project, export_file, rows, project / "loop" / "traffic" / "labels-generator.jsonl")
    print("relabel: " + ", ".join(f"{k} {v}" for k, v in labels.items()), flush=True)
    tuneloop("loop", "--project", str(project), *quick, *no_serve, "--labels",
             str(project / "loop" / "traffic" / "labels-generator.jsonl"))

    from tuneloop.project import Project

    latest = Project.load(project).latest_round()
    summary = json.loads((project / "loop" / latest.name / "summary.json").read_text())
    traffic = summary["traffic"]
    part = traffic.get("eval traffic", {}).get("slice") or {}
    split = traffic.get("traffic split", {}).get("counts", {})
    result = {"project": str(project), "round": latest.name, "current_model": sent["model"], "traffic": sent,
              "failures": traffic.get("select", {}).get("counts", {}).get("failures"),
              "reasons": traffic.get("select", {}).get("reasons"), "relabeled": split, "slice": part,
              "slice_verdict": (traffic.get("eval traffic", {}).get("verdict") or {}).get("verdict"),
              "test_verdict": (summary.get("verdict") or {}).get("verdict"), "eval_gate": summary["eval_gate"],
              "minutes": round((time.time() - started) / 60, 1)}
    (project / "loop" / latest.name / "loop_demo.json").write_text(json.dumps(result, indent=2))
    table = [
        "| failing slice (held-out relabeled traffic) | current model | candidate | paired test |",
        "|---|---|---|---|",
        f"| field accuracy (n {part.get('n')}) | {part.get('field_accuracy_before')} | {part.get('field_accuracy_after')} "
        f"| bootstrap CI {part.get('field_accuracy_ci')} |",
        f"| every field right | {part.get('ok_before')} | {part.get('ok_after')} | McNemar p = {part.get('mcnemar_p')} |",
    ]
    print(f"\n{sent['sent']} messages → {result['failures']} failures ({result['reasons']}) → relabeled {split}")
    print("\n".join(table))
    print(f"slice verdict: {result['slice_verdict']}; frozen test verdict: {result['test_verdict']}; eval gate "
          f"{'pass' if summary['eval_gate']['passed'] else 'fail'}; {result['minutes']} min; round report "
          f"{project / 'loop' / latest.name / 'summary.html'}")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
