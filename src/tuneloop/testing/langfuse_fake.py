"""A loopback Langfuse for tests: the public API's documented response shapes, both generations, on 127.0.0.1.

```
api="v3"  GET /api/public/traces        page-based, meta {page, limit, totalItems, totalPages}
          GET /api/public/observations  page-based, traceId/type filters (ObservationsView items)
          GET /api/public/v2/scores     page-based (v2 score items: value 1/0 for BOOLEAN, stringValue)
          GET /api/public/v2/observations, /v3/scores → 404 (an older self-hosted server)
api="v4"  all of the above, and
          GET /api/public/v2/observations cursor-based, field groups, input/output as raw JSON text; a full page
                                          carries a cursor even when nothing follows (so an empty last page occurs)
          GET /api/public/v3/scores       cursor-based, value typed by dataType, subject {kind, id, traceId}
```

Basic auth is checked (401 otherwise); `fail(path, status, ...)` queues error answers (429 with Retry-After, 500);
`deprecate(path, notice)` adds a `_deprecation` object to that endpoint's bodies; `requests` records every call.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

V2_OBSERVATION_GROUPS = {
    "core": ("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"),
    "basic": ("name", "level", "statusMessage", "version", "environment", "bookmarked", "public", "userId",
              "sessionId", "isRootObservation"),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("model", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class FakeLangfuse:
    """Traces, generations and scores held in memory and served as a Langfuse server would."""

    def __init__(self, api: str = "v3", public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test"):
        self.api, self.public_key, self.secret_key = api, public_key, secret_key
        self.traces: list[dict[str, Any]] = []
        self.observations: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.faults: dict[str, list[tuple[int | None, dict[str, str], Any, float]]] = {}
        self.notices: dict[str, dict[str, Any]] = {}
        self.missing: set[str] = set()  # endpoints this server does not have (404), e.g. a version between two
        self.stale_total_pages = False  # v3: totalPages one higher than the truth (a count that lags the data)
        self.url = ""

    # -- data ------------------------------------------------------------------------------------------------
    def add_trace(self, trace_id: str, at: float, messages: Any, output: Any, model: str = "gpt-4o-mini",
                  user: str | None = None, session: str | None = None, tags: list[str] | None = None,
                  release: str | None = None, name: str = "chat", metadata: dict[str, Any] | None = None,
                  usage: tuple[int, int] = (12, 5), cost: float | None = 0.0004, latency_s: float = 0.8,
                  response_format: dict[str, Any] | None = None, environment: str = "default",
                  generations: int = 1) -> None:
        """A trace with `generations` generation(s) (the last one answers `output`)."""
        self.traces.append({
            "id": trace_id, "timestamp": iso(at), "name": name, "input": messages, "output": output,
            "sessionId": session, "release": release, "version": None, "userId": user, "metadata": metadata or {},
            "tags": tags or [], "public": False, "environment": environment,
            "htmlPath": f"/project/p1/traces/{trace_id}", "latency": latency_s, "totalCost": cost or 0.0,
            "observations": [], "scores": [], "bookmarked": False, "createdAt": iso(at), "updatedAt": iso(at)})
        for n in range(generations):
            start = at + 0.01 + n * latency_s
            observation = {
                "id": f"{trace_id}-gen{n}", "traceId": trace_id, "type": "GENERATION", "name": "openai.chat",
                "startTime": iso(start), "endTime": iso(start + latency_s), "completionStartTime": iso(start + 0.1),
                "model": model, "modelParameters": {"temperature": 0, **({"response_format": json.dumps(
                    response_format)} if response_format else {})},
                "input": messages, "output": output if n == generations - 1 else {"role": "assistant", "content": "draft"},
                "version": None, "metadata": metadata or {}, "level": "DEFAULT", "statusMessage": None,
                "parentObservationId": None, "promptId": None, "promptName": None, "promptVersion": None,
                "usage": {"input": usage[0], "output": usage[1], "total": sum(usage), "unit": "TOKENS"},
                "usageDetails": {"input": usage[0], "output": usage[1], "total": sum(usage)},
                "costDetails": {"total": cost} if cost is not None else {},
                "calculatedTotalCost": cost, "totalCost": cost, "latency": latency_s, "timeToFirstToken": 0.1,
                "environment": environment, "projectId": "p1", "createdAt": iso(start), "updatedAt": iso(start)}
            self.observations.append(observation)
            self.traces[-1]["observations"].append(observation["id"])

    def add_score(self, score_id: str, trace_id: str | None, at: float, name: str = "user-feedback",
                  value: Any = False, data_type: str = "BOOLEAN", comment: str | None = None,
                  session: str | None = None, config_value: float | None = None) -> None:
        """A score as Langfuse keeps it; `value` as a v3 answer types it (bool, number, or text)."""
        self.scores.append({"id": score_id, "traceId": trace_id, "sessionId": session, "name": name,
                            "value": value, "dataType": data_type, "comment": comment, "timestamp": iso(at),
                            "config_value": config_value})
        for trace in self.traces:
            if trace["id"] == trace_id:
                trace["scores"].append(score_id)

    def fail(self, path: str, status: int | None, headers: dict[str, str] | None = None, body: Any = None,
             times: int = 1, delay_s: float = 0.0) -> None:
        """The next `times` calls of `path` answer `status` after `delay_s` (status None: the normal answer, late);
        then the endpoint answers normally again."""
        fault = (status, headers or {}, body or {"message": f"HTTP {status}"}, delay_s)
        self.faults.setdefault(path, []).extend([fault] * times)

    def deprecate(self, path: str, notice: dict[str, Any] | None = None, header: str | None = None,
                  sunset: str | None = None) -> None:
        """Mark `path` deprecated: a `_deprecation` object in its bodies, and/or RFC 9745 `Deprecation` (and
        `Sunset`) headers."""
        self.notices[path] = {"body": notice, "header": header, "sunset": sunset}

    def calls(self, path: str) -> list[dict[str, list[str]]]:
        return [params for called, params in self.requests if called == path]

    # -- answers -------------------------------------------------------------------------------------------------
    def answer(self, path: str, query: dict[str, list[str]], auth: str | None) -> tuple[int, dict[str, str], Any]:
        self.requests.append((path, query))
        expected = "Basic " + base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        if auth != expected:
            return 401, {}, {"error": "UnauthorizedError", "message": "Invalid credentials. Confirm that you've "
                             "configured the correct host."}
        if self.faults.get(path):
            status, headers, body, delay_s = self.faults[path].pop(0)
            time.sleep(delay_s)
            if status is not None:
                return status, headers, body
        one = {k: v[0] for k, v in query.items()}
        routes = {"/api/public/traces": self._traces, "/api/public/observations": self._observations_v1,
                  "/api/public/v2/scores": self._scores_v2}
        if self.api == "v4":
            routes.update({"/api/public/v2/observations": self._observations_v2, "/api/public/v3/scores": self._scores_v3})
        if path not in routes or path in self.missing:
            return 404, {}, {"message": "Route not found", "error": "NotFound"}
        try:
            status, body = routes[path](one, query)
        except ValueError as err:
            return 400, {}, {"message": str(err), "error": "InvalidRequestError"}
        headers: dict[str, str] = {}
        notice = self.notices.get(path)
        if notice and status == 200:
            if notice["body"]:
                body["_deprecation"] = notice["body"]
            if notice["header"]:
                headers["Deprecation"] = notice["header"]
            if notice["sunset"]:
                headers["Sunset"] = notice["sunset"]
        return status, headers, body

    @staticmethod
    def _window(items: list[dict[str, Any]], key: str, since: str | None, until: str | None) -> list[dict[str, Any]]:
        low = _seconds(since) if since else -math.inf
        high = _seconds(until) if until else math.inf
        return [item for item in items if low <= _seconds(item[key]) < high]

    def _page(self, items: list[dict[str, Any]], one: dict[str, str], max_limit: int | None = None):
        page, limit = int(one.get("page", 1)), int(one.get("limit", 50))
        if page < 1 or limit < 1 or (max_limit and limit > max_limit):
            raise ValueError(f"page must be >= 1 and limit in 1..{max_limit or 'any'}")
        pages = math.ceil(len(items) / limit) + (1 if self.stale_total_pages and items else 0)
        return 200, {"data": items[(page - 1) * limit: page * limit],
                     "meta": {"page": page, "limit": limit, "totalItems": len(items), "totalPages": pages}}

    def _traces(self, one, query):
        items = sorted(self._window(self.traces, "timestamp", one.get("fromTimestamp"), one.get("toTimestamp")),
                       key=lambda t: t["timestamp"], reverse=one.get("orderBy", "timestamp.desc") == "timestamp.desc")
        if "name" in one:
            items = [t for t in items if t["name"] == one["name"]]
        if "tags" in query:
            items = [t for t in items if set(query["tags"]) <= set(t["tags"])]
        if "environment" in one:
            items = [t for t in items if t["environment"] == one["environment"]]
        return self._page(items, one)

    def _observations_v1(self, one, query):
        items = [o for o in self.observations if o["traceId"] == one.get("traceId", o["traceId"])
                 and o["type"] == one.get("type", o["type"])]
        return self._page(items, one)

    def _scores_v2(self, one, query):
        items = self._window(self.scores, "timestamp", one.get("fromTimestamp"), one.get("toTimestamp"))
        return self._page([self._score_v2(s) for s in items], one, max_limit=100)

    def _score_common(self, score: dict[str, Any]) -> dict[str, Any]:
        return {"id": score["id"], "name": score["name"], "source": "API", "timestamp": score["timestamp"],
                "createdAt": score["timestamp"], "updatedAt": score["timestamp"], "environment": "default",
                "dataType": score["dataType"], "authorUserId": None, "configId": None, "queueId": None}

    def _score_v2(self, score: dict[str, Any]) -> dict[str, Any]:
        value, kind = score["value"], score["dataType"]
        if kind == "BOOLEAN":  # v2 sends a double and the words
            value, words = (1.0 if value else 0.0), ("True" if value else "False")
        elif kind == "NUMERIC":
            words = None
        else:
            value, words = score["config_value"], value
        trace = next((t for t in self.traces if t["id"] == score["traceId"]), {})
        return {**self._score_common(score), "traceId": score["traceId"], "sessionId": score["sessionId"],
                "observationId": None, "datasetRunId": None, "value": value, "stringValue": words,
                "comment": score["comment"], "metadata": {},
                "trace": {"userId": trace.get("userId"), "tags": trace.get("tags"), "environment": "default",
                          "sessionId": trace.get("sessionId")}}

    def _cursor_page(self, items: list[dict[str, Any]], one: dict[str, str], max_limit: int):
        limit = int(one.get("limit", 50))
        if limit < 1 or limit > max_limit:
            raise ValueError(f"limit must be in 1..{max_limit}")
        offset = json.loads(base64.urlsafe_b64decode(one["cursor"]))["offset"] if "cursor" in one else 0
        page = items[offset: offset + limit]
        meta: dict[str, Any] = {}
        if len(page) == limit:  # a full page always offers a next one, as a keyset cursor does
            meta["cursor"] = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode()
        return page, meta

    def _observations_v2(self, one, query):
        if one.get("parseIoAsJson") == "true":
            raise ValueError("parseIoAsJson is no longer supported")
        items = [o for o in self.observations if o["type"] == one.get("type", o["type"])]
        items = sorted(self._window(items, "startTime", one.get("fromStartTime"), one.get("toStartTime")),
                       key=lambda o: o["startTime"])
        groups = (one.get("fields") or "core,basic").split(",")
        if unknown := set(groups) - set(V2_OBSERVATION_GROUPS):
            raise ValueError(f"unknown field groups {sorted(unknown)}")
        page, meta = self._cursor_page(items, one, 1000)
        data = []
        for observation in page:
            trace = next(t for t in self.traces if t["id"] == observation["traceId"])
            full = {**observation, "userId": trace["userId"], "sessionId": trace["sessionId"], "tags": trace["tags"],
                    "release": trace["release"], "traceName": trace["name"], "bookmarked": False, "public": False,
                    "isRootObservation": True, "internalModelId": None, "usagePricingTierName": None,
                    "input": json.dumps(observation["input"]), "output": json.dumps(observation["output"])}
            data.append({key: full.get(key) for group in ("core", *groups) for key in V2_OBSERVATION_GROUPS[group]})
        return 200, {"data": data, "meta": meta}

    def _scores_v3(self, one, query):
        items = sorted(self._window(self.scores, "timestamp", one.get("fromTimestamp"), one.get("toTimestamp")),
                       key=lambda s: s["timestamp"])
        page, meta = self._cursor_page(items, one, 100)
        groups = (one.get("fields") or "").split(",")
        data = []
        for score in page:
            item = {**self._score_common(score), "projectId": "p1", "value": score["value"]}
            if "details" in groups:
                item.update(comment=score["comment"], configId=None, metadata={})
            if "subject" in groups:
                item["subject"] = ({"kind": "trace", "id": score["traceId"]} if score["traceId"]
                                   else {"kind": "session", "id": score["sessionId"]})
            data.append(item)
        return 200, {"data": data, "meta": {"limit": int(one.get("limit", 50)), **meta}}

    # -- the server ------------------------------------------------------------------------------------------
    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the host URL (no trailing slash)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlparse(self.path)
                status, headers, body = fake.answer(url.path, parse_qs(url.query), self.headers.get("Authorization"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self.url
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
