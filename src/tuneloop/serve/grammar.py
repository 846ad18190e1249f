"""Constrained JSON decoding with xgrammar: a token mask per step, and a budget that always closes the JSON.

```
response_format            grammar (compiled once per schema, cached)
  {"type": "json_object"}  any JSON object            (compact: no free whitespace, so no whitespace loops)
  {"type": "json_schema",  the schema, strict: no properties or items the schema does not name
   "json_schema": {...}}
```

A grammar alone does not make the answer parse: a model that keeps writing a string runs out of `max_tokens`
mid-object. So every constrained row also knows its *closing length*: how many tokens the closing policy needs
from the current state to a complete answer (measured on a fork of the matcher). The closing policy tracks the
JSON nesting of the text so far (open objects/arrays, inside a string or not) and takes the allowed token that
closes the most (`"}` inside a string, `]}` outside), then `,` (on to the next required key), then the shortest
token. When the remaining budget gets near the closing length, each model token is checked before it is taken,
and the closing token is taken instead whenever the model's choice would leave the answer unfinishable.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch
import xgrammar as xgr

CLOSERS = frozenset(b'"}]')


class ResponseFormatError(ValueError):
    """A response_format the server cannot enforce, with what to send instead."""


def grammar_key(response_format: dict[str, Any] | None) -> str | None:
    """A stable cache key for a response_format, or None when the output is free text."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json_object"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ResponseFormatError("response_format json_schema needs json_schema.schema as a JSON object.")
        return "schema:" + json.dumps(schema, sort_keys=True)
    raise ResponseFormatError(f"response_format type {kind!r} is not supported; use text, json_object or json_schema.")


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if response_format and response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


class Grammars:
    """Compiles and caches grammars for one tokenizer, and owns the token tables the closing policy uses."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]):
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self._cache: dict[str, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        # special tokens are never part of a JSON answer: their text would vanish when decoding
        self.banned = torch.zeros(vocab_size, dtype=torch.bool)
        for token_id in special - set(self.stop_token_ids):
            if token_id < vocab_size:
                self.banned[token_id] = True
        self.decoded = info.decoded_vocab
        self.closing_rank = self._closing_rank(self.decoded)
        self.depth_deltas = self._depth_deltas(self.decoded)

    def _closing_rank(self, decoded: list[bytes]) -> torch.Tensor:
        """Tie-break among tokens that close equally much: stop, closers, `,`, then longer tokens (forced keys)."""
        rank = torch.empty(self.vocab_size, dtype=torch.float32)
        for token_id in range(self.vocab_size):
            text = decoded[token_id] if token_id < len(decoded) else b""
            if text and set(text) <= CLOSERS:
                rank[token_id] = 1000 + len(text)
            elif text == b",":
                rank[token_id] = 500
            else:
                rank[token_id] = 100 + min(len(text), 99) if text else -1
        for token_id in self.stop_token_ids:
            rank[token_id] = 1e6
        rank[self.banned] = float("-inf")
        return rank

    def _depth_deltas(self, decoded: list[bytes]) -> dict[tuple[bool, bool], torch.Tensor]:
        """Change in nesting each token makes, from each lexical context (in string?, after a backslash?)."""
        tables = {}
        for context in ((False, False), (True, False), (True, True)):
            delta = torch.zeros(self.vocab_size, dtype=torch.float32)
            for token_id in range(min(self.vocab_size, len(decoded))):
                before = Nesting(0, *context)
                delta[token_id] = before.after(decoded[token_id]).depth - before.depth
            tables[context] = delta
        return tables

    def compile(self, response_format: dict[str, Any] | None) -> xgr.CompiledGrammar | None:
        key = grammar_key(response_format)
        if key is None:
            return None
        with self._lock:
            if key not in self._cache:
                try:
                    if key == "json_object":
                        compiled = self.compiler.compile_json_schema(
                            {"type": "object"}, any_whitespace=False, strict_mode=False)
                    else:
                        compiled = self.compiler.compile_json_schema(
                            response_schema(response_format), any_whitespace=False, strict_mode=True)
                except RuntimeError as err:
                    raise ResponseFormatError(f"response_format json_schema cannot be compiled: {err}") from None
                self._cache[key] = compiled
            return self._cache[key]

    def row(self, compiled: xgr.CompiledGrammar) -> ConstrainedRow:
        return ConstrainedRow(self, xgr.GrammarMatcher(compiled))


class Nesting:
    """How deep a JSON prefix is: open objects/arrays, inside a string, right after a backslash."""

    __slots__ = ("containers", "in_string", "escaped")

    def __init__(self, containers: int = 0, in_string: bool = False, escaped: bool = False):
        self.containers, self.in_string, self.escaped = containers, in_string, escaped

    @property
    def depth(self) -> int:
        return self.containers + self.in_string + self.escaped

    def after(self, text: bytes) -> Nesting:
        containers, in_string, escaped = self.containers, self.in_string, self.escaped
        for char in text:
            if in_string:
                if escaped:
                    escaped = False
                elif char == 0x5C:  # backslash
                    escaped = True
                elif char == 0x22:  # quote
                    in_string = False
            elif char == 0x22:
                in_string = True
            elif char in (0x7B, 0x5B):  # { [
                containers += 1
            elif char in (0x7D, 0x5D):  # } ]
                containers -= 1
        return Nesting(containers, in_string, escaped)


class ConstrainedRow:
    """One request's grammar state during decoding."""

    def __init__(self, grammars: Grammars, matcher: xgr.GrammarMatcher):
        self.grammars = grammars
        self.matcher = matcher
        self.nesting = Nesting()
        self.bitmask = xgr.allocate_token_bitmask(1, grammars.vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    @property
    def finished(self) -> bool:
        return self.matcher.is_terminated()

    def allowed(self, matcher: xgr.GrammarMatcher | None = None) -> torch.Tensor:
        """Boolean mask of the tokens the grammar allows next (special tokens never)."""
        (matcher or self.matcher).fill_next_token_bitmask(self.bitmask, 0)
        bits = (self.bitmask[0].unsqueeze(-1) >> self._shifts) & 1
        return bits.flatten()[: self.grammars.vocab_size].bool() & ~self.grammars.banned

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set the logits (1-D, float32) of every token the grammar forbids to -inf, in place."""
        self.matcher.fill_next_token_bitmask(self.bitmask, 0)
        xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), self.bitmask, vocab_size=self.grammars.vocab_size)
        logits[self.grammars.banned[: logits.shape[-1]]] = float("-inf")

    def closing_token(self, matcher: xgr.GrammarMatcher | None = None, nesting: Nesting | None = None) -> int:
        """The allowed token that closes the most nesting (ties: stop, closers, comma, shortest)."""
        nesting = nesting or self.nesting
        delta = self.grammars.depth_deltas[(nesting.in_string, nesting.escaped)]
        score = self.grammars.closing_rank - 10_000 * delta
        return int(torch.argmax(torch.where(self.allowed(matcher), score, float("-inf"))))

    def closing_length(self, after: int | None = None, limit: int = 4096) -> int | None:
        """Tokens the closing policy needs to finish (after first taking `after`), or None past `limit`."""
        probe, nesting = self.matcher.fork(), self.nesting
        if after is not None:
            if not probe.accept_token(after):
                return None
            nesting = nesting.after(self._text(after))
        steps = 0
        while not probe.is_terminated():
            if steps >= limit:
                return None
            token = self.closing_token(probe, nesting)
            if not probe.accept_token(token):
                return None
            nesting = nesting.after(self._text(token))
            steps += 1
        return steps

    def accept(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id} that its own mask allowed")
        self.nesting = self.nesting.after(self._text(token_id))

    def _text(self, token_id: int) -> bytes:
        decoded = self.grammars.decoded
        return decoded[token_id] if token_id < len(decoded) and token_id not in self.grammars.stop_token_ids else b""


class Budget:
    """When to check closing lengths: rarely while the budget is roomy, every token once it is tight."""

    def __init__(self, row: ConstrainedRow, max_tokens: int):
        self.row = row
        self.remaining = max_tokens
        self.closing = row.closing_length(limit=max_tokens + 1)
        self.next_check = 0

    def choose(self, model_token: int) -> int:
        """The token to take: the model's, unless it would make the answer unfinishable in the budget."""
        if self.remaining <= 0 or self.row.finished:
            return model_token
        tight = self.closing is None or self.remaining <= self.closing + 24
        if tight:
            after = self.row.closing_length(after=model_token, limit=self.remaining)
            if after is None or after > self.remaining - 1:
                token = self.row.closing_token()
                self.closing = self.row.closing_length(after=token, limit=self.remaining)
                return token
            self.closing = after
        elif self.next_check <= 0:
            self.closing = self.row.closing_length(after=model_token, limit=self.remaining)
            self.next_check = 16 if self.closing is not None and self.remaining > 4 * self.closing + 64 else 4
        return model_token

    def step(self) -> None:
        self.remaining -= 1
        self.next_check -= 1
