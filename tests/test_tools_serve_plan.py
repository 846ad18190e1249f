"""Tools in a request without a model: the call constraint of each tool_choice, reading an answer's calls, and the
vLLM tool parser by model family (pure Python: no torch)."""

from __future__ import annotations

import pytest

from tuneloop.serve.tool_calls import ToolRequestError, call_schema, plan_tools, read_calls, wire_calls
from tuneloop.serve.vllm import tool_call_parser

FUNCTIONS = [{"name": f"fn_{i}", "parameters": {"type": "object", "properties": {"n": {"type": "integer"}},
                                              "required": ["n"]}} for i in range(3)]


def random_functions(count):
    return FUNCTIONS[:count]


def test_the_call_schema_and_plans():
    functions = random_functions(3)
    schema = call_schema(functions)
    assert len(schema["anyOf"]) == 3 and schema["anyOf"][0]["properties"]["name"] == {"const": functions[0]["name"]}
    named = plan_tools([{"type": "function", "function": f} for f in functions],
                       {"type": "function", "function": {"name": functions[1]["name"]}}, None)
    assert named.response_format["json_schema"]["schema"]["properties"]["arguments"] == functions[1]["parameters"]
    assert plan_tools(functions, "auto", None).response_format is None


@pytest.mark.parametrize("model, parser", [("Qwen/Qwen2.5-7B-Instruct", "hermes"), ("meta-llama/Llama-3.1-8B-Instruct", "llama3_json"),
                                           ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"), ("HuggingFaceTB/SmolLM2-135M-Instruct", None)])
def test_vllm_tool_parser_by_model_family(model, parser):
    assert tool_call_parser(model) == parser


def test_auto_reads_a_call_or_text_and_a_broken_call_is_named():
    plan = plan_tools(FUNCTIONS, "auto", None)
    assert read_calls(plan, "Hello there") == (None, None)
    calls, problem = read_calls(plan, '{"name": "fn_1", "arguments": {"n": 3}}')
    assert calls == [{"name": "fn_1", "arguments": {"n": 3}}] and problem is None
    _, problem = read_calls(plan, '{"name": "fn_1", "arguments": {"n": "3"}}')
    assert "does not fit its function" in problem and "'3' is not of type 'integer'" in problem
    _, problem = read_calls(plan, '{"name": "nope", "arguments": {}}')
    assert "unknown function 'nope'" in problem
    assert read_calls(plan_tools(FUNCTIONS, "none", None), '{"name": "fn_1", "arguments": {"n": 3}}') == (None, None)
    wire = wire_calls(calls, "trace-0123456789abcdef")
    assert wire[0]["function"] == {"name": "fn_1", "arguments": '{"n": 3}'} and wire[0]["id"].startswith("call_")


@pytest.mark.parametrize("tools, choice, words", [
    ([{"type": "function", "function": {}}], "auto", "no name"),
    (FUNCTIONS, {"type": "function", "function": {"name": "g"}}, "'g'"),
    (None, "required", "no `tools`"),
    (FUNCTIONS, "always", "not one of")])
def test_plans_that_cannot_be_honoured_say_why(tools, choice, words):
    with pytest.raises(ToolRequestError, match=words):
        plan_tools(tools, choice, None)
    with pytest.raises(ToolRequestError, match="not both"):
        plan_tools(FUNCTIONS, "auto", {"type": "json_object"})


def test_a_local_model_without_tool_syntax_gets_no_vllm_parser(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert tool_call_parser(tmp_path) is None
    (tmp_path / "chat_template.jinja").write_text("{% if tools %}{{ tools }}{% endif %}")
    assert tool_call_parser(tmp_path) == "hermes"
