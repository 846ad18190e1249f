"""Tools in the embedded server: a request's `tools` and `tool_choice`, the decoding constraint of a call, and the
answer as OpenAI's `tool_calls`.

```
tool_choice          prompt shows tools   decoding                                         answer
none                 yes                  free text                                        content
auto (the default)   yes                  free; a text that is a call is read as one        tool_calls, or content
required             yes                  JSON schema: anyOf {"name": const, "arguments": parameters} per tool
{"type": "function", "function": {"name": N}}   the same, for N alone                      tool_calls
```
A required or named call is decoded after the template's call opening (`templates.call_opening`: `<tool_call>` in
the hermes format and Qwen2.5's template, nothing in json_block), which goes into the prompt, so the model writes
the JSON where it was trained to. A constrained call is valid by construction and checked after generation like
every constrained answer; an `auto` answer that is a call whose arguments break their schema is an error (HTTP 500,
finish_reason "schema_invalid"), never passed on as a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.tools import ToolError, call_problems, normalize_tools, parse_calls

CHOICES = ("none", "auto", "required")


class ToolRequestError(ValueError):
    """A request's tools or tool_choice the server cannot honour (a 400 with this message)."""


@dataclass(frozen=True)
class ToolPlan:
    functions: list[dict[str, Any]]
    choice: str  # none | auto | required | the name of the one function to call

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The constraint of a required or named call (None: free decoding)."""
        if self.choice in ("none", "auto"):
            return None
        chosen = [f for f in self.functions if self.choice == "required" or f["name"] == self.choice]
        return {"type": "json_schema", "json_schema": {"name": "tool_call", "strict": True,
                                                       "schema": call_schema(chosen)}}

    @property
    def reads_calls(self) -> bool:
        return self.choice != "none"


def call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one call to any of `functions`: {"name": const, "arguments": its parameters}.

    >>> call_schema([{"name": "f", "parameters": {"type": "object"}}])["properties"]["name"]
    {'const': 'f'}
    """
    members = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    return members[0] if len(members) == 1 else {"anyOf": members}


def plan_tools(tools: Any, tool_choice: Any, response_format: dict[str, Any] | None) -> ToolPlan | None:
    """The request's tool plan (None without tools); ToolRequestError naming what to change."""
    if tools in (None, []):
        if tool_choice not in (None, "none", "auto"):
            raise ToolRequestError("tool_choice names a tool but the request sends no `tools`.")
        return None
    try:
        functions = normalize_tools(tools)
    except ToolError as err:
        raise ToolRequestError(f"bad tools: {err}") from None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") if tool_choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise ToolRequestError('tool_choice must be "none", "auto", "required" or '
                                   '{"type": "function", "function": {"name": ...}}.')
        if name not in {f["name"] for f in functions}:
            raise ToolRequestError(f"tool_choice names '{name}', which is not among the request's tools.")
        choice = name
    elif tool_choice is None:
        choice = "auto"
    elif tool_choice in CHOICES:
        choice = tool_choice
    else:
        raise ToolRequestError(f"tool_choice {tool_choice!r} is not one of none, auto, required or a named function.")
    if response_format not in (None, {"type": "text"}) and choice != "none":
        raise ToolRequestError("send either tools (with tool_choice other than none) or response_format, not both.")
    return ToolPlan(functions, choice)


def read_calls(plan: ToolPlan, text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the calls an answer holds, why they are broken) — (None, None) for a text answer under `auto`."""
    if not plan.reads_calls:
        return None, None
    calls = parse_calls(text.strip())
    if calls is None:
        if plan.choice == "auto":
            return None, None
        return None, "the constrained call is not a call"  # never reached when the grammar holds
    problems = call_problems(calls, plan.functions)
    return calls, ("the call does not fit its function: " + "; ".join(problems[:3])) if problems else None


def wire_calls(calls: list[dict[str, Any]], trace_id: str) -> list[dict[str, Any]]:
    """OpenAI's `tool_calls`: ids unique per completion, arguments as JSON text."""
    import json

    return [{"id": f"call_{trace_id[-12:]}_{index}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
            for index, call in enumerate(calls)]
