"""Langfuse objects → tuneloop records: a trace and its generation → `records.Trace`, a score → a feedback row.

Both API generations land here as plain dicts with Langfuse's own (camelCase) keys:

```
v3 (self-hosted)  GET /api/public/traces item      id, timestamp, name, userId, sessionId, release, version, tags,
                                                     metadata, latency (s), totalCost
                  GET /api/public/observations item type GENERATION: model, modelParameters, input, output,
                                                     usage / usageDetails, calculatedTotalCost / costDetails,
                                                     startTime, endTime, latency (s), level, statusMessage, metadata
v4 (Cloud)        GET /api/public/v2/observations   one generation carries its trace's context too: userId,
                                                     sessionId, tags, release, traceName; input/output come as
                                                     raw JSON text
scores            v2: value (1/0 for BOOLEAN), stringValue; v3: value typed by dataType, subject {kind, id, traceId}
```

A score's value becomes the feedback `score`: NUMERIC as is, BOOLEAN 1/0, CATEGORICAL its configured numeric
mapping when Langfuse has one (else no score). The words are kept in the `comment`: `category: <label>`,
`text: <value>`, `correction: <value>` before the score's own comment, so nothing a reviewer wrote is lost.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from tuneloop.records import Trace
from tuneloop.serve.outcome import judge_output

SMOKE_TAG = "tuneloop-smoke"


def timestamp(value: Any) -> float | None:
    """Unix seconds of a Langfuse time (ISO 8601 text with Z, or a datetime the SDK parsed).

    >>> timestamp("2026-01-02T03:04:05.500Z")
    1767323045.5
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def iso(seconds: float) -> str:
    """The ISO 8601 form Langfuse's query parameters take.

    >>> iso(1767323045.5)
    '2026-01-02T03:04:05.500Z'
    """
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _maybe_json(value: Any) -> Any:
    """v2 observations return input/output as raw text: JSON text becomes its value, other text stays text."""
    if isinstance(value, str) and value[:1] in ("[", "{", '"'):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _content_text(content: Any) -> str:
    """An OpenAI message content: text, or a list of parts whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return json.dumps(content, ensure_ascii=False)


def messages_from_input(value: Any) -> list[dict[str, Any]]:
    """The prompt as the model saw it, system message included.

    >>> messages_from_input('[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]')
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
    >>> messages_from_input({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    [{'role': 'user', 'content': 'hi'}]
    >>> messages_from_input("plain prompt")
    [{'role': 'user', 'content': 'plain prompt'}]
    """
    value = _maybe_json(value)
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return [{**m, "content": _content_text(m.get("content"))} for m in value]
    if value is None or value == "" or value == []:
        return []
    return [{"role": "user", "content": value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}]


def output_text(value: Any) -> tuple[str, str | None]:
    """(the answer's text, the finish reason when the output carries one).

    >>> output_text({"role": "assistant", "content": '{"a": 1}'})
    ('{"a": 1}', None)
    >>> output_text({"choices": [{"message": {"content": "ok"}, "finish_reason": "length"}]})
    ('ok', 'length')
    >>> output_text({"a": 1})
    ('{"a": 1}', None)
    """
    value = _maybe_json(value)
    if value is None:
        return "", None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
        value = value["choices"]
    if isinstance(value, list) and value and isinstance(value[0], dict) and ("message" in value[0] or "text" in value[0]):
        choice = value[0]
        message = choice.get("message") or {}
        return _content_text(message.get("content") if message else choice.get("text")), choice.get("finish_reason")
    if isinstance(value, dict) and "content" in value and set(value) <= {"role", "content", "refusal", "tool_calls",
                                                                          "function_call", "audio", "annotations"}:
        return _content_text(value["content"]), None
    # a structured answer the application logged as an object: JSON text, as every tuneloop output is
    return json.dumps(value, ensure_ascii=False), None


def _tokens(generation: dict[str, Any]) -> tuple[int, int]:
    usage = generation.get("usageDetails") or generation.get("usage") or {}
    prompt = usage.get("input", usage.get("prompt_tokens", usage.get("promptTokens")))
    completion = usage.get("output", usage.get("completion_tokens", usage.get("completionTokens")))
    return int(prompt or 0), int(completion or 0)


def _cost(generation: dict[str, Any], trace: dict[str, Any]) -> float | None:
    for value in (generation.get("totalCost"), (generation.get("costDetails") or {}).get("total"),
                  generation.get("calculatedTotalCost"), trace.get("totalCost")):
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _latency_ms(generation: dict[str, Any], trace: dict[str, Any]) -> float:
    seconds = generation.get("latency")
    if not isinstance(seconds, (int, float)):
        start, end = timestamp(generation.get("startTime")), timestamp(generation.get("endTime"))
        seconds = end - start if start is not None and end is not None else trace.get("latency")
    return float(seconds or 0.0) * 1000


def _response_format(generation: dict[str, Any]) -> dict[str, Any] | None:
    value = _maybe_json((generation.get("modelParameters") or {}).get("response_format"))
    return value if isinstance(value, dict) else None


def last_generation(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """The generation whose answer the trace ended with (latest start; the last of equals)."""
    return max(enumerate(generations), key=lambda pair: (timestamp(pair[1].get("startTime")) or 0.0, pair[0]))[1]


def to_trace(trace: dict[str, Any], generations: list[dict[str, Any]]) -> Trace:
    """One Langfuse trace as tuneloop keeps it: the prompt, answer, model and usage of its last generation; user,
    session, tags and release of the trace (`trace_of_generations` builds that dict for v4)."""
    generation = last_generation(generations)
    metadata = {**(trace.get("metadata") if isinstance(trace.get("metadata"), dict) else {}),
                **(generation.get("metadata") if isinstance(generation.get("metadata"), dict) else {})}
    # some SDKs log the prompt and answer on the trace only: the generation's own win where it has them
    answer = generation.get("output") if generation.get("output") is not None else trace.get("output")
    text, finish = output_text(answer)
    finish = metadata.get("finish_reason") or metadata.get("finishReason") or finish
    response_format = _response_format(generation)
    outcome = judge_output(text, response_format)
    prompt_tokens, completion_tokens = _tokens(generation)
    tags = list(trace.get("tags") or [])
    trace_id = trace["id"]
    error = None
    if generation.get("level") == "ERROR":
        error = generation.get("statusMessage") or "the generation is marked ERROR in Langfuse"
    created = timestamp(trace.get("timestamp")) or timestamp(generation.get("startTime")) or 0.0
    return Trace(
        id=f"langfuse:{trace_id}", source_id=f"langfuse:{trace_id}", created_at=created,
        model=generation.get("model") or metadata.get("model") or "unknown",
        model_version=generation.get("version") or trace.get("version") or trace.get("release"),
        messages=messages_from_input(generation.get("input")) or messages_from_input(trace.get("input")),
        output=text, response_format=response_format,
        latency_ms=_latency_ms(generation, trace), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        json_valid=outcome.json_valid, schema_valid=outcome.schema_valid, refusal=outcome.refusal,
        finish_reason=finish, user=trace.get("userId"), session_id=trace.get("sessionId"), tags=tags or None,
        cost=_cost(generation, trace), error=error,
        smoke=SMOKE_TAG in tags or metadata.get("tuneloop_smoke") in (True, "1", "true"),
        name=trace.get("name"),
        release=trace.get("release"), environment=trace.get("environment") or generation.get("environment"),
        generation_id=generation.get("id"), generations=len(generations),
    )


def trace_of_generations(generations: list[dict[str, Any]]) -> dict[str, Any]:
    """v4 has no trace objects: the trace context every v2 observation carries (trace_context and basic fields),
    timed by its first generation."""
    first = min(generations, key=lambda g: timestamp(g.get("startTime")) or 0.0)
    return {"id": first["traceId"], "timestamp": first.get("startTime"), "name": first.get("traceName"),
            "userId": first.get("userId"), "sessionId": first.get("sessionId"), "tags": first.get("tags"),
            "release": first.get("release"), "environment": first.get("environment")}


def score_trace_id(score: dict[str, Any]) -> str | None:
    """The Langfuse trace a score belongs to (v2: traceId; v3: its subject), None for a session/experiment score."""
    if score.get("traceId"):
        return score["traceId"]
    subject = score.get("subject") or {}
    if subject.get("kind") == "trace":
        return subject.get("id")
    if subject.get("kind") == "observation":
        return subject.get("traceId")
    return None


def feedback_row(score: dict[str, Any]) -> dict[str, Any]:
    """A score as a feedback row: name, numeric score (or None), comment with the words, origin id, time.

    >>> row = feedback_row({"id": "s1", "traceId": "t1", "name": "user-feedback", "dataType": "BOOLEAN",
    ...                     "value": False, "comment": "wrong date", "timestamp": "2026-01-02T03:04:05.500Z"})
    >>> row["score"], row["comment"], row["source_id"], row["trace"]
    (0.0, 'wrong date', 'langfuse-score:s1', 't1')
    """
    kind = (score.get("dataType") or "NUMERIC").upper()
    value, words = score.get("value"), score.get("stringValue")
    number: float | None = None
    if kind == "BOOLEAN":
        if isinstance(value, str):
            value = value.strip().lower() in ("true", "1")
        number = 1.0 if value else 0.0
    elif kind == "NUMERIC":
        number = float(value) if isinstance(value, (int, float)) else None
    elif kind == "CATEGORICAL":
        words = words if words is not None else (value if isinstance(value, str) else None)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    else:  # TEXT, CORRECTION: the value is words
        words = words if words is not None else value
    label = {"CATEGORICAL": "category", "TEXT": "text", "CORRECTION": "correction"}.get(kind)
    parts = [f"{label}: {words}"] if label and words not in (None, "") else []
    if score.get("comment"):
        parts.append(score["comment"])
    return {"trace": score_trace_id(score), "name": score.get("name"), "score": number,
            "comment": "; ".join(parts) or None, "source_id": f"langfuse-score:{score['id']}",
            "created_at": timestamp(score.get("timestamp")) or timestamp(score.get("createdAt")) or 0.0}
