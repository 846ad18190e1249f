"""Rewards for strict JSON answers, with TRL's reward signature: `reward(completions, **columns) -> list[float | None]`.

```
completion ──text──▶ parses? (json_parses) ─▶ fits the schema? (schema_valid) ─▶ required keys? (required_fields)
   │                 wrapped in prose or a fence? (no_noise)   agrees with the reference, field by field? (field_agreement)
   │                 refuses when it must, answers when it must? (refusal_correct)   cut by the length limit? (not_truncated)
   └─ the practice's own score in one number (practice): 1.0 / 0.5 / -1.0 / -0.5
weights (align.rewards, or an align.preset) ──▶ total = Σ weight × reward over the rewards that apply
```

A completion is a string or TRL's conversational list `[{"role": "assistant", "content": ...}]`. The data columns
arrive as keyword lists, one value per completion, as `GRPOTrainer` passes them: `output` (the reference answer),
`expected` (answer | refuse), `sample_type`, `output_schema` (a row's inline JSON Schema, as a dict or JSON text).
What is not a column is bound once by `bound_rewards`: the task's schema (`task_schema`) and the model's end
tokens (`eos_token_ids`). A completion was cut by the length limit when `truncated` says so (best-of-N passes the
backend's finish reason) or when its `completion_ids` (TRL passes them) do not end in an end token.

A reward returns None where it does not apply (no schema, a sample that need not refuse, a length nobody knows);
TRL leaves such a reward out of that completion's sum, and so does `score`.

Every reading of an answer is `tuneloop.answers` (parse, find the JSON and its noise, the refusal rule with the
schema's `x-refusal` form) and every field comparison is eval's (`tuneloop.eval.metrics.field_scores`), so a
reward agrees with what eval and serving count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.answers import MISSING, find_json, is_refusal, parse_json, refusal_form, schema_errors, schema_validator
from tuneloop.eval.metrics import field_scores

Reward = Callable[..., list[float | None]]

PRESETS: dict[str, dict[str, float]] = {
    # every check; the length penalty weighs as much as parsing, and refusing right more than the format of the
    # answer, so a prose refusal of an out-of-scope prompt outranks a well-formed answer that should not exist
    # (tool_call scores only rows with `tools`: a call's function, arguments' schema and values, or abstaining)
    "strict": {"json_parses": 1.0, "schema_valid": 1.0, "required_fields": 0.5, "no_noise": 0.5,
               "field_agreement": 1.0, "refusal_correct": 2.0, "not_truncated": 1.0, "tool_call": 1.0},
    # the practice's own example in one reward: 1.0 / 0.5 / -1.0 / -0.5
    "practice": {"practice": 1.0},
    # only the format: parse, schema, noise and length, for prompts without reference answers
    "format": {"json_parses": 1.0, "schema_valid": 1.0, "no_noise": 0.5, "not_truncated": 1.0},
}


def completion_text(completion: Any) -> str:
    """The answer text of a completion: a string, or the last assistant message of a conversational completion.

    >>> completion_text([{"role": "assistant", "content": '{"a": 1}'}])
    '{"a": 1}'
    >>> completion_text('{"a": 1}')
    '{"a": 1}'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        answers = [m for m in completion if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"]
        return str(answers[-1].get("content") or "") if answers else ""
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")


@dataclass
class Row:
    """What the rewards know about one completion: its text, the JSON in it, and its sample's columns."""

    text: str
    strict: Any  # the whole text as one JSON value, MISSING when it is not one
    found: Any  # the first JSON object/array in the text, MISSING when there is none
    noise: list[str]
    reference: Any  # the reference answer as JSON, MISSING when there is none or it is no JSON object/array
    reference_text: str
    must_refuse: bool
    boundary: bool
    schema: dict[str, Any] | None
    truncated: bool | None

    @property
    def checks_schema(self) -> bool:
        return self.schema is not None and not self.must_refuse


def sample_columns(sample: Any) -> dict[str, Any]:
    """The columns the rewards read, from one sample (best-of-N repeats them per candidate; GRPO's dataset holds
    them per prompt). Schemas and tools travel as JSON text, so every row of an Arrow column has one type.

    >>> from tuneloop.records import Sample
    >>> columns = sample_columns(Sample(instruction="Weather in Oslo?", output='{"name": "weather", "arguments": {}}',
    ...                                 tools=[{"name": "weather", "parameters": {"type": "object"}}]))
    >>> columns["tools"], columns["expected"]
    ('[{"name": "weather", "parameters": {"type": "object"}}]', 'answer')
    """
    extras = sample.model_extra or {}
    schema, tools = sample.output_schema, extras.get("tools")
    return {"output": sample.output, "expected": sample.expected, "sample_type": sample.sample_type,
            "output_schema": json.dumps(schema) if isinstance(schema, dict) else schema,
            "tools": tools if tools is None or isinstance(tools, str) else json.dumps(tools, ensure_ascii=False),
            "answer_kind": extras.get("answer_kind"), "turn_roles": extras.get("turn_roles")}


def _column(columns: Mapping[str, Any], name: str, index: int) -> Any:
    values = columns.get(name)
    return values[index] if isinstance(values, (list, tuple)) and index < len(values) else None


def _schema_of(value: Any, task_schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row's inline schema (a dict, or JSON text of one), else the task's (a schema name means the task's)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        ok, parsed = parse_json(value)
        if ok and isinstance(parsed, dict):
            return parsed
    return task_schema


def _truncated(columns: Mapping[str, Any], index: int, eos_token_ids: Sequence[int] | None) -> bool | None:
    flag = _column(columns, "truncated", index)
    if isinstance(flag, bool):
        return flag
    finish = _column(columns, "finish_reason", index)
    if isinstance(finish, str):
        return finish == "length"
    ids = _column(columns, "completion_ids", index)
    if ids is not None and eos_token_ids:
        ids = list(ids)
        return not ids or ids[-1] not in set(eos_token_ids)  # TRL keeps the end token of a finished completion
    return None


def rows_of(completions: Sequence[Any], columns: Mapping[str, Any]) -> list[Row]:
    """One `Row` per completion from TRL's keyword columns (and the bound `task_schema` / `eos_token_ids`)."""
    task_schema = columns.get("task_schema")
    eos = columns.get("eos_token_ids")
    rows = []
    for index, completion in enumerate(completions):
        text = completion_text(completion)
        ok, strict = parse_json(text)
        found, noise = find_json(text)
        reference_text = _column(columns, "output", index) or ""
        if not isinstance(reference_text, str):
            reference_text = json.dumps(reference_text, ensure_ascii=False)
        has_reference, reference = parse_json(reference_text)
        rows.append(Row(
            text=text, strict=strict if ok else MISSING, found=found, noise=noise,
            reference=reference if has_reference and isinstance(reference, (dict, list)) else MISSING,
            reference_text=reference_text, must_refuse=_column(columns, "expected", index) == "refuse",
            boundary=_column(columns, "sample_type", index) == "boundary",
            schema=_schema_of(_column(columns, "output_schema", index), task_schema),
            truncated=_truncated(columns, index, eos),
        ))
    return rows


def _json_task(row: Row) -> bool:
    """The answer must be JSON: the task has a schema, the reference is JSON, or there is no reference to say."""
    return row.schema is not None or row.reference is not MISSING or not row.reference_text.strip()


def json_parses(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 when the whole completion is one JSON value (strict: no prose, no fence), else 0.0.

    >>> json_parses(['{"id": "A1"}', 'Here is the JSON: {"id": "A1"}', '{"id": "A1"'])
    [1.0, 0.0, 0.0]
    """
    return [(1.0 if r.strict is not MISSING else 0.0) if _json_task(r) else None for r in rows_of(completions, columns)]


def schema_valid(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 when the completion is JSON valid under the task's (or the row's own) schema, else 0.0; None without a
    schema or on a sample that must refuse (as eval counts schema_valid).

    >>> schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    >>> schema_valid(['{"n": 3}', '{"n": "3"}', 'n = 3'], task_schema=schema)
    [1.0, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        if not row.checks_schema:
            scores.append(None)
        elif row.strict is MISSING:
            scores.append(0.0)
        else:
            scores.append(0.0 if schema_errors(schema_validator(row.schema), row.strict) else 1.0)
    return scores


def required_keys(row: Row) -> list[str] | None:
    """The keys the answer's object must have: the schema's top-level `required`, else the reference's keys."""
    if isinstance(row.schema, dict) and isinstance(row.schema.get("required"), list):
        return [str(k) for k in row.schema["required"]]
    if isinstance(row.reference, dict):
        return list(row.reference)
    return None


def required_fields(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The share of required keys the parsed answer has (partial credit); 0.0 when it is no JSON object; None
    when nothing says which keys are required, or the sample must refuse.

    >>> schema = {"type": "object", "required": ["id", "email"]}
    >>> required_fields(['{"id": "A1", "email": null}', '{"id": "A1"}', '["A1"]'], task_schema=schema)
    [1.0, 0.5, 0.0]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        keys = required_keys(row)
        if keys is None or row.must_refuse:
            scores.append(None)
        elif not isinstance(row.strict, dict):
            scores.append(0.0)
        else:
            scores.append(sum(k in row.strict for k in keys) / len(keys) if keys else 1.0)
    return scores


def no_noise(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """1.0 for a bare JSON answer; a third less for each kind of wrapping (prefix prose, code fence, suffix);
    0.0 when there is no JSON object or array at all. None where the answer need not be JSON.

    >>> scores = no_noise(['{"a": 1}', '```json\\n{"a": 1}\\n```', 'Here is the JSON:\\n```json\\n{"a": 1}\\n``` Done.', 'no'])
    >>> [round(s, 3) for s in scores]
    [1.0, 0.667, 0.0, 0.0]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        if not _json_task(row):
            scores.append(None)
        elif row.found is MISSING:
            scores.append(0.0)
        else:
            scores.append(1.0 - len(set(row.noise)) / 3)
    return scores


def field_agreement(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The share of the reference's fields the parsed answer gets right (eval's normalized field comparison:
    case, width and spacing folded, numbers by value); an answer that is not JSON gets none. None without a JSON
    reference, or on a sample that must refuse.

    >>> ref = '{"id": "A1", "email": "x@y.z"}'
    >>> field_agreement(['{"id": "a1", "email": "x@y.z"}', '{"id": "A1", "email": "q@y.z"}', 'id: A1'], output=[ref] * 3)
    [1.0, 0.5, 0.0]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        if row.reference is MISSING or row.must_refuse:
            scores.append(None)
            continue
        fields = field_scores(row.reference, row.strict, row.schema)
        scores.append(sum(normalized for _, normalized in fields.values()) / len(fields) if fields else 1.0)
    return scores


def refusal_correct(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """On boundary samples and samples that must refuse: 1.0 when the answer refuses exactly when it must (the one
    refusal rule, with the schema's `x-refusal` form), else 0.0. None on other samples, as eval counts refusal_ok.

    >>> schema = {"type": "object", "x-refusal": {"intent": "out_of_scope"}}
    >>> refusal_correct(['{"intent": "out_of_scope"}', '{"intent": "order"}', '{"intent": "order"}'],
    ...                 expected=["refuse", "refuse", "answer"], sample_type=["boundary"] * 3, task_schema=schema)
    [1.0, 0.0, 1.0]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        if not (row.boundary or row.must_refuse):
            scores.append(None)
            continue
        refused = is_refusal(row.text, row.found, refusal_form(row.schema))
        scores.append(1.0 if refused == row.must_refuse else 0.0)
    return scores


def not_truncated(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """-1.0 for a completion cut by the length limit, 0.0 for one that ended by itself; None when nobody knows.

    >>> not_truncated(['{"a": 1}', '{"a": '], truncated=[False, True])
    [0.0, -1.0]
    >>> not_truncated(['{"a": 1}', '{"a": '], completion_ids=[[7, 2], [7, 8]], eos_token_ids=[2])
    [0.0, -1.0]
    """
    return [None if r.truncated is None else (-1.0 if r.truncated else 0.0) for r in rows_of(completions, columns)]


def practice(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """The practice's own score: a JSON object with the required keys 1.0, one without them 0.5, a JSON decode
    error -1.0, any other error (JSON that is no object, so no key can be looked up) -0.5. Required keys come from
    the schema's `required`, else the reference's keys, else none.

    >>> schema = {"type": "object", "required": ["id"]}
    >>> practice(['{"id": "A1"}', '{"name": "A1"}', '{"id": "A1"', '["A1"]'], task_schema=schema)
    [1.0, 0.5, -1.0, -0.5]
    """
    scores: list[float | None] = []
    for row in rows_of(completions, columns):
        if row.strict is MISSING:
            scores.append(-1.0)
        elif not isinstance(row.strict, dict):
            scores.append(-0.5)
        else:
            scores.append(1.0 if all(k in row.strict for k in required_keys(row) or []) else 0.5)
    return scores


REWARDS: dict[str, Reward] = {fn.__name__: fn for fn in (
    json_parses, schema_valid, required_fields, no_noise, field_agreement, refusal_correct, not_truncated, practice)}


class RewardConfigError(ValueError):
    """Reward weights that cannot be used, naming what to change."""


def reward_weights(preset: str | None = "strict", rewards: Mapping[str, float] | None = None) -> dict[str, float]:
    """The weight of each reward: `rewards` when given (align.rewards), else the preset's (align.preset).

    >>> reward_weights("practice")
    {'practice': 1.0}
    >>> reward_weights("strict", {"json_parses": 2.0, "not_truncated": 1.0})
    {'json_parses': 2.0, 'not_truncated': 1.0}
    """
    if rewards:
        unknown = sorted(set(rewards) - set(REWARDS))
        if unknown:
            raise RewardConfigError(f"align.rewards: unknown reward {', '.join(unknown)}; use {', '.join(REWARDS)}")
        return {name: float(weight) for name, weight in rewards.items()}
    if preset not in PRESETS:
        raise RewardConfigError(f"align.preset {preset!r}: use one of {', '.join(PRESETS)}, or list align.rewards")
    return dict(PRESETS[preset])


def configured_weights(align: Any) -> dict[str, float]:
    """The weights `tuneloop.yaml`'s align: section asks for (`align.rewards`, else `align.preset`)."""
    return reward_weights(align.preset, align.rewards)


def bound_rewards(weights: Mapping[str, float], task_schema: dict[str, Any] | None = None,
                  eos_token_ids: Sequence[int] | None = None) -> tuple[list[Reward], list[float]]:
    """The reward functions and their weights for TRL (`reward_funcs`, `GRPOConfig.reward_weights`), each bound
    to the task's schema and the model's end tokens; each keeps its name, so TRL logs `rewards/<name>`."""
    functions: list[Reward] = []
    for name in weights:
        base = REWARDS[name]

        def bound(completions: Sequence[Any], _base: Reward = base, **columns: Any) -> list[float | None]:
            columns.setdefault("task_schema", task_schema)
            columns.setdefault("eos_token_ids", list(eos_token_ids) if eos_token_ids else None)
            return _base(completions, **columns)

        bound.__name__ = bound.__qualname__ = name
        bound.__doc__ = base.__doc__
        functions.append(bound)
    return functions, [float(weights[name]) for name in weights]


def score(completions: Sequence[Any], weights: Mapping[str, float], **columns: Any) -> list[dict[str, Any]]:
    """Every weighted reward of every completion and their total (rewards that do not apply left out, as TRL does).

    >>> [s["total"] for s in score(['{"id": "A1"}', 'Sure! {"id": "A1"}'], {"json_parses": 1.0, "practice": 0.5},
    ...                            output=['{"id": "A1"}'] * 2)]
    [1.5, -0.5]
    """
    results: list[dict[str, Any]] = [{"rewards": {}, "total": 0.0} for _ in completions]
    for name, weight in weights.items():
        for result, value in zip(results, REWARDS[name](completions, **columns)):
            result["rewards"][name] = value
            if value is not None:
                result["total"] = round(result["total"] + weight * value, 6)
    return results


def tool_call(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Function calling: where a call is expected, a third each for the right function, schema-valid arguments and
    arguments that agree with the reference (eval's AST match); where none is expected, 1.0 for answering without
    a call and -1.0 for calling. None for a row without `tools`. Columns: `tools`, `output`, `answer_kind`
    (or `turn_roles`), as the samples hold them.

    >>> tools = ['[{"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "number"}}}}]'] * 3
    >>> tool_call(['{"name": "f", "arguments": {"n": 5.0}}', '{"name": "f", "arguments": {"n": "x"}}', 'no'],
    ...           tools=tools, output=['{"name": "f", "arguments": {"n": 5}}'] * 3, answer_kind=["tool_calls"] * 3)
    [1.0, 0.333333, 0.0]
    """
    from tuneloop.eval.tool_metrics import tool_scores
    from tuneloop.records import Sample

    values: list[float | None] = []
    for index, completion in enumerate(completions):
        row = {name: _column(columns, name, index) for name in ("tools", "output", "answer_kind", "turn_roles")}
        if row["tools"] in (None, ""):
            values.append(None)
            continue
        sample = Sample(instruction="-", **{k: v for k, v in row.items() if v is not None})
        scores = tool_scores(sample, completion_text(completion))
        if scores.get("tool_call_made") is None:
            values.append(1.0 if scores.get("tool_abstained") else -1.0)
            continue
        parts = (scores["tool_name_ok"], bool(scores.get("tool_call_valid")), scores["tool_args_ast"])
        values.append(round(sum(parts) / 3, 6))
    return values


REWARDS[tool_call.__name__] = tool_call  # usable by name in align.rewards (best-of-N, DPO candidates, GRPO)
