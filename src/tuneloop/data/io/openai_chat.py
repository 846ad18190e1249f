"""OpenAI chat rows (`{"messages": [...], "tools": [...]}`) ↔ `Sample`.

```
system (first message)                      ↔ system
user / assistant                            ↔ user / assistant turns
assistant with tool_calls                   ↔ function_call turn, text {"name": ..., "arguments": {...}} (a list for several)
tool (or legacy function) messages in a row ↔ one observation turn (several results: a JSON list of their texts)
tools: [{"type": "function", "function": F}] ↔ extra field tools = JSON text of [F, ...]
tool_calls[].id / tool messages' tool_call_id ↔ extra field tool_call_ids = the ids of each call turn, in order
```
"""

from __future__ import annotations

import json
from typing import Any

from tuneloop.data.io.conversation import (
    ASSISTANT, FUNCTION_CALL, OBSERVATION, USER, Conversation, RowError, conversation_of,
    sample_fields, type_name,
)
from tuneloop.data.io.shapes import ALPACA_EXPRESSED, TUNELOOP_COLUMN, build_sample, carried_fields, structured
from tuneloop.records import Sample


def _text(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RowError(f"{where} content must be text or text parts, got {type_name(content)}")


def _call_text(calls: Any, where: str) -> str:
    if not isinstance(calls, list) or not calls:
        raise RowError(f"{where} tool_calls must be a non-empty list")
    parsed = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowError(f"{where} has a tool call without function.name")
        arguments = function.get("arguments", "")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # kept as the text the model wrote
        parsed.append({"name": function["name"], "arguments": arguments})
    return json.dumps(parsed[0] if len(parsed) == 1 else parsed, ensure_ascii=False)


def _turns(messages: list[Any], call_ids: list[list[str]] | None = None) -> tuple[str, list[tuple[str, str]]]:
    system, turns = "", []
    for index, message in enumerate(messages, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise RowError(f"{where} must be an object with 'role' and 'content', got {type_name(message)}")
        role = message.get("role")
        if role in ("system", "developer") and index == 1:
            system = _text(message.get("content"), where)
        elif role == "user":
            turns.append((USER, _text(message.get("content"), where)))
        elif role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            calls = message.get("tool_calls") or [{"function": message["function_call"]}]
            turns.append((FUNCTION_CALL, _call_text(calls, where)))
            if call_ids is not None:
                ids = [str(c.get("id") or "") for c in calls if isinstance(c, dict)]
                call_ids.append([i if i != f"call_{len(turns)}_{n}" else "" for n, i in enumerate(ids)])
        elif role == "assistant":
            if message.get("content") is None:
                raise RowError(f"{where} (assistant) has no content and no tool_calls")
            turns.append((ASSISTANT, _text(message["content"], where)))
        elif role in ("tool", "function"):
            result = _text(message.get("content"), where)
            if turns and turns[-1][0] == OBSERVATION:  # parallel tool results answer one call turn
                results = _results(turns.pop()[1]) + [result]
                turns.append((OBSERVATION, json.dumps(results, ensure_ascii=False)))
            else:
                turns.append((OBSERVATION, result))
        else:
            raise RowError(f"{where} has role {role!r}; expected system (first), user, assistant or tool")
    return system, turns


def _results(text: str) -> list[str]:
    """The tool results an observation turn holds (a JSON list of texts when it merged several)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [text]
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else [text]


def openai_to_sample(row: dict[str, Any], source: str | None = None) -> Sample:
    """One OpenAI chat row as a Sample; the last assistant message is the answer."""
    messages = structured(row.get("messages"))
    if not isinstance(messages, list):
        raise RowError(f"missing field 'messages' (a list of chat messages), got {type_name(messages)}")
    call_ids: list[list[str]] = []
    system, turns = _turns(messages, call_ids)
    if not turns:
        raise RowError("field 'messages' holds no user or assistant messages")
    parts = sample_fields(Conversation(system, turns[:-1], turns[-1]))
    consumed = {"messages", "tools"}
    tools = structured(row.get("tools"))
    if tools not in (None, ""):
        if not isinstance(tools, list):
            raise RowError(f"field 'tools' must be a list of tool definitions, got {type_name(tools)}")
        functions = [t["function"] if isinstance(t, dict) and t.get("type") == "function" else t for t in tools]
        parts["tools"] = json.dumps(functions, ensure_ascii=False)
    if any(any(ids) for ids in call_ids):  # the caller's own ids come back on export ("": the id export makes)
        parts["tool_call_ids"] = call_ids
    return build_sample(row, consumed, parts, source)


def _tool_calls(text: str, sample_id: str, turn: int, ids: list[str] | None = None) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    calls = value if isinstance(value, list) else [value]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise ValueError(f"sample {sample_id}, turn {turn}: a function_call turn must be JSON "
                         '{"name": ..., "arguments": ...}; the OpenAI format cannot hold it otherwise. Export to sharegpt.')
    out = []
    for index, call in enumerate(calls):
        arguments = call.get("arguments", {})
        call_id = ids[index] if ids and index < len(ids) and ids[index] else f"call_{turn}_{index}"
        out.append({"id": call_id, "type": "function", "function": {
            "name": call["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)}})
    return out


def sample_to_openai(sample: Sample, carry: bool = True) -> dict[str, Any]:
    """An OpenAI chat row. Preference rows are not chat rows: the rejected answer travels in the tuneloop column."""
    conversation = conversation_of(sample)
    messages: list[dict[str, Any]] = [{"role": "system", "content": conversation.system}] if conversation.system else []
    pending_calls: list[dict[str, Any]] = []
    known_ids = sample.extras.get("tool_call_ids")
    known_ids = list(known_ids) if isinstance(known_ids, list) else []
    for turn, (role, text) in enumerate([*conversation.turns, conversation.answer], start=1):
        if role == FUNCTION_CALL:
            ids = known_ids.pop(0) if known_ids else None
            pending_calls = _tool_calls(text, sample.id, turn, ids if isinstance(ids, list) else None)
            messages.append({"role": "assistant", "content": None, "tool_calls": pending_calls})
        elif role == OBSERVATION:
            results = _results(text) if len(pending_calls) > 1 else [text]
            for index, result in enumerate(results):
                call_id = pending_calls[index]["id"] if index < len(pending_calls) else f"call_{turn}_{index}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        else:
            messages.append({"role": role, "content": text})
    row: dict[str, Any] = {"messages": messages}
    expressed = (ALPACA_EXPRESSED | {"turn_roles", "tool_call_ids"}) - {"rejected"}
    if sample.input:
        expressed -= {"instruction", "input"}
    if "tools" in sample.extras:
        try:
            functions = json.loads(sample.extras["tools"])
        except (json.JSONDecodeError, TypeError):
            functions = None
        if isinstance(functions, list):
            row["tools"] = [{"type": "function", "function": f} for f in functions]
            expressed.add("tools")
    if carry:
        row[TUNELOOP_COLUMN] = carried_fields(sample, expressed)
    return row
