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
closes the most (`"}` inside a string, `]}` outside), then `,` (on to the next required key), then the longest
token (fewest steps through a forced key). Each model token is checked before it is taken, and the closing
path's next token is taken instead whenever the model's choice would leave the answer unfinishable.

The check is incremental. The budget keeps the *closing path* itself (the tokens, not only their count) and
re-walks the policy only when the path stops working:
```
model token == path[0]                    → path[1:]               (no grammar work)
model token spells the path's first bytes → rest of the path       (`in` where the path has `int`: `t`, then the
                                                                    rest; a fork accepts it, a few µs per token)
path still finishes after model token     → path                   (the usual case while the model writes a
                                                                    value; checked on a fork, no masks)
otherwise                                 → policy walk from there (a mask per step: another enum value, a new
                                                                    array item)
```
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch
import xgrammar as xgr

from tuneloop.decoding.coverage import schema_coverage

CLOSERS = frozenset(b'"}]')
CACHE_SIZE = 64  # compiled grammars kept (least recently used goes first): clients cannot grow memory without bound


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
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ResponseFormatError("response_format json_schema needs json_schema.schema as a JSON object.")
        return "schema:" + json.dumps(schema, sort_keys=True)
    raise ResponseFormatError(f"response_format type {kind!r} is not supported; use text, json_object or json_schema.")


def response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if response_format and response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def check_response_format(response_format: dict[str, Any] | None) -> str | None:
    """The grammar key of an enforceable response_format; ResponseFormatError naming what cannot be enforced."""
    key = grammar_key(response_format)
    if key is not None and key != "json_object":
        coverage = schema_coverage(response_schema(response_format))
        if not coverage.ok:
            raise ResponseFormatError(coverage.message() + ". Drop or rewrite them (`tuneloop serve --check-schema FILE`).")
    return key


class Grammars:
    """Compiles and caches grammars for one tokenizer, and owns the token tables the closing policy uses."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]):
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        # xgrammar's own cache has no bound by default; ours (LRU, CACHE_SIZE) is the only one
        self.compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self.cache_size = CACHE_SIZE
        self._lock = threading.Lock()
        self._batch_bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        # special tokens are never part of a JSON answer: their text would vanish when decoding
        self.banned = torch.zeros(vocab_size, dtype=torch.bool)
        for token_id in special - set(self.stop_token_ids):
            if token_id < vocab_size:
                self.banned[token_id] = True
        self.banned_ids = torch.nonzero(self.banned).flatten()
        self.decoded = info.decoded_vocab
        ranks = self._closing_ranks(self.decoded)
        self.closing_rank = ranks[(False, False)]
        self.depth_deltas = self._depth_deltas(self.decoded)
        # what the closing policy prefers, per lexical context: closing the most nesting first, then the rank
        self.closing_scores = {context: ranks[context] - 10_000 * delta for context, delta in self.depth_deltas.items()}
        # answer text → a token that writes exactly it (to re-spell the rest of a closing path)
        self.token_of: dict[bytes, int] = {}
        unusable = set(self.banned_ids.tolist()) | set(self.stop_token_ids)
        for token_id, text in enumerate(self.decoded[:vocab_size]):
            if text and token_id not in unusable:
                self.token_of.setdefault(text, token_id)

    def _closing_ranks(self, decoded: list[bytes]) -> dict[tuple[bool, bool], torch.Tensor]:
        """Tie-break among tokens that close equally much: stop, closers, `,`, then longer tokens (forced keys).

        One table per lexical context (in string?, after a backslash?). Inside a string only a token that starts
        with the closing quote counts as a closer (`}"` would first write a `}` into the value), and `,` is text.
        """
        texts = [decoded[i] if i < len(decoded) else b"" for i in range(self.vocab_size)]
        plain = torch.tensor([100.0 + min(len(t), 99) if t else -1.0 for t in texts])
        closer = torch.tensor([bool(t) and set(t) <= CLOSERS for t in texts])
        quote_first = torch.tensor([t[:1] == b'"' for t in texts])
        comma = torch.tensor([t == b"," for t in texts])
        as_closer = 1000.0 + torch.tensor([float(len(t)) for t in texts])
        ranks = {
            (False, False): torch.where(closer, as_closer, torch.where(comma, 500.0, plain)),
            (True, False): torch.where(closer & quote_first, as_closer, plain),
            (True, True): plain.clone(),
        }
        for rank in ranks.values():
            rank[self.stop_token_ids] = 1e6
            rank[self.banned] = float("-inf")
        return ranks

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
        """The grammar of a response_format (cached, LRU); ResponseFormatError when it cannot be enforced."""
        key = check_response_format(response_format)
        if key is None:
            return None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        # compiled outside the lock: one slow schema does not hold up requests whose grammar is cached
        try:
            if key == "json_object":
                compiled = self.compiler.compile_json_schema({"type": "object"}, any_whitespace=False, strict_mode=False)
            else:
                compiled = self.compiler.compile_json_schema(
                    json.dumps(response_schema(response_format)), any_whitespace=False, strict_mode=True)
        except (RuntimeError, ValueError, TypeError) as err:
            reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
            raise ResponseFormatError(f"response_format json_schema cannot be compiled: {reason}") from None
        with self._lock:
            self._cache[key] = compiled
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    @property
    def cached(self) -> int:
        return len(self._cache)

    def mask(self, rows: list[ConstrainedRow], logits: torch.Tensor, indices: list[int]) -> None:
        """Set every forbidden logit of a batch to -inf in place: row `rows[k]` masks `logits[indices[k]]`.

        One reused bitmask for the batch and one CPU kernel call; a fill costs microseconds, so fills run in this
        thread. The bitmask is shared: call from one thread at a time (an Engine generates in its worker thread).
        """
        if self._batch_bitmask.shape[0] < logits.shape[0]:
            self._batch_bitmask = xgr.allocate_token_bitmask(logits.shape[0], self.vocab_size)
        bitmask = self._batch_bitmask
        for row, index in zip(rows, indices):
            row.matcher.fill_next_token_bitmask(bitmask, index)
        xgr.apply_token_bitmask_inplace(logits, bitmask[: logits.shape[0]], vocab_size=self.vocab_size,
                                        indices=indices)
        if len(self.banned_ids):
            logits[torch.tensor(indices).unsqueeze(-1), self.banned_ids] = float("-inf")

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
        self.grammars.mask([self], logits.unsqueeze(0), [0])

    def closing_token(self, matcher: xgr.GrammarMatcher | None = None, nesting: Nesting | None = None) -> int:
        """The allowed token that closes the most nesting (ties: stop, closers, comma, shortest)."""
        nesting = nesting or self.nesting
        score = self.grammars.closing_scores[(nesting.in_string, nesting.escaped)]
        (matcher or self.matcher).fill_next_token_bitmask(self.bitmask, 0)
        words = self.bitmask[0]
        nonzero = torch.nonzero(words).flatten()
        if 0 < len(nonzero) <= 64:  # a key, a bracket, an enum: score only the few allowed tokens
            bits = ((words[nonzero].unsqueeze(-1) >> self._shifts) & 1).bool()
            ids = (nonzero.unsqueeze(-1) * 32 + self._shifts)[bits]
            ids = ids[ids < self.grammars.vocab_size]
            if len(ids):
                return int(ids[torch.argmax(score[ids])])
        masked = score.clone()
        xgr.apply_token_bitmask_inplace(masked, self.bitmask, vocab_size=self.grammars.vocab_size)
        return int(torch.argmax(masked))

    def closing_path(self, after: int | None = None, limit: int = 4096) -> list[int] | None:
        """The closing policy's tokens to a finished answer (after first taking `after`), or None past `limit`."""
        probe, nesting = self.matcher.fork(), self.nesting
        if after is not None:
            if not probe.accept_token(after):
                return None
            nesting = nesting.after(self._text(after))
        path: list[int] = []
        while not probe.is_terminated():
            if len(path) >= limit:
                return None
            token = self.closing_token(probe, nesting)
            if not probe.accept_token(token):
                return None
            nesting = nesting.after(self._text(token))
            path.append(token)
        return path

    def closing_length(self, after: int | None = None, limit: int = 4096) -> int | None:
        """Tokens the closing policy needs to finish (after first taking `after`), or None past `limit`."""
        path = self.closing_path(after, limit)
        return None if path is None else len(path)

    def finishes(self, path: list[int], after: int) -> bool:
        """Whether `path` still finishes the answer once `after` is taken (checked on a fork, no masks)."""
        probe = self.matcher.fork()
        if not probe.accept_token(after):
            return False
        return all(probe.accept_token(token) for token in path) and probe.is_terminated()

    def respelled(self, path: list[int], token: int) -> list[int] | None:
        """The rest of `path` once `token` has written the start of its text in other pieces, or None.

        The grammar reads bytes, so `in` then `tent"` reaches the same state as the path's `int` then `ent"`.
        """
        rest = self._text(token)
        for index, step in enumerate(path):
            piece = self._text(step)
            if not rest or not piece:
                return None
            if rest.startswith(piece):
                rest = rest[len(piece):]
                if not rest:
                    return path[index + 1:]
            elif piece.startswith(rest):
                tail = self.grammars.token_of.get(piece[len(rest):])
                return None if tail is None else [tail, *path[index + 1:]]
            else:
                return None
        return None

    def accept(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):
            raise RuntimeError(f"grammar rejected token {token_id} that its own mask allowed")
        self.nesting = self.nesting.after(self._text(token_id))

    def _text(self, token_id: int) -> bytes:
        decoded = self.grammars.decoded
        return decoded[token_id] if token_id < len(decoded) and token_id not in self.grammars.stop_token_ids else b""


class Budget:
    """Keeps a closing path that fits the remaining tokens, and overrides the model only to keep one."""

    def __init__(self, row: ConstrainedRow, max_tokens: int):
        self.row = row
        self.remaining = max_tokens
        self.path = row.closing_path(limit=max_tokens)  # None: no closing fits (or none exists)

    @property
    def closing(self) -> int | None:
        """Tokens the kept closing path needs from the current state."""
        return None if self.path is None else len(self.path)

    def choose(self, model_token: int) -> int:
        """The token to take: the model's, unless it would make the answer unfinishable in the budget."""
        if self.remaining <= 0 or self.row.finished:
            return model_token
        path, left = self.path, self.remaining - 1  # `left`: tokens after this one
        if path:
            if model_token == path[0]:
                self.path = path[1:]
                return model_token
            # the model wrote the path's own text in other pieces, or wrote inside a value the path closes
            kept = self.row.respelled(path, model_token) or path
            if len(kept) <= left and self.row.finishes(kept, after=model_token):
                self.path = kept
                return model_token
        walked = self.row.closing_path(after=model_token, limit=left)
        if walked is not None:
            self.path = walked
            return model_token
        if path:  # the model's token leaves no closing that fits: follow the kept path instead
            self.path = path[1:]
            return path[0]
        token = self.row.closing_token()
        self.path = self.row.closing_path(after=token, limit=left)
        return token

    def step(self) -> None:
        self.remaining -= 1
