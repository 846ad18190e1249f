"""Function calling in training: the one renderer shows a sample's tools (the model's own template when it has tool
syntax, the documented json_block otherwise), the call is the answer the loss sees and is never cut, and the served
prompt of a tool chat is the trained one."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneloop.export.parity import check_template_parity
from tuneloop.records import Sample, to_messages
from tuneloop.tools import call_text
from tuneloop.train.templates import prompt_ids, prompt_text, tool_format
from tuneloop.train.tokenize import IGNORE, encode_sample

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = Sample(system="You help with travel.", instruction="Weather in Oslo?", tools=[WEATHER],
              output='{"arguments": {"city": "Oslo"}, "name": "get_weather"}', answer_kind="tool_calls")
MULTI = Sample(instruction="And in Köln?", tools=[WEATHER],
               history=[["Weather in Oslo?", '{"name": "get_weather", "arguments": {"city": "Oslo"}}'],
                        ['{"temp_c": 3}', "It is 3 °C in Oslo."]],
               output='{"name": "get_weather", "arguments": {"city": "Köln"}}',
               turn_roles=["user", "function_call", "observation", "assistant", "user", "function_call"])
# the tool part of Qwen2.5's chat template (a template with its own tool syntax)
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'system' %}{%- elif message.role == 'assistant' and "
    "message.tool_calls %}<|im_start|>assistant\n{%- for tc in message.tool_calls %}<tool_call>\n"
    "{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ message.content }}\n</tool_response><|im_end|>\n{%- else %}<|im_start|>{{ message.role }}\n"
    "{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- endif %}")


@pytest.fixture()
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def answer_of(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE])


def test_a_template_without_tool_syntax_gets_the_json_block(tokenizer):
    assert tool_format(tokenizer) == "json_block"  # the test model's ChatML (and SmolLM2's) has no tools
    text = prompt_text(tokenizer, CALL)
    assert "You help with travel.\n\nYou can call these functions" in text
    assert json.dumps([WEATHER], ensure_ascii=False) in text
    row = encode_sample(tokenizer, CALL, 512)[0]
    assert answer_of(tokenizer, row) == call_text([{"name": "get_weather", "arguments": {"city": "Oslo"}}]) + "<|im_end|>"


def test_tool_results_and_earlier_calls_are_rendered_in_history(tokenizer):
    messages = to_messages(MULTI, with_answer=False)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather" and messages.tools == [WEATHER]
    text = prompt_text(tokenizer, MULTI)
    assert '<tool_response>\n{"temp_c": 3}\n</tool_response>' in text
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in text


def test_a_template_with_tool_syntax_renders_tools_itself(tokenizer):
    tokenizer.chat_template = TOOL_TEMPLATE
    assert tool_format(tokenizer) == "template"
    text = prompt_text(tokenizer, MULTI)
    assert "# Tools\n<tools>" in text and "You can call these functions" not in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    row = encode_sample(tokenizer, MULTI, 512)[0]
    assert answer_of(tokenizer, row).startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Köln"}}')


def test_a_long_tool_prompt_is_windowed_and_the_call_never_cut(tokenizer):
    long = CALL.model_copy(update={"input": "I will travel to Oslo next week and wonder " * 80})
    rows = encode_sample(tokenizer, long, 600)
    assert isinstance(rows, list) and len(rows) > 1
    expected = call_text([{"name": "get_weather", "arguments": {"city": "Oslo"}}]) + "<|im_end|>"
    assert all(answer_of(tokenizer, row) == expected and len(row) <= 600 for row in rows)
    assert all(json.dumps([WEATHER], ensure_ascii=False) in tokenizer.decode(row.input_ids) for row in rows)


@pytest.mark.parametrize("template", [None, TOOL_TEMPLATE])
def test_parity_covers_tool_prompts(tiny_model_dir, template):
    training, served = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    if template:
        training.chat_template = served.chat_template = template
    report = check_template_parity(training, served, [CALL, MULTI], max_length=512)
    assert report.passed and report.checked == 2
    served.chat_template = (template or served.chat_template).replace("<tool_response>", "<tool_result>") \
        if template else served.chat_template.replace("'\\n' + message['content']", "': ' + message['content']")
    assert not check_template_parity(training, served, [MULTI], max_length=512).passed


def test_a_sample_without_tools_renders_as_before(tokenizer):
    plain = Sample(instruction="Extract", input="order A1", output='{"id": "A1"}', history=[["hi", "hello"]])
    messages = to_messages(plain, "Be brief.", with_answer=False)
    assert messages.tools is None and all(set(m) == {"role", "content"} for m in messages)
    direct = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    assert prompt_text(tokenizer, plain, "Be brief.") == direct and "You can call" not in direct


@pytest.mark.parametrize("template", [None, TOOL_TEMPLATE])
def test_a_client_sending_the_samples_messages_and_tools_gets_the_trained_prompt(tokenizer, template):
    from tuneloop.serve.requests import chat_messages

    if template:
        tokenizer.chat_template = template
    for sample in (CALL, MULTI):
        request = to_messages(sample, with_answer=False)  # what a client sends: messages + tools
        served = prompt_ids(tokenizer, chat_messages(json.loads(json.dumps(request))), tools=request.tools)
        assert served == encode_sample(tokenizer, sample, 512)[0].input_ids[: len(served)]
        assert served == prompt_ids(tokenizer, sample)


def test_llamafactory_glaive_demo_rows_render_and_encode(tokenizer, llamafactory_demo):

    from tuneloop.data.io.shapes import sharegpt_to_sample

    path = llamafactory_demo / "glaive_toolcall_en_demo.json"
    samples = [sharegpt_to_sample(row) for row in json.loads(path.read_text(encoding="utf-8"))[:60]]
    for sample in samples:
        rows = encode_sample(tokenizer, sample, 8192)
        assert isinstance(rows, list), rows
        text = tokenizer.decode(rows[0].input_ids)
        assert "<tools>" in text and "<tool_response>" in text or "observation" not in sample.extras.get("turn_roles", [])
        assert answer_of(tokenizer, rows[0]).endswith("<|im_end|>")
