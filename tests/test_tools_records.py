"""Function calling in records and data: tools in one stored form, calls as answers, lossless round trips,
the gate validating each call against its function and comparing calls by their canonical form."""

from __future__ import annotations

import json

import pytest

from tuneloop.data.gate.checks import sample_problems
from tuneloop.data.gate.dedup import answer_keys
from tuneloop.data.io.formats import read_file, write_file
from tuneloop.records import Sample
from tuneloop.tools import (
    answer_kind, call_problems, canonical_calls, normalize_tools, parse_calls, sample_calls, sample_tools,
)

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"], "default": "c"}},
               "required": ["city"]}}


def call_sample(output: str, **fields) -> Sample:
    return Sample(instruction="Weather in Oslo?", output=output, tools=[{"type": "function", "function": WEATHER}],
                  answer_kind="tool_calls", **fields)


def test_openai_and_bare_tool_definitions_are_stored_in_one_form():
    wrapped = Sample(instruction="q", output="a", tools=[{"type": "function", "function": WEATHER}])
    bare = Sample(instruction="q", output="a", tools=json.dumps([WEATHER]))
    assert wrapped.extras["tools"] == bare.extras["tools"] == json.dumps([WEATHER], ensure_ascii=False)
    assert sample_tools(wrapped) == [WEATHER]


def test_a_call_answer_is_parsed_whichever_way_its_arguments_are_written():
    as_text = call_sample('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}')
    as_object = call_sample('{"arguments": {"city": "Oslo"}, "name": "get_weather"}')
    assert sample_calls(as_text) == sample_calls(as_object) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert answer_kind(as_text) == "tool_calls"
    assert answer_kind(Sample(instruction="q", output="no", expected="refuse")) == "refusal"
    assert parse_calls('{"name": "f", "arguments": {}, "extra": 1}') is None  # not a call: text


def test_the_gate_quarantines_unknown_functions_and_bad_arguments_with_the_reason():
    assert sample_problems(call_sample('{"name": "get_weather", "arguments": {"city": "Oslo"}}')) == []
    unknown = sample_problems(call_sample('{"name": "book_flight", "arguments": {}}'))
    assert unknown == ["tool call does not fit: unknown function 'book_flight' (the row's tools: get_weather)"]
    bad = sample_problems(call_sample('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "k"}}'))
    assert len(bad) == 1 and "unit: 'k' is not one of ['c', 'f']" in bad[0]
    missing = sample_problems(call_sample('{"name": "get_weather", "arguments": {}}'))
    assert "'city' is a required property" in missing[0]
    assert "not {\"name\"" in sample_problems(call_sample("It is sunny"))[0]
    no_tools = Sample(instruction="q", output='{"name": "f", "arguments": {}}', answer_kind="tool_calls")
    assert "the row has no tools" in sample_problems(no_tools)[0]
    broken = Sample(instruction="q", output="a", tools='[{"description": "nameless"}]')
    assert "tool 1 has no name" in sample_problems(broken)[0]


def test_a_tool_call_answer_is_not_held_to_the_tasks_json_schema():
    from tuneloop.answers import schema_validator

    validator = schema_validator({"type": "object", "required": ["intent"]})
    assert sample_problems(call_sample('{"name": "get_weather", "arguments": {"city": "Oslo"}}'), validator) == []


def test_dedup_compares_the_canonical_call_not_the_raw_string():
    a = call_sample('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"c\\"}"}')
    b = call_sample('{"arguments": {"unit": "c", "city": "Oslo"}, "name": "get_weather"}')
    c = call_sample('{"name": "get_weather", "arguments": {"city": "Bergen"}}')
    keys = answer_keys([a, b, c])
    assert keys[0] == keys[1] != keys[2]
    assert canonical_calls([{"name": "f", "arguments": {"n": 5.0}}]) == canonical_calls([{"name": "f", "arguments": {"n": 5}}])


def test_the_same_question_with_other_tools_is_another_prompt():
    a = Sample(instruction="Weather in Oslo?", output="x", tools=[WEATHER])
    b = Sample(instruction="Weather in Oslo?", output="x", tools=[{**WEATHER, "name": "forecast"}])
    assert a.prompt_key_text != b.prompt_key_text and "get_weather" in a.prompt_key_text
    assert Sample(instruction="q", output="a").prompt_key_text == "q"  # rows without tools keep their key


def test_openai_messages_round_trip_tool_call_ids_and_parallel_results(tmp_path):
    row = {"messages": [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 3}'},
        {"role": "tool", "tool_call_id": "call_def", "content": '{"temp": 18}'},
        {"role": "assistant", "content": "Oslo 3, Rome 18."}],
        "tools": [{"type": "function", "function": WEATHER}]}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(row) + "\n", encoding="utf-8")
    sample = read_file(source).samples[0]
    out = write_file(tmp_path / "out.jsonl", [sample], "openai", carry=False)
    back = json.loads(out.read_text(encoding="utf-8"))
    assert back["messages"] == row["messages"] and back["tools"] == row["tools"]
    assert read_file(out).samples[0].model_dump() == sample.model_dump()


def test_alpaca_rows_with_tools_say_their_answer_is_a_call(tmp_path):
    sample = call_sample('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    out = write_file(tmp_path / "a.jsonl", [sample], "alpaca", carry=False)
    row = json.loads(out.read_text(encoding="utf-8"))
    assert row["answer_kind"] == "tool_calls" and json.loads(row["tools"]) == [WEATHER]
    back = read_file(out).samples[0]
    assert back.model_dump() == sample.model_dump() and sample_calls(back) is not None
    # a conversation's function_call answer, written as Alpaca without the tuneloop column, stays a call
    chat = Sample(instruction="Weather?", output='{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                  turn_roles=["user", "function_call"], tools=[WEATHER])
    row = json.loads(write_file(tmp_path / "b.jsonl", [chat], "alpaca", carry=False).read_text(encoding="utf-8"))
    assert row["answer_kind"] == "tool_calls"
    # with the tuneloop column the turn roles come back and the marker is not stored twice
    again = read_file(write_file(tmp_path / "c.jsonl", [chat], "alpaca")).samples[0]
    assert again.model_dump() == chat.model_dump()


@pytest.mark.parametrize("shape", ["sharegpt", "openai", "alpaca"])
def test_glaive_demo_rows_round_trip_and_pass_the_gate(tmp_path, shape, llamafactory_demo):
    from tuneloop.data.io.shapes import sharegpt_to_sample

    rows = json.loads((llamafactory_demo / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    samples = [sharegpt_to_sample(r) for r in rows]
    assert [s.extras["tools"] for s in samples] == [r["tools"] for r in rows]  # the stored form is glaive's own
    out = write_file(tmp_path / f"glaive.{shape}.jsonl", samples, shape)
    assert [s.model_dump() for s in read_file(out).samples] == [s.model_dump() for s in samples]
    # every call in the glaive conversations fits its function, except rows that call something not offered
    calls = [(s, json.loads(turn[1])) for s in samples for turn, role in
             zip(s.history, (s.extras.get("turn_roles") or [])[1::2]) if role == "function_call"]
    assert calls
    fitting = [c for s, c in calls if not call_problems(parse_calls(json.dumps(c)), normalize_tools(s.extras["tools"]))]
    assert len(fitting) / len(calls) > 0.9


def test_rows_that_differ_only_in_their_tools_are_different_rows():
    a = Sample(instruction="Weather in Oslo?", output="x", tools=[WEATHER])
    b = Sample(instruction="Weather in Oslo?", output="x", tools=[WEATHER, {"name": "forecast"}])
    plain = Sample(instruction="Weather in Oslo?", output="x")
    assert len({a.id, b.id, plain.id}) == 3
    assert plain.id == Sample(instruction="Weather in Oslo?", output="x", kto_tag=True).id  # other extras: as before
