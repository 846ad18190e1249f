"""Tools in the embedded server, driven by the official openai client with the tiny random model: a random model
knows no function, so every valid call here is the constraint's doing."""

from __future__ import annotations

import json
import random

import httpx
import jsonschema
import openai
import pytest

from tests.test_server import realistic_schemas
from tuneloop.serve.server import serve_in_background
from tuneloop.traces.store import TraceStore


def random_functions(count: int, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    return [{"name": f"fn_{i}_{rng.choice(['get', 'set', 'find', 'book'])}", "description": f"function {i}",
             "parameters": schema} for i, schema in enumerate(realistic_schemas(count, seed=seed))]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("serve_tools") / "traces.db"
    with serve_in_background(tiny_model_dir, store, model_name="tiny", default_max_tokens=160) as base_url:
        yield base_url, store


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


@pytest.mark.slow
def test_every_call_validates_over_50_random_functions_streaming_and_not(client, server):
    check_calls(client, server, random_functions(50))


def test_every_call_validates_over_3_random_functions_streaming_and_not(client, server):
    check_calls(client, server, random_functions(3, seed=5))  # required + stream, named, required


def check_calls(client, server, functions):
    rng = random.Random(3)
    for index, function in enumerate(functions):
        offered = [function, rng.choice([f for f in functions if f is not function])]
        rng.shuffle(offered)
        tools = [{"type": "function", "function": f} for f in offered]
        choice = {"type": "function", "function": {"name": function["name"]}} if index % 2 else "required"
        kwargs = dict(model="tiny", messages=[{"role": "user", "content": f"call {function['name']}"}],
                      tools=tools, tool_choice=choice, max_tokens=200, seed=index)
        if index % 3 == 0:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            calls = [c for chunk in chunks if chunk.choices for c in (chunk.choices[0].delta.tool_calls or [])]
            finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1]
            name, arguments, call_id = calls[0].function.name, calls[0].function.arguments, calls[0].id
        else:
            response = client.chat.completions.create(**kwargs)
            message, finish = response.choices[0].message, response.choices[0].finish_reason
            assert message.content is None and len(message.tool_calls) == 1
            call = message.tool_calls[0]
            name, arguments, call_id = call.function.name, call.function.arguments, call.id
        assert finish == "tool_calls" and call_id.startswith("call_")
        by_name = {f["name"]: f for f in offered}
        assert name in by_name and (index % 2 == 0 or name == function["name"])
        jsonschema.validate(json.loads(arguments), by_name[name]["parameters"])
    traces = TraceStore(server[1]).traces()
    called = [t for t in traces if (t.model_extra or {}).get("tool_calls")]
    assert len(called) >= len(functions) and all(t.finish_reason == "tool_calls" for t in called)
    assert all(t.model_extra["tools"] and t.model_extra["tool_choice"] for t in called)


def test_tool_choice_none_and_auto_answer_in_text_when_the_model_does_not_call(client):
    tools = [{"type": "function", "function": f} for f in random_functions(2)]
    for choice in ("none", "auto"):
        response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  tools=tools, tool_choice=choice, max_tokens=8, seed=1)
        message = response.choices[0].message
        assert message.tool_calls is None and isinstance(message.content, str)
        assert response.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_earlier_calls_and_tool_results_is_accepted(client):
    tools = [{"type": "function", "function": random_functions(1)[0]}]
    messages = [{"role": "user", "content": "do it"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": tools[0]["function"]["name"], "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
                {"role": "user", "content": "again"}]
    response = client.chat.completions.create(model="tiny", messages=messages, tools=tools, tool_choice="required",
                                              max_tokens=300, seed=2)
    assert response.choices[0].finish_reason == "tool_calls"


def test_bad_tools_and_tool_choices_get_a_400_naming_the_problem(server):
    root = server[0].removesuffix("/v1")
    chat = {"messages": [{"role": "user", "content": "x"}]}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for extra, words in (({"tools": [{"type": "function", "function": {}}]}, "no name"),
                         ({"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "'g'"),
                         ({"tool_choice": "required"}, "no `tools`"),
                         ({"tools": [tool], "tool_choice": "always"}, "not one of"),
                         ({"tools": [tool], "response_format": {"type": "json_object"}}, "not both"),
                         ({"messages": [{"role": "user", "content": "x", "tool_call_id": "1"}]}, "tool_call_id")):
        response = httpx.post(f"{root}/v1/chat/completions", json={**chat, **extra})
        assert response.status_code == 400 and words in response.json()["error"]["message"], (extra, response.text)
