"""A canary rollout: a router in front of two OpenAI-compatible backends, with a sequential gate that rolls back.

```
client ──▶ router ──(hash(user) < weight)──▶ canary backend
              │    └─(otherwise)──────────▶ stable backend
              └─ every call traced with its arm; after each canary call the gate looks at both arms
gate  failure = transport/HTTP error, refusal, or (when JSON was asked for) an answer that does not parse or
      does not match the schema. Wald's SPRT on the canary's failures:
        H0  p_canary = p_stable            (p_stable estimated from the stable arm, Laplace-smoothed)
        H1  p_canary = p_stable + margin
      log LR ≥ log((1-β)/α) → rollback (all traffic to stable, persisted); ≤ log(β/(1-α)) → promote.
```
A user id always lands on the same arm (sha256 of the id), so one user never flips between models.
The gate reads the trace store once, at start, and then counts each call as it is traced (no rescans).
The router forwards the caller's Authorization header to URL backends, and with an API key set every path
(`/canary` and the docs too) needs it.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneloop.records import Trace
from tuneloop.serve.outcome import judge_output
from tuneloop.serve.requests import SMOKE_HEADER, BadRequest, is_smoke, parse_json_object, read_body
from tuneloop.traces.store import TraceStore, TraceStoreError, new_trace_id

STATE_KEY = "canary"
MAX_BODY_BYTES = 1_000_000
ARMS = ("stable", "canary")


@dataclass
class CanaryConfig:
    stable_url: str
    canary_url: str
    weight: float = 0.1
    alpha: float = 0.05
    beta: float = 0.2
    margin: float = 0.05
    min_samples: int = 20
    api_key: str | None = None


def arm_for(user: str, weight: float) -> str:
    """Sticky routing: the same user id always gets the same arm; about `weight` of users get the canary."""
    bucket = int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "big") / 2**64
    return "canary" if bucket < weight else "stable"


def is_failure(outcome: dict[str, Any]) -> bool:
    if outcome["error"] or outcome["refusal"]:
        return True
    return outcome["constrained"] and not (outcome["json_valid"] and outcome["schema_valid"] is not False)


class ArmCounts:
    """Running totals of one arm's outcomes, updated one call at a time."""

    def __init__(self) -> None:
        self.requests = self.failures = self.json_valid = self.schema_valid = self.refusals = self.errors = 0
        self.latencies: list[float] = []  # kept sorted (bisect) for the percentiles

    def add(self, outcome: dict[str, Any]) -> None:
        self.requests += 1
        self.failures += is_failure(outcome)
        self.json_valid += bool(outcome["json_valid"])
        self.schema_valid += outcome["schema_valid"] is not False
        self.refusals += bool(outcome["refusal"])
        self.errors += outcome["error"] is not None
        bisect.insort(self.latencies, outcome["latency_ms"])

    def metrics(self) -> dict[str, Any]:
        n, latencies = self.requests, self.latencies
        rate = (lambda k: round(k / n, 4) if n else None)
        return {
            "requests": n, "failures": self.failures, "json_valid": rate(self.json_valid),
            "schema_valid": rate(self.schema_valid), "refusal": rate(self.refusals), "errors": rate(self.errors),
            "latency_p50_ms": round(latencies[n // 2], 1) if n else None,
            "latency_p95_ms": round(latencies[min(n - 1, int(n * 0.95))], 1) if n else None,
        }


def arm_metrics(store: TraceStore, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Per arm: requests, failures, JSON/schema-valid, refusal and error rates, latency p50/p95."""
    counts = {arm: ArmCounts() for arm in ARMS}
    for outcome in store.iter_outcomes(since=since):
        if outcome["arm"] in counts:
            counts[outcome["arm"]].add(outcome)
    return {arm: count.metrics() for arm, count in counts.items()}


def sprt(stable_failures: int, stable_n: int, canary_failures: int, canary_n: int, alpha: float, beta: float,
         margin: float, min_samples: int) -> dict[str, Any]:
    """Wald's sequential test of 'the canary fails `margin` more often than stable'.

    >>> sprt(0, 50, 10, 10, 0.05, 0.2, 0.05, 5)["decision"]
    'rollback'
    >>> sprt(0, 50, 0, 100, 0.05, 0.2, 0.05, 5)["decision"]
    'promote'
    """
    p0 = (stable_failures + 1) / (stable_n + 2)
    p1 = min(p0 + margin, 0.999)
    llr = canary_failures * math.log(p1 / p0) + (canary_n - canary_failures) * math.log((1 - p1) / (1 - p0))
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    decision = "collecting"
    if stable_n >= min_samples and canary_n >= min(min_samples, 5):
        decision = "rollback" if llr >= upper else "promote" if llr <= lower and canary_n >= min_samples else "collecting"
    return {"decision": decision, "log_likelihood_ratio": round(llr, 4), "rollback_at": round(upper, 4),
            "promote_at": round(lower, 4), "stable_failure_rate": round(p0, 4), "tested_failure_rate": round(p1, 4)}


class CanaryGate:
    """Counts both arms (the store once at start, then each traced call) and persists the decision; rollback is final."""

    def __init__(self, store: TraceStore, config: CanaryConfig):
        self.store, self.config = store, config
        state = store.get_state(STATE_KEY) or {}
        # the same pair of backends resumes its canary (a rollback stays); a new pair starts afresh
        same = (state.get("stable_url"), state.get("canary_url")) == (config.stable_url, config.canary_url)
        self.started = state["started"] if same and state.get("started") else time.time()
        self.state = state if same else {"decision": "collecting"}
        self.counts = {arm: ArmCounts() for arm in ARMS}
        for outcome in store.iter_outcomes(since=self.started):
            if outcome["arm"] in self.counts:
                self.counts[outcome["arm"]].add(outcome)
        self.update()

    def observe(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """Count one traced call (the fields `TraceStore.iter_outcomes` gives) and re-decide: O(1), no rescan."""
        self.counts[outcome["arm"]].add(outcome)
        return self.update()

    @property
    def rolled_back(self) -> bool:
        return self.state.get("decision") == "rollback"

    def update(self) -> dict[str, Any]:
        metrics = {arm: count.metrics() for arm, count in self.counts.items()}
        test = sprt(metrics["stable"]["failures"], metrics["stable"]["requests"], metrics["canary"]["failures"],
                    metrics["canary"]["requests"], self.config.alpha, self.config.beta, self.config.margin,
                    self.config.min_samples)
        if self.rolled_back:  # once rolled back, stays rolled back until a new canary is started
            test["decision"] = "rollback"
        elif self.state.get("decision") == "promote" and test["decision"] == "collecting":
            test["decision"] = "promote"
        self.state = {**test, "arms": metrics, "weight": self.config.weight, "stable_url": self.config.stable_url,
                      "canary_url": self.config.canary_url, "started": self.started, "updated_at": time.time(),
                      "decided_at": self.state.get("decided_at") if self.state.get("decision") == test["decision"]
                      else (time.time() if test["decision"] != "collecting" else None)}
        self.store.set_state(STATE_KEY, self.state)
        return self.state


def canary_status(store_path: str) -> dict[str, Any] | None:
    """The last persisted gate state (arms, test, decision), or None when no canary has run on this store."""
    with TraceStore(store_path) as store:
        return store.get_state(STATE_KEY)


def create_router(config: CanaryConfig, trace_store_path: str) -> FastAPI:
    store = TraceStore(trace_store_path)
    gate = CanaryGate(store, config)
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
    urls = {"stable": config.stable_url.rstrip("/"), "canary": config.canary_url.rstrip("/")}
    app = FastAPI(title="tuneloop canary router")
    app.state.gate, app.state.store = gate, store

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if config.api_key:  # every path: /v1/*, /canary (the gate's state), /docs
            given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {config.api_key}".encode()):
                return JSONResponse({"error": {"message": "missing or wrong API key: send `Authorization: Bearer "
                                               "<key>`.", "type": "authentication_error"}}, status_code=401)
        return await call_next(request)

    def forwarded(request: Request) -> dict[str, str]:
        """The caller's credentials (and its smoke mark), passed on to the backend it is routed to."""
        auth = request.headers.get("authorization")
        return {**({"authorization": auth} if auth else {}), **({SMOKE_HEADER: "1"} if is_smoke(request) else {})}

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            response = await client.get(f"{urls['stable']}/models", headers=forwarded(request))
        except httpx.HTTPError as err:
            return JSONResponse({"error": {"message": f"stable backend unreachable: {err}"}}, status_code=502)
        return JSONResponse(response.json() if _is_json(response) else {"error": {"message": response.text}},
                            status_code=response.status_code)

    @app.get("/canary")
    async def status():
        return gate.state

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        try:
            body = parse_json_object(await read_body(request, MAX_BODY_BYTES))
        except BadRequest as err:
            return JSONResponse({"error": {"message": str(err)}}, status_code=err.status)
        score = body.get("score")
        if not isinstance(body.get("trace_id"), str) or not (score is None or isinstance(score, (int, float))):
            return JSONResponse({"error": {"message": "feedback needs {trace_id: str, score: number, comment}."}},
                                status_code=400)
        try:
            return {"id": store.add_feedback(body["trace_id"], score, body.get("comment"))}
        except TraceStoreError as err:
            return JSONResponse({"error": {"message": str(err)}}, status_code=404)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:  # the same body limits and checks as the embedded server; the backend judges the fields
            body = parse_json_object(await read_body(request, MAX_BODY_BYTES))
        except BadRequest as err:
            return JSONResponse({"error": {"message": str(err)}}, status_code=err.status)
        user = body.get("user") or request.headers.get("x-user-id") or uuid.uuid4().hex
        arm = "stable" if gate.rolled_back else arm_for(user, config.weight)
        trace_id, started = new_trace_id(), time.perf_counter()

        def record(output: str, status_code: int, error: str | None, model: str | None, usage: dict | None,
                   finish: str | None) -> None:
            outcome = judge_output(output, body.get("response_format"))
            latency_ms = (time.perf_counter() - started) * 1000
            store.record(Trace(
                id=trace_id, created_at=time.time(), model=model or body.get("model") or arm, arm=arm,
                user=body.get("user"), messages=body.get("messages") or [], output=output,
                response_format=body.get("response_format"), latency_ms=latency_ms,
                prompt_tokens=(usage or {}).get("prompt_tokens", 0), completion_tokens=(usage or {}).get("completion_tokens", 0),
                json_valid=outcome.json_valid, schema_valid=outcome.schema_valid, refusal=outcome.refusal,
                finish_reason=finish, error=error, status_code=status_code, smoke=is_smoke(request)))
            if not is_smoke(request):  # tuneloop's own checks are no user's outcome: they never move the gate
                gate.observe({"arm": arm, "json_valid": outcome.json_valid, "schema_valid": outcome.schema_valid,
                              "refusal": outcome.refusal, "latency_ms": latency_ms, "error": error,
                              "constrained": body.get("response_format") is not None})

        if body.get("stream"):
            return StreamingResponse(_proxy_stream(client, urls[arm], body, trace_id, record, forwarded(request)),
                                     media_type="text/event-stream", headers={"X-Trace-Id": trace_id, "X-Arm": arm})
        try:
            response = await client.post(f"{urls[arm]}/chat/completions", json=body, headers=forwarded(request))
        except httpx.HTTPError as err:
            record("", 502, f"{type(err).__name__}: {err}", None, None, None)
            return JSONResponse({"error": {"message": f"{arm} backend unreachable: {err}"}}, status_code=502)
        if response.status_code != 200:
            record("", response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", None, None, None)
            return JSONResponse(response.json() if _is_json(response) else {"error": {"message": response.text}},
                                status_code=response.status_code)
        try:
            answer = response.json()
            choice = answer["choices"][0]
            choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            record("", 502, f"{arm} backend answered 200 without a chat completion: {response.text[:200]}", None, None, None)
            return JSONResponse({"error": {"message": f"{arm} backend answered without a chat completion"}},
                                status_code=502)
        record(choice["message"].get("content") or "", 200, None, answer.get("model"), answer.get("usage"),
               choice.get("finish_reason"))
        answer["id"] = trace_id
        return JSONResponse(answer, headers={"X-Trace-Id": trace_id, "X-Arm": arm})

    return app


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


async def _proxy_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], trace_id: str, record,
                        headers: dict[str, str]):
    text, finish, model, error, status = [], None, None, None, 200
    try:
        async with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as response:
            status = response.status_code
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    if "error" in event:
                        error = json.dumps(event["error"])
                    for choice in event.get("choices", []):
                        text.append(choice.get("delta", {}).get("content") or "")
                        finish = choice.get("finish_reason") or finish
                    model = event.get("model", model)
                    event["id"] = trace_id
                    line = f"data: {json.dumps(event, ensure_ascii=False)}"
                if line:
                    yield line + "\n\n"
            if status != 200:
                error = error or f"HTTP {status}"
    except httpx.HTTPError as err:
        error, status = f"{type(err).__name__}: {err}", 502
        yield f"data: {json.dumps({'error': {'message': error}})}\n\n"
    record("".join(text), status, error, model, None, finish)


def describe(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a status table: one per arm with its metrics."""
    return [{"arm": arm, **state["arms"][arm]} for arm in ARMS]

