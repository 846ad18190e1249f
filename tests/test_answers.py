"""One answer, one verdict: every stage parses an answer, checks it against a schema and recognizes a refusal
through `tuneloop.answers` (serving: tests/test_answers_serve.py; the data gate: tests/test_answers_gate.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tuneloop.answers import is_refusal, parse_json, refusal_form, schema_errors, schema_problem, schema_validator
from tuneloop.data.create.rules import is_chinese
from tuneloop.data.create.synth import Verifier, refusal_matches
from tuneloop.examples.json_extraction import REFUSAL, schema as ticket_schema
from tuneloop.records import Sample

ANSWER_TEXT = json.dumps({"intent": "refund", "product": "desk lamp", "order_id": "K1", "urgency": "high",
                          "refund_amount": 12.5})
DRAFT7_DEPENDENCIES = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                       "dependencies": {"refund_amount": ["order_id"]}}
DEPENDENCY_ERROR = "(root): 'order_id' is a dependency of 'refund_amount'"
# compatibility ideographs (U+F900-FAFF) and the supplementary planes (U+20000-2FFFF) are Chinese characters too
RARE_HAN = ("\uf9a8", "\ufa11", "\U00020000", "\U0002a6d6")


def test_a_schema_is_checked_under_the_draft_its_schema_keyword_names():
    # draft-07 `dependencies` means nothing under 2020-12: synthesis (always 2020-12) used to pass this answer
    assert type(schema_validator(DRAFT7_DEPENDENCIES)).__name__ == "Draft7Validator"
    assert type(schema_validator({"type": "object"})).__name__ == "Draft202012Validator"  # no $schema: 2020-12
    assert schema_errors(schema_validator(DRAFT7_DEPENDENCIES), {"refund_amount": 3}) == [DEPENDENCY_ERROR]
    row = Sample(instruction="Extract.", input="3 dollars", output='{"refund_amount": 3}')
    assert Verifier(schema=DRAFT7_DEPENDENCIES).verify(row) == [f"schema: {DEPENDENCY_ERROR}"]


def test_an_invalid_schema_is_an_error_not_a_verdict():
    with pytest.raises(jsonschema.SchemaError):
        schema_validator({"type": "objekt"})
    with pytest.raises(jsonschema.SchemaError):  # synthesis used to build it unchecked
        Verifier(schema={"type": "objekt"}).verify(Sample(instruction="x", output="{}"))


def test_validators_are_built_once_per_schema_and_never_see_a_callers_later_edit():
    schema = {"type": "object", "required": ["a"]}
    first = schema_validator(schema)
    assert schema_validator({"required": ["a"], "type": "object"}) is first  # same schema, other key order
    schema["required"] = ["b"]
    assert schema_validator(schema) is not first
    assert schema_problem(first, {"a": 1}) is None
    assert schema_problem(schema_validator(schema), {"a": 1}) == "(root): 'b' is a required property"


def test_a_generated_must_answer_row_that_eval_would_count_as_refused_is_rejected():
    rule = refusal_matches(REFUSAL)
    # the refusal form with a filled field: not REFUSAL exactly (the old rule let it through), still a refusal
    looks_refused = json.dumps(REFUSAL | {"product": "desk lamp"})
    row = Sample(instruction="Extract.", input="My desk lamp broke.", output=looks_refused, expected="answer")
    assert rule(row, json.loads(looks_refused)) == "expected=answer but the answer is a refusal"
    fine = Sample(instruction="Extract.", input="My desk lamp broke.", output=ANSWER_TEXT, expected="answer")
    assert rule(fine, json.loads(ANSWER_TEXT)) is None
    must_refuse = Sample(instruction="Extract.", input="", output=looks_refused, expected="refuse")
    assert rule(must_refuse, json.loads(looks_refused)) == "expected=refuse but the answer is not the task's refusal"


def test_the_refusal_form_comes_from_the_schema():
    assert refusal_form(ticket_schema()) == REFUSAL
    assert refusal_form({"x-refusal": {"intent": None}}) is None  # nothing to recognize it by
    assert is_refusal(json.dumps(REFUSAL), form=refusal_form(ticket_schema()))
    assert not is_refusal(json.dumps(REFUSAL))  # without the form it is just an answer
    assert not is_refusal(ANSWER_TEXT, form=REFUSAL)


def test_parse_json_takes_only_a_whole_json_text():
    assert parse_json("[1, 2]") == (True, [1, 2])
    assert parse_json("null") == (True, None)
    assert parse_json("```json\n{}\n```") == (False, None)
    assert parse_json(None) == (False, None)  # type: ignore[arg-type]


def test_rare_chinese_characters_make_a_text_chinese():
    assert all(is_chinese(f"My {c} broke") for c in RARE_HAN)  # was False: only U+3400-9FFF counted
    assert not is_chinese("こんにちは") and not is_chinese("안녕하세요")  # kana and hangul are CJK, not Chinese
