"""LLM-as-judge through any OpenAI-compatible endpoint, and the human review queue.

Rubric judging: the judge scores one answer 1-5 on each criterion and returns a JSON verdict
`{"scores": {criterion: 1-5}, "reasons": {criterion: text}, "verdict": "pass" | "fail"}`, asked for with
`response_format` json_schema and checked again here (a judge that breaks the form is recorded as an error,
never guessed at).

Pairwise judging: the judge sees the two answers in both orders; a winner counts only when both orders agree,
otherwise the pair is a tie (this cancels the judge's preference for the first or second position).

Review queue: boundary cases (must-refuse / must-answer), and every answer where the judge and the metrics
disagree (judge passes an answer the metrics fail, or fails one they pass), go to `review_queue.jsonl` for a human.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from tuneloop.eval.backends import EndpointBackend, json_schema_format
from tuneloop.eval.metrics import MISSING, find_json
from tuneloop.records import EvalResult, Sample

DEFAULT_CRITERIA = ("correctness", "completeness", "format")
CRITERIA_HELP = {
    "correctness": "every value the answer states is right for the input",
    "completeness": "every field the task asks for is present and filled when the input has it",
    "format": "the answer is exactly the JSON the task asks for, with no extra text",
}
PASS_MEAN = 4.0


class JudgeError(ValueError):
    """A judge reply that is not the verdict asked for."""


def judge_backend(config: dict[str, Any]) -> EndpointBackend:
    """The judge endpoint from `eval.judge` in tuneloop.yaml: {base_url, model, api_key_env, concurrency}."""
    if not config.get("base_url"):
        raise JudgeError("eval.judge needs base_url (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1).")
    key_env = config.get("api_key_env")
    return EndpointBackend(config["base_url"], config.get("model", "judge"),
                           api_key=os.environ.get(key_env) if key_env else None,
                           concurrency=int(config.get("concurrency", 4)), max_tokens=int(config.get("max_tokens", 512)))


def verdict_schema(criteria: Sequence[str]) -> dict[str, Any]:
    per_criterion = {c: {"type": "integer", "minimum": 1, "maximum": 5} for c in criteria}
    return {
        "type": "object",
        "properties": {
            "scores": {"type": "object", "properties": per_criterion, "required": list(criteria)},
            "reasons": {"type": "object", "properties": {c: {"type": "string"} for c in criteria}},
            "verdict": {"type": "string", "enum": ["pass", "fail"]},
        },
        "required": ["scores", "reasons", "verdict"],
    }


def rubric_messages(sample: Sample, answer: str, criteria: Sequence[str], schema: dict[str, Any] | None) -> list[dict[str, str]]:
    rubric = "\n".join(f"- {c}: {CRITERIA_HELP.get(c, c)}" for c in criteria)
    task = f"Task given to the model:\n{sample.prompt}\n\n"
    if schema:
        task += f"JSON Schema of the answer:\n{json.dumps(schema, ensure_ascii=False)}\n\n"
    if sample.expected == "refuse":
        task += "This request should be declined: a correct answer is a refusal.\n\n"
    return [
        {"role": "system", "content": "You grade answers strictly. Score each criterion from 1 (wrong) to 5 (perfect) and "
                                      "reply with JSON only: {\"scores\": {...}, \"reasons\": {...}, \"verdict\": \"pass\"|\"fail\"}."},
        {"role": "user", "content": f"{task}Reference answer:\n{sample.output}\n\nAnswer to grade:\n{answer}\n\n"
                                    f"Criteria:\n{rubric}"},
    ]


def parse_verdict(text: str, criteria: Sequence[str]) -> dict[str, Any]:
    """The verdict in a judge reply, checked: every criterion scored 1-5, verdict pass or fail."""
    value, _noise = find_json(text)
    if value is MISSING or not isinstance(value, dict):
        raise JudgeError(f"judge reply is not a JSON object: {text[:120]!r}")
    scores = value.get("scores")
    if not isinstance(scores, dict) or any(not isinstance(scores.get(c), int) or not 1 <= scores[c] <= 5 for c in criteria):
        raise JudgeError(f"judge reply lacks a 1-5 integer score for each of {list(criteria)}: {scores!r}")
    if value.get("verdict") not in ("pass", "fail"):
        raise JudgeError(f"judge verdict must be 'pass' or 'fail', got {value.get('verdict')!r}")
    picked = {c: scores[c] for c in criteria}
    return {"scores": picked, "reasons": value.get("reasons") or {}, "verdict": value["verdict"],
            "mean": sum(picked.values()) / len(picked)}


def judge_results(results: list[EvalResult], config: dict[str, Any], schema: dict[str, Any] | None,
                  backend: EndpointBackend | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Rubric verdicts for every result, also stored as `scores["judge"]`; keyed by (sample_id, mode)."""
    backend = backend or judge_backend(config)
    criteria = tuple(config.get("criteria") or DEFAULT_CRITERIA)
    conversations = [rubric_messages(Sample.model_validate(r.sample), r.raw, criteria, schema) for r in results]
    replies = backend.generate_chats(conversations, json_schema_format(verdict_schema(criteria), "verdict"))
    verdicts = {}
    for result, reply in zip(results, replies):
        try:
            verdict = parse_verdict(reply.text, criteria) if not reply.error else {"error": reply.error}
        except JudgeError as err:
            verdict = {"error": str(err)}
        result.scores["judge"] = verdict
        verdicts[(result.sample_id, result.mode)] = verdict
    return verdicts


PAIR_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["1", "2", "tie"]},
                                                "reason": {"type": "string"}}, "required": ["winner"]}


def pairwise_messages(sample: Sample, first: str, second: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You compare two answers to one task. Reply with JSON only: "
                                      "{\"winner\": \"1\"|\"2\"|\"tie\", \"reason\": \"...\"}."},
        {"role": "user", "content": f"Task:\n{sample.prompt}\n\nReference answer:\n{sample.output}\n\n"
                                    f"Answer 1:\n{first}\n\nAnswer 2:\n{second}\n\nWhich answer is better?"},
    ]


def _winner(text: str) -> str | None:
    value, _ = find_json(text)
    winner = value.get("winner") if isinstance(value, dict) else None
    return winner if winner in ("1", "2", "tie") else None


def judge_pairs(backend: EndpointBackend, items: Sequence[tuple[Sample, str, str]]) -> list[dict[str, Any]]:
    """For (sample, baseline answer, candidate answer): "baseline" | "candidate" | "tie", judged in both orders."""
    forward = [pairwise_messages(s, a, b) for s, a, b in items]
    backward = [pairwise_messages(s, b, a) for s, a, b in items]
    replies = backend.generate_chats(forward + backward, json_schema_format(PAIR_SCHEMA, "pairwise"))
    outcomes = []
    for index, (sample, _a, _b) in enumerate(items):
        first, second = _winner(replies[index].text), _winner(replies[len(items) + index].text)
        # first order: "1" is the baseline; second order: "1" is the candidate
        as_named = ({"1": "baseline", "2": "candidate"}.get(first or "", "tie"),
                    {"1": "candidate", "2": "baseline"}.get(second or "", "tie"))
        winner = as_named[0] if as_named[0] == as_named[1] else "tie"
        outcomes.append({"sample_id": sample.id, "winner": winner, "orders": list(as_named)})
    return outcomes


def review_queue(results: list[EvalResult], verdicts: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows a human should look at: boundary cases, and judge/metric disagreements."""
    queue = []
    for result in results:
        sample = Sample.model_validate(result.sample)
        reasons = []
        if result.mode == "unconstrained" and (sample.sample_type == "boundary" or sample.expected == "refuse"):
            reasons.append("boundary")
        verdict = verdicts.get((result.sample_id, result.mode)) or {}
        if verdict.get("verdict") == "pass" and not result.scores["ok"]:
            reasons.append("judge passed, metrics failed")
        if verdict.get("verdict") == "fail" and result.scores["ok"]:
            reasons.append("judge failed, metrics passed")
        if reasons:
            queue.append({"sample_id": result.sample_id, "mode": result.mode, "reasons": reasons,
                          "prompt": sample.prompt, "expected": sample.output, "expected_behaviour": sample.expected,
                          "actual": result.raw, "metrics_ok": result.scores["ok"], "judge": verdict or None,
                          "source_id": sample.lineage.source_id})
    return queue
