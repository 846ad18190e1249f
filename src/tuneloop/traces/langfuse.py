"""Reading traffic from Langfuse over its public REST API, both generations of it.

```
api v3 (self-hosted)   GET /api/public/traces          page-based  {data, meta: {page, limit, totalItems, totalPages}}
                       GET /api/public/observations    page-based, per trace (traceId, type=GENERATION)
                       GET /api/public/v2/scores       page-based
api v4 (Cloud)         GET /api/public/v2/observations cursor-based {data, meta: {cursor}} (no cursor: last page)
                       GET /api/public/v3/scores       cursor-based {data, meta: {limit, cursor}}
auto                   v4 when /api/public/v2/observations answers, v3 when it is a 404
```

The installed `langfuse` SDK (5.x) covers the v4 endpoints: they go through its API client
(`LangfuseAPI.observations` / `.scores`, typed responses). It no longer has the page-based list endpoints a
self-hosted v3 server serves, so those go through httpx. Both share one `httpx.Client` (basic auth, timeout), one
retry loop (timeouts, 429 honouring Retry-After, 5xx; exponential backoff) and one response hook that turns a
`_deprecation` notice in a body, or a `Deprecation` header, into one warning per endpoint.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from tuneloop.project import LangfuseConfig
from tuneloop.traces.langfuse_map import iso, timestamp

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # a library logs; the CLI prints the warnings a pull returns, once

HOST_ENVS = ("LANGFUSE_HOST", "LANGFUSE_BASE_URL")
V4_PROBE = "/api/public/v2/observations"
V4_FIELDS = "core,basic,time,io,metadata,model,usage,metrics,trace_context"
SCORES_MAX_LIMIT = 100  # both score endpoints answer 400 above it
BACKOFF_S, BACKOFF_MAX_S, RETRY_AFTER_MAX_S = 1.0, 60.0, 300.0


class LangfuseError(RuntimeError):
    """Langfuse cannot be read as configured (keys, host, a refused or failing request), with what to do."""


class _NotFound(LangfuseError):
    pass


def credentials(config: LangfuseConfig, env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(host, public key, secret key) from the config and the environment; a clear error naming what is missing."""
    env = os.environ if env is None else env
    host = config.host or next((env[name] for name in HOST_ENVS if env.get(name)), None)
    missing = [name for name in (config.public_key_env, config.secret_key_env) if not env.get(name)]
    if missing:
        raise LangfuseError(f"Langfuse keys missing: set the environment variable(s) {' and '.join(missing)} to the "
                            "project's API keys (Langfuse → Settings → API Keys), or name other variables in "
                            "tuneloop.yaml loop.langfuse.public_key_env / secret_key_env.")
    if not host:
        raise LangfuseError(f"Langfuse host unknown: set {HOST_ENVS[0]} (or {HOST_ENVS[1]}) to the server's URL, "
                            "or loop.langfuse.host in tuneloop.yaml.")
    return host.rstrip("/"), env[config.public_key_env], env[config.secret_key_env]


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a Retry-After header asks for (delta seconds or an HTTP date)."""
    value = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    parsed = email.utils.parsedate_to_datetime(value)
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class LangfuseClient:
    """One Langfuse project, read through its public API; `warnings` collects what the server said to heed."""

    def __init__(self, config: LangfuseConfig, env: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        from langfuse.api import LangfuseAPI

        self.config, self.sleep = config, sleep
        self.host, public_key, secret_key = credentials(config, env)
        self.key_envs = f"{config.public_key_env} / {config.secret_key_env}"
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.http = httpx.Client(base_url=self.host, auth=(public_key, secret_key), timeout=config.timeout_s,
                                 event_hooks={"response": [self._notice_deprecation]})
        # max_retries=0 on every SDK call: the retry loop below is the only one, for both paths
        self.sdk = LangfuseAPI(base_url=self.host, username=public_key, password=secret_key, httpx_client=self.http,
                               timeout=config.timeout_s)
        self.api = config.api if config.api != "auto" else None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LangfuseClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the one request path ------------------------------------------------------------------------------------
    def _notice_deprecation(self, response: httpx.Response) -> None:
        path = response.request.url.path
        notice = response.headers.get("deprecation")
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            try:
                body = response.json()
            except ValueError:
                body = None
            items = body.get("data") if isinstance(body, dict) else None
            found = (body.get("_deprecation") if isinstance(body, dict) else None) or (
                items[0].get("_deprecation") if isinstance(items, list) and items and isinstance(items[0], dict) else None)
            if found:
                notice = found
        if not notice or path in self._warned:
            return
        self._warned.add(path)
        if isinstance(notice, dict):
            text = notice.get("message") or "deprecated"
            if notice.get("replacement"):
                text += f"; use {notice['replacement']}"
            if notice.get("sunsetAt"):
                text += f"; sunset {notice['sunsetAt']}"
            if notice.get("docsUrl"):
                text += f" ({notice['docsUrl']})"
        else:
            sunset = response.headers.get("sunset")
            text = f"Deprecation: {notice}" + (f"; sunset {sunset}" if sunset else "")
        warning = f"Langfuse deprecation notice for {path}: {text}"
        log.warning(warning)
        self.warnings.append(warning)

    def _attempts(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()` with retries on timeouts, connection failures, 429 (its Retry-After honoured) and 5xx."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except _Retry as retry:
                reason, wait = retry.reason, retry.wait
            except httpx.TimeoutException as err:
                reason, wait = f"timed out after {self.config.timeout_s:g} s ({type(err).__name__})", None
            except httpx.TransportError as err:
                reason, wait = f"could not connect ({type(err).__name__}: {err})", None
            if attempt + 1 == attempts:
                raise LangfuseError(f"Langfuse {what} at {self.host}: {reason}, {attempts} attempt(s); check the "
                                    "server, then rerun (loop.langfuse.max_retries / timeout_s allow more).")
            wait = min(wait, RETRY_AFTER_MAX_S) if wait is not None else min(BACKOFF_S * 2 ** attempt, BACKOFF_MAX_S)
            log.info("Langfuse %s: %s; retrying in %.1f s", what, reason, wait)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _check(self, what: str, status: int, headers: Mapping[str, str] | None, body: Any) -> None:
        if status == 429:
            raise _Retry("HTTP 429 (rate limited)", _retry_after(headers))
        if status >= 500 or status == 408:
            raise _Retry(f"HTTP {status}")
        if status in (401, 403):
            raise LangfuseError(f"Langfuse at {self.host} refused the keys (HTTP {status}) for {what}: check "
                                f"{self.key_envs} hold this project's public and secret key.")
        if status == 404:
            raise _NotFound(f"Langfuse at {self.host} has no {what} (HTTP 404); check the host, or set "
                            "loop.langfuse.api to the server's API generation (v3 self-hosted, v4 Cloud).")
        if status >= 400:
            raise LangfuseError(f"Langfuse {what} at {self.host} answered HTTP {status}: {str(body)[:300]}")

    def get_json(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET a JSON object through httpx (the endpoints the SDK no longer has)."""
        def call() -> dict[str, Any]:
            response = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
            self._check(path, response.status_code, response.headers, response.text)
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise LangfuseError(f"Langfuse {path} at {self.host} answered without a {{data: [...]}} object: "
                                    f"{response.text[:200]!r}; is the host a Langfuse server?")
            return body
        return self._attempts(path, call)

    def sdk_call(self, what: str, method: Callable[..., Any], **params: Any) -> Any:
        """One SDK call (raw response), through the same retries and checks."""
        from langfuse.api.core.api_error import ApiError
        from pydantic import ValidationError

        def call() -> Any:
            try:
                return method(**params, request_options={"max_retries": 0}).data
            except ApiError as err:
                self._check(what, err.status_code or 0, err.headers, err.body)
                raise LangfuseError(f"Langfuse {what} at {self.host} failed: {err}") from None
            except ValidationError as err:
                raise LangfuseError(f"Langfuse {what} at {self.host} answered in a shape the langfuse SDK does not "
                                    f"know: {err.errors()[0]['loc']} {err.errors()[0]['msg']}") from None
        return self._attempts(what, call)

    # -- which generation ------------------------------------------------------------------------------------------
    def generation(self) -> str:
        """v3 or v4: as configured, else v4 when the v2 observations endpoint exists."""
        if self.api is None:
            try:
                self.sdk_call(V4_PROBE, self.sdk.observations.with_raw_response.get_many, limit=1, fields="core")
                self.api = "v4"
            except _NotFound:
                self.api = "v3"
        return self.api

    # -- v3: page-based ------------------------------------------------------------------------------------------
    def _pages(self, path: str, params: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            body = self.get_json(path, {**params, "page": page, "limit": limit})
            yield from body["data"]
            pages = (body.get("meta") or {}).get("totalPages")
            if not body["data"] or (pages is not None and page >= pages) or (pages is None and len(body["data"]) < limit):
                return
            page += 1

    def traces_v3(self, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
        params = {"fromTimestamp": iso(since) if since is not None else None,
                  "toTimestamp": iso(until) if until is not None else None, "orderBy": "timestamp.asc",
                  "name": self.config.trace_name, "tags": self.config.tags or None,
                  "environment": self.config.environment}
        yield from self._pages("/api/public/traces", params, self.config.page_size)

    def generations_v3(self, trace_id: str) -> list[dict[str, Any]]:
        return list(self._pages("/api/public/observations", {"traceId": trace_id, "type": "GENERATION"},
                                self.config.page_size))

    def scores_v3(self, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
        params = {"fromTimestamp": iso(since) if since is not None else None,
                  "toTimestamp": iso(until) if until is not None else None, "environment": self.config.environment}
        yield from self._pages("/api/public/v2/scores", params, min(self.config.page_size, SCORES_MAX_LIMIT))

    # -- v4: cursor-based, through the SDK -------------------------------------------------------------------------
    def _cursor_pages(self, what: str, method: Callable[..., Any], params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cursor, seen = None, set()
        while True:
            page = self.sdk_call(what, method, **params, cursor=cursor)
            for item in page.data:
                yield item.dict()
            cursor = page.meta.cursor
            if not cursor:
                return
            if cursor in seen:
                raise LangfuseError(f"Langfuse {what} at {self.host} returned the same cursor twice; stopping "
                                    "rather than reading the same page forever.")
            seen.add(cursor)

    def generations_v4(self, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
        params = {"fields": V4_FIELDS, "limit": self.config.page_size, "type": "GENERATION",
                  "environment": self.config.environment,
                  "from_start_time": _utc(since), "to_start_time": _utc(until)}
        for generation in self._cursor_pages(V4_PROBE, self.sdk.observations.with_raw_response.get_many, params):
            tags = set(generation.get("tags") or [])
            if self.config.trace_name and generation.get("traceName") != self.config.trace_name:
                continue
            if not set(self.config.tags) <= tags:
                continue
            yield generation

    def scores(self, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
        """The window's scores from this generation's endpoint; detected v4 without v3 scores (a server between
        the two) reads the v2 scores instead."""
        if self.generation() == "v3":
            yield from self.scores_v3(since, until)
            return
        yielded = False
        try:
            for score in self.scores_v4(since, until):
                yielded = True
                yield score
        except _NotFound:
            if yielded or self.config.api != "auto":
                raise
            yield from self.scores_v3(since, until)

    def scores_v4(self, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
        params = {"fields": "details,subject", "limit": min(self.config.page_size, SCORES_MAX_LIMIT),
                  "environment": self.config.environment,
                  "from_timestamp": _utc(since), "to_timestamp": _utc(until)}
        yield from self._cursor_pages("/api/public/v3/scores", self.sdk.scores.with_raw_response.get_many, params)


def _utc(seconds: float | None) -> Any:
    import datetime as dt

    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def in_window(value: Any, since: float | None, until: float | None) -> bool:
    """[since, until): the bounds every endpoint is asked for, checked again on what comes back."""
    seconds = timestamp(value)
    return seconds is not None and (since is None or seconds >= since) and (until is None or seconds < until)
