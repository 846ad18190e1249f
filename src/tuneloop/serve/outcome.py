"""What a served answer is worth for metrics: does it parse, does it match the schema, is it a refusal.

The embedded server and the canary router judge answers the same way, so per-arm metrics compare like with like.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from referencing.exceptions import Unresolvable

from tuneloop.eval.metrics import is_refusal


@dataclass(frozen=True)
class Outcome:
    json_valid: bool
    schema_valid: bool | None
    refusal: bool


def judge_output(text: str, response_format: dict[str, Any] | None) -> Outcome:
    """JSON validity of any answer; schema validity only when a json_schema was asked for.

    >>> judge_output('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"required": ["b"]}}})
    Outcome(json_valid=True, schema_valid=False, refusal=False)
    >>> judge_output('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}})
    Outcome(json_valid=True, schema_valid=False, refusal=False)
    """
    try:
        value = json.loads(text)
        json_valid = True
    except (json.JSONDecodeError, TypeError):
        value, json_valid = None, False
    schema = (response_format or {}).get("json_schema", {}).get("schema") if response_format else None
    schema_valid: bool | None = None
    if isinstance(schema, dict):
        try:
            schema_valid = json_valid and jsonschema.Draft202012Validator(schema).is_valid(value)
        except (jsonschema.SchemaError, Unresolvable, re.error, TypeError):
            # the router passes on any caller's schema: one that cannot judge an answer never makes it valid
            schema_valid = False
    # one refusal rule for eval and serving: a prose answer with a refusal phrase (en/zh)
    refusal = not json_valid and is_refusal(text or "")
    return Outcome(json_valid, schema_valid, refusal)


def constrained_failure(finish_reason: str | None, outcome: Outcome, response_format: dict[str, Any] | None) -> str | None:
    """Why a constrained answer broke its promise (cut, not JSON, not matching the schema), or None.

    Serving and constrained eval both ask this, so a broken answer is an error in both, never a valid answer.

    >>> constrained_failure("length", judge_output('{"a": ', {"type": "json_object"}), {"type": "json_object"})
    'the constrained answer was cut at max_tokens before it closed'
    """
    if not response_format or response_format.get("type", "text") == "text" or finish_reason == "cancelled":
        return None
    if finish_reason == "length":
        return "the constrained answer was cut at max_tokens before it closed"
    if not outcome.json_valid:
        return "the constrained answer is not JSON"
    if outcome.schema_valid is False:
        return "the constrained answer does not match its schema"
    return None
