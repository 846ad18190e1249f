"""Function calling: tool definitions, tool calls, and whether a call fits its function.

Every stage that sees a tool asks here (import, the gate, training's renderer, eval, serving, rewards), so a call
the gate accepts is a call eval scores and the server decodes.

```
tools     [{"type": "function", "function": F}, ...] or [F, ...] or their JSON text ──normalize_tools──▶ [F, ...]
          F = {"name": str, "description": str, "parameters": JSON Schema of the arguments object}
          stored on a Sample as the extra field `tools`: tools_text([F, ...]) (JSON text, the bare form)
call      {"name": str, "arguments": {...}}; an answer of calls is one call or a JSON list of calls (its text), or
          <tool_call> blocks of one call each (the hermes format)
          ──parse_calls──▶ [call, ...] | None   (arguments given as JSON text are decoded)
          ──call_text(calls, format)──▶ the answer as a model writes it in the json_block or hermes format
          ──canonical_calls──▶ one text per set of calls (keys sorted, 1.0 == 1): what dedup and leakage compare
          ──call_problems(calls, tools)──▶ ["unknown function 'x'", "get_weather: unit: 'K' is not one of ..."]
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tuneloop.answers import schema_errors, schema_validator
from tuneloop.records import EMPTY_PARAMETERS, ToolError, normalize_tools, tools_text

__all__ = ["EMPTY_PARAMETERS", "TOOL_CALLS", "ToolError", "normalize_tools", "tools_text"]  # records' own, re-exported

TOOL_CALLS = "tool_calls"  # Sample.extras["answer_kind"] of a row whose answer is one or more calls


def openai_tools(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The definitions as OpenAI's request shape (and transformers' `apply_chat_template(tools=...)`)."""
    return [{"type": "function", "function": dict(f)} for f in functions]


def _call(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
        value = value["function"]  # OpenAI's tool_calls element
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or set(value) - {"name", "arguments", "id"}:
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"], "arguments": arguments}


TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)  # the hermes format's call


def parse_calls(text: str | Any) -> list[dict[str, Any]] | None:
    """The calls an answer holds: one `{"name", "arguments"}` object or a list of them (json_block), or
    `<tool_call>` blocks holding them (hermes, Qwen2.5), with nothing but whitespace around the blocks; None when
    it holds none.

    >>> parse_calls('{"name": "f", "arguments": "{\\\\"a\\\\": 1}"}')
    [{'name': 'f', 'arguments': {'a': 1}}]
    >>> parse_calls('<tool_call>\\n{"name": "f", "arguments": {}}\\n</tool_call>\\n<tool_call>\\n{"name": "g"}\\n</tool_call>')
    [{'name': 'f', 'arguments': {}}, {'name': 'g', 'arguments': {}}]
    >>> parse_calls("It is sunny.") is None
    True
    """
    if isinstance(text, str) and "<tool_call>" in text:
        blocks = TOOL_CALL_BLOCK.findall(text)
        if not blocks or TOOL_CALL_BLOCK.sub("", text).strip():
            return None
        groups = [parse_calls(block) for block in blocks]
        return [c for group in groups for c in group] if all(g is not None for g in groups) else None  # type: ignore[union-attr]
    value = text
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def integral_as_int(value: Any) -> Any:
    """A parsed JSON value with integral floats as ints (1.0 and 1 are one answer); the gate's JSON answer key too.

    >>> integral_as_int({"a": [1.0, 2.5]})
    {'a': [1, 2.5]}
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: integral_as_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral_as_int(item) for item in value]
    return value


def canonical_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """One text per set of calls: keys sorted, integral floats as ints, always a list.

    >>> canonical_calls([{"name": "f", "arguments": {"b": 1.0, "a": "x"}}])
    '[{"arguments":{"a":"x","b":1},"name":"f"}]'
    """
    return json.dumps([integral_as_int({"name": c["name"], "arguments": c.get("arguments", {})}) for c in calls],
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def call_text(calls: Sequence[Mapping[str, Any]], fmt: str = "json_block") -> str:
    """How a model writes calls in a tuneloop tool format (train.templates renders the same text in its Jinja
    preludes): json_block, one call as an object and several as a list, keys in the order given; hermes, each call
    in its own <tool_call> block.

    >>> call_text([{"name": "f", "arguments": {"a": 1}}])
    '{"name": "f", "arguments": {"a": 1}}'
    >>> print(call_text([{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}], "hermes"))
    <tool_call>
    {"name": "f", "arguments": {}}
    </tool_call>
    <tool_call>
    {"name": "g", "arguments": {}}
    </tool_call>
    """
    items = [{"name": c["name"], "arguments": c.get("arguments", {})} for c in calls]
    if fmt == "hermes":
        return "\n".join(f"<tool_call>\n{json.dumps(item, ensure_ascii=False)}\n</tool_call>" for item in items)
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def by_name(functions: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {f["name"]: f for f in functions}


def call_problems(calls: Sequence[Mapping[str, Any]], functions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every way the calls break their functions: an unknown name, arguments that break the parameter schema.

    >>> fns = [{"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}]
    >>> call_problems([{"name": "g", "arguments": {}}], fns)
    ["unknown function 'g' (the row's tools: f)"]
    >>> call_problems([{"name": "f", "arguments": {"n": "3"}}], fns)
    ["f: n: '3' is not of type 'integer'"]
    """
    known = by_name(functions)
    problems: list[str] = []
    for call in calls:
        function = known.get(call["name"])
        if function is None:
            problems.append(f"unknown function '{call['name']}' (the row's tools: {', '.join(known) or 'none'})")
            continue
        validator = schema_validator(function.get("parameters") or EMPTY_PARAMETERS)
        problems.extend(f"{call['name']}: {error}" for error in schema_errors(validator, call.get("arguments", {})))
    return problems


# -- a Sample's side --------------------------------------------------------------------------------------------

def sample_tools(sample: Any) -> list[dict[str, Any]]:
    """The functions a sample offers its model (empty when it has none)."""
    return normalize_tools(sample.extras.get("tools"))


def answers_with_calls(sample: Any) -> bool:
    """Whether a sample's answer is tool calls: marked `answer_kind: tool_calls` (Alpaca rows) or a `function_call`
    answer turn (ShareGPT / OpenAI conversations)."""
    extras = sample.extras
    roles = extras.get("turn_roles")
    return extras.get("answer_kind") == TOOL_CALLS or (isinstance(roles, list) and bool(roles) and roles[-1] == "function_call")


def sample_calls(sample: Any) -> list[dict[str, Any]] | None:
    """The calls a sample's answer holds (None when its answer is text or a refusal)."""
    return parse_calls(sample.output) if answers_with_calls(sample) else None


def comparable_answer(sample: Any) -> str:
    """The answer as the gate compares it: the canonical calls of a tool-call answer, the output text otherwise."""
    calls = sample_calls(sample)
    return sample.output if calls is None else canonical_calls(calls)


def answer_kind(sample: Any) -> str:
    """`tool_calls`, `refusal` or `text`: what kind of answer a sample expects."""
    if answers_with_calls(sample):
        return TOOL_CALLS
    return "refusal" if sample.expected == "refuse" else "text"


def tool_problems(sample: Any) -> list[str]:
    """Why a sample's tools or calls cannot be used (the gate's quarantine reasons); empty when they can."""
    extras = sample.extras
    if "tools" not in extras and not answers_with_calls(sample):
        return []
    try:
        functions = sample_tools(sample)
    except ToolError as err:
        return [str(err)]
    if not answers_with_calls(sample):
        return []
    calls = parse_calls(sample.output)
    if calls is None:
        return ['the answer is marked as tool calls but is not {"name": ..., "arguments": {...}} (or a list of them)']
    if not functions:
        return ["the answer calls a function but the row has no tools: add the function definitions in `tools`"]
    if sample.sample_type == "negative":
        return []
    return [f"tool call does not fit: {p}" for p in call_problems(calls, functions)]
