"""What a served answer is worth for metrics: does it parse, does it match the schema, is it a refusal.

The embedded server and the canary router judge answers the same way, so per-arm metrics compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.answers import is_refusal, refusal_form
from tuneloop.decoding.validity import Validity, answer_validity


@dataclass(frozen=True)
class Outcome(Validity):
    """Validity (`decoding.validity`, which `constrained_failure` reads) and whether the answer is a refusal."""

    refusal: bool


def judge_output(text: str, response_format: dict[str, Any] | None) -> Outcome:
    """JSON validity of any answer; schema validity only when a json_schema was asked for.

    >>> judge_output('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"required": ["b"]}}})
    Outcome(json_valid=True, schema_valid=False, refusal=False)
    >>> judge_output('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}})
    Outcome(json_valid=True, schema_valid=False, refusal=False)
    """
    validity = answer_validity(text, response_format)
    json_valid, schema_valid = validity.json_valid, validity.schema_valid
    schema = ((response_format or {}).get("json_schema") or {}).get("schema")
    # one refusal rule for eval and serving: the schema's x-refusal form, a refusal key, or a refusal phrase (en/zh)
    refusal = is_refusal(text or "", form=refusal_form(schema))
    return Outcome(json_valid, schema_valid, refusal)

