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
This module imports no pydantic at import time (records only when handed a Sample): eval's backends import it,
and the GPU benchmark runs them on a bare torch + transformers machine.
"""

from __future__ import annotations

import hashlib
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


def prompt_messages(prompt: Prompt, default_system: str = "") -> Messages:
    """The chat a prompt stands for: a sample's turns without its answer, or the messages as given."""
    if isinstance(prompt, list):
        return prompt
    from tuneloop.records import to_messages  # pydantic only when a Sample is handed in (see the module docstring)

    return to_messages(prompt, default_system, with_answer=False)


def prompt_text(tokenizer: Any, prompt: Prompt, default_system: str = "") -> str:
    """The prompt as text: the chat up to and including the assistant header."""
    return tokenizer.apply_chat_template(prompt_messages(prompt, default_system), tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: Prompt, default_system: str = "") -> list[int]:
    """The prompt exactly as serving renders it: the chat up to and including the assistant header, as ids."""
    return as_ids(tokenizer.apply_chat_template(prompt_messages(prompt, default_system), add_generation_prompt=True,
                                                tokenize=True))


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

    full = as_ids(tokenizer.apply_chat_template(to_messages(sample, default_system, with_answer=True), tokenize=True))
    if full[: len(prompt)] == prompt:
        tail = full[len(prompt):]
        if end in tail:
            return tail[: tail.index(end) + 1]
    return as_ids(tokenizer(sample.output, add_special_tokens=False)["input_ids"]) + [end]
