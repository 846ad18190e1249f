"""Bad cases: why an answer failed, and failures back into the loop as samples to relabel.

An exported failure is a new Sample made from its test item:
```
id             bad-<hash of test id, mode and the answer>
instruction, input, system, history, output_schema, expected, sample_type   copied from the test item
output         the test item's reference answer (the relabeler corrects or confirms it)
rejected       the model's wrong answer (usable as a DPO negative once relabeled)
meta           the test item's, with difficulty "hard" and source "eval:<eval folder name>"
lineage        source_id kept, parent_id = test item id, augment_type "eval_failure"
failure        {"mode", "kinds", "model"}   (an extra field, kept by every stage)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.records import EvalResult, Sample, content_hash


def failure_kinds(scores: dict[str, Any]) -> list[str]:
    """Human words for each way an answer failed (empty when it passed)."""
    kinds = []
    if scores.get("truncated"):
        kinds.append("truncated")
    if scores.get("refusal_ok") is False:
        kinds.append("refused but should answer" if scores.get("refused") else "answered but should refuse")
    if "fields" in scores and not scores.get("json_found"):
        kinds.append("no JSON in the answer")
    if scores.get("noise"):
        kinds.append("noise: " + ", ".join(scores["noise"]))
    if scores.get("schema_valid") is False:
        kinds.append("schema: " + "; ".join(scores.get("schema_errors") or []))
    # the content under any noise (lenient fields): the noise is named above, this names what was wrong besides
    wrong = [path for path, (_exact, normalized) in (scores.get("fields_lenient") or scores.get("fields") or {}).items()
             if not normalized]
    if wrong:
        kinds.append("wrong fields: " + ", ".join(wrong[:6]) + (" …" if len(wrong) > 6 else ""))
    if not kinds and not scores.get("ok"):
        kinds.append("no exact match")
    return kinds


def failed(results: list[EvalResult], mode: str | None = None) -> list[EvalResult]:
    """Answers that failed; a request that errored has no answer and is no bad case (see errors.jsonl)."""
    return [r for r in results if not getattr(r, "error", None) and not r.scores.get("ok") and (mode is None or r.mode == mode)]


def failure_sample(result: EvalResult, eval_name: str) -> Sample:
    """The relabeling sample for one failed answer, with lineage to its test item."""
    test = Sample.model_validate(result.sample)
    meta = test.meta.model_copy(update={"difficulty": "hard", "source": f"eval:{eval_name}"})
    lineage = test.lineage.model_copy(update={"parent_id": test.id, "augment_type": "eval_failure",
                                              "source_id": test.lineage.source_id or test.id})
    return Sample(
        id="bad-" + content_hash(test.id, result.mode, result.raw, length=12),
        instruction=test.instruction, input=test.input, system=test.system, history=test.history,
        output=test.output, rejected=result.raw, sample_type=test.sample_type, expected=test.expected,
        output_schema=test.output_schema, meta=meta, lineage=lineage,
        failure={"mode": result.mode, "kinds": failure_kinds(result.scores), "model": result.model},
    )


def export_bad(results: list[EvalResult], eval_dir: str | Path, mode: str | None = "unconstrained") -> list[Sample]:
    """Failures of one mode (all modes when None) as relabeling samples, one per test item and mode."""
    name = Path(eval_dir).resolve().name
    return [failure_sample(r, name) for r in failed(results, mode)]
