"""One round of the loop over a project directory: `tuneloop run`.

```
gate ─▶ baseline eval ─▶ SFT ─▶ eval after ─▶ compare (paired) ─▶ merge + reload gate + parity ─▶ serve smoke ─▶ summary
```

Each stage has a key: the sha256 of its input files and its settings. The loop keeps `loop/<round>/state.json`;
a rerun skips a stage whose key and outputs are unchanged, and an interrupted stage is run again (training resumes
from its last checkpoint). Every stage's own report is linked from one summary page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import html
from tuneloop.files import file_digest, read_json, tree_digest, write_json, write_text
from tuneloop.project import Project
from tuneloop.records import content_hash

HEADLINE_METRICS = ("json_valid", "schema_valid", "field_accuracy", "exact_match", "refusal_ok")
IMPROVEMENT_METRICS = ("schema_valid", "field_accuracy")


@dataclass
class LoopOptions:
    """How far and how hard one round goes."""

    quick: bool = False  # CI's shortened variant: fewer samples and steps
    max_steps: int | None = None
    eval_samples: int | None = None
    serve: bool = True
    force: bool = False  # run every stage even when its inputs are unchanged


@dataclass
class StageRecord:
    name: str
    key: str
    status: str  # done | skipped | failed
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


class LoopError(RuntimeError):
    """A stage that failed, naming the stage and what to do."""


class RoundState:
    """`loop/<round>/state.json`: the key and outputs of each finished stage."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = read_json(path)["stages"] if path.exists() else {}

    def fresh(self, name: str, key: str) -> dict[str, Any] | None:
        entry = self.stages.get(name)
        if not entry or entry.get("key") != key:
            return None
        outputs = entry.get("outputs", {})
        paths = [Path(v) for k, v in outputs.items() if k.endswith(("_dir", "_file")) and isinstance(v, str)]
        return outputs if all(p.exists() for p in paths) else None

    def save(self, record: StageRecord) -> None:
        self.stages[record.name] = {"key": record.key, "status": record.status, "seconds": record.seconds,
                                    "outputs": record.outputs, "finished_at": time.time()}
        write_json(self.path, {"stages": self.stages})


def files_key(*paths: Path, settings: Any = None) -> str:
    """A stage key: digests of its input files/folders plus its settings."""
    digests = [tree_digest(p) if p.is_dir() else file_digest(p) for p in paths]
    return content_hash(digests, settings, length=32)


def run_round(project: Project, options: LoopOptions | None = None,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run gate → eval → train → eval → compare → merge → serve on `project`; return the summary."""
    options = options or LoopOptions()
    _quiet_library_progress()
    config = project.config
    schema = project.schema()
    system = config.task.system
    records: list[StageRecord] = []

    def stage(name: str, key: str, state: RoundState, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        cached = None if options.force else state.fresh(name, key)
        if cached is not None:
            say(f"[{name}] inputs unchanged — skipped")
            records.append(StageRecord(name, key, "skipped", 0.0, cached))
            return cached
        say(f"[{name}] running")
        started = time.time()
        try:
            outputs = work()
        except Exception as err:
            records.append(StageRecord(name, key, "failed", time.time() - started, {"error": str(err)}))
            raise LoopError(f"stage '{name}' failed: {err}") from err
        record = StageRecord(name, key, "done", time.time() - started, outputs)
        state.save(record)
        records.append(record)
        say(f"[{name}] done in {record.seconds:.0f}s")
        return outputs

    # 1. gate: a new round only when the sources changed since the latest round
    from tuneloop.data.gate import run_gate

    sources = [project.path(s.path) for s in config.data.sources]
    gate_key = files_key(*sources, settings=config.data.model_dump(mode="json"))
    round_dir = _round_for_key(project, gate_key) if not options.force else None
    if round_dir is None:
        say("[gate] running")
        started = time.time()
        gate = run_gate(project, progress=True)
        if not gate.passed:
            raise LoopError("the data gate failed: " + "; ".join(gate.failures) + f" (see {gate.round_dir / 'report.html'})")
        round_dir = Path(gate.round_dir)
        say("[gate] " + ", ".join(f"{k} {v}" for k, v in gate.counts.items() if v) + f" → {round_dir.name}")
        manifest = read_json(round_dir / "manifest.json")
        manifest["loop_key"] = gate_key
        write_json(round_dir / "manifest.json", manifest)
        records.append(StageRecord("gate", gate_key, "done", time.time() - started, {"round_dir": str(round_dir)}))
    else:
        say(f"[gate] sources unchanged — reusing {round_dir.name}")
        records.append(StageRecord("gate", gate_key, "skipped", 0.0, {"round_dir": str(round_dir)}))

    loop_dir = project.root / "loop" / round_dir.name
    state = RoundState(loop_dir / "state.json")
    test_file = round_dir / "test.jsonl"
    eval_settings = config.eval.model_copy()
    if options.eval_samples or options.quick:
        eval_settings.max_samples = options.eval_samples or 12
    eval_key_settings = eval_settings.model_dump(mode="json")

    # 2. baseline eval of the configured model
    from tuneloop.eval.runner import run_eval

    baseline_dir = project.evals_dir / f"{round_dir.name}-baseline"
    stage("baseline eval", files_key(test_file, settings=[config.model, eval_key_settings, system]), state,
          lambda: {"eval_dir": str(baseline_dir), "summary": run_eval(
              config.model, test_file, baseline_dir, schema, eval_settings, default_system=system)})

    # 3. SFT on the round's train/val
    from tuneloop.train.sft import train_sft

    train_settings = config.train.model_copy()
    if options.max_steps or options.quick:
        train_settings.max_steps = options.max_steps or 6
    train_key = files_key(round_dir / "train.jsonl", round_dir / "val.jsonl",
                          settings=[config.model, train_settings.model_dump(mode="json"), system])
    # one folder per data + settings: a rerun with the same key resumes it, a changed setting starts a new run
    run_dir = project.runs_dir / f"{round_dir.name}-sft-{train_key[:8]}"

    def train() -> dict[str, Any]:
        result = train_sft(round_dir / "train.jsonl", round_dir / "val.jsonl", run_dir, model=config.model,
                           settings=train_settings, default_system=system, resume=True, progress=True)
        return {"run_dir": str(run_dir), "adapter_dir": str(result.model_dir),
                "best_val_loss": result.run.get("best_val_loss")}

    trained = stage("train", train_key, state, train)
    adapter_dir = Path(trained["adapter_dir"])

    # 4. the trained model on the same unseen test set
    candidate_dir = project.evals_dir / f"{round_dir.name}-candidate"
    stage("eval after", files_key(test_file, adapter_dir, settings=[eval_key_settings, system]), state,
          lambda: {"eval_dir": str(candidate_dir), "summary": run_eval(
              str(adapter_dir), test_file, candidate_dir, schema, eval_settings, default_system=system)})

    # 5. paired comparison and the eval gate
    from tuneloop.eval.compare import compare_evals
    from tuneloop.eval.gate import gate_eval

    compare_dir = project.evals_dir / f"{round_dir.name}-compare"

    def compare() -> dict[str, Any]:
        comparison = compare_evals(baseline_dir, candidate_dir, compare_dir, alpha=config.eval.gate.alpha)
        decision = gate_eval(comparison, config.eval.gate)
        return {"compare_dir": str(compare_dir), "passed": decision.passed, "reasons": list(decision.reasons)}

    compared = stage("compare", files_key(baseline_dir / "results.jsonl", candidate_dir / "results.jsonl",
                                          settings=config.eval.gate.model_dump(mode="json")), state, compare)

    # 6. merge with its reload gate and template parity
    from tuneloop.export.merge import merge_run

    export_dir = project.exports_dir / f"{config.task.name}-{round_dir.name}"

    def merge() -> dict[str, Any]:
        report = merge_run(run_dir, export_dir)
        return {"export_dir": str(export_dir), "report": _plain(report)}

    merged = stage("merge", files_key(adapter_dir), state, merge)

    # 7. serve the export and answer one request through the official openai client
    served: dict[str, Any] = {}
    if options.serve:
        served = stage("serve smoke", files_key(export_dir, settings=[system, schema]), state,
                       lambda: _serve_smoke(project, export_dir, round_dir, schema, system))

    summary = _summarize(project, round_dir, records, run_dir, baseline_dir, candidate_dir, compared, merged, served)
    write_json(loop_dir / "summary.json", summary)
    write_text(loop_dir / "summary.html", _summary_html(summary))
    return summary


def _quiet_library_progress() -> None:
    """The loop shows its own progress per stage; weight-loading bars of each model load would drown it."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _round_for_key(project: Project, key: str) -> Path | None:
    latest = project.latest_round()
    if latest is None:
        return None
    return latest if read_json(latest / "manifest.json").get("loop_key") == key else None


def _plain(value: Any) -> Any:
    """A stage result as JSON-ready data (dataclasses and pydantic models included)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(value), default=str))
    return json.loads(json.dumps(value, default=str))


def _serve_smoke(project: Project, export_dir: Path, round_dir: Path, schema: dict[str, Any] | None,
                 system: str) -> dict[str, Any]:
    """Start the embedded server on loopback, ask one test prompt with response_format, validate, stop."""
    import jsonschema
    from openai import OpenAI

    from tuneloop.data.formats import load_samples
    from tuneloop.records import to_messages
    from tuneloop.serve.server import serve_in_background

    sample = load_samples(round_dir / "test.jsonl")[0]
    messages = to_messages(sample, system, with_answer=False)
    response_format: dict[str, Any] = (
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        if schema else {"type": "json_object"}
    )
    with serve_in_background(export_dir, trace_store_path=project.traces_db) as base_url:
        client = OpenAI(base_url=base_url, api_key="local")
        started = time.time()
        reply = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages,
                                               response_format=response_format, max_tokens=200, temperature=0)
        latency = time.time() - started
    text = reply.choices[0].message.content or ""
    answer = json.loads(text)
    if schema:
        jsonschema.validate(answer, schema)
    return {"prompt": sample.prompt, "answer": answer, "expected": sample.output, "latency_s": round(latency, 2),
            "finish_reason": reply.choices[0].finish_reason}


def _metric(summary: dict[str, Any], name: str) -> float | None:
    """A headline rate from an eval summary (the unconstrained run: what the model does on its own)."""
    value = summary.get("modes", {}).get("unconstrained", {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def _summarize(project: Project, round_dir: Path, records: list[StageRecord], run_dir: Path, baseline_dir: Path,
               candidate_dir: Path, compared: dict[str, Any], merged: dict[str, Any],
               served: dict[str, Any]) -> dict[str, Any]:
    before = read_json(baseline_dir / "summary.json")
    after = read_json(candidate_dir / "summary.json")
    headline = {name: {"before": _metric(before, name), "after": _metric(after, name)} for name in HEADLINE_METRICS}
    return {
        "project": str(project.root),
        "round": round_dir.name,
        "headline": headline,
        "improved": all((headline[k]["after"] or 0) > (headline[k]["before"] or 0) for k in IMPROVEMENT_METRICS),
        "eval_gate": {"passed": compared.get("passed"), "reasons": compared.get("reasons", [])},
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), **_links(r)} for r in records],
        "merge": merged.get("report", {}),
        "serve": served,
        "reports": {
            "data gate": str(round_dir / "report.html"),
            "run card": str(run_dir / "run_card.html"),
            "baseline eval": str(baseline_dir / "report.html"),
            "eval after": str(candidate_dir / "report.html"),
            "comparison": str(Path(compared.get("compare_dir", "")) / "report.html"),
            "export": str(Path(merged.get("export_dir", "")) / "manifest.json"),
        },
    }


def _links(record: StageRecord) -> dict[str, Any]:
    return {k: v for k, v in record.outputs.items() if k.endswith(("_dir", "_file"))}


def _summary_html(summary: dict[str, Any]) -> str:
    headline = summary["headline"]
    rows = [{"metric": k, "before": v["before"], "after": v["after"],
             "change": (v["after"] - v["before"]) if v["before"] is not None and v["after"] is not None else None}
            for k, v in headline.items()]
    names = [r["metric"] for r in rows]

    def draw(ax: Any) -> None:
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["before"] or 0 for r in rows], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [r["after"] or 0 for r in rows], width=0.4, label="after")
        ax.set_xticks(list(xs), names)
        ax.set_ylim(0, 1)
        ax.legend()

    root = Path(summary["project"])
    links = [{"report": name, "file": html.link(_relative(path, root / "loop" / summary["round"]), path)}
             for name, path in summary["reports"].items()]
    sections = [
        html.section("Before / after on the unseen test set", html.table(rows), html.plot(draw, "headline metrics")),
        html.section("Verdict", html.paragraph(
            "improved" if summary["improved"] else "not improved", "ok" if summary["improved"] else "bad"),
            html.key_values({"eval gate": "pass" if summary["eval_gate"]["passed"] else "fail",
                             "reasons": "; ".join(summary["eval_gate"]["reasons"]) or "—"})),
        html.section("Stages", html.table(summary["stages"])),
        html.section("Reports", html.table(links, ["report", "file"], raw_columns=["file"])),
        html.section("Served answer (embedded server, openai client, response_format)", html.key_values(summary["serve"] or {"serve": "skipped"})),
    ]
    return html.page(f"tuneloop round {summary['round']}", sections, subtitle=summary["project"])


def _relative(path: str, start: Path) -> str:
    import os

    return os.path.relpath(path, start)
