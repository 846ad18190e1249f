"""LLM-as-judge through any OpenAI-compatible endpoint, and the human review queue.

Rubric judging: the judge scores one answer 1-5 on each criterion and returns a JSON verdict
`{"scores": {criterion: 1-5}, "reasons": {criterion: text}, "verdict": "pass" | "fail"}`, asked for with
`response_format` json_schema and checked again here (a judge that breaks the form, or a call that fails after
the client's retries, is recorded as an error and counted in `judge_errors`, never guessed at or scored 0).

Pairwise judging: the judge sees the two answers in both orders; a winner counts only when both orders agree,
otherwise the pair is a tie (this cancels the judge's preference for the first or second position).

Review queue: boundary cases (must-refuse / must-answer), and every answer where the judge and the metrics
disagree (judge passes an answer the metrics fail, or fails one they pass), go to `review_queue.jsonl` for a human.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneloop.eval.backends import EndpointBackend, Generation, json_schema_format
from tuneloop.eval.journal import Journal
from tuneloop.answers import MISSING, find_json
from tuneloop.progress import progress_bar, say
from tuneloop.records import EvalResult, Sample, content_hash

DEFAULT_CRITERIA = ("correctness", "completeness", "format")
CRITERIA_HELP = {
    "correctness": "every value the answer states is right for the input",
    "completeness": "every field the task asks for is present and filled when the input has it",
    "format": "the answer is exactly the JSON the task asks for, with no extra text",
}
PASS_MEAN = 4.0


class JudgeError(ValueError):
    """A judge reply that is not the verdict asked for."""


def verdict_budget(criteria: Sequence[str]) -> tuple[int, str]:
    """max_tokens of a rubric verdict: a score and a one-sentence reason per criterion, and the JSON around them."""
    return 48 + 80 * len(criteria), f"48 for the verdict JSON + 80 per criterion (a score and a one-sentence reason) x {len(criteria)}"


def judge_backend(config: dict[str, Any], max_tokens: int | None = None) -> EndpointBackend:
    """The judge endpoint from `eval.judge` in tuneloop.yaml: {base_url, model, api_key_env, concurrency, max_tokens}."""
    if not config.get("base_url"):
        raise JudgeError("eval.judge needs base_url (an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1).")
    key_env = config.get("api_key_env")
    if key_env and not os.environ.get(key_env):
        raise JudgeError(f"eval.judge.api_key_env {key_env}: that environment variable is not set; export the judge's key.")
    budget = int(config.get("max_tokens") or max_tokens or verdict_budget(DEFAULT_CRITERIA)[0])
    return EndpointBackend(config["base_url"], config.get("model", "judge"),
                           api_key=os.environ.get(key_env) if key_env else None,
                           concurrency=int(config.get("concurrency", 4)), max_tokens=budget)


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
                  backend: EndpointBackend | None = None, out_dir: str | Path | None = None, progress: bool = False,
                  fresh: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """Rubric verdicts for every answered result, also stored as `scores["judge"]`; keyed by (sample_id, mode).

    A judge call that fails, or a reply that is not the verdict form, is `{"error": ...}`: counted as a judge error,
    never a score. A configuration error of the judge endpoint stops the run. With `out_dir`, verdicts are
    journaled in out_dir/judge.jsonl as they arrive and a rerun asks only for the missing ones.
    """
    criteria = tuple(config.get("criteria") or DEFAULT_CRITERIA)
    budget, reason = verdict_budget(criteria)
    backend = backend or judge_backend(config, budget)
    answered = [r for r in results if not getattr(r, "error", None)]  # a failed request has no answer to judge
    key = content_hash(backend.endpoint.base_url, backend.model, backend.max_tokens, criteria, schema, length=24)
    journal = Journal(Path(out_dir) / "judge.jsonl", key, fresh=fresh) if out_dir is not None else None
    item = [f"{r.mode}:{r.sample_id}:{content_hash(r.raw, r.sample)}" for r in answered]
    todo = [i for i in range(len(answered)) if journal is None or item[i] not in journal.done]
    stored: dict[int, dict[str, Any]] = {}

    def arrived(j: int, reply: Generation) -> None:
        index = todo[j]
        verdict = _verdict(reply, criteria)
        stored[index] = verdict
        if journal is not None and "error" not in verdict:
            journal.append([(item[index], {"verdict": verdict})])

    with progress_bar(progress) as bar:
        if progress:
            say(f"judge max_tokens {backend.max_tokens}: " + (reason if backend.max_tokens == budget else "set in eval.judge"))
        advance = bar("judge", len(answered), completed=len(answered) - len(todo))
        conversations = [rubric_messages(Sample.model_validate(answered[i].sample), answered[i].raw, criteria, schema)
                         for i in todo]
        backend.generate_chats(conversations, json_schema_format(verdict_schema(criteria), "verdict"), advance, arrived)
    verdicts = {}
    for index, result in enumerate(answered):
        verdict = stored[index] if index in stored else journal.done[item[index]]["verdict"]  # type: ignore[union-attr]
        result.scores["judge"] = verdict
        verdicts[(result.sample_id, result.mode)] = verdict
    return verdicts


def _verdict(reply: Generation, criteria: Sequence[str]) -> dict[str, Any]:
    if reply.error:
        return {"error": reply.error}
    try:
        return parse_verdict(reply.text, criteria)
    except JudgeError as err:
        return {"error": str(err)}


PAIR_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["1", "2", "tie"]},
                                                "reason": {"type": "string"}}, "required": ["winner"]}


def pairwise_messages(sample: Sample, first: str, second: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You compare two answers to one task. Reply with JSON only: "
                                      "{\"winner\": \"1\"|\"2\"|\"tie\", \"reason\": \"...\"}."},
        {"role": "user", "content": f"Task:\n{sample.prompt}\n\nReference answer:\n{sample.output}\n\n"
                                    f"Answer 1:\n{first}\n\nAnswer 2:\n{second}\n\nWhich answer is better?"},
    ]


def _winner(reply: Generation) -> str | None:
    if reply.error:
        return None
    value, _ = find_json(reply.text)
    winner = value.get("winner") if isinstance(value, dict) else None
    return winner if winner in ("1", "2", "tie") else None


def judge_pairs(backend: EndpointBackend, items: Sequence[tuple[Sample, str, str]], progress: bool = False) -> list[dict[str, Any]]:
    """For (sample, baseline answer, candidate answer): "baseline" | "candidate" | "tie", judged in both orders.

    When a call fails or a reply names no winner, the pair's winner is None with `error` saying why: an error is
    not a tie.
    """
    forward = [pairwise_messages(s, a, b) for s, a, b in items]
    backward = [pairwise_messages(s, b, a) for s, a, b in items]
    with progress_bar(progress) as bar:
        replies = backend.generate_chats(forward + backward, json_schema_format(PAIR_SCHEMA, "pairwise"),
                                         bar("pairwise judge", 2 * len(items)))
    outcomes = []
    for index, (sample, _a, _b) in enumerate(items):
        pair = (replies[index], replies[len(items) + index])
        first, second = _winner(pair[0]), _winner(pair[1])
        if first is None or second is None:
            why = "; ".join(r.error or f"no winner in the reply {r.text[:80]!r}" for r, w in zip(pair, (first, second)) if w is None)
            outcomes.append({"sample_id": sample.id, "winner": None, "orders": [], "error": why})
            continue
        # first order: "1" is the baseline; second order: "1" is the candidate
        as_named = ({"1": "baseline", "2": "candidate"}.get(first, "tie"),
                    {"1": "candidate", "2": "baseline"}.get(second, "tie"))
        winner = as_named[0] if as_named[0] == as_named[1] else "tie"
        outcomes.append({"sample_id": sample.id, "winner": winner, "orders": list(as_named)})
    return outcomes


def review_queue(results: list[EvalResult], verdicts: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows a human should look at: boundary cases, and judge/metric disagreements."""
    queue = []
    for result in results:
        if getattr(result, "error", None):  # no answer: it is in errors.jsonl, not a case for review
            continue
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
