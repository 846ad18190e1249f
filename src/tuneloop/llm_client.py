"""A client for any OpenAI-compatible chat endpoint, with a SQLite request cache so a retry never pays twice.

```
request (model, messages, params) ──hash──▶ cache hit?  ── yes ─▶ stored answer (no network call)
                                                        └─ no ──▶ POST /chat/completions (retries with backoff)
                                                                  └▶ store answer under the hash, return it
```

The cache key is the sha256 of the endpoint, model, messages and every sampling parameter, so the same request
asked twice, by this run or a rerun after a crash, is answered from disk. `complete_many` runs requests with
bounded concurrency; each request retries on connection errors, timeouts, 429 and 5xx with exponential backoff.
Settings come from arguments, else `TUNELOOP_LLM_BASE_URL`, `TUNELOOP_LLM_MODEL`, `TUNELOOP_LLM_API_KEY`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.records import content_hash

ENV_BASE_URL = "TUNELOOP_LLM_BASE_URL"
ENV_MODEL = "TUNELOOP_LLM_MODEL"
ENV_API_KEY = "TUNELOOP_LLM_API_KEY"
DEFAULT_CACHE = Path.home() / ".cache" / "tuneloop" / "llm-cache.sqlite"


class LLMError(RuntimeError):
    """An endpoint that is not configured, or a request that failed after every retry."""


def request_key(base_url: str, model: str, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> str:
    """The cache key of a request: identical requests share it, any change of model, prompt or parameter does not."""
    return content_hash(base_url.rstrip("/"), model, list(messages), params, length=64)


class RequestCache:
    """Answers keyed by request hash in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
                "response TEXT NOT NULL, created_at REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, key: str) -> str | None:
        with self._lock, self._connect() as db:
            row = db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, request: dict[str, Any], response: str) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses (key, request, response, created_at) VALUES (?, ?, ?, ?)",
                (key, json.dumps(request, ensure_ascii=False), response, time.time()),
            )

    def __len__(self) -> int:
        with self._lock, self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


@dataclass
class LLMStats:
    """What a client did: answers from cache, answers from the endpoint, retried attempts."""

    cached: int = 0
    called: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class LLMClient:
    """Chat completions from an OpenAI-compatible endpoint through the `openai` client, cached by request hash."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        cache_path: str | Path | None = DEFAULT_CACHE,
        concurrency: int = 4,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 60.0,
    ):
        self.base_url = base_url or os.environ.get(ENV_BASE_URL) or ""
        self.model = model or os.environ.get(ENV_MODEL) or ""
        if not self.base_url or not self.model:
            raise LLMError(
                f"no LLM endpoint configured: set augment.llm.base_url and augment.llm.model in tuneloop.yaml, "
                f"or the environment variables {ENV_BASE_URL} and {ENV_MODEL} (and {ENV_API_KEY} if it needs a key)."
            )
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or "not-needed"
        self.cache = RequestCache(cache_path) if cache_path else None
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.stats = LLMStats()
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            # retries are ours (counted and cached around), so the library's own are off
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout_s)
        return self._client

    def complete(self, messages: Sequence[dict[str, Any]], **params: Any) -> str:
        """The assistant text for one chat request; from the cache when this exact request was answered before."""
        key = request_key(self.base_url, self.model, messages, params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add("cached")
                return hit
        text = self._call_with_retries(list(messages), params)
        if self.cache is not None:
            self.cache.put(key, {"model": self.model, "messages": list(messages), **params}, text)
        return text

    def complete_many(self, requests: Sequence[Sequence[dict[str, Any]]], **params: Any) -> list[str | LLMError]:
        """Answers for many chat requests in order, `concurrency` at a time; a failed request yields its LLMError."""

        def one(messages: Sequence[dict[str, Any]]) -> str | LLMError:
            try:
                return self.complete(messages, **params)
            except LLMError as err:
                return err

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, requests))

    def _call_with_retries(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        import openai

        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add("retries")
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self.stats.add("called")
                response = self._openai().chat.completions.create(model=self.model, messages=messages, **params)
                return response.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.APITimeoutError) as err:
                last = err
            except openai.APIStatusError as err:
                if err.status_code not in RETRYABLE_STATUS:
                    raise LLMError(f"{self.base_url}: the endpoint answered {err.status_code}: {err.message}") from None
                last = err
        raise LLMError(f"{self.base_url}: no answer after {self.max_retries + 1} attempts ({last}); check the endpoint.")
