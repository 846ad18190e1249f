"""train.tool_format: the one rendering of tools, chosen in tuneloop.yaml and carried by the model's chat template.

`auto` renders exactly what tuneloop rendered before the setting existed; `hermes` renders what Qwen2.5's own
template renders, so a model trained that way is served by vLLM's hermes parser; `template` on a template without
tool syntax is an error naming the fix; the format a model trained in travels in the template saved with it.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tests.test_tools_training import CALL, MULTI, WEATHER, answer_of
from tuneloop.eval.tool_metrics import answer_calls
from tuneloop.models import pull_default
from tuneloop.records import Sample, to_messages
from tuneloop.serve.tool_calls import plan_tools, read_calls
from tuneloop.serve.vllm import VLLMSettings, build_command, tool_call_parser
from tuneloop.tools import call_text, parse_calls
from tuneloop.train.templates import (
    TemplateError, as_ids, prompt_ids, prompt_text, render, split_tool_format, tool_format, tool_prelude, use_tool_format,
)
from tuneloop.train.tokenize import encode_sample

TIME = {"name": "local_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PARALLEL = Sample(system="You help with travel.", instruction="Weather and time in Oslo, then tell me.",
                  tools=[WEATHER, TIME],
                  history=[["Weather and time in Oslo?", json.dumps([
                      {"name": "get_weather", "arguments": {"city": "Oslo"}},
                      {"name": "local_time", "arguments": {"city": "Oslo"}}])],
                      [json.dumps(['{"temp_c": 3}', '{"time": "14:05"}']), "3 °C at 14:05."]],
                  output=json.dumps([{"name": "get_weather", "arguments": {"city": "Bergen"}},
                                     {"name": "local_time", "arguments": {"city": "Bergen"}}]),
                  turn_roles=["user", "function_call", "observation", "assistant", "user", "function_call"])
# What tuneloop rendered for MULTI on a template without tool syntax before train.tool_format existed (the Python
# json_block renderer it replaces): `auto` must keep these bytes, so models trained before train the same.
OLD_JSON_BLOCK_MULTI = (
    '<|im_start|>system\nYou can call these functions. To call one, answer with only a JSON object {"name": '
    '<function name>, "arguments": <arguments object>} (a JSON list of them for several calls); otherwise answer in '
    'text.\n<tools>\n[{"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": '
    '"object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]\n</tools><|im_end|>\n'
    '<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n{"name": "get_weather", "arguments": '
    '{"city": "Oslo"}}<|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp_c": 3}\n</tool_response><|im_end|>\n'
    '<|im_start|>assistant\nIt is 3 °C in Oslo.<|im_end|>\n<|im_start|>user\nAnd in Köln?<|im_end|>\n'
    '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Köln"}}<|im_end|>\n')
OLD_JSON_BLOCK_TWO_CALLS = ('<|im_start|>assistant\n[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
                            '{"name": "local_time", "arguments": {"city": "Oslo"}}]<|im_end|>\n')
OLD_JSON_BLOCK_TWO_RESULTS = ('<|im_start|>user\n<tool_response>\n{"temp_c": 3}\n</tool_response><|im_end|>\n'
                              '<|im_start|>user\n<tool_response>\n{"time": "14:05"}\n</tool_response><|im_end|>\n')
# The tool part of Qwen2.5-Instruct's own chat template (its default system prompt left out): the reference the
# hermes format must render byte for byte on a ChatML model.
QWEN25_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{{- messages[0]['content'] }}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>\" }}{%- for tool in tools %}{{- \"\\n\" }}"
    "{{- tool | tojson }}{%- endfor %}{{- \"\\n</tools>\\n\\nFor each function call, return a json object with "
    "function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}{{- '<|im_start|>' + message.role + '\\n' + "
    "message.content + '<|im_end|>' + '\\n' }}{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + "
    "message.role }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}{{- '\\n<tool_call>\\n{\"name\": \"' }}"
    "{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.fixture()
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def smollm2():
    # the embedded default converts offline (once, then cached): these checks never skip for want of it
    return AutoTokenizer.from_pretrained(str(pull_default()))


def full_text(tokenizer, sample) -> str:
    return render(tokenizer, to_messages(sample, with_answer=True), tokenize=False)


# -- auto: what tuneloop rendered before, whether the format is applied at render time or saved in the template --

@pytest.mark.parametrize("installed", [False, True])
def test_auto_renders_the_json_block_exactly_as_before(tokenizer, installed):
    if installed:
        assert use_tool_format(tokenizer, "auto") == "json_block"  # what training does: the prelude is saved
    assert full_text(tokenizer, MULTI) == OLD_JSON_BLOCK_MULTI
    ids = as_ids(render(tokenizer, to_messages(MULTI, with_answer=True), tokenize=True))
    assert ids == tokenizer(
        OLD_JSON_BLOCK_MULTI, add_special_tokens=False)["input_ids"]
    assert OLD_JSON_BLOCK_TWO_CALLS + OLD_JSON_BLOCK_TWO_RESULTS in full_text(tokenizer, PARALLEL)
    row = encode_sample(tokenizer, CALL, 512)[0]
    assert answer_of(tokenizer, row) == '{"name": "get_weather", "arguments": {"city": "Oslo"}}<|im_end|>'


def test_auto_on_smollm2_keeps_its_ids_and_its_plain_chats(smollm2):
    before = {s.id: prompt_ids(smollm2, s) for s in (CALL, MULTI, PARALLEL)}
    plain = Sample(instruction="Extract", input="order A1", output='{"id": "A1"}')
    plain_before = prompt_text(smollm2, plain)
    assert "You are a helpful AI assistant named SmolLM" in plain_before  # its template's own default system turn
    assert use_tool_format(smollm2, "auto", "SmolLM2") == "json_block"
    assert {s.id: prompt_ids(smollm2, s) for s in (CALL, MULTI, PARALLEL)} == before
    assert prompt_text(smollm2, plain) == plain_before  # the prelude leaves a chat without tools untouched


def test_every_glaive_demo_row_renders_the_same_ids_with_the_saved_prelude(tiny_model_dir, llamafactory_demo):
    from tuneloop.data.io.shapes import sharegpt_to_sample

    at_render, saved = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    use_tool_format(saved, "json_block")
    rows = json.loads((llamafactory_demo / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    for sample in [sharegpt_to_sample(row) for row in rows]:
        chat = to_messages(sample, "You are helpful.", with_answer=True)
        assert as_ids(render(saved, chat, tokenize=True)) == as_ids(render(at_render, chat, tokenize=True))
        assert prompt_ids(saved, sample) == prompt_ids(at_render, sample)


# -- hermes: Qwen2.5's convention on any template ---------------------------------------------------------------

def test_hermes_renders_what_qwen25s_own_template_renders(tiny_model_dir):
    hermes, qwen = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert use_tool_format(hermes, "hermes") == "hermes" and tool_format(hermes) == "hermes"
    qwen.chat_template = QWEN25_TOOLS
    for sample in (CALL, PARALLEL):
        assert full_text(hermes, sample) == full_text(qwen, sample)
        assert prompt_ids(hermes, sample) == prompt_ids(qwen, sample)


def test_hermes_shows_tools_calls_and_results_in_its_tags(tokenizer):
    use_tool_format(tokenizer, "hermes")
    text = full_text(tokenizer, PARALLEL)
    assert text.startswith("<|im_start|>system\nYou help with travel.\n\n# Tools\n\nYou may call one or more functions")
    assert "<tools>\n" + json.dumps({"type": "function", "function": WEATHER}) + "\n" in text
    two_calls = ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
                 '</tool_call>\n<tool_call>\n{"name": "local_time", "arguments": {"city": "Oslo"}}\n</tool_call>'
                 '<|im_end|>\n')
    assert two_calls in text
    results = ('<|im_start|>user\n<tool_response>\n{"temp_c": 3}\n</tool_response>\n<tool_response>\n'
               '{"time": "14:05"}\n</tool_response><|im_end|>\n')  # parallel results: one user turn
    assert results in text and "You can call these functions" not in text
    row = encode_sample(tokenizer, PARALLEL, 4096)[0]
    assert answer_of(tokenizer, row) == call_text(json.loads(PARALLEL.output), "hermes") + "<|im_end|>"


def test_hermes_on_smollm2_replaces_its_default_system_turn_by_the_tools(smollm2):
    use_tool_format(smollm2, "hermes", "SmolLM2")
    text = prompt_text(smollm2, MULTI)
    assert text.startswith("<|im_start|>system\n# Tools\n\n") and "named SmolLM" not in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text


def test_a_client_sending_messages_and_tools_gets_the_trained_hermes_prompt(tokenizer):
    from tuneloop.serve.requests import chat_messages

    use_tool_format(tokenizer, "hermes")
    for sample in (CALL, MULTI, PARALLEL):
        request = to_messages(sample, with_answer=False)
        wire = json.loads(json.dumps(list(request)))  # arguments as JSON text, as OpenAI clients send them
        served = prompt_ids(tokenizer, chat_messages(wire), tools=request.tools)
        assert served == encode_sample(tokenizer, sample, 4096)[0].input_ids[: len(served)]


def test_a_hermes_answer_parses_back_to_its_calls():
    calls = json.loads(PARALLEL.output)
    text = call_text(calls, "hermes")
    assert parse_calls(text) == calls and parse_calls("  " + text + "\n") == calls
    assert answer_calls(text) == (calls, True)
    assert answer_calls("Let me look.\n" + text) == (calls, True)  # text before the calls is content (vLLM's reading)
    plan = plan_tools([WEATHER, TIME], "auto", None)
    assert read_calls(plan, text) == (calls, None)
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    assert parse_calls(broken) is None and answer_calls(broken) == (None, True)
    assert read_calls(plan, "It is sunny in <tool_call> land.") == (None, None)  # prose, not a call


# -- choosing a format ----------------------------------------------------------------------------------------------

def test_template_on_a_template_without_tool_syntax_is_an_error_naming_the_model_and_the_fix(tokenizer):
    with pytest.raises(TemplateError, match="my-model's chat template has no tool syntax.*train.tool_format to "
                                            "json_block or hermes"):
        use_tool_format(tokenizer, "template", "my-model")


def test_template_keeps_a_template_that_renders_tools(tokenizer):
    tokenizer.chat_template = QWEN25_TOOLS
    assert use_tool_format(tokenizer, "template") == "template" and tokenizer.chat_template == QWEN25_TOOLS
    assert use_tool_format(tokenizer, "auto") == "template"


def test_a_format_is_replaced_never_stacked_and_auto_keeps_a_trained_one(tokenizer):
    own = tokenizer.chat_template
    use_tool_format(tokenizer, "json_block")
    use_tool_format(tokenizer, "hermes")
    assert tokenizer.chat_template == tool_prelude("hermes") + own and split_tool_format(tokenizer.chat_template) == (
        "hermes", own)
    assert use_tool_format(tokenizer, "auto") == "hermes"  # a model trained in hermes keeps it when trained again
    tokenizer.chat_template = own.replace("<|im_start|>", "<|im_start|> ")  # no template: ChatML without tools
    with pytest.raises(TemplateError):
        use_tool_format(tokenizer, "template")


def test_the_project_file_offers_the_setting_with_auto_as_default():
    from pydantic import ValidationError

    from tuneloop.project import TrainConfig

    assert TrainConfig().tool_format == "auto" and TrainConfig(tool_format="hermes").tool_format == "hermes"
    assert "hermes" in TrainConfig.model_fields["tool_format"].description
    with pytest.raises(ValidationError):
        TrainConfig(tool_format="xml")


# -- vLLM picks the parser of the format a model was trained in ------------------------------------------------------

@pytest.mark.parametrize(("fmt", "name", "parser"), [("hermes", "model", "hermes"), ("json_block", "qwen2.5-ft", None),
                                                     (None, "model", None), (None, "qwen2.5-ft", None)])
def test_vllm_reads_the_tool_format_from_the_saved_template(tmp_path, tiny_model_dir, fmt, name, parser):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if fmt:
        use_tool_format(tokenizer, fmt)
    folder = tmp_path / name
    tokenizer.save_pretrained(str(folder))
    assert tool_call_parser(folder) == parser
    command = build_command(VLLMSettings(str(folder), "m", tool_call_parser=tool_call_parser(folder)))
    assert (command[-2:] == ["--tool-call-parser", "hermes"]) == (parser == "hermes")
    assert command[command.index("--chat-template") + 1] == str(folder / "chat_template.jinja")


@pytest.mark.parametrize("fmt, opening", [("json_block", ""), ("hermes", "<tool_call>\n"), ("qwen2.5", "<tool_call>\n")])
def test_a_forced_call_is_decoded_after_the_call_opening_the_model_was_trained_on(tokenizer, fmt, opening):
    from types import SimpleNamespace

    from tuneloop.serve.requests import chat_messages
    from tuneloop.serve.server import encode_request

    if fmt == "qwen2.5":
        tokenizer.chat_template = QWEN25_TOOLS
        use_tool_format(tokenizer, "template")
    else:
        use_tool_format(tokenizer, fmt)
    engine = SimpleNamespace(tokenizer=tokenizer)
    for sample in (CALL, MULTI, PARALLEL):
        request = to_messages(sample, with_answer=False)
        messages = chat_messages(json.loads(json.dumps(list(request))))
        plain = encode_request(engine, messages, request.tools)
        forced = encode_request(engine, messages, request.tools, forced_call=True)
        trained = encode_sample(tokenizer, sample, 4096)[0].input_ids
        # the forced prompt is the training row up to the call's JSON: the constraint starts where the model did
        assert forced[: len(plain)] == plain and forced == trained[: len(forced)]
        assert tokenizer.decode(forced[len(plain):]) == opening
        assert tokenizer.decode(trained[len(forced):]).lstrip().startswith(("{", "["))
