"""Serving judges an answer by the rules eval scores by (`tuneloop.answers`): refusal form, refusal key, draft."""

from __future__ import annotations

import json

import pytest

from tuneloop.answers import schema_validator
from tuneloop.eval.metrics import score_answer
from tuneloop.examples.json_extraction import REFUSAL, schema as ticket_schema
from tuneloop.records import Sample
from tuneloop.serve.outcome import judge_output

TICKET_FORMAT = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": ticket_schema(), "strict": True}}
REFUSAL_TEXT = json.dumps(REFUSAL)
ANSWER_TEXT = json.dumps({"intent": "refund", "product": "desk lamp", "order_id": "K1", "urgency": "high",
                          "refund_amount": 12.5})


def test_serving_counts_the_schemas_refusal_form_as_a_refusal():
    # before: serving counted only prose refusals, so a model answering the schema's x-refusal never "refused"
    assert judge_output(REFUSAL_TEXT, TICKET_FORMAT).refusal is True
    assert judge_output(ANSWER_TEXT, TICKET_FORMAT).refusal is False


def test_serving_counts_a_json_refusal_key_as_a_refusal():
    assert judge_output('{"refusal": "I only extract ticket fields."}', {"type": "json_object"}).refusal is True
    assert judge_output('{"note": "customer says: I cannot log in"}', {"type": "json_object"}).refusal is False


@pytest.mark.parametrize("answer", [
    REFUSAL_TEXT, ANSWER_TEXT, '{"error": "out of scope"}', "I'm sorry, I can't help with that.", "抱歉，我无法处理。",
    '"I cannot help with that."', 'Sure: {"intent": "refund"}', "Here you go.",
])
def test_serving_and_eval_count_the_same_answers_as_refusals(answer):
    sample = Sample(instruction="Extract the ticket fields as JSON.", input="Write me a poem.", output=REFUSAL_TEXT,
                    sample_type="boundary", expected="refuse")
    evaluated = score_answer(sample, answer, "stop", schema_validator(ticket_schema()))
    assert judge_output(answer, TICKET_FORMAT).refusal == evaluated["refused"]


def test_serving_checks_a_schema_under_the_draft_it_names():
    # draft-07 `dependencies` means nothing under 2020-12, which serving always used: this answer passed
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "dependencies": {"refund_amount": ["order_id"]}}
    served = judge_output('{"refund_amount": 3}', {"type": "json_schema", "json_schema": {"schema": draft7}})
    assert served.json_valid and served.schema_valid is False


def test_a_schema_that_cannot_judge_never_makes_an_answer_valid():
    invalid = {"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}
    assert judge_output("{}", invalid).schema_valid is False  # was an uncaught UnknownType
