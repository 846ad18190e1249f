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

Tools (a `records.Chat`'s `.tools`, or `tools=` from a request) are rendered one of two ways, picked by the template:
```
template     the template renders tools itself (its source mentions `tools`: Qwen2.5, Llama 3.1, Hermes, ...):
             apply_chat_template(messages, tools=[{"type": "function", "function": F}]), calls as tool_calls
json_block   a template without tool syntax (ChatML, SmolLM2, the test model): the functions as a JSON block at the
             end of the system message (TOOL_BLOCK), a call as the assistant text {"name": ..., "arguments": {...}}
             (tools.call_text), a tool result as a user turn <tool_response>...</tool_response>
```
The choice depends on the tokenizer alone, so training, export, eval and serving of one model render alike.
This module imports no pydantic at import time (records only when handed a Sample): eval's backends import it,
and the GPU benchmark runs them on a bare torch + transformers machine.
"""

from __future__ import annotations

import hashlib
import json
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


TOOL_BLOCK = ("You can call these functions. To call one, answer with only a JSON object "
              '{{"name": <function name>, "arguments": <arguments object>}} (a JSON list of them for several calls); '
              "otherwise answer in text.\n<tools>\n{tools}\n</tools>")
TOOL_FORMATS = ("template", "json_block")


def tool_format(tokenizer: Any) -> str:
    """`template` when the tokenizer's chat template renders tools itself, else `json_block` (see the docstring)."""
    return "template" if "tools" in (getattr(tokenizer, "chat_template", None) or "") else "json_block"


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


def _json_block(messages: Messages, tools: list[dict[str, Any]] | None) -> Messages:
    from tuneloop.tools import call_text

    out: Messages = []
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = [c.get("function", c) for c in message["tool_calls"]]
            calls = [{"name": c.get("name"), "arguments": _wire_arguments(c.get("arguments", {}))} for c in calls]
            out.append({"role": "assistant", "content": call_text(calls)})
        elif message.get("role") in ("tool", "function"):
            out.append({"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            out.append({"role": message["role"], "content": message.get("content") or ""})
    if tools:
        block = TOOL_BLOCK.format(tools=json.dumps(list(tools), ensure_ascii=False))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _renderable(tokenizer: Any, messages: Messages, tools: list[dict[str, Any]] | None) -> tuple[Messages, dict]:
    """Messages (and apply_chat_template's extra arguments) as this tokenizer's template takes a tool chat."""
    tools = tools if tools is not None else getattr(messages, "tools", None)
    tooled = tools or any(m.get("tool_calls") or m.get("role") in ("tool", "function") for m in messages)
    if not tooled:
        return messages, {}
    if tool_format(tokenizer) == "json_block":
        return _json_block(messages, tools), {}
    from tuneloop.tools import openai_tools

    shaped = []
    for message in messages:
        if message.get("tool_calls"):  # templates read arguments as an object (Qwen2.5: arguments | tojson)
            calls = [{**c, "function": {**c["function"], "arguments": _wire_arguments(c["function"].get("arguments"))}}
                     if isinstance(c.get("function"), dict) else c for c in message["tool_calls"]]
            message = {**message, "tool_calls": calls}
        shaped.append(message)
    return shaped, ({"tools": openai_tools(tools)} if tools else {})


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


def answer_text(tokenizer: Any, sample: Sample) -> str:
    """What the model writes for a sample's answer outside its template's own tool syntax: the output, or a tool
    call as `json_block` writes it."""
    if tool_format(tokenizer) == "json_block":
        from tuneloop.tools import call_text, sample_calls

        calls = sample_calls(sample)
        if calls is not None:
            return call_text(calls)
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
