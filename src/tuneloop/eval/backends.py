"""Where answers come from: a local Hugging Face model (batched) or any OpenAI-compatible endpoint.

Both return one `Generation` per prompt, in the order given. This module imports neither pydantic records nor
trl, so the GPU benchmark runs it on a bare torch + transformers machine.

Local batching:
```
prompts ──tokenize──▶ sort by length (longest first) ──▶ batches of batch_size, left-padded
        ◀──restore order── decode up to the first EOS ◀── model.generate (greedy unless told, fixed seed)
```
Left padding keeps every prompt's last token at the right edge, so one forward step extends all rows; sorting
keeps the padding in a batch small.
"""

from __future__ import annotations

import json

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.train.templates import prompt_text

Progress = Callable[[int], None]


@dataclass
class Generation:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    error: str | None = None


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first.

    >>> length_sorted_batches([3, 9, 1, 7], 2)
    [[1, 3], [0, 2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], str]:
    """Generated ids up to the first end token, and the finish reason ("stop" or "length")."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return list(ids[:position]), "stop"
    return list(ids), "length"


class LocalBackend:
    """Batched generation with a loaded model and tokenizer (see `tuneloop.models.load_causal_lm`)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, max_new_tokens: int = 256, seed: int = 0,
                 do_sample: bool = False, temperature: float = 1.0, ignore_eos: bool = False,
                 cache_implementation: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens, self.seed = batch_size, max_new_tokens, seed
        self.do_sample, self.temperature = do_sample, temperature
        self.ignore_eos = ignore_eos  # benchmarks: every row runs to max_new_tokens
        self.cache_implementation = cache_implementation
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = end_token_ids(model, tokenizer)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied the way training renders it, with the assistant turn opened."""
        return prompt_text(self.tokenizer, messages)

    def generate(self, prompts: Sequence[str], logits_processor_factory: Callable[[], Any] | ServedConstraint | None = None,
                 progress: Progress | None = None) -> list[Generation]:
        """Answers for rendered prompts; `logits_processor_factory` makes a constraint per batch, and a
        `ServedConstraint` (from `schema_constraint`) decodes with the serving engine instead."""
        import torch

        if isinstance(logits_processor_factory, ServedConstraint):
            return self._generate_served(prompts, logits_processor_factory, progress)
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        results: list[Generation | None] = [None] * len(encoded)
        device = next(self.model.parameters()).device
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        for batch in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt")
            extra: dict[str, Any] = {}
            if logits_processor_factory is not None:
                extra["logits_processor"] = [logits_processor_factory()]
            if self.ignore_eos:
                extra["min_new_tokens"] = self.max_new_tokens
            if self.do_sample:
                extra["temperature"] = self.temperature
            if self.cache_implementation:
                extra["cache_implementation"] = self.cache_implementation
            started = time.perf_counter()
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device),
                    max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids), **extra,
                )
            elapsed_ms = (time.perf_counter() - started) * 1000
            new_tokens = output[:, padded["input_ids"].shape[1]:].tolist()
            for index, ids in zip(batch, new_tokens):
                kept, finish = cut_at_eos(ids, set() if self.ignore_eos else self.eos_ids)
                results[index] = Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True), finish_reason=finish,
                    prompt_tokens=len(encoded[index]), completion_tokens=len(kept), latency_ms=elapsed_ms,
                )
            if progress:
                progress(len(batch))
        return [r for r in results if r is not None]


    def _generate_served(self, prompts: Sequence[str], constraint: ServedConstraint,
                         progress: Progress | None) -> list[Generation]:
        """Constrained answers through the serving engine, batch by batch; a broken answer carries an error."""
        from tuneloop.decoding.engine import GenerationRequest  # torch and xgrammar only when constraining
        from tuneloop.decoding.grammar import ResponseFormatError
        from tuneloop.decoding.validity import answer_validity, constrained_failure

        engine = constraint.engine
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        results: list[Generation | None] = [None] * len(encoded)
        temperature = self.temperature if self.do_sample else 0.0
        for batch in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
            requests = [GenerationRequest(list(encoded[i]), self.max_new_tokens, temperature, seed=self.seed + i,
                                          response_format=constraint.response_format) for i in batch]
            started = time.perf_counter()
            try:
                rows = [engine.prepare(request) for request in requests]
            except ResponseFormatError as err:  # too few tokens for any complete answer: the whole run is wrong
                raise ResponseFormatError(f"{err} In eval: raise eval.max_new_tokens (--max-new-tokens).") from None
            answers = engine.run(rows)
            elapsed_ms = (time.perf_counter() - started) * 1000
            for index, answer in zip(batch, answers):
                broken = constrained_failure(answer.finish_reason, answer_validity(answer.text, constraint.response_format),
                                             constraint.response_format)
                results[index] = Generation(
                    text=answer.text, finish_reason="schema_invalid" if broken else answer.finish_reason,
                    prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                    latency_ms=elapsed_ms, error=broken,
                )
            if progress:
                progress(len(batch))
        return [r for r in results if r is not None]


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@dataclass
class ServedConstraint:
    """Schema-constrained decoding exactly as the embedded server does it: the one decoder's grammar, its
    closing budget (answers close within max_new_tokens) and its validation after generation."""

    engine: Any  # tuneloop.decoding.engine.Engine
    response_format: dict[str, Any]


def schema_constraint(model: Any, tokenizer: Any, schema: dict[str, Any]) -> ServedConstraint:
    """The serving engine's constrained decoder for `schema`, for `LocalBackend.generate`.

    The schema is checked first, as the server checks it: a keyword the engine cannot enforce stops the eval with
    an error that names it (see the CLI's `serve --check-schema`), instead of measuring an unenforced constraint.
    """
    from tuneloop.decoding.engine import Engine  # one constrained decoder: eval measures what is served
    from tuneloop.decoding.grammar import check_response_format

    response_format = json_schema_format(schema)
    check_response_format(response_format)
    return ServedConstraint(Engine(model, tokenizer), response_format)


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> dict[str, Any]:
    """The OpenAI `response_format` for a JSON Schema (the current form, not the removed guided_json fields)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class EndpointBackend:
    """Chat completions from any OpenAI-compatible server through `tuneloop.llm_client.Endpoint`.

    `concurrency` requests are in flight at once, after a first request sent alone. Connection errors, timeouts,
    429 and 5xx are retried by the openai client itself (`max_retries`, exponential backoff). A configuration error
    (refused key, unknown model, nothing listening, a rejected first request) raises `EndpointConfigError`; a
    request that still fails is a Generation with `error` set and no text: an error, never an answer.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 4, timeout_s: float = 120.0, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0):
        from tuneloop.llm_client import Endpoint

        self.endpoint = Endpoint(base_url, model, api_key, concurrency=concurrency, max_retries=max_retries,
                                 timeout_s=timeout_s)
        self.model, self.concurrency = model, concurrency
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed

    def _create(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None) -> Generation:
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"messages": messages, "max_tokens": self.max_tokens,
                                  "temperature": self.temperature, "seed": self.seed}
        if response_format is not None:
            kwargs["response_format"] = response_format
        tools = getattr(messages, "tools", None)  # a sample's Chat offers its functions to the endpoint too
        if tools:
            from tuneloop.tools import openai_tools

            kwargs["tools"], kwargs["messages"] = openai_tools(tools), list(messages)
        response = self.endpoint.create(**kwargs)
        choice, usage = response.choices[0], response.usage
        text = choice.message.content or ""
        if getattr(choice.message, "tool_calls", None):  # scored as the json_block text of the calls
            from tuneloop.tools import call_text, parse_calls

            wire = [c.function.model_dump() for c in choice.message.tool_calls]
            parsed = parse_calls(wire)
            text = call_text(parsed) if parsed else json.dumps(wire, ensure_ascii=False)  # unreadable: scored as such
        return Generation(
            text=text, finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0, completion_tokens=usage.completion_tokens if usage else 0,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def chat(self, messages: list[dict[str, str]], response_format: dict[str, Any] | None = None) -> Generation:
        """One completion; a request that fails after the client's retries is a Generation carrying the error."""
        return self.generate_chats([messages], response_format)[0]

    def generate_chats(self, conversations: Sequence[list[dict[str, str]]], response_format: dict[str, Any] | None = None,
                       progress: Progress | None = None,
                       on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        """Completions for many conversations in the order given; `on_result(index, generation)` as each arrives."""

        def done(index: int, outcome: Any) -> None:
            if progress:
                progress(1)
            if on_result is not None:
                on_result(index, as_generation(outcome))

        outcomes = self.endpoint.map(list(conversations), lambda messages: self._create(messages, response_format), done)
        return [as_generation(o) for o in outcomes]


def as_generation(outcome: Any) -> Generation:
    """A Generation, or the error of a failed request as a Generation with `error` set (finish_reason "error")."""
    if isinstance(outcome, Generation):
        return outcome
    return Generation("", "error", 0, 0, 0.0, error=str(outcome))
