"""A client for any OpenAI-compatible chat endpoint, with a SQLite request cache so a retry never pays twice.

```
request (model, messages, params) ──hash──▶ cache hit?  ── yes ─▶ stored answer (no network call)
                                                        └─ no ──▶ POST /chat/completions (retries with backoff)
                                                                  └▶ store answer under the hash, return it
```

The cache key is the sha256 of the endpoint, model, messages and every sampling parameter, so the same request
asked twice, by this run or a rerun after a crash, is answered from disk. `complete_many` runs requests with
bounded concurrency. `Endpoint` is the one way tuneloop talks to such a server (augmentation here, eval answers and
the judge in `eval/backends.py`):

```
first request alone ──▶ 401/403/404, a rejected first request, nothing listening ──▶ EndpointConfigError: stop
        │ answered
        ▼
the rest, `concurrency` at a time; connection errors, timeouts, 408/409/429/5xx retried by the openai client
(`max_retries`, exponential backoff, Retry-After honoured) ──▶ what still fails is an LLMError for that request
```
A failed request is never an answer: callers count it as an error (eval `errors`, augment quarantine reasons).
Settings come from arguments, else `TUNELOOP_LLM_BASE_URL`, `TUNELOOP_LLM_MODEL`, `TUNELOOP_LLM_API_KEY`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tuneloop.records import content_hash

ENV_BASE_URL = "TUNELOOP_LLM_BASE_URL"
ENV_MODEL = "TUNELOOP_LLM_MODEL"
ENV_API_KEY = "TUNELOOP_LLM_API_KEY"
DEFAULT_CACHE = Path.home() / ".cache" / "tuneloop" / "llm-cache.sqlite"


class LLMError(RuntimeError):
    """An endpoint that is not configured, or a request that failed after every retry."""


class EndpointConfigError(LLMError):
    """The endpoint cannot answer any request as configured (key, model, address, request form): stop the run."""


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


def max_tokens_for(lengths: Sequence[int], unit: str = "tokens") -> tuple[int, str]:
    """The `max_tokens` to ask for answers whose references are `lengths` long, and why.

    The longest reference plus half again (at least 32): a right answer fits even when the model spaces or orders
    its JSON differently, and a rambling one is stopped near where the right answer would have ended.

    >>> max_tokens_for([10, 40, 25])
    (72, 'longest reference answer 40 tokens + margin 32 (half of it, at least 32)')
    """
    longest = max(lengths, default=0)
    margin = max(32, (longest + 1) // 2)
    return longest + margin, f"longest reference answer {longest} {unit} + margin {margin} (half of it, at least 32)"


@dataclass
class LLMStats:
    """What a client did: answers from cache, requests sent, retried attempts (counted at the HTTP layer)."""

    cached: int = 0
    called: int = 0
    attempts: int = 0  # HTTP requests the openai client sent, its own retries included
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def retries(self) -> int:
        return max(0, self.attempts - self.called)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


T = TypeVar("T")
R = TypeVar("R")


def _message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return str(text)[:200]
    return str(getattr(err, "message", err))[:200]


def endpoint_failure(err: Exception, base_url: str, model: str, answered: bool, max_retries: int) -> LLMError:
    """The tuneloop error for what the openai client raised after its own retries.

    A configuration error (EndpointConfigError) means no request can succeed: a refused key (401/403), an unknown
    model or path (404) at any time; a rejected request (400/422) or nothing listening before any request was
    answered. Anything else fails only this request.
    """
    import openai

    where = f"endpoint {base_url} (model {model!r})"
    if isinstance(err, openai.APIStatusError):
        status, text = err.status_code, _message(err)
        if status in (401, 403):
            return EndpointConfigError(f"{where} refused the request ({status}: {text}); put a valid API key in the "
                                       "environment variable named by --api-key-env (api_key_env in tuneloop.yaml).")
        if status == 404:
            return EndpointConfigError(f"{where} answered 404 ({text}); check the model name the server knows and that "
                                       "the base URL ends in /v1.")
        if status in (400, 413, 422) and not answered:
            return EndpointConfigError(f"{where} rejected the first request ({status}: {text}); every request has this "
                                       "form, so none can succeed: check the model name, max_tokens and response_format.")
        if status in (408, 409, 429) or status >= 500:
            return LLMError(f"{where}: still {status} after {max_retries} retries ({text}).")
        return LLMError(f"{where} rejected this request ({status}: {text}).")
    if isinstance(err, openai.APITimeoutError):
        return LLMError(f"{where}: timed out after {max_retries} retries.")
    if isinstance(err, openai.APIConnectionError):
        if not answered:
            return EndpointConfigError(f"cannot connect to {where} after {max_retries} retries ({err.__cause__ or err}); "
                                       "is the server running at that address?")
        return LLMError(f"{where}: connection failed after {max_retries} retries ({err.__cause__ or err}).")
    raise err


class Endpoint:
    """Chat completions from one OpenAI-compatible server through the official client and its own retries."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 4,
                 max_retries: int = 4, timeout_s: float = 60.0, stats: LLMStats | None = None):
        import openai

        self.base_url, self.model = base_url, model
        self.concurrency, self.max_retries = max(1, concurrency), max_retries
        self.stats = stats or LLMStats()
        self.answered = False  # set by the first answer; before it, a rejected request is a configuration error
        http = openai.DefaultHttpxClient(event_hooks={"request": [lambda _request: self.stats.add("attempts")]})
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=max_retries,
                                    timeout=timeout_s, http_client=http)

    def create(self, **params: Any) -> Any:
        """One chat completion (`params` as for `chat.completions.create`, model included); LLMError when it fails."""
        import openai

        self.stats.add("called")
        try:
            response = self.client.chat.completions.create(model=self.model, **params)
        except openai.OpenAIError as err:
            raise endpoint_failure(err, self.base_url, self.model, self.answered, self.max_retries) from None
        self.answered = True
        return response

    def map(self, items: Sequence[T], call: Callable[[T], R],
            on_done: Callable[[int, R | LLMError], None] | None = None) -> list[R | LLMError]:
        """`call(item)` for every item, results in order; a failed item yields its LLMError.

        The first item runs alone, so a configuration error stops the run before the rest are sent; an
        EndpointConfigError later (a key revoked mid-run) cancels what has not started and is raised.
        """
        results: list[Any] = [None] * len(items)
        stop = threading.Event()

        def one(index: int) -> None:
            if stop.is_set():  # a configuration error was seen: send nothing more
                return
            try:
                result: Any = call(items[index])
            except EndpointConfigError:
                stop.set()
                raise
            except LLMError as err:
                result = err
            results[index] = result
            if on_done is not None:
                on_done(index, result)

        if items:
            one(0)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(one, index) for index in range(1, len(items))]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f.exception() for f in finished if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise failed
        return results


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
        self.timeout_s = timeout_s
        self.stats = LLMStats()
        self._endpoint: Endpoint | None = None

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = Endpoint(self.base_url, self.model, self.api_key, self.concurrency, self.max_retries,
                                      self.timeout_s, stats=self.stats)
        return self._endpoint

    def complete(self, messages: Sequence[dict[str, Any]], **params: Any) -> str:
        """The assistant text for one chat request; from the cache when this exact request was answered before.

        Answers are stored as they arrive, so a run killed part-way is resumed from the cache by its rerun.
        """
        key = request_key(self.base_url, self.model, messages, params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add("cached")
                return hit
        response = self.endpoint.create(messages=list(messages), **params)
        text = response.choices[0].message.content or ""
        if self.cache is not None:
            self.cache.put(key, {"model": self.model, "messages": list(messages), **params}, text)
        return text

    def complete_many(self, requests: Sequence[Sequence[dict[str, Any]]], progress: Callable[[int], None] | None = None,
                      **params: Any) -> list[str | LLMError]:
        """Answers for many chat requests in order, `concurrency` at a time; a failed request yields its LLMError.

        An EndpointConfigError (wrong key, unknown model, nothing listening) is raised: it would fail them all.
        """
        return self.endpoint.map(list(requests), lambda messages: self.complete(messages, **params),
                                 on_done=(lambda _i, _a: progress(1)) if progress else None)
