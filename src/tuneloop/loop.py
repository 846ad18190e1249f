"""One round of the loop over a project directory: `tuneloop run`.

```
gate ─▶ baseline eval ─▶ SFT ─▶ eval after ─▶ compare (paired) ─▶ merge + reload gate + parity ─▶ serve smoke ─▶ summary
```

Each stage has a key: the sha256 of its input files and its settings. The loop keeps `loop/<round>/state.json`;
a rerun skips a stage whose key and outputs are unchanged, and an interrupted stage is run again (training resumes
from its last checkpoint). Every stage's own report is linked from one summary page.

Every check of the round is obeyed: the data gate, the eval gate, the merge's reload gate and template parity, and
the served answer. A check that says no stops the round before anything that depends on it (a candidate that fails
its eval gate is never merged or served) and raises `RoundRefused`; a stage that breaks raises `LoopError`. Either
way the summary page is written with the reasons, and the stage is not recorded as done, so a rerun checks again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.files import file_digest, read_json, tree_digest, write_json, write_text
from tuneloop.project import Project
from tuneloop.records import content_hash



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
    status: str  # done | skipped | failed (it broke) | refused (its check said no)
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


class LoopError(RuntimeError):
    """A stage that failed, naming the stage and what to do."""


class RoundRefused(LoopError):
    """A check of the round said no: what failed (`reasons`) and what to do (`advice`); nothing after it ran."""

    def __init__(self, stage: str, reasons: list[str], advice: str, outputs: dict[str, Any] | None = None):
        super().__init__(f"{stage} failed: " + "; ".join(reasons))
        self.stage = stage
        self.reasons = reasons
        self.advice = advice
        self.outputs = outputs or {}
        self.summary_file: Path | None = None


class RoundState:
    """`loop/<round>/state.json`: the key and outputs of each finished stage."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict[str, Any]] = read_json(path)["stages"] if path.exists() else {}

    def fresh(self, name: str, key: str) -> dict[str, Any] | None:
        entry = self.stages.get(name)
        if not entry or entry.get("key") != key or entry.get("status") != "done":
            return None
        outputs = entry.get("outputs", {})
        if outputs.get("passed") is False:  # a check that said no is never a result to reuse
            return None
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
    """Run gate → eval → train → eval → compare → merge → serve on `project`; return the summary.

    Raises `RoundRefused` when a check says no and `LoopError` when a stage breaks; the summary page is written first.
    """
    options = options or LoopOptions()
    _quiet_library_progress()
    round_ = Round(project)
    try:
        _run_stages(round_, options, say)
    except Exception as err:
        refused = err if isinstance(err, RoundRefused) else None
        outcome = ({"status": "refused", "stage": refused.stage, "reasons": refused.reasons, "advice": refused.advice}
                   if refused else {"status": "failed", "reasons": [f"{type(err).__name__}: {err}"], "advice": None})
        try:
            summary_file = round_.write_summary(outcome)
        except Exception as summary_error:  # the stage's own error is the one to report
            err.add_note(f"the round's summary could not be written: {summary_error!r}")
            raise err from err.__cause__
        if refused and summary_file:
            refused.summary_file = summary_file
        raise
    round_.write_summary({"status": "passed", "reasons": [], "advice": None})
    return round_.summary


@dataclass
class Round:
    """What one round has produced so far; the summary is drawn from it whether the round passed or stopped."""

    project: Project
    records: list[StageRecord] = field(default_factory=list)
    round_dir: Path | None = None
    run_dir: Path | None = None
    baseline_dir: Path | None = None
    candidate_dir: Path | None = None
    compared: dict[str, Any] = field(default_factory=dict)
    merged: dict[str, Any] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def write_summary(self, outcome: dict[str, Any]) -> Path | None:
        if self.round_dir is None:
            return None
        from tuneloop.loop_summary import summarize, summary_html

        self.summary = summarize(self.project, outcome, self.records, self.round_dir, self.run_dir, self.baseline_dir,
                                 self.candidate_dir, self.compared, self.merged, self.served)
        loop_dir = self.project.root / "loop" / self.round_dir.name
        write_json(loop_dir / "summary.json", self.summary)
        return write_text(loop_dir / "summary.html", summary_html(self.summary))


def _run_stages(round_: Round, options: LoopOptions, say: Callable[[str], None]) -> None:
    project = round_.project
    config = project.config
    schema = project.schema()
    system = config.task.system
    records = round_.records

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
        except RoundRefused as refusal:  # not saved: a rerun checks again
            records.append(StageRecord(name, key, "refused", time.time() - started,
                                       {**refusal.outputs, "reasons": refusal.reasons}))
            say(f"[{name}] refused: " + "; ".join(refusal.reasons))
            raise
        except Exception as err:
            records.append(StageRecord(name, key, "failed", time.time() - started, {"error": str(err)}))
            if not _explains_itself(err):
                raise  # a defect keeps its own type and traceback: the CLI prints it and asks for a report
            raise LoopError(f"stage '{name}' failed: {err}") from err
        record = StageRecord(name, key, "done", time.time() - started, outputs)
        state.save(record)
        records.append(record)
        say(f"[{name}] done in {record.seconds:.0f}s")
        return outputs

    # 1. gate: a new round only when the sources changed since the latest round
    from tuneloop.data.gate.round import run_gate

    sources = [project.path(s.path) for s in config.data.sources]
    gate_key = files_key(*sources, settings=config.data.model_dump(mode="json"))
    round_dir = _round_for_key(project, gate_key) if not options.force else None
    if round_dir is None:
        say("[gate] running")
        started = time.time()
        gate = run_gate(project, progress=True)
        round_dir = round_.round_dir = Path(gate.round_dir)
        if not gate.passed:
            report = round_dir / "report.html"
            records.append(StageRecord("gate", gate_key, "refused", time.time() - started,
                                       {"round_dir": str(round_dir), "reasons": list(gate.failures)}))
            raise RoundRefused("data gate", list(gate.failures),
                               f"open {report}, fix or remove the source rows it names (or change the data.* "
                               "thresholds in tuneloop.yaml if they are wrong), then rerun `tuneloop run`.")
        say("[gate] " + ", ".join(f"{k} {v}" for k, v in gate.counts.items() if v) + f" → {round_dir.name}")
        manifest = read_json(round_dir / "manifest.json")
        manifest["loop_key"] = gate_key
        write_json(round_dir / "manifest.json", manifest)
        records.append(StageRecord("gate", gate_key, "done", time.time() - started, {"round_dir": str(round_dir)}))
    else:
        round_.round_dir = round_dir
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

    baseline_dir = round_.baseline_dir = project.evals_dir / f"{round_dir.name}-baseline"
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
    run_dir = round_.run_dir = project.runs_dir / f"{round_dir.name}-sft-{train_key[:8]}"

    def train() -> dict[str, Any]:
        result = train_sft(round_dir / "train.jsonl", round_dir / "val.jsonl", run_dir, model=config.model,
                           settings=train_settings, default_system=system, resume=True, progress=True)
        return {"run_dir": str(run_dir), "adapter_dir": str(result.model_dir),
                "best_val_loss": result.run.get("best_val_loss")}

    trained = stage("train", train_key, state, train)
    adapter_dir = Path(trained["adapter_dir"])

    # 4. the trained model on the same unseen test set
    candidate_dir = round_.candidate_dir = project.evals_dir / f"{round_dir.name}-candidate"
    stage("eval after", files_key(test_file, adapter_dir, settings=[eval_key_settings, system]), state,
          lambda: {"eval_dir": str(candidate_dir), "summary": run_eval(
              str(adapter_dir), test_file, candidate_dir, schema, eval_settings, default_system=system)})

    # 5. paired comparison and the eval gate: a candidate that fails it goes no further
    from tuneloop.eval.compare import compare_evals, round_verdict
    from tuneloop.eval.gate import gate_eval

    compare_dir = project.evals_dir / f"{round_dir.name}-compare"
    gate_settings = config.eval.gate

    def compare() -> dict[str, Any]:
        comparison = compare_evals(baseline_dir, candidate_dir, compare_dir, alpha=gate_settings.alpha)
        decision = gate_eval(comparison, gate_settings)
        outputs = {"compare_dir": str(compare_dir), "passed": decision.passed, "reasons": list(decision.reasons),
                   "verdict": round_verdict(comparison, gate_settings.mode, gate_settings.alpha)}
        round_.compared = outputs
        if not decision.passed:
            raise RoundRefused("eval gate", list(decision.reasons),
                               f"the candidate was not merged or served; see {compare_dir / 'report.html'}, improve "
                               "the data or the train.* settings and rerun `tuneloop run` (or change eval.gate in "
                               "tuneloop.yaml if its thresholds are wrong).", outputs)
        return outputs

    round_.compared = stage("compare", files_key(baseline_dir / "results.jsonl", candidate_dir / "results.jsonl",
                                                 settings=gate_settings.model_dump(mode="json")), state, compare)

    # 6. merge with its reload gate and template parity
    from tuneloop.export.merge import MergeGateError, merge_run

    export_dir = project.exports_dir / f"{config.task.name}-{round_dir.name}"

    def merge() -> dict[str, Any]:
        try:
            report = merge_run(run_dir, export_dir)
        except MergeGateError as err:
            raise RoundRefused("merge gate", err.failures,
                               f"the merged model differs from the evaluated one and was not exported or served; "
                               f"check that {run_dir / 'run.json'} `base_model` is the model the adapter was trained "
                               f"on, then rerun `tuneloop run` (details: `tuneloop export merge --run {run_dir} "
                               f"--out {export_dir}`).") from err
        return {"export_dir": str(export_dir), "report": _plain(report)}

    round_.merged = stage("merge", files_key(adapter_dir), state, merge)

    # 7. serve the export and answer one request through the official openai client
    if options.serve:
        round_.served = stage("serve smoke", files_key(export_dir, settings=[system, schema]), state,
                              lambda: _serve_smoke(project, export_dir, round_dir, schema, system))


def _explains_itself(err: Exception) -> bool:
    """tuneloop's own errors say what to do, and an OSError names its file or host: those become one-line stage
    failures. Anything else is a defect, shown with its traceback (the CLI's rule for every command)."""
    return type(err).__module__.split(".")[0] == "tuneloop" or isinstance(err, OSError)


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
    """Start the embedded server on loopback, ask one test prompt with response_format, validate, stop.

    An answer the server refuses, cuts, or that is not valid JSON for the task's schema refuses the round.
    """
    import jsonschema
    from openai import APIStatusError, OpenAI

    from tuneloop.data.io.formats import load_samples
    from tuneloop.records import to_messages
    from tuneloop.serve.server import serve_in_background

    sample = load_samples(round_dir / "test.jsonl")[0]
    messages = to_messages(sample, system, with_answer=False)
    response_format: dict[str, Any] = (
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        if schema else {"type": "json_object"}
    )
    advice = (f"the export {export_dir} is kept but not trusted; try it by hand with `tuneloop serve --model "
              f"{export_dir}`, fix what the reason names, then rerun `tuneloop run`.")
    outputs = {"prompt": sample.prompt, "expected": sample.output}
    with serve_in_background(export_dir, trace_store_path=project.traces_db) as base_url:
        client = OpenAI(base_url=base_url, api_key="local")
        started = time.time()
        try:
            reply = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages,
                                                   response_format=response_format, max_tokens=200, temperature=0)
        except APIStatusError as err:
            raise RoundRefused("serve smoke", [f"the server answered {err.status_code}: {err.message}"], advice,
                               outputs) from err
        latency = time.time() - started
    text = reply.choices[0].message.content or ""
    finish = reply.choices[0].finish_reason
    outputs.update(text=text, finish_reason=finish, latency_s=round(latency, 2))
    if finish != "stop":
        raise RoundRefused("serve smoke", [f"the served answer stopped with finish_reason {finish!r}, not 'stop' "
                                           f"(cut or refused by the server): {text[:120]!r}"], advice, outputs)
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as err:
        raise RoundRefused("serve smoke", [f"the served answer is not JSON ({err.msg} at char {err.pos}): "
                                           f"{text[:120]!r}"], advice, outputs) from err
    if schema:
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(answer))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "(root)"
            raise RoundRefused("serve smoke", [f"the served answer fails the task's schema at {where}: "
                                               f"{problem.message}"], advice, outputs)
    return {"prompt": sample.prompt, "answer": answer, "expected": sample.output, "latency_s": round(latency, 2),
            "finish_reason": finish}
