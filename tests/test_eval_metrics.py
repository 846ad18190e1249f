"""Metrics of one answer, on hand-made outputs covering each way an answer fails."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tuneloop.eval.bad_cases import failure_kinds
from tuneloop.answers import MISSING, find_json, is_refusal
from tuneloop.eval.metrics import field_scores, flatten, score_answer, summarize
from tuneloop.records import Sample

SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string"}, "order_id": {"type": "string"}, "urgency": {"type": ["string", "null"]},
                   "customer": {"type": "object", "properties": {"name": {"type": "string"}}}},
    "required": ["intent", "order_id"],
    "additionalProperties": False,
}
VALIDATOR = Draft202012Validator(SCHEMA)
EXPECTED = {"intent": "refund", "order_id": "A12345", "urgency": None, "customer": {"name": "Li Wei"}}


def ticket(**fields) -> Sample:
    return Sample(id=fields.pop("id", "t1"), instruction="Extract the ticket fields as JSON.",
                  input="My order A12345 is broken, refund please. Li Wei", output=EXPECTED, **fields)


def score(raw: str, finish_reason: str = "stop", **fields) -> dict:
    return score_answer(ticket(**fields), raw, finish_reason, VALIDATOR)


def test_a_perfect_answer_passes_every_metric():
    s = score(json.dumps(EXPECTED))
    assert s["json_valid"] and s["schema_valid"] and s["exact_match"] and s["clean"] and s["ok"]
    assert s["field_exact"] == s["field_normalized"] == 1.0
    assert not s["truncated"] and failure_kinds(s) == []


def test_key_order_and_whitespace_do_not_break_exact_match():
    s = score('{"customer": {"name": "Li Wei"}, "urgency": null,\n "order_id": "A12345", "intent": "refund"}')
    assert s["exact_match"] and s["ok"]


@pytest.mark.parametrize("raw, kinds", [
    ('Here is the JSON:\n{"intent": "refund", "order_id": "A12345", "customer": {"name": "Li Wei"}}', ["prefix"]),
    ('```json\n{"intent": "refund", "order_id": "A12345", "customer": {"name": "Li Wei"}}\n```', ["code_fence"]),
    ('{"intent": "refund", "order_id": "A12345", "customer": {"name": "Li Wei"}}\nLet me know if you need more.', ["suffix"]),
    ('Sure! ```json\n{"intent": "refund", "order_id": "A12345", "customer": {"name": "Li Wei"}}``` Done.',
     ["prefix", "code_fence", "suffix"]),
])
def test_noise_around_the_json_is_named_scores_zero_strict_and_right_lenient(raw, kinds):
    s = score(raw)
    assert s["noise"] == kinds and not s["clean"]
    assert not s["json_valid"] and s["schema_valid"] is False and not s["ok"]
    assert s["field_normalized"] == s["field_exact"] == 0.0  # a program parsing this answer gets nothing
    assert s["field_normalized_lenient"] == 1.0  # the content is right; only the wrapping is wrong
    assert all(not ok for _exact, ok in s["fields"].values()) and all(ok for _e, ok in s["fields_lenient"].values())
    assert any(k.startswith("noise:") for k in failure_kinds(s))


def test_wrong_field_values_score_per_field_with_dotted_paths():
    s = score('{"intent": "complaint", "order_id": "A12345", "customer": {"name": "Wang Fang"}}')
    assert s["json_valid"] and s["schema_valid"] and not s["ok"]
    assert s["fields"]["intent"] == [False, False]
    assert s["fields"]["customer.name"] == [False, False]
    assert s["fields"]["order_id"] == [True, True]
    assert s["field_exact"] == pytest.approx(2 / 4)
    assert "wrong fields: intent, customer.name" in failure_kinds(s)


def test_normalized_accuracy_forgives_case_width_spacing_and_number_format_but_exact_does_not():
    expected = {"intent": "refund", "amount": 59.9, "order_id": "A12345"}
    got = {"intent": " Refund ", "amount": "59.90", "order_id": "Ａ12345"}  # full-width A
    scores = field_scores(expected, got)
    assert all(normalized for _exact, normalized in scores.values())
    assert not any(exact for exact, _normalized in scores.values())


def test_a_missing_key_equals_an_expected_null_only_where_the_schema_makes_it_optional():
    optional_a = {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["b"]}
    required_a = {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a", "b"]}
    assert field_scores({"a": None, "b": 1}, {"b": 1}, optional_a) == {"a": [True, True], "b": [True, True]}
    assert field_scores({"a": None, "b": 1}, {"b": 1}, required_a) == {"a": [False, False], "b": [True, True]}
    assert field_scores({"a": None, "b": 1}, {"b": 1}) == {"a": [False, False], "b": [True, True]}  # no schema: nothing optional
    assert field_scores({"a": "x"}, {}, optional_a) == {"a": [False, False]}  # optional, but a value was expected
    assert field_scores({"a": None}, {"a": "null"}) == {"a": [False, True]}
    assert field_scores({"a": None, "b": 1}, MISSING) == {"a": [False, False], "b": [False, False]}


def test_nested_and_combined_schemas_decide_optional_keys_at_the_level_they_are_missing():
    schema = {"anyOf": [{"type": "object", "properties": {"c": {"type": "object", "properties": {"n": {}, "m": {}},
                                                                   "required": ["m"]}},
                         "required": ["c"]}, {"type": "null"}]}
    expected = {"c": {"n": None, "m": None}}
    assert field_scores(expected, {"c": {}}, schema) == {"c.n": [True, True], "c.m": [False, False]}
    assert field_scores(expected, {}, schema) == {"c.n": [False, False], "c.m": [False, False]}  # c itself is required
    assert field_scores({"l": [None, None]}, {"l": [None]}, {"properties": {"l": {"items": {}}}}) == \
        {"l.0": [True, True], "l.1": [False, False]}  # a missing list item is never optional


def test_an_answer_that_is_not_json_earns_no_field_accuracy():
    """The zero-shot failure: prose with a fragment of JSON, every other key missing and expected null."""
    sparse = {"intent": "refund", "order_id": None, "urgency": None, "customer": None}
    schema = {"type": "object", "properties": {k: {} for k in sparse}, "required": list(sparse)}
    sample = Sample(id="z", instruction="Extract the ticket as JSON.", input="refund please", output=sparse)
    s = score_answer(sample, 'Sure! The intent is {"intent": "other"}, hope that helps.', "stop",
                     Draft202012Validator(schema))
    assert not s["json_valid"] and s["field_normalized"] == 0.0
    assert s["field_normalized_lenient"] == 0.0  # required keys missing are wrong even where null was expected
    summary = summarize([s])
    assert summary["field_accuracy"] == 0.0 and summary["field_accuracy_lenient"] == 0.0


def test_an_answer_with_no_json_at_all_fails_everything_json():
    s = score("The customer wants a refund for order A12345.")
    assert not s["json_valid"] and not s["json_found"] and s["field_normalized"] == 0.0
    assert s["clean"] is None  # noise applies only to answers that hold JSON
    assert "no JSON in the answer" in failure_kinds(s)


def test_schema_violations_are_reported_with_their_path():
    s = score('{"intent": "refund", "order_id": 12345, "extra": true}')
    assert s["json_valid"] and s["schema_valid"] is False and not s["ok"]
    assert any("order_id" in e for e in s["schema_errors"])
    assert any("extra" in e for e in s["schema_errors"])


def test_truncation_is_a_failure_even_when_the_text_so_far_looks_fine():
    s = score('{"intent": "refund", "order_id": "A1', finish_reason="length")
    assert s["truncated"] and not s["complete"] and not s["ok"]
    assert failure_kinds(s)[0] == "truncated"


def test_refusal_consistency_on_boundary_samples():
    must_refuse = dict(id="r1", expected="refuse", sample_type="boundary")
    assert score('{"refusal": "I can only extract ticket fields."}', **must_refuse)["refusal_ok"] is True
    assert score("抱歉，我无法处理这个请求。", **must_refuse)["refusal_ok"] is True
    answered = score(json.dumps(EXPECTED), **must_refuse)
    assert answered["refusal_ok"] is False and not answered["ok"]
    assert "answered but should refuse" in failure_kinds(answered)
    must_answer = dict(id="a1", expected="answer", sample_type="boundary")
    refused = score("I'm sorry, I can't help with that.", **must_answer)
    assert refused["refusal_ok"] is False and "refused but should answer" in failure_kinds(refused)
    assert score(json.dumps(EXPECTED), **must_answer)["refusal_ok"] is True
    assert "refusal_ok" not in score(json.dumps(EXPECTED))  # golden samples are not refusal-tested


def test_json_answers_that_mention_refusal_words_are_answers():
    assert not is_refusal('{"note": "customer says: I cannot log in"}', {"note": "customer says: I cannot log in"})
    assert is_refusal('{"refused": true}', {"refused": True})


def test_find_json_returns_the_first_object_and_the_noise():
    assert find_json('Answer: [1, 2] and more') == ([1, 2], ["prefix", "suffix"])
    assert find_json("no json here") == (MISSING, [])


def test_summary_reports_micro_and_macro_field_accuracy_and_noise_kinds():
    samples = [ticket(id=f"t{i}") for i in range(2)]
    scores = [
        score_answer(samples[0], json.dumps(EXPECTED), "stop", VALIDATOR),
        score_answer(samples[1], 'Here: {"intent": "refund", "order_id": "B1", "customer": {"name": "x"}}', "stop", VALIDATOR),
    ]
    summary = summarize(scores)
    assert summary["n"] == 2 and summary["json_valid"] == 0.5 and summary["ok"] == 0.5
    assert summary["noise_rate"] == 0.5 and summary["noise_kinds"]["prefix"] == 1
    # strict: the wrapped answer earns no field, so every field is 1/2 → micro 4/8, macro 0.5
    assert summary["field_accuracy_normalized_micro"] == summary["field_accuracy"] == pytest.approx(4 / 8)
    assert summary["field_accuracy_normalized_macro"] == pytest.approx(0.5)
    assert summary["per_field"]["order_id"]["normalized"] == 0.5
    # lenient, through the noise: intent 2/2, order_id 1/2, urgency 2/2 (optional, null), customer.name 1/2 → 6/8
    assert summary["field_accuracy_lenient"] == pytest.approx(6 / 8)
    assert summary["truncated"] == 0.0


def test_list_items_count_as_one_field_per_position_pattern():
    summary = summarize([{"fields": {"items.0.sku": [True, True], "items.1.sku": [False, False]}}])
    assert list(summary["per_field"]) == ["items.*.sku"]
    assert summary["per_field"]["items.*.sku"]["exact"] == 0.5


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text("abc", min_size=1, max_size=3), children, max_size=3),
    max_leaves=12,
)


@given(json_values)
def test_any_json_value_matches_itself_on_every_field(value):
    scores = field_scores(value, json.loads(json.dumps(value)))
    assert scores and all(exact and normalized for exact, normalized in scores.values())
    assert set(scores) == set(flatten(value))


def test_a_bare_json_string_that_declines_is_a_refusal():
    assert is_refusal('"I cannot help with that."', "I cannot help with that.")
    assert not is_refusal('"refund"', "refund")


def test_a_sample_with_its_own_inline_schema_is_validated_against_it():
    from tuneloop.eval.runner import SampleValidators

    own = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    validators = SampleValidators(SCHEMA)
    inline = Sample(id="i", instruction="count", output='{"n": 3}', output_schema=own)
    assert score_answer(inline, '{"n": 3}', "stop", validators.of(inline))["schema_valid"]
    assert score_answer(ticket(), '{"n": 3}', "stop", validators.of(ticket()))["schema_valid"] is False


words = st.text(alphabet="abc xyz:.!\n", max_size=20)
objects = st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers() | st.text(max_size=5) | st.none(),
                          min_size=1, max_size=4)


@given(words, objects, words)
def test_json_wrapped_in_any_prose_is_found_and_the_noise_named(prefix, value, suffix):
    found, noise = find_json(prefix + json.dumps(value, ensure_ascii=False) + suffix)
    assert found == value
    assert noise == [kind for kind, text in (("prefix", prefix), ("suffix", suffix)) if text.strip()]


def test_the_schemas_declared_refusal_form_counts_as_a_refusal():
    import jsonschema

    from tuneloop.records import Sample

    schema = {"type": "object", "properties": {"intent": {"enum": ["refund", "out_of_scope"]}, "order_id": {"type": ["string", "null"]}},
              "x-refusal": {"intent": "out_of_scope", "order_id": None}}
    validator = jsonschema.Draft202012Validator(schema)
    refuse = Sample(instruction="Extract.", input="Write me a poem.", output='{"intent": "out_of_scope", "order_id": null}',
                    sample_type="boundary", expected="refuse")
    answer = Sample(instruction="Extract.", input="Refund A1 please.", output='{"intent": "refund", "order_id": "A1"}',
                    sample_type="boundary", expected="answer")
    assert score_answer(refuse, '{"intent": "out_of_scope", "order_id": null}', "stop", validator)["refusal_ok"] is True
    assert score_answer(refuse, '{"intent": "refund", "order_id": null}', "stop", validator)["refusal_ok"] is False
    assert score_answer(answer, '{"intent": "refund", "order_id": "A1"}', "stop", validator)["refusal_ok"] is True
    assert score_answer(answer, '{"intent": "out_of_scope", "order_id": null}', "stop", validator)["refusal_ok"] is False
