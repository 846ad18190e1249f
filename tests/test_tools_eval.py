"""Function calling in eval: name accuracy, exact and AST argument match, parse rate, calls made or withheld,
per-tool slices, and the before/after comparison with McNemar like every other binary metric."""

from __future__ import annotations

import pytest

from tuneloop.eval.compare import compare_evals
from tuneloop.eval.metrics import score_answer, summarize
from tuneloop.eval.tool_metrics import answer_calls, arguments_match
from tuneloop.records import Sample

FLIGHT = {"name": "book_flight", "description": "Book a flight", "parameters": {
    "type": "object", "required": ["origin", "seats"],
    "properties": {"origin": {"type": "string"}, "seats": {"type": "integer"}, "price": {"type": "number"},
                   "cabin": {"type": "string", "enum": ["economy", "business"], "default": "economy"},
                   "passenger": {"type": "object", "properties": {"name": {"type": "string"}}}}}}
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                 "required": ["city"]}}


def call(tool="book_flight", **arguments) -> Sample:
    import json

    return Sample(instruction="Book it", tools=[FLIGHT, WEATHER], answer_kind="tool_calls",
                  output=json.dumps({"name": tool, "arguments": arguments}))


TEXT = Sample(instruction="Tell me a joke", tools=[FLIGHT, WEATHER], output="Why did the chicken cross the road?")


def test_ast_match_is_type_aware_and_accepts_defaults_the_reference_allows():
    sample = call(origin="OSL", seats=2, price=5)
    scores = score_answer(sample, '{"name": "book_flight", "arguments": {"seats": 2, "price": 5.0, "origin": "OSL"}}', "stop")
    assert scores["tool_name_ok"] and scores["tool_args_ast"] and not scores["tool_args_exact"] and scores["ok"]
    default = score_answer(sample, '{"name": "book_flight", "arguments": {"origin": "OSL", "seats": 2, "price": 5, '
                                   '"cabin": "economy"}}', "stop")
    assert default["tool_args_ast"] and not default["tool_args_exact"]
    other = score_answer(sample, '{"name": "book_flight", "arguments": {"origin": "OSL", "seats": 2, "price": 5, '
                                 '"cabin": "business"}}', "stop")
    assert not other["tool_args_ast"] and not other["ok"]
    string_number = score_answer(sample, '{"name": "book_flight", "arguments": {"origin": "OSL", "seats": "2", '
                                         '"price": 5}}', "stop")
    assert not string_number["tool_args_ast"] and not string_number["tool_call_valid"]
    assert not arguments_match(FLIGHT["parameters"], {"origin": "OSL", "seats": 2}, {"origin": "OSL"})  # required


def test_wrong_function_unparsable_call_and_calls_where_text_was_expected():
    sample = call(origin="OSL", seats=1)
    wrong = score_answer(sample, '{"name": "get_weather", "arguments": {"city": "Oslo"}}', "stop")
    assert wrong["tool_name_ok"] is False and wrong["tool_call_valid"] and wrong["tool_call_made"]
    broken = score_answer(sample, '{"name": "book_flight", "arguments": {"origin": ', "stop")
    assert broken["tool_call_parsed"] is False and broken["tool_call_made"] is False and not broken["ok"]
    silent = score_answer(sample, "Sure, I booked it.", "stop")
    assert silent["tool_call_made"] is False and silent["tool_call_parsed"] is None
    spurious = score_answer(TEXT, '{"name": "get_weather", "arguments": {"city": "Oslo"}}', "stop")
    assert spurious["tool_abstained"] is False and spurious["tool_call_made"] is None and not spurious["ok"]
    fine = score_answer(TEXT, TEXT.output, "stop")
    assert fine["tool_abstained"] and fine["ok"] and fine["tool"] == "none"
    plain = score_answer(Sample(instruction="q", output="a"), "a", "stop")
    assert not any(key.startswith("tool") for key in plain)  # samples without tools score as before


def test_hermes_style_blocks_and_parallel_calls_in_any_order():
    two = Sample(instruction="Weather in Oslo and Rome", tools=[WEATHER], answer_kind="tool_calls",
                 output='[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
                        '{"name": "get_weather", "arguments": {"city": "Rome"}}]')
    answer = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert len(answer_calls(answer)[0]) == 2
    scores = score_answer(two, answer, "stop")
    assert scores["tool_name_ok"] and scores["tool_args_ast"] and scores["tool_args_exact"]


def test_summary_names_both_error_rates_and_slices_per_tool():
    scores = [score_answer(call(origin="OSL", seats=1), "no call", "stop"),
              score_answer(call(origin="OSL", seats=1), '{"name": "book_flight", "arguments": {"origin": "OSL", "seats": 1}}', "stop"),
              score_answer(TEXT, '{"name": "get_weather", "arguments": {"city": "x"}}', "stop"),
              score_answer(TEXT, "a joke", "stop")]
    summary = summarize(scores)
    assert summary["did_not_call_when_it_should"] == 0.5 and summary["called_when_it_should_not"] == 0.5
    assert summary["per_tool"]["book_flight"] == {"n": 2, "ok": 0.5} and summary["per_tool"]["none"]["n"] == 2
    assert summary["tool_name_ok"] == 0.5 and summary["tool_name_ok_n"] == 2  # no call is a wrong name


def test_before_after_compares_tool_metrics_with_mcnemar_and_per_tool_slices(tmp_path):
    from tests.test_eval_run import write_run

    samples = [call(origin=f"C{i}", seats=i + 1).model_copy(update={"id": f"f{i}"}) for i in range(12)]
    samples += [call("get_weather", city=f"T{i}").model_copy(update={"id": f"w{i}"}) for i in range(8)]
    right = [s.output for s in samples]
    text = ["I cannot call anything."] * len(samples)
    comparison = compare_evals(write_run(tmp_path / "before", samples, text, "base"),
                               write_run(tmp_path / "after", samples, right, "tuned"), tmp_path / "cmp")
    metrics = comparison["modes"]["unconstrained"]["metrics"]
    for name in ("tool_name_ok", "tool_args_ast", "tool_call_made"):
        assert metrics[name]["better"] == 20 and metrics[name]["verdict"] == "better"
        assert metrics[name]["p_value"] == pytest.approx(2 / 2 ** 20)
    tools = {r["value"]: r for r in comparison["modes"]["unconstrained"]["slices"]["tool"]}
    assert tools["book_flight"]["n"] == 12 and tools["get_weather"]["delta"] == pytest.approx(1.0)
    verdict = comparison["modes"]["unconstrained"]["verdict"]
    assert verdict["verdict"] == "improved" and {"tool_name_ok", "tool_args_ast"} <= set(verdict["metrics"])
