"""Scoring function calls: did the model call when it should, the right function, with the right arguments.

Per answer of a sample that offers tools (`tool_scores`, merged into `metrics.score_answer`'s scores):

```
tool_call_made      the answer holds a call | a call was expected            (None when no call was expected)
tool_abstained      the answer holds no call | no call was expected (text or refusal)
tool_call_parsed    the answer parses as calls | the answer tries to call (a JSON object with "name", or a
                    <tool_call> block): a call the program receiving it cannot read is a failure of its own
tool_call_valid     every call names an offered function and its arguments fit the parameter schema
tool_name_ok        the called functions are the expected ones (order of parallel calls ignored)
tool_args_exact     the arguments equal the reference's exactly (key order ignored; 5 and 5.0 differ)
tool_args_ast       the arguments match the reference under the parameter schema (BFCL's AST check): numbers
                    by value where the schema says number, an optional argument left out when the reference gives
                    its default (or the other way round), key order ignored
tool                the expected function's name ("none" for a no-call sample): the per-tool slice
```
The rates "called when it should not" (1 - tool_abstained) and "did not call when it should" (1 - tool_call_made)
are in the summary (`tool_summary`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from tuneloop.records import Sample
from tuneloop.tools import (
    TOOL_CALL_BLOCK, ToolError, answers_with_calls, by_name, call_problems, parse_calls, sample_calls, sample_tools,
)

TOOL_METRICS = ("tool_call_made", "tool_abstained", "tool_call_parsed", "tool_call_valid", "tool_name_ok",
                "tool_args_exact", "tool_args_ast")
_NO_DEFAULT = object()


def answer_calls(raw: str) -> tuple[list[dict[str, Any]] | None, bool]:
    """(the calls an answer holds, whether it tries to call at all): a JSON call or list of calls (json_block), or
    `<tool_call>` blocks (the hermes format, Qwen2.5); text beside the blocks is content, as vLLM's hermes parser
    reads it.

    >>> answer_calls('<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>')
    ([{'name': 'f', 'arguments': {'a': 1}}], True)
    >>> answer_calls('{"name": "f", "arguments": {"a": ')
    (None, True)
    >>> answer_calls("It is sunny.")
    (None, False)
    """
    text = raw.strip()
    blocks = TOOL_CALL_BLOCK.findall(text)
    if blocks:
        calls = [parse_calls(block) for block in blocks]
        if all(c is not None for c in calls):
            return [call for group in calls for call in group], True  # type: ignore[union-attr]
        return None, True
    calls = parse_calls(text)
    if calls is not None:
        return calls, True
    return None, text.startswith("<tool_call>") or bool(re.match(r'^\[?\s*\{\s*"name"\s*:', text))


def _type_of(schema: Any) -> set[str]:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()


def value_match(schema: Any, want: Any, have: Any) -> bool:
    """Whether `have` is `want` under `schema`: numbers by value where it says number, objects and lists deep.

    >>> value_match({"type": "number"}, 5, 5.0), value_match({"type": "string"}, "5", 5)
    (True, False)
    """
    kinds = _type_of(schema)
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if numeric(want) and numeric(have):
        return float(want) == float(have) if ("number" in kinds or "integer" in kinds or not kinds) else want == have
    if isinstance(want, dict) and isinstance(have, dict):
        return arguments_match(schema if isinstance(schema, dict) else {}, want, have)
    if isinstance(want, list) and isinstance(have, list):
        items = schema.get("items") if isinstance(schema, dict) else None
        return len(want) == len(have) and all(value_match(items, w, h) for w, h in zip(want, have))
    return type(want) is type(have) and want == have


def arguments_match(parameters: Mapping[str, Any], want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    """Arguments of one call against the reference's: every key either side compared under its schema; a key on
    one side only is fine when it is optional and its value there is the parameter's default.

    >>> p = {"type": "object", "properties": {"n": {"type": "number"}, "unit": {"type": "string", "default": "c"}},
    ...      "required": ["n"]}
    >>> arguments_match(p, {"n": 5, "unit": "c"}, {"n": 5.0}), arguments_match(p, {"n": 5}, {"n": 5, "unit": "f"})
    (True, False)
    """
    properties = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    for key in set(want) | set(have):
        schema = properties.get(key, {})
        if key in want and key in have:
            if not value_match(schema, want[key], have[key]):
                return False
            continue
        present = want.get(key, have.get(key))
        default = schema.get("default", _NO_DEFAULT) if isinstance(schema, dict) else _NO_DEFAULT
        if key in required or default is _NO_DEFAULT or not value_match(schema, default, present):
            return False
    return True


def _pairs(expected: Sequence[Mapping[str, Any]], actual: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Any]] | None:
    """Expected and actual calls paired by name (parallel calls in any order); None when the names differ."""
    if sorted(c["name"] for c in expected) != sorted(c["name"] for c in actual):
        return None
    left = list(actual)
    pairs = []
    for want in expected:
        same = [c for c in left if c["name"] == want["name"]]
        match = next((c for c in same if c.get("arguments") == want.get("arguments")), same[0])
        left.remove(match)
        pairs.append((want, match))
    return pairs


def _exact(want: Any, have: Any) -> bool:
    return json.dumps(want, sort_keys=True) == json.dumps(have, sort_keys=True)


def tool_scores(sample: Sample, raw: str) -> dict[str, Any]:
    """The function-calling scores of one answer (empty for a sample without tools and without a call answer)."""
    expects_call = answers_with_calls(sample)
    try:
        functions = sample_tools(sample)
    except ToolError:
        functions = []
    if not functions and not expects_call:
        return {}
    calls, tries = answer_calls(raw)
    expected = sample_calls(sample) or []
    scores: dict[str, Any] = {
        "tool": ",".join(sorted({c["name"] for c in expected})) if expects_call else "none",
        "tool_called": calls is not None,
        "tool_call_made": (calls is not None) if expects_call else None,
        "tool_abstained": None if expects_call else not tries,
        "tool_call_parsed": (calls is not None) if tries else None,
        "tool_call_valid": (not call_problems(calls, functions)) if calls is not None else None,
    }
    if expects_call:
        pairs = _pairs(expected, calls) if calls is not None else None
        known = by_name(functions)
        scores["tool_name_ok"] = pairs is not None
        scores["tool_args_exact"] = pairs is not None and all(
            _exact(w.get("arguments", {}), h.get("arguments", {})) for w, h in pairs)
        scores["tool_args_ast"] = pairs is not None and all(
            arguments_match((known.get(w["name"]) or {}).get("parameters") or {}, w.get("arguments", {}),
                            h.get("arguments", {})) for w, h in pairs)
    if calls is not None:
        scores["tool_problems"] = call_problems(calls, functions)[:3]
    return scores


def tool_ok(scores: Mapping[str, Any]) -> bool | None:
    """The per-sample pass of a tool sample (None when the sample has no tools): the call matches (AST) and is
    valid, or no call was made where none was expected."""
    if "tool" not in scores:
        return None
    if scores.get("tool_call_made") is not None:
        return bool(scores["tool_args_ast"] and scores.get("tool_call_valid"))
    return bool(scores["tool_abstained"])


def tool_summary(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Tool rates over a run, the two error rates by name, and per tool: n and AST match."""
    tooled = [s for s in scores if "tool" in s]
    if not tooled:
        return {}
    summary: dict[str, Any] = {}
    for metric in TOOL_METRICS:
        present = [bool(s[metric]) for s in tooled if s.get(metric) is not None]
        summary[metric] = sum(present) / len(present) if present else None
        summary[f"{metric}_n"] = len(present)
    for name, metric in (("called_when_it_should_not", "tool_abstained"),
                         ("did_not_call_when_it_should", "tool_call_made")):
        summary[name] = None if summary[metric] is None else 1 - summary[metric]
    per_tool: dict[str, list[bool]] = defaultdict(list)
    for s in tooled:
        per_tool[s["tool"]].append(bool(tool_ok(s)))
    summary["per_tool"] = {tool: {"n": len(v), "ok": sum(v) / len(v)} for tool, v in sorted(per_tool.items())}
    return summary
