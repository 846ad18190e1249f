"""Batched constrained decoding on a transformers model: per-request sampling, stop strings and JSON grammars.

The one decoder of tuneloop: `tuneloop serve` (through `serve.batching.BatchingGenerator`) and constrained eval
(`eval.backends.schema_constraint`) both run it, so eval measures exactly what is served.
```
requests ──▶ Engine.prepare (one request) ──▶ Engine.run(rows) (one batch)
              grammar, closing budget         left-pads prompts, one forward per step for the whole
                                              batch (KV cache), grammar masks for the batch in one
                                              pass, then per row: temperature / top-p / seed →
                                              budget check → token
```
Rows finish on a stop token, a stop string, a completed grammar, `max_tokens` or a cancel (the client left);
finished rows keep a place in the batch (fed the pad token) until the whole batch is done. Each request is
prepared on its own (`Engine.prepare`: grammar, closing budget) before it joins a batch, so a schema that does
not compile fails only its own request. `on_text` callbacks receive text as it becomes final (held back while it
could still turn into a stop string), which is how the server streams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneloop.decoding.grammar import Budget, ConstrainedRow, Grammars, ResponseFormatError


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    min_tokens: int = 0  # free text only: stop tokens are masked until this many tokens are written
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)  # set: stop generating (client left)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class PreparedRow:
    """One request on its way through the decoder: its grammar, budget, sampler and the text so far."""

    def __init__(self, request: GenerationRequest, grammar: ConstrainedRow | None, greedy_default: bool):
        self.request = request
        self.grammar = grammar
        self.budget = Budget(grammar, request.max_tokens) if grammar is not None else None
        temperature = request.temperature
        self.greedy = (greedy_default if temperature is None else temperature <= 0)
        self.temperature = 1.0 if temperature is None or temperature <= 0 else float(temperature)
        self.generator = torch.Generator().manual_seed(
            request.seed if request.seed is not None else torch.seed() % (2**63))
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish_reason: str | None = None
        self.hold = max((len(s) for s in request.stop), default=0)

    def emit(self, final: bool) -> None:
        if self.request.on_text is None:
            return
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        if not final and self.text[self.sent:end].endswith("\ufffd"):
            return  # half of a multi-byte character: wait for the rest
        if end > self.sent:
            self.request.on_text(self.text[self.sent:end])
            self.sent = end


class Engine:
    """A model and tokenizer that generate for a batch of requests at once."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        generation = getattr(model, "generation_config", None)
        self.greedy_default = not bool(getattr(generation, "do_sample", False))
        self.grammars = Grammars(tokenizer, self.vocab_size, self.stop_token_ids)
        self.device = next(model.parameters()).device

    def prepare(self, request: GenerationRequest) -> PreparedRow:
        """One request's decoding state: its grammar and a closing budget that fits `max_tokens`.

        Raises ResponseFormatError when the schema cannot be enforced or no complete answer fits in max_tokens
        (a constrained answer is never cut silently).
        """
        compiled = self.grammars.compile(request.response_format)
        grammar = self.grammars.row(compiled) if compiled is not None else None
        row = PreparedRow(request, grammar, self.greedy_default)
        if row.budget is not None and row.budget.path is None:
            shortest = grammar.closing_length(limit=4096)
            need = f"its shortest answer takes {shortest} tokens" if shortest is not None else "no answer closes"
            raise ResponseFormatError(f"max_tokens {request.max_tokens} cannot hold a complete answer to this "
                                      f"schema ({need}); raise max_tokens.")
        return row

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self.run([self.prepare(request) for request in requests])

    @torch.inference_mode()
    def run(self, rows: list[PreparedRow]) -> list[GenerationResult]:
        """Decode prepared rows as one batch."""
        requests = [row.request for row in rows]
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, request in enumerate(requests):
            input_ids[i, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention[i, width - len(request.prompt_ids):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = None
        step_ids = input_ids
        for _ in range(max(r.max_tokens for r in requests)):
            out = self.model(input_ids=step_ids.to(self.device), attention_mask=attention.to(self.device),
                             position_ids=positions.to(self.device), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            constrained = [i for i, row in enumerate(rows) if row.grammar is not None and row.finish_reason is None]
            if constrained:
                self.grammars.mask([rows[i].grammar for i in constrained], logits, constrained)
            next_ids = torch.full((len(rows),), self.pad_id, dtype=torch.long)
            for i, row in enumerate(rows):
                if row.finish_reason is None and row.request.cancelled.is_set():
                    row.finish_reason = "cancelled"
                if row.finish_reason is None:
                    next_ids[i] = self._next_token(row, logits[i])
            if all(r.finish_reason is not None for r in rows):
                break
            step_ids = next_ids.unsqueeze(-1)
            attention = torch.cat([attention, torch.ones((len(rows), 1), dtype=torch.long)], dim=-1)
            positions = positions[:, -1:] + 1
        results = []
        for row in rows:
            if row.finish_reason is None:
                row.finish_reason = "length"
            row.emit(final=True)
            results.append(GenerationResult(row.text, row.tokens, row.finish_reason,
                                            len(row.request.prompt_ids), len(row.tokens)))
        return results

    def _next_token(self, row: PreparedRow, logits: torch.Tensor) -> int:
        """Sample one row's next token from its (already grammar-masked) logits, and update the row."""
        if row.grammar is None and len(row.tokens) < row.request.min_tokens:
            logits[self.stop_token_ids] = float("-inf")
        token = _sample(logits, row)
        if row.budget is not None:
            token = row.budget.choose(token)
            row.budget.step()
            row.grammar.accept(token)
        if token in self.stop_token_ids:
            row.finish_reason = "stop"
            return token
        row.tokens.append(token)
        row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        for stop in row.request.stop:
            cut = row.text.find(stop)
            if cut >= 0:
                row.text, row.finish_reason = row.text[:cut], "stop"
        if row.finish_reason is None and len(row.tokens) >= row.request.max_tokens:
            row.finish_reason = "length"
        if row.finish_reason is None and row.grammar is not None and row.grammar.finished:
            row.finish_reason = "stop"
        row.emit(final=False)
        return token


def _sample(logits: torch.Tensor, row: PreparedRow) -> int:
    if row.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / row.temperature, dim=-1)
    top_p = row.request.top_p
    if 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        sorted_probs = torch.where(keep, sorted_probs, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=row.generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id,
                   tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None):
        for token_id in source if isinstance(source, list) else [source]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token: set eos_token in its tokenizer_config.json.")
    return ids
