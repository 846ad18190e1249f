"""Did a constrained answer keep its promise: it closed before `max_tokens`, it parses, it matches its schema.

The grammar and the closing budget make a broken answer unlikely, not impossible (a grammar gap); so serving and
constrained eval both check every answer after generation with these two functions, and a broken one is an error
in both, never a valid answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from referencing.exceptions import Unresolvable

from tuneloop.answers import parse_json, schema_validator


@dataclass(frozen=True)
class Validity:
    json_valid: bool
    schema_valid: bool | None


def answer_validity(text: str, response_format: dict[str, Any] | None) -> Validity:
    """JSON validity of any answer; schema validity only when a json_schema was asked for.

    >>> answer_validity('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"required": ["b"]}}})
    Validity(json_valid=True, schema_valid=False)
    """
    json_valid, value = parse_json(text)
    schema = (response_format or {}).get("json_schema", {}).get("schema") if response_format else None
    schema_valid: bool | None = None
    if isinstance(schema, dict):
        try:
            schema_valid = json_valid and schema_validator(schema).is_valid(value)
        except (jsonschema.SchemaError, Unresolvable, re.error, TypeError):
            # the router passes on any caller's schema: one that cannot judge an answer never makes it valid
            schema_valid = False
    return Validity(json_valid, schema_valid)


def constrained_failure(finish_reason: str | None, validity: Validity, response_format: dict[str, Any] | None) -> str | None:
    """Why a constrained answer broke its promise (cut, not JSON, not matching the schema), or None.

    >>> constrained_failure("length", answer_validity('{"a": ', {"type": "json_object"}), {"type": "json_object"})
    'the constrained answer was cut at max_tokens before it closed'
    """
    if not response_format or response_format.get("type", "text") == "text" or finish_reason == "cancelled":
        return None
    if finish_reason == "length":
        return "the constrained answer was cut at max_tokens before it closed"
    if not validity.json_valid:
        return "the constrained answer is not JSON"
    if validity.schema_valid is False:
        return "the constrained answer does not match its schema"
    return None
