"""Failures in real traffic: which traces the model got wrong, and why, as redacted, deduplicated samples.

```
traces (since)  ─▶ smoke (tuneloop's own checks)                                 ─▶ counted, never data
                ─▶ request error without a failing answer (server's failure)     ─▶ counted, listed, no relabel material
                ─▶ reasons of the answer (below); none                           ─▶ passed
                ─▶ messages → Sample (data.io.openai_chat) ─▶ redact (gate's Redactor) ─▶ dedup (gate's MinHash)
                ─▶ failures.jsonl                       traces in = failures + passed + smoke + duplicates + errors
                                                                    + unreadable (asserted)
```

Reasons (stable words, every one a failure carries; the task schema and `answers` decide, the one rule eval and
serving use):

| reason                       | when                                                                                |
|------------------------------|-------------------------------------------------------------------------------------|
| `negative feedback`          | a feedback row named in `loop.select.feedback_names` (or unnamed: the embedded     |
|                              | server's POST /v1/feedback) scores under `negative_below` (false for booleans)      |
| `low judge score`            | a row named in `judge_names` scores under `judge_min`                               |
| `not JSON`                   | the task has a schema (or, without one, the request's `response_format` asked for  |
|                              | JSON) and the whole answer is not one JSON value (`parse_json`)                    |
| `schema: <path>`             | the JSON breaks the task schema (without one: the request's json_schema); the path  |
|                              | of `schema_problem` (the message goes to `details`)                                 |
| `refused but should answer`  | the answer is a refusal (`is_refusal` with the schema's `x-refusal` form) and       |
|                              | feedback or a judge is negative about it, or a `should-refuse` row says false       |
| `answered but should refuse` | the answer is no refusal and a `should-refuse` row (feedback or judge) says true    |
| `cut by length`              | `finish_reason == "length"`                                                         |

What traffic can tell about refusals: nothing says in advance whether a prompt deserved an answer. A refusal
that the user or a judge scores down was a refusal where an answer was due; a refusal nobody complains about
passes. An answer where a refusal was due cannot be seen in the answer itself, only in a verdict about it: a
feedback or judge row named `should-refuse` (true: a refusal was due, false: an answer was due), as a reviewer or
a Langfuse evaluator writes it. A JSON refusal is judged as a refusal, not against the schema; a prose refusal in a
JSON task is also `not JSON` (the client cannot parse it; the relabel says whether the refusal form was due).

A trace with an `error` (a failed generation, a transport error at the canary, a constrained answer that broke its
promise) is the server's failure. When it holds an answer that shows a reason above (a broken constrained answer is
`not JSON`), it is a failure like any other; without an answer, or with one that shows nothing wrong, it is counted
and listed under `errors` (the request is what failed, there is no answer to relabel) and never becomes data.

Each failure's sample is the prompt as the model saw it: system (blank when it is the task's default system
prompt, which every rendering adds back), earlier turns as history, the last user turn as the instruction;
`output` is "" (the right answer is unknown until relabeled), `rejected` is the model's answer; `sample_type`
boundary for a refusal mistake (with `expected` what was due), negative otherwise (the model's answer is the
rejected side of a preference pair once relabeled). Redaction covers the sample, the comments and the details; a
near-duplicate failure (the same prompt, MinHash over the prompt) is removed and its trace id kept on the failure
that stays (`duplicates`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, Field, ValidationError
from referencing.exceptions import Unresolvable

from tuneloop.answers import is_refusal, parse_json, refusal_form, schema_problem, schema_validator
from tuneloop.data.gate.dedup import dedup
from tuneloop.data.gate.pii import Redactor
from tuneloop.data.io.conversation import RowError
from tuneloop.data.io.openai_chat import openai_to_sample
from tuneloop.files import write_jsonl
from tuneloop.project import DedupConfig, LoopConfig, PIIConfig, Project
from tuneloop.records import Sample, Trace
from tuneloop.traces.store import TraceStore

NEGATIVE_FEEDBACK = "negative feedback"
LOW_JUDGE = "low judge score"
NOT_JSON = "not JSON"
SCHEMA = "schema"  # reason "schema: <path>"
REFUSED = "refused but should answer"
ANSWERED = "answered but should refuse"
CUT = "cut by length"
REASON_ORDER = (NEGATIVE_FEEDBACK, LOW_JUDGE, NOT_JSON, SCHEMA, REFUSED, ANSWERED, CUT)
REFUSAL_DUE = "should-refuse"  # a verdict row: true when a refusal was due, false when an answer was
TRAFFIC = "traffic"
_NOTES = "_failure_notes"  # the failure's free text, carried through redaction inside its sample


class SelectError(ValueError):
    """A failures file that cannot be read, with the line and what to do."""


class Failure(BaseModel):
    """One failing trace: why it failed, and its prompt as a redacted Sample waiting for the right answer."""

    id: str = Field(description="failure:<trace id>: the relabel queue is idempotent by it.")
    trace_id: str
    source_id: str | None = None
    reasons: list[str]
    details: list[str] = Field(default_factory=list, description="What each reason saw (schema messages), redacted.")
    sample: Sample
    feedback: list[dict[str, Any]] = Field(default_factory=list, description="name, score, comment (redacted).")
    model: str = ""
    model_version: str | None = None
    created_at: float = 0.0
    duplicates: list[str] = Field(default_factory=list, description="Trace ids of near-identical failures removed.")

    @property
    def prompt(self) -> str:
        return self.sample.prompt


@dataclass
class Selection:
    failures: list[Failure]
    counts: dict[str, int]
    reasons: Counter = field(default_factory=Counter)  # over the failures kept (duplicates not counted twice)
    errors: list[dict[str, str]] = field(default_factory=list)  # trace_id, error: server failures
    unreadable: list[dict[str, str]] = field(default_factory=list)  # trace_id, reason: messages no Sample can hold
    redacted: dict[str, int] = field(default_factory=dict)  # PII findings replaced, by type

    def summary(self) -> str:
        """The counts line: traces in = failures + passed + smoke + duplicates + errors + unreadable."""
        c = self.counts
        line = (f"traces in {c['traces']} = failures {c['failures']} + passed {c['passed']} + smoke {c['smoke']} + "
                f"duplicates {c['duplicates']} + errors {c['errors']}")
        return line + (f" + unreadable {c['unreadable']}" if c["unreadable"] else "")


# -- reasons ----------------------------------------------------------------------------------------------------
def _is_true(score: float | None, threshold: float) -> bool | None:
    return None if score is None else score >= threshold


def answer_schema(trace: Trace, schema: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """(whether the answer must be JSON, the schema it must fit): the task's schema; for a task without one, what
    the request asked for in `response_format` (json_object: JSON; json_schema: its schema, when it is a valid one).
    """
    if schema is not None:
        return True, schema
    response_format = trace.response_format or {}
    kind = response_format.get("type")
    if kind not in ("json_object", "json_schema"):
        return False, None
    asked = (response_format.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    if not isinstance(asked, dict):
        return True, None
    try:
        schema_validator(asked)
    except (jsonschema.SchemaError, Unresolvable, re.error, TypeError):
        return True, None  # a caller's schema that cannot judge an answer: JSON is all that can be asked
    return True, asked


def trace_reasons(trace: Trace, feedback: list[dict[str, Any]], schema: dict[str, Any] | None,
                  config: LoopConfig) -> tuple[list[str], list[str], str]:
    """(reasons, details, expected) of one trace's answer; no reasons: it passed. `expected` is what was due."""
    select = config.select
    names = set(select.feedback_names)
    negative = any(row["score"] is not None and row["score"] < select.negative_below
                   for row in feedback if row["name"] is None or row["name"] in names)
    low_judge = any(row["score"] is not None and row["score"] < select.judge_min
                    for row in feedback if row["name"] in select.judge_names)
    verdicts = [_is_true(row["score"], select.negative_below) for row in feedback if row["name"] == REFUSAL_DUE]
    refusal_due = next((v for v in reversed(verdicts) if v is not None), None)  # the latest verdict counts
    reasons, details = [], []
    if negative:
        reasons.append(NEGATIVE_FEEDBACK)
    if low_judge:
        reasons.append(LOW_JUDGE)
    text = trace.output or ""
    wants_json, schema = answer_schema(trace, schema)
    parsed, value = parse_json(text)
    refused = is_refusal(text, form=refusal_form(schema))
    if wants_json and not parsed:
        reasons.append(NOT_JSON)  # a prose refusal too: the client's parser fails on it all the same
    elif schema is not None and not refused:  # a JSON refusal is judged as a refusal, not against the schema
        problem = schema_problem(schema_validator(schema), value)
        if problem is not None:
            reasons.append(f"{SCHEMA}: {problem.split(': ', 1)[0]}")
            details.append(problem)
    expected = "answer"
    if refused and (refusal_due is False or (refusal_due is None and (negative or low_judge))):
        reasons.append(REFUSED)
    elif not refused and refusal_due:
        reasons.append(ANSWERED)
        expected = "refuse"
    if trace.finish_reason == "length":
        reasons.append(CUT)
    return reasons, details, expected


# -- the sample of a failing trace --------------------------------------------------------------------------------
def trace_sample(trace: Trace, default_system: str = "") -> Sample:
    """The prompt the model saw as a Sample (RowError when its messages hold no conversation): the OpenAI chat
    reader turns the messages plus the answer into a sample, whose answer then moves to `rejected`."""
    extra = trace.model_extra or {}
    answer: dict[str, Any] = {"role": "assistant", "content": trace.output or ""}
    if extra.get("tool_calls"):  # the served call, as the conversation's function_call answer
        answer = {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
            for c in extra["tool_calls"]]}
    row: dict[str, Any] = {"messages": [*trace.messages, answer]}
    if extra.get("tools"):
        row["tools"] = extra["tools"]  # the functions the request offered stay with its prompt
    sample = openai_to_sample(row, source=TRAFFIC)
    sample.rejected, sample.output = sample.output, ""
    if default_system and sample.system == default_system:
        sample.system = ""  # the task's default: every rendering adds it back
    sample.id = sample.lineage.source_id = f"trace:{trace.id}"
    return sample


def _feedback_by_trace(store: TraceStore) -> dict[str, list[dict[str, Any]]]:
    rows = store.query("SELECT trace_id, name, score, comment, source_id, created_at FROM feedback ORDER BY id")
    found: dict[str, list[dict[str, Any]]] = {}
    for trace_id, name, score, comment, source_id, created_at in rows:
        found.setdefault(trace_id, []).append({"name": name, "score": score, "comment": comment,
                                               "source_id": source_id, "created_at": created_at})
    return found


def _reason_key(reason: str) -> int:
    head = reason.split(":", 1)[0]
    return REASON_ORDER.index(head) if head in REASON_ORDER else len(REASON_ORDER)


# -- selection --------------------------------------------------------------------------------------------------
def select_failures(store: TraceStore, schema: dict[str, Any] | None, config: LoopConfig, since: float | None = None,
                    system: str = "", pii: PIIConfig | None = None, dedup_config: DedupConfig | None = None) -> Selection:
    """The failing traces of `store` newer than `since` (unix time), redacted and deduplicated.

    `schema`: the task's JSON Schema (None: a text task, answers are judged by feedback, judge, refusals, length);
    `system`: the task's default system prompt; `pii`, `dedup_config`: the gate's settings (`data.pii`,
    `data.dedup`), so traffic is redacted and deduplicated exactly like the data it joins.
    """
    if schema is not None:
        schema_validator(schema)  # a broken task schema is an error before any trace is judged
    traces = store.traces(since=since)
    feedback = _feedback_by_trace(store)
    pii = pii or PIIConfig()
    redactor = Redactor(mode=pii.mode, extra_patterns=dict(pii.extra_patterns))
    counts = Counter({"traces": len(traces)})
    candidates: list[Failure] = []
    errors, unreadable = [], []
    for trace in traces:
        if trace.smoke:
            counts["smoke"] += 1
            continue
        rows = feedback.get(trace.id, [])
        answered = bool((trace.output or "").strip())
        reasons, details, expected = trace_reasons(trace, rows, schema, config) if answered or not trace.error else ([], [], "")
        if not reasons and trace.error:  # no answer, or one that shows nothing wrong: the server failed, not the model
            counts["errors"] += 1
            errors.append({"trace_id": trace.id, "error": redactor.text(trace.error)})
            continue
        if not reasons:
            counts["passed"] += 1
            continue
        try:
            sample = trace_sample(trace, system)
        except RowError as err:
            counts["unreadable"] += 1
            unreadable.append({"trace_id": trace.id, "reason": f"its messages are no conversation: {err}"})
            continue
        boundary = REFUSED in reasons or ANSWERED in reasons
        sample.sample_type, sample.expected = ("boundary" if boundary else "negative"), expected
        sample, details, comments = _redacted(redactor, sample, details, [r["comment"] for r in rows])
        candidates.append(Failure(
            id=f"failure:{trace.id}", trace_id=trace.id, source_id=trace.source_id,
            reasons=sorted(reasons, key=_reason_key), details=details, sample=sample,
            feedback=[{"name": r["name"], "score": r["score"], "comment": c} for r, c in zip(rows, comments)],
            model=trace.model, model_version=trace.model_version, created_at=trace.created_at))
    failures, removed = _deduplicate(candidates, dedup_config)
    counts.update({"failures": len(failures), "duplicates": removed})
    for key in ("smoke", "passed", "errors", "unreadable"):
        counts.setdefault(key, 0)
    total = sum(counts[k] for k in ("failures", "passed", "smoke", "duplicates", "errors", "unreadable"))
    assert total == counts["traces"], f"select lost traces: {dict(counts)}"  # rows are never lost
    reasons_seen = Counter(reason for failure in failures for reason in failure.reasons)
    return Selection(failures, dict(counts), reasons_seen, errors, unreadable, dict(redactor.counts))


def _redacted(redactor: Redactor, sample: Sample, details: list[str],
              comments: list[str | None]) -> tuple[Sample, list[str], list[str | None]]:
    """The sample, details and comments redacted as one row: one number per value across all of them (the phone in
    a comment is the [PHONE_1] of the prompt), numbered afresh for every failure."""
    carrier = Sample.model_validate({**sample.model_dump(mode="json"), _NOTES: {"details": details, "comments": comments}})
    redacted = redactor.sample(carrier)
    notes = (redacted.__pydantic_extra__ or {}).pop(_NOTES)
    return redacted, notes["details"], notes["comments"]


def _deduplicate(failures: list[Failure], config: DedupConfig | None) -> tuple[list[Failure], int]:
    """The gate's dedup over the failures' (redacted) prompts: with no answer and no rejected side (what the model
    answered does not make a prompt another failure to relabel), copies are the same prompt."""
    if not failures:
        return [], 0
    result = dedup([f.sample.model_copy(update={"rejected": None}) for f in failures], config)
    assert not result.review, "failures have no answers, so no label conflicts"
    by_id = {f.sample.id: f for f in failures}
    for removed in result.removed:
        by_id[removed.kept_id].duplicates.append(removed.sample.id.removeprefix("trace:"))
    kept = [by_id[s.id] for s in result.kept]
    return kept, len(result.removed)


def select_project_failures(project: Project, since: float | None = None) -> Selection:
    """`select_failures` with a project's store, schema, default system prompt, loop, PII and dedup settings."""
    config = project.config
    with TraceStore(project.traces_db) as store:
        return select_failures(store, project.schema(), config.loop, since=since, system=config.task.system,
                               pii=config.data.pii, dedup_config=config.data.dedup)


# -- files ------------------------------------------------------------------------------------------------------
def failures_path(project: Project) -> Path:
    return project.root / "loop" / TRAFFIC / "failures.jsonl"


def write_failures(path: str | Path, failures: list[Failure]) -> Path:
    """failures.jsonl, one Failure a line, atomically."""
    return write_jsonl(path, (f.model_dump(mode="json") for f in failures))


def load_failures(path: str | Path) -> list[Failure]:
    """The failures a `write_failures` wrote; a bad line is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        raise SelectError(f"{path}: no failures file; run `tuneloop loop select` first.")
    failures = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            failures.append(Failure.model_validate(json.loads(line)))
        except json.JSONDecodeError as err:
            raise SelectError(f"{path}, line {number}: not JSON ({err.msg}); rerun `tuneloop loop select`.") from None
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "row"
            raise SelectError(f"{path}, line {number}: not a failure ({where}: {problem['msg']}); "
                              "rerun `tuneloop loop select`.") from None
    return failures
