"""The relabel queue's round trips: the JSONL a person or a stronger model fills in, its import, and proposals.

```
export      one row per open item: id, version, reasons, cluster, the prompt (system, history, instruction, input),
            model_output (the wrong answer), expected, sample_type, proposal + proposed_by, output "" to fill,
            annotator "" to fill, comment; `discard: true` in a row discards the item
import      each line ─▶ JSON object? id in the queue? filled in? annotator? version still current?
                      ─▶ LabelCheck: annotate/rules.py (JSON, schema, refusal, SOP, custom rules) and the frozen
                         val/test items of the latest round (traces/frozen.py) ─▶ submitted
            rows in = accepted + rejected + unchanged + skipped (not filled in) + discarded; each rejection names
            the file, the line, the id and the reason
propose     open items ─▶ an OpenAI-compatible model answers each (llm_client.Endpoint) ─▶ LabelCheck
            ─▶ valid: stored as the item's proposal (proposed_by), never as its label; invalid: listed;
               a failed request: an error (never a proposal)
```
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from tuneloop.annotate.rules import Problem, label_problems
from tuneloop.answers import refusal_form
from tuneloop.project import DedupConfig, LabelRule, LeakageConfig, Project
from tuneloop.records import Sample
from tuneloop.traces.frozen import frozen_items, frozen_matches
from tuneloop.traces.queue import ACCEPTED, OPEN, Label, QueueConflict, QueueError, QueueItem, RelabelQueue


@dataclass
class LabelCheck:
    """Everything a label must pass before it is accepted: the label rules and the frozen val/test items."""

    schema: dict[str, Any] | None = None
    rules: list[LabelRule] = field(default_factory=list)
    frozen: dict[str, list[Sample]] = field(default_factory=dict)
    dedup: DedupConfig | None = None
    leakage: LeakageConfig | None = None

    @classmethod
    def for_project(cls, project: Project) -> LabelCheck:
        """The project's schema, `annotate.rules`, the latest round's val/test, the gate's dedup/leakage settings."""
        config = project.config
        return cls(project.schema(), list(config.annotate.rules), frozen_items(project.latest_round()),
                   config.data.dedup, config.data.leakage)

    def problems(self, samples: Sequence[Sample]) -> list[list[Problem]]:
        """The problems of each labeled sample (empty list: it may be accepted)."""
        found = [label_problems(sample, self.schema, rules=self.rules) for sample in samples]
        for index, match in frozen_matches(samples, self.frozen, self.dedup, self.leakage).items():
            found[index].append(Problem("input", "frozen", match.message, match.FIX))
        return found


# -- export -----------------------------------------------------------------------------------------------------
def export_row(item: QueueItem, prefill: bool = False) -> dict[str, Any]:
    """The row a relabeler fills in: `output` (empty, the draft's, or with `prefill` the proposal) and `annotator`."""
    sample = item.sample
    label = item.label
    output = label.output if label else (item.proposal or "" if prefill else "")
    return {
        "id": item.id, "version": item.version, "status": item.status, "origin": item.origin,
        "cluster": item.cluster, "cluster_name": item.cluster_name, "reasons": item.reasons,
        "system": sample.system, "history": sample.history, "instruction": sample.instruction, "input": sample.input,
        "model_output": sample.rejected,
        "expected": (label.expected if label and label.expected else sample.expected),
        "sample_type": (label.sample_type if label and label.sample_type else sample.sample_type),
        "proposal": item.proposal, "proposed_by": item.proposed_by,
        "output": output, "annotator": item.annotator or "", "comment": item.comment or "",
    }


# -- import -----------------------------------------------------------------------------------------------------
class Rejection(NamedTuple):
    line: int
    id: str | None
    reason: str


@dataclass
class ImportResult:
    path: Path
    rows: int = 0
    accepted: list[str] = field(default_factory=list)  # ids of the labels submitted
    unchanged: int = 0  # the same label by the same annotator was already accepted
    skipped: int = 0  # rows not filled in (output empty)
    discarded: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> str:
        line = (f"{self.path}: rows in {self.rows} = accepted {len(self.accepted)} + rejected {len(self.rejected)} + "
                f"unchanged {self.unchanged} + skipped {self.skipped} (not filled in)")
        return line + (f" + discarded {self.discarded}" if self.discarded else "")

    def lines(self) -> list[str]:
        """One line per rejected row: file, line, id, reason."""
        return [f"{self.path}, line {r.line}: {r.id or '(no id)'}: {r.reason}" for r in self.rejected]


@dataclass
class _Candidate:
    line: int
    item: QueueItem
    label: Label | None  # None: discard
    annotator: str
    comment: str | None


def import_label_file(queue: RelabelQueue, path: str | Path, check: LabelCheck, annotator: str | None = None) -> ImportResult:
    """Validate every row of a filled-in export and submit the labels that pass; nothing is rejected silently."""
    path = Path(path)
    if not path.exists():
        raise QueueError(f"{path}: no such file; write one with `tuneloop loop relabel --export {path}`.")
    result = ImportResult(path)
    candidates: list[_Candidate] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        result.rows += 1
        found = _read_row(queue, number, line, seen, annotator)
        if isinstance(found, Rejection):
            result.rejected.append(found)
        elif found is None:
            result.skipped += 1
        elif found == "unchanged":
            result.unchanged += 1
        else:
            candidates.append(found)
    labeled = [c for c in candidates if c.label is not None]
    problems = dict(zip((id(c) for c in labeled), check.problems([c.item.labeled(c.label) for c in labeled])))
    for candidate in candidates:
        item = candidate.item
        if problems.get(id(candidate)):
            result.rejected.append(Rejection(candidate.line, item.id, "; ".join(map(str, problems[id(candidate)]))))
            continue
        try:
            queue.save(item.id, candidate.label, item.version, candidate.annotator,
                       status="submitted" if candidate.label is not None else "discarded", comment=candidate.comment)
        except QueueConflict as err:  # someone saved between our read and this write
            result.rejected.append(Rejection(candidate.line, item.id, str(err)))
            continue
        if candidate.label is None:
            result.discarded += 1
        else:
            result.accepted.append(item.id)
    total = len(result.accepted) + len(result.rejected) + result.unchanged + result.skipped + result.discarded
    assert total == result.rows, f"relabel import lost rows: {result.summary()}"  # rows are never lost
    return result


def _read_row(queue: RelabelQueue, number: int, line: str, seen: dict[str, int],
              default_annotator: str | None) -> _Candidate | Rejection | str | None:
    """One line of the file: a candidate label, a Rejection, "unchanged", or None (not filled in)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return Rejection(number, None, f"not JSON ({err.msg} at column {err.colno}); each line is one JSON object")
    if not isinstance(row, dict):
        return Rejection(number, None, "not a JSON object; each line is one object with the export's id and output")
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id:
        return Rejection(number, None, "no id; keep the id the export wrote")
    if item_id in seen:
        return Rejection(number, item_id, f"the id is also on line {seen[item_id]}; keep one label per id")
    seen[item_id] = number
    try:
        item = queue.get(item_id)
    except QueueError:
        return Rejection(number, item_id, "not in the relabel queue; keep the ids the export wrote")
    who = row.get("annotator") or default_annotator
    comment = row.get("comment") or None
    version = row.get("version")
    if version is not None and version != item.version:
        by = item.reviewer or item.annotator or "someone"
        return Rejection(number, item_id, f"changed since the export (version {version} → {item.version}, "
                                          f"{item.status}, by {by}); export again and relabel it there")
    if row.get("discard") is True:
        if not who:
            return Rejection(number, item_id, "who discards it? fill in annotator or pass --annotator NAME")
        if item.status in ACCEPTED and version is None:
            return Rejection(number, item_id, f"already labeled ({item.status} by {item.annotator}); export again "
                                              "to discard it (the export carries its version)")
        return _Candidate(number, item, None, who, comment)
    output = row.get("output")
    if isinstance(output, (dict, list)):  # a JSON answer written as an object: its serialized text is the label
        output = json.dumps(output, ensure_ascii=False)
    if output is None or (isinstance(output, str) and not output.strip()):
        return None
    if not isinstance(output, str):
        return Rejection(number, item_id, "output: must be the answer text or a JSON object")
    try:
        label = Label(output=output, expected=row.get("expected") or None, sample_type=row.get("sample_type") or None)
    except ValidationError as err:
        problem = err.errors()[0]
        return Rejection(number, item_id, f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}")
    if label.expected == item.sample.expected:
        label.expected = None  # only a change of the failure's guess is part of the label
    if label.sample_type == item.sample.sample_type:
        label.sample_type = None
    if not who:
        return Rejection(number, item_id, "no annotator: fill in annotator or pass --annotator NAME (who vouches "
                                          "for the label)")
    if item.status in ACCEPTED:
        if item.label == label and item.annotator == who:
            return "unchanged"
        if version is None:
            return Rejection(number, item_id, f"already labeled ({item.status} by {item.annotator}); export again "
                                              "to relabel it (the export carries its version)")
    return _Candidate(number, item, label, who, comment)


# -- proposals --------------------------------------------------------------------------------------------------
@dataclass
class ProposeResult:
    asked: int = 0
    proposed: int = 0
    invalid: list[tuple[str, list[str]]] = field(default_factory=list)  # (id, problems): not stored
    errors: list[tuple[str, str]] = field(default_factory=list)  # (id, error): failed requests

    def summary(self) -> str:
        return (f"asked {self.asked} = proposed {self.proposed} + invalid {len(self.invalid)} + "
                f"failed requests {len(self.errors)}")


def proposal_messages(item: QueueItem, schema: dict[str, Any] | None, system: str = "",
                      sop: str | None = None) -> list[dict[str, str]]:
    """The chat a proposing model gets: the task (system prompt, SOP, schema, refusal form), the failure (the
    model's wrong answer and why it failed, what was due), then the conversation as the model saw it."""
    sample = item.sample
    parts = [sample.system or system, "You write the correct answer for a message of this task; it becomes "
             "training data."]
    if sop:
        parts.append("Follow this annotation SOP:\n" + sop)
    if schema is not None:
        parts.append("The answer is one JSON object matching this JSON Schema, keys in its order:\n"
                     + json.dumps(schema, ensure_ascii=False))
        form = refusal_form(schema)
        if form is not None:
            parts.append("A message outside the task gets exactly this refusal: " + json.dumps(form, ensure_ascii=False))
    if sample.rejected:
        parts.append(f"A model answered this message with:\n{sample.rejected}\nThat answer failed: "
                     + "; ".join(item.reasons))
    parts.append("Due: " + ("the refusal." if sample.expected == "refuse" else "an answer (not a refusal)."))
    parts.append("Reply with the correct answer only" + (": the bare JSON object, no prose, no code fences." if schema
                                                        else "."))
    messages = [{"role": "system", "content": "\n\n".join(p for p in parts if p)}]
    for turn in sample.history:
        user, assistant = (list(turn) + ["", ""])[:2]
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": sample.prompt})
    return messages


def propose_labels(queue: RelabelQueue, endpoint: Any, check: LabelCheck, system: str = "", sop: str | None = None,
                   limit: int | None = None, redo: bool = False, **params: Any) -> ProposeResult:
    """Ask `endpoint` (`llm_client.Endpoint`) for an answer to every open item without a proposal (all open items
    with `redo`); answers that pass `check` are stored as proposals, marked `proposed_by`."""
    items = [item for item in queue.items(status=OPEN) if redo or not item.proposal]
    items = items[:limit] if limit is not None else items
    request = {"temperature": 0.0, "max_tokens": 512, **params}
    by = f"{endpoint.model} at {endpoint.base_url}"

    def ask(item: QueueItem) -> str:
        response = endpoint.create(messages=proposal_messages(item, check.schema, system, sop), **request)
        return response.choices[0].message.content or ""

    result = ProposeResult(asked=len(items))
    answers = endpoint.map(items, ask)
    answered = [(item, text) for item, text in zip(items, answers) if isinstance(text, str)]
    for item, error in zip(items, answers):
        if not isinstance(error, str):
            result.errors.append((item.id, str(error)))
    problems = check.problems([item.labeled(Label(output=text)) for item, text in answered])
    for (item, text), found in zip(answered, problems):
        if found:
            result.invalid.append((item.id, [str(p) for p in found]))
        else:
            queue.set_proposal(item.id, text, by)
            result.proposed += 1
    return result
