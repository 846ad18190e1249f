"""The label checks (annotate/rules.py): what a relabel import and the annotation tool refuse, and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.annotate.rules import check_label, label_problems
from tuneloop.project import LabelRule, ProjectConfig
from tuneloop.records import Sample

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "src/tuneloop/examples/json_extraction/ticket.schema.json")
                    .read_text())
MESSAGE = "My kettle from order A123456 arrived broken, I want my 35.50 back, urgent please"
GOOD = {"intent": "refund", "product": "kettle", "order_id": "A123456", "urgency": "high", "refund_amount": 35.5}
REFUSAL = SCHEMA["x-refusal"]


def text(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False)


def rules_of(problems) -> list[tuple[str, str]]:
    return [(p.field, p.rule) for p in problems]


def test_a_correct_label_has_no_problem():
    assert check_label(text(GOOD), SCHEMA, prompt=MESSAGE) == []
    assert check_label(Sample(input=MESSAGE, output=text(GOOD)), SCHEMA) == []


def test_a_code_fence_or_prose_around_the_json_is_named_and_the_json_inside_still_checked():
    fenced = "```json\n" + text({**GOOD, "order_id": "N/A"}) + "\n```"
    problems = label_problems(fenced, SCHEMA)
    assert rules_of(problems) == [("output", "noise"), ("output.order_id", "absent_value")]
    assert "remove them" in str(problems[0])
    assert rules_of(label_problems("Sure! " + text(GOOD), SCHEMA)) == [("output", "noise")]


def test_text_that_is_no_json_at_all_says_where_it_breaks():
    [problem] = label_problems('{"intent": "refund", "product": ', SCHEMA)
    assert (problem.field, problem.rule) == ("output", "json")
    assert "line 1 column" in problem.message and "one JSON object" in problem.fix


def test_schema_errors_name_the_field_and_the_fix():
    wrong = {"intent": "very refund", "product": "kettle", "order_id": "A123456", "urgency": "high",
             "refund_amount": "35.50"}
    problems = {p.field: str(p) for p in label_problems(text(wrong), SCHEMA, prompt=MESSAGE)}
    assert "pick one of" in problems["output.intent"] and '"refund"' in problems["output.intent"]
    assert "numbers unquoted" in problems["output.refund_amount"]
    missing = {k: v for k, v in GOOD.items() if k != "urgency"}
    assert rules_of(label_problems(text(missing), SCHEMA)) == [("output.urgency", "schema")]
    assert "required key missing" in check_label(text(missing), SCHEMA)[0]


def test_expected_refuse_needs_exactly_the_schemas_refusal_form():
    assert check_label(text(REFUSAL), SCHEMA, expected="refuse") == []
    # a refusal of another shape is a refusal, but not the task's one
    [problem] = label_problems('{"refusal": "out of scope"}', SCHEMA, expected="refuse")
    assert problem.rule == "refusal" and json.dumps(REFUSAL) in problem.fix
    near = {**REFUSAL, "urgency": "low"}  # is_refusal counts it (intent out_of_scope), the exact form does not hold
    assert [p.rule for p in label_problems(text(near), SCHEMA, expected="refuse")] == ["refusal"]
    assert [p.rule for p in label_problems(text(GOOD), SCHEMA, expected="refuse")] == ["refusal"]


def test_expected_answer_must_not_be_the_refusal():
    [problem] = label_problems(text(REFUSAL), SCHEMA, expected="answer")
    assert problem.rule == "not_refusal" and "set expected to refuse" in problem.fix
    sample = Sample(input=MESSAGE, output=text(REFUSAL), expected="answer")
    assert [p.rule for p in label_problems(sample, SCHEMA)] == ["not_refusal"]


@pytest.mark.parametrize("marker", ["N/A", "", "unknown", "null", "未知", " none "])
def test_a_placeholder_for_an_absent_value_must_be_null(marker):
    label = {**GOOD, "product": marker}
    [problem] = label_problems(text(label), SCHEMA, prompt=MESSAGE)
    assert (problem.field, problem.rule) == ("output.product", "absent_value")
    assert "write null" in problem.fix


def test_a_placeholder_the_schema_lists_as_a_value_is_allowed():
    schema = {"type": "object", "properties": {"size": {"enum": ["small", "large", "unknown"]}}}
    assert check_label('{"size": "unknown"}', schema) == []


def test_sop_keys_every_schema_key_in_schema_order():
    reordered = {k: GOOD[k] for k in ("product", "intent", "order_id", "urgency", "refund_amount")}
    [problem] = label_problems(text(reordered), SCHEMA, prompt=MESSAGE)
    assert problem.rule == "key_order" and "intent, product, order_id, urgency, refund_amount" in problem.fix
    loose = {"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"type": ["string", "null"]}}}
    assert rules_of(label_problems('{"a": null}', loose)) == [("output.b", "keys")]
    assert rules_of(label_problems('{"a": null, "b": null, "c": 1}', loose)) == [("output", "keys")]


def test_an_id_not_copied_from_the_message_is_named():
    changed = {**GOOD, "order_id": "A12345"}  # one digit lost while copying
    [problem] = label_problems(text(changed), SCHEMA, prompt=MESSAGE)
    assert (problem.field, problem.rule) == ("output.order_id", "copied")
    assert check_label(text(changed), SCHEMA) == []  # without the message the rule has nothing to compare with


def test_custom_rules_from_the_project_file():
    config = ProjectConfig.model_validate({"annotate": {"rules": [
        {"field": "order_id", "pattern": r"[A-Z]\d{6}", "message": "order ids are one letter and six digits"},
        {"field": "product", "enum": ["kettle", "toaster"], "message": "products come from the catalogue"},
    ]}})
    rules = config.annotate.rules
    assert check_label(text(GOOD), SCHEMA, rules=rules, prompt=MESSAGE) == []
    bad = {**GOOD, "order_id": "a123456", "product": "earbuds"}
    assert check_label(text(bad), SCHEMA, rules=rules) == [
        "output.order_id: 'a123456' breaks a project rule; order ids are one letter and six digits",
        "output.product: 'earbuds' breaks a project rule; products come from the catalogue",
    ]
    assert check_label(text({**GOOD, "order_id": None}), SCHEMA, rules=rules) == []  # null: absence, not a value


def test_a_rule_without_a_check_or_with_a_broken_pattern_is_a_config_error():
    with pytest.raises(ValueError, match="give a pattern or an enum"):
        LabelRule(field="order_id", message="x")
    with pytest.raises(ValueError, match="no regular expression"):
        LabelRule(field="order_id", pattern="[A-", message="x")


def test_a_text_task_checks_only_the_refusal_rule():
    assert check_label("Your refund is on its way.", None) == []
    assert [p.rule for p in label_problems("I'm sorry, I cannot help with that.", None)] == ["not_refusal"]
    assert check_label("I'm sorry, I cannot help with that.", None, expected="refuse") == []
    assert [p.rule for p in label_problems("", None)] == ["empty"]


def test_a_sample_without_a_prompt_is_named():
    problems = label_problems(Sample(output=text(GOOD)), SCHEMA)
    assert [(p.field, p.rule) for p in problems] == [("input", "empty"), ("output.order_id", "copied")]
