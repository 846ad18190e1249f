"""Chat templates: the one rendering of a prompt, and the end-of-turn token the model must learn to emit.

Every stage renders a prompt here, so what a served model is shown is token for token what it was trained on:
```
Sample ─to_messages(with_answer=False)─┐
                                       ├─▶ apply_chat_template(add_generation_prompt=True) ─▶ prompt_text / prompt_ids
request messages (serve, eval) ────────┘      (up to and including the assistant header)
```
train (`tokenize.encode_sample`), export (`parity`, `merge`), serve (`server.encode_request`) and eval
(`backends.LocalBackend.render`) call `prompt_text` / `prompt_ids`; `export.parity` checks the training rows against
the serving path. A template hash lets an export or an eval record which template produced its prompts.

Tools (a `records.Chat`'s `.tools`, or `tools=` from a request) always go through `apply_chat_template(tools=...)`,
in one of three formats (`train.tool_format` in tuneloop.yaml; `auto` picks `template` when the template renders
tools, else `json_block`):
```
template     the model's own template renders tools (its source mentions `tools`: Qwen2.5, Llama 3.1, Hermes, ...)
json_block   the functions as a JSON list in a <tools> block at the end of the system message, a call
             as the assistant text {"name": ..., "arguments": {...}} (a JSON list for several: tools.call_text),
             a tool result as a user turn <tool_response>...</tool_response>
hermes       the Hermes / Qwen2.5 convention vLLM's `hermes` parser reads: "# Tools" and the functions in
             <tools></tools> in the system message, each call as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>,
             a run of tool results as one user turn of <tool_response> blocks
```
json_block and hermes are Jinja preludes (`tool_formats/*.jinja`) put in front of the model's own template: they
rewrite the messages (tools into the system turn, calls into assistant text, results into user turns) and hand them
to it. Training writes the prelude into the tokenizer's chat template (`use_tool_format`), so the template saved with
the adapter, the merged export and its chat_template.jinja carries the format: eval, `tuneloop serve`, vLLM and
plain transformers render what training rendered. A tokenizer whose template has neither tool syntax nor a prelude
(a base model before training) gets the json_block prelude at render time, as `auto` would train it.
This module imports no pydantic at import time (records only when handed a Sample): eval's backends import it,
and the GPU benchmark runs them on a bare torch + transformers machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from tuneloop.models import CHATML_TEMPLATE

if TYPE_CHECKING:
    from tuneloop.records import Sample

Messages = list[dict[str, Any]]
Prompt = Union["Sample", Messages]  # a sample (rendered without its answer) or chat messages as a client sends them

END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")


class TemplateError(ValueError):
    """A tokenizer whose chat template cannot be used for training, with what to do."""


def ensure_chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template; a base model without one gets ChatML (recorded in the run card)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.chat_template


def template_sha256(tokenizer: Any) -> str:
    """The sha256 of the tokenizer's chat template (an export's manifest and its parity report record it)."""
    return hashlib.sha256((getattr(tokenizer, "chat_template", None) or "").encode("utf-8")).hexdigest()


def template_hash(tokenizer: Any) -> str:
    """The short form of `template_sha256` a run card records."""
    return template_sha256(tokenizer)[:16]


def as_ids(rendered: Any) -> list[int]:
    """`apply_chat_template(tokenize=True)` returns a list, or a BatchEncoding in newer transformers."""
    if hasattr(rendered, "keys") and "input_ids" in rendered:
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


TOOL_FORMATS = ("auto", "template", "json_block", "hermes")  # train.tool_format
FALLBACK_FORMATS = ("json_block", "hermes")  # the formats tuneloop renders through a prelude of its own
_PRELUDE_DIR = Path(__file__).with_name("tool_formats")
_PRELUDE_START = re.compile(r"\A\{#- tuneloop tool format: (\w+)")
_PRELUDE_END = "{#- end of tuneloop tool format #}"


@lru_cache(maxsize=None)
def tool_prelude(fmt: str) -> str:
    """The Jinja prelude of a fallback format (`tool_formats/<fmt>.jinja`), ending with its end marker."""
    if fmt not in FALLBACK_FORMATS:
        raise ValueError(f"{fmt!r} has no prelude; the fallback formats are {', '.join(FALLBACK_FORMATS)}")
    return (_PRELUDE_DIR / f"{fmt}.jinja").read_text(encoding="utf-8").rstrip("\n")


def _template_source(template: Any) -> str:
    if isinstance(template, dict):  # named templates (default, tool_use): any of them may render tools
        return "\n".join(str(t) for t in template.values())
    return template or ""


def split_tool_format(template: Any) -> tuple[str | None, str]:
    """(the fallback format a chat template carries, the model's own template after its prelude).

    >>> split_tool_format(with_tool_format("{{ messages }}", "hermes"))
    ('hermes', '{{ messages }}')
    >>> split_tool_format("{{ messages }}")
    (None, '{{ messages }}')
    """
    source = _template_source(template)
    found = _PRELUDE_START.match(source)
    if found is None or _PRELUDE_END not in source:
        return None, source
    return found.group(1), source.split(_PRELUDE_END, 1)[1]


def renders_tools(template: Any) -> bool:
    """Whether a chat template (its prelude included) shows `tools` to the model."""
    return "tools" in _template_source(template)


def with_tool_format(template: str, fmt: str) -> str:
    """The model's own template (any earlier prelude dropped) behind the prelude of `fmt`."""
    return tool_prelude(fmt) + split_tool_format(template)[1]


def tool_format(tokenizer: Any) -> str:
    """How this tokenizer renders tools: the fallback its template carries, `template` when its own template renders
    them, else `json_block` (applied at render time, see the module docstring)."""
    carried, own = split_tool_format(getattr(tokenizer, "chat_template", None))
    return carried or ("template" if renders_tools(own) else "json_block")


def use_tool_format(tokenizer: Any, setting: str = "auto", model: str = "the model") -> str:
    """Put `train.tool_format` into the tokenizer's chat template (training saves it with the model); the format.

    `auto` keeps a format the template already carries (a model trained by tuneloop), else picks `template` or
    `json_block`; `template` on a template without tool syntax is a TemplateError naming the fix.
    """
    if setting not in TOOL_FORMATS:
        raise TemplateError(f"train.tool_format: {setting!r} is not one of {' | '.join(TOOL_FORMATS)}.")
    carried, own = split_tool_format(tokenizer.chat_template)
    if setting == "auto":
        setting = carried or ("template" if renders_tools(own) else "json_block")
    if setting == "template" and not renders_tools(own):
        raise TemplateError(f"train.tool_format is template, but {model}'s chat template has no tool syntax (it never "
                            "mentions `tools`): set train.tool_format to json_block or hermes (or auto) in tuneloop.yaml.")

    def fit(template: str) -> str:
        return split_tool_format(template)[1] if setting == "template" else with_tool_format(template, setting)

    template = tokenizer.chat_template
    # named templates (default, tool_use) each get the format: transformers picks one of them by the request
    tokenizer.chat_template = {name: fit(t) for name, t in template.items()} if isinstance(template, dict) else fit(template)
    return setting


def _render_template(tokenizer: Any) -> str | None:
    """The template to render a tool chat with: None (the tokenizer's own, which renders tools or carries its
    prelude), or the json_block prelude in front of a template without tool syntax (`auto`'s choice)."""
    template = getattr(tokenizer, "chat_template", None)
    if renders_tools(template):
        return None
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    return with_tool_format(template, "json_block")


def prompt_messages(prompt: Prompt, default_system: str = "") -> Messages:
    """The chat a prompt stands for: a sample's turns without its answer, or the messages as given."""
    if isinstance(prompt, list):
        return prompt
    from tuneloop.records import to_messages  # pydantic only when a Sample is handed in (see the module docstring)

    return to_messages(prompt, default_system, with_answer=False)


def _wire_arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _renderable(tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None) -> tuple[Messages, dict]:
    """Messages (and apply_chat_template's extra arguments) as this tokenizer's template takes a tool chat."""
    tools = tools if tools is not None else getattr(messages, "tools", None)
    tooled = tools or any(m.get("tool_calls") or m.get("role") in ("tool", "function") for m in messages)
    if not tooled:
        return messages, {}
    from tuneloop.tools import openai_tools

    shaped = []
    for message in messages:
        if message.get("tool_calls"):  # templates read arguments as an object (Qwen2.5: arguments | tojson)
            calls = [{**c, "function": {**c["function"], "arguments": _wire_arguments(c["function"].get("arguments"))}}
                     if isinstance(c.get("function"), dict) else c for c in message["tool_calls"]]
            message = {**message, "tool_calls": calls}
        shaped.append(message)
    extra: dict[str, Any] = {"tools": openai_tools(tools)} if tools else {}
    template = _render_template(tokenizer)
    if template is not None:
        extra["chat_template"] = template
    return shaped, extra


def render(tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
    """`apply_chat_template` over a chat, its tools rendered as the tokenizer's `tool_format` says."""
    shaped, extra = _renderable(tokenizer, messages, tools)
    return tokenizer.apply_chat_template(shaped, **extra, **kwargs)


def prompt_text(tokenizer: Any, prompt: Prompt, default_system: str = "",
                tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt as text: the chat up to and including the assistant header."""
    return render(tokenizer, prompt_messages(prompt, default_system), tools, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: Prompt, default_system: str = "",
               tools: list[dict[str, Any]] | None = None) -> list[int]:
    """The prompt exactly as serving renders it: the chat up to and including the assistant header, as ids."""
    return as_ids(render(tokenizer, prompt_messages(prompt, default_system), tools, add_generation_prompt=True,
                         tokenize=True))


def call_opening(tokenizer: Any, tools: list[dict[str, Any]]) -> list[int]:
    """The tokens a template writes at the start of an assistant turn that calls a function, before the call's JSON:
    `<tool_call>` and its newline in the hermes format and Qwen2.5's own template, none in json_block. A forced call
    (tool_choice required or a named function) is decoded after them, as the model was trained to write it, rather
    than as bare JSON the model never saw at that place. Empty when the template's call turn does not continue the
    prompt token for token.
    """
    if not tools:
        return []
    user = [{"role": "user", "content": "x"}]
    name = tools[0]["name"]
    turn = {"role": "assistant", "content": "",
            "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": name, "arguments": {}}}]}
    prompt = as_ids(render(tokenizer, user, tools, add_generation_prompt=True, tokenize=True))
    try:
        full = as_ids(render(tokenizer, user + [turn], tools, tokenize=True))
    except Exception:  # a template that cannot render a call turn: decode the call as bare JSON
        return []
    if full[: len(prompt)] != prompt:
        return []
    stops = {end_of_turn_id(tokenizer), tokenizer.eos_token_id}
    opening: list[int] = []
    for token in full[len(prompt):]:
        if token in stops or any(mark in tokenizer.decode(opening + [token]) for mark in ("{", "[", name)):
            break
        opening.append(token)
    return opening


def answer_text(tokenizer: Any, sample: Sample) -> str:
    """What the model writes for a sample's answer outside its template's own tool syntax: the output, or a tool
    call as the json_block or hermes format writes it."""
    fmt = tool_format(tokenizer)
    if fmt in FALLBACK_FORMATS:
        from tuneloop.tools import call_text, sample_calls

        calls = sample_calls(sample)
        if calls is not None:
            return call_text(calls, fmt)
    return sample.output


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn: what generation stops on (ChatML `<|im_end|>`, Llama-3 `<|eot_id|>`)."""
    vocab = tokenizer.get_vocab()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False)
    for candidate in END_OF_TURN_CANDIDATES:
        if candidate in vocab and candidate in rendered.split("y", 1)[-1]:
            return vocab[candidate]
    if tokenizer.eos_token_id is None:
        raise TemplateError("the tokenizer has neither an end-of-turn token in its chat template nor an eos token; "
                            "use a model with a chat template or set eos_token in tokenizer_config.json.")
    return int(tokenizer.eos_token_id)


def response_ids(tokenizer: Any, sample: Sample, prompt: list[int], default_system: str = "",
                 end_of_turn: int | None = None) -> list[int]:
    """The answer's tokens followed by the end-of-turn token, as the template renders the assistant turn.

    When the full chat's tokens start with the prompt's tokens, the answer is the template's own rendering after
    the prompt, cut after the end-of-turn token; otherwise (a template that re-tokenizes across the boundary) the
    answer is tokenized on its own, which is what a model generates after the prompt anyway.
    """
    end = end_of_turn if end_of_turn is not None else end_of_turn_id(tokenizer)
    from tuneloop.records import to_messages

    full = as_ids(render(tokenizer, to_messages(sample, default_system, with_answer=True), tokenize=True))
    if full[: len(prompt)] == prompt:
        tail = full[len(prompt):]
        if end in tail:
            return tail[: tail.index(end) + 1]
    return as_ids(tokenizer(answer_text(tokenizer, sample), add_special_tokens=False)["input_ids"]) + [end]
