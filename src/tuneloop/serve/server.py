"""The embedded OpenAI-compatible server: a transformers model behind FastAPI, every call traced.

```
GET  /v1/models              the one served model
POST /v1/chat/completions    messages → answer; stream (SSE), response_format json_object / json_schema
                             (xgrammar-constrained), tools + tool_choice (calls decoded under their parameter
                             schema, `serve.tool_calls`), max_tokens, temperature, top_p, seed, stop, user
POST /v1/feedback            {trace_id, score, comment} for a trace a completion returned (its `id`)
GET  /health                 liveness and batching counters
```
Requests from concurrent clients are batched by one generation worker. Each completion's `id` is its trace id;
the trace (messages, output, model and version, latency, tokens, JSON/schema validity, finish reason) is in the
trace store before the response (or the stream's last event) is sent; a streaming client that leaves stops its
generation and still leaves its trace (finish reason `cancelled`).

Under abuse: bodies over `max_body_bytes` get 413, malformed ones 400 (see `serve.requests`), a full queue 429
with `Retry-After`. Every path but /health (the docs too) needs the API key when one is set, compared in constant
time. A constrained answer is validated against its schema after generation; one that fails (a grammar gap) is
never a success: HTTP 500, `finish_reason` "schema_invalid" and an error, in the response and the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from tuneloop.records import Trace
from tuneloop.decoding.engine import Engine, GenerationRequest, GenerationResult
from tuneloop.decoding.grammar import ResponseFormatError
from tuneloop.decoding.validity import constrained_failure
from tuneloop.serve.batching import BatchingGenerator, QueueFull
from tuneloop.serve.outcome import Outcome, judge_output
from tuneloop.serve.requests import (
    BadRequest, chat_messages, is_smoke, parse_chat, parse_json_object, read_body, tool_plan,
)
from tuneloop.serve.tool_calls import ToolPlan, read_calls, wire_calls
from tuneloop.traces.store import TraceStore, new_trace_id
from tuneloop.train import templates

RETRY_AFTER_S = 1
OPEN_PATHS = ("/health",)  # everything else (the API, /docs, /openapi.json) needs the key when one is set


class FeedbackRequest(BaseModel):
    trace_id: str
    score: float | None = None
    comment: str | None = None


def model_version(model_dir: str | Path) -> str:
    """A short id of the served weights: the export manifest's digest, else config + weight file sizes."""
    folder = Path(model_dir)
    manifest = folder / "manifest.json"
    digest = hashlib.sha256()
    if manifest.exists():
        digest.update(manifest.read_bytes())
    else:
        for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def key_matches(header: str, api_key: str) -> bool:
    """Constant-time comparison of an Authorization header with `Bearer <api_key>`."""
    return hmac.compare_digest(header.encode("utf-8", "surrogateescape"), f"Bearer {api_key}".encode())


def create_app(model_dir: str | Path | None, trace_store_path: str | Path, model_name: str | None = None,
               api_key: str | None = None, max_batch: int = 8, default_max_tokens: int = 256,
               engine: Engine | None = None, max_tokens_limit: int = 4096, max_body_bytes: int = 1_000_000,
               max_queue: int = 64) -> FastAPI:
    """The FastAPI app serving `model_dir` (a folder, hub id or `default`), tracing into `trace_store_path`.

    Limits: `max_tokens_limit` per answer, `max_body_bytes` per request body, `max_queue` requests waiting.
    """
    if engine is None:
        from tuneloop.models import load_causal_lm, resolve_model

        resolved = resolve_model(model_dir)
        model, tokenizer = load_causal_lm(resolved)
        engine = Engine(model, tokenizer)
        version = model_version(resolved) if Path(resolved).exists() else resolved
        name = model_name or Path(resolved).name
    else:
        version, name = "in-memory", model_name or "model"
    store = TraceStore(trace_store_path)
    batcher = BatchingGenerator(engine, max_batch=max_batch, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        store.close()

    app = FastAPI(title="tuneloop embedded server", lifespan=lifespan)
    app.state.store, app.state.batcher, app.state.engine = store, batcher, engine

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path not in OPEN_PATHS:
            if not key_matches(request.headers.get("authorization", ""), api_key):
                return _error(401, "missing or wrong API key: send `Authorization: Bearer <key>`.", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "version": version, "batches": batcher.batches,
                "largest_batch": batcher.largest_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tuneloop",
                                            "version": version}]}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        try:
            body = FeedbackRequest.model_validate(parse_json_object(await read_body(request, max_body_bytes)))
        except BadRequest as err:
            return _error(err.status, str(err))
        except ValidationError as err:
            return _error(400, f"feedback needs {{trace_id, score, comment}}: {err.errors()[0]['msg']}")
        from tuneloop.traces.store import TraceStoreError

        try:
            feedback_id = store.add_feedback(body.trace_id, body.score, body.comment)
        except TraceStoreError as err:
            return _error(404, str(err))
        return {"id": feedback_id, "trace_id": body.trace_id}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = parse_chat(parse_json_object(await read_body(request, max_body_bytes)))
            messages = chat_messages(body.messages)
            plan = tool_plan(body)
            # a required or named call is decoded under its function's parameters, like a json_schema answer
            response_format = (plan.response_format if plan else None) or body.response_format
            max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
            if max_tokens > max_tokens_limit:
                raise BadRequest(400, f"max_tokens {max_tokens} is over the server's limit of {max_tokens_limit}.")
            prompt_ids = await asyncio.to_thread(encode_request, engine, messages, plan.functions if plan else None,
                                                 bool(plan and plan.response_format))
            if engine.max_positions and len(prompt_ids) + max_tokens > engine.max_positions:
                raise BadRequest(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                                      f"model's {engine.max_positions} positions; shorten the prompt or lower max_tokens.")
            stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
            gen = GenerationRequest(prompt_ids, max_tokens, body.temperature, body.top_p, body.seed, stop,
                                    response_format)
            # the schema compiles and the closing budget is sized here, for this request alone
            row = await asyncio.to_thread(engine.prepare, gen)
        except BadRequest as err:
            return _error(err.status, str(err))
        except ResponseFormatError as err:
            return _error(400, f"bad response_format: {err}")
        trace_id, started, smoke = new_trace_id(), time.perf_counter(), is_smoke(request)

        def trace(result: GenerationResult | None, error: str | None = None) -> Answer:
            output = result.text if result else ""
            outcome = judge_output(output, response_format)
            broken = constrained_failure(result.finish_reason, outcome, response_format) if result else None
            calls, bad_call = read_calls(plan, output) if plan and result and not broken else (None, None)
            broken = broken or (bad_call if result and result.finish_reason != "cancelled" else None)
            finish = result.finish_reason if result else None
            if calls and not broken and finish == "stop":
                finish = "tool_calls"
            if broken:
                error, finish = error or broken, "schema_invalid"
            store.record(Trace(
                id=trace_id, created_at=time.time(), model=name, model_version=version, messages=messages,
                output=output, response_format=response_format,
                latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=len(prompt_ids),
                completion_tokens=result.completion_tokens if result else 0, json_valid=outcome.json_valid,
                schema_valid=outcome.schema_valid, refusal=outcome.refusal,
                finish_reason=finish, user=body.user, error=error, smoke=smoke,
                **({"tools": plan.functions, "tool_choice": plan.choice, "tool_calls": calls} if plan else {}),
            ))
            return Answer(outcome, broken, finish, wire_calls(calls, trace_id) if calls and not broken else None)

        try:
            if body.stream:
                return _streaming(batcher, row, trace, trace_id, name, plan)
            future = batcher.submit(row)
        except QueueFull as err:
            return JSONResponse({"error": {"message": f"server busy: {err}; retry after {RETRY_AFTER_S} s.",
                                           "type": "rate_limit_error", "code": 429}},
                                status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            result = await asyncio.wrap_future(future)
        except Exception as err:  # recorded, then reported: a failed generation still leaves a trace
            await asyncio.to_thread(trace, None, f"{type(err).__name__}: {err}")
            return _error(500, f"generation failed: {err}", "server_error")
        done = await asyncio.to_thread(trace, result)
        broken = done.broken
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        if done.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": done.tool_calls}
        answer = {
            "id": trace_id, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": message, "finish_reason": done.finish}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        }
        if broken:  # never a success: the engine did not keep the response_format's promise
            answer["error"] = {"message": broken, "type": "schema_validation_error", "code": 500}
            return JSONResponse(answer, status_code=500, headers={"X-Trace-Id": trace_id})
        return JSONResponse(answer, headers={"X-Trace-Id": trace_id})

    return app


def encode_request(engine: Engine, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                   forced_call: bool = False) -> list[int]:
    """A request's prompt ids: its messages (`requests.chat_messages`) and tools through the one renderer training
    uses; a forced call (tool_choice required or named) also gets the template's call opening (`<tool_call>` in the
    hermes format), so the constrained JSON follows it as the model was trained to write it."""
    try:
        ids = templates.prompt_ids(engine.tokenizer, messages, tools=tools)
    except Exception as err:  # the model's own chat template refuses this conversation (order of roles, …)
        raise BadRequest(400, f"the model's chat template rejects these messages: {str(err)[:200]}") from None
    return ids + templates.call_opening(engine.tokenizer, tools) if forced_call and tools else ids


class Answer:
    """What one finished generation became: its outcome, why it broke its promise (or None), the finish reason sent,
    and its calls in OpenAI's shape (None for a text answer)."""

    def __init__(self, outcome: Outcome, broken: str | None, finish: str | None, tool_calls: list[dict] | None):
        self.outcome, self.broken, self.finish, self.tool_calls = outcome, broken, finish, tool_calls


def _streaming(batcher: BatchingGenerator, row: Any, trace, trace_id: str, name: str,
               plan: ToolPlan | None) -> StreamingResponse:
    """Submit a streaming row (QueueFull propagates: a 429 before any byte is sent) and stream its answer.

    The trace is written by the generation's own completion, in the worker thread, so it exists whether or not
    the client stays: a client that leaves sets the row's cancel flag and the trace says so.
    """
    loop = asyncio.get_running_loop()
    gen: GenerationRequest = row.request
    pieces: asyncio.Queue[str] = asyncio.Queue()
    traced: asyncio.Future = loop.create_future()
    gen.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)

    def on_done(done) -> None:
        result, error = None, None
        try:
            result = done.result()
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        if result is not None and result.finish_reason == "cancelled":
            error = "client disconnected before the answer was complete"
        done = trace(result, error)
        with contextlib.suppress(RuntimeError):  # the loop is gone when the server shuts down
            loop.call_soon_threadsafe(_settle, traced, (result, error, done))

    batcher.submit(row).add_done_callback(on_done)
    return StreamingResponse(_stream(pieces, traced, gen, trace_id, name, plan),
                             media_type="text/event-stream", headers={"X-Trace-Id": trace_id})


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


async def _stream(pieces: asyncio.Queue, traced: asyncio.Future, gen: GenerationRequest, trace_id: str, name: str,
                  plan: ToolPlan | None) -> AsyncIterator[str]:
    """Server-sent chunks. An answer that may be a call (tools with tool_choice other than none) is held back until
    it is complete: it is sent as one content chunk or as one tool_calls chunk, never as a call's text."""
    created = int(time.time())
    held: list[str] | None = [] if plan is not None and plan.reads_calls else None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        event = {"id": trace_id, "object": "chat.completion.chunk", "created": created, "model": name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    finished, getter = False, None
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait({getter, traced}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                if held is None:
                    yield chunk({"content": getter.result()})
                else:
                    held.append(getter.result())
                continue
            getter.cancel()
            break
        while not pieces.empty():
            if held is None:
                yield chunk({"content": pieces.get_nowait()})
            else:
                held.append(pieces.get_nowait())
        result, error, answer = traced.result()
        finished = True
        if result is None:
            yield f"data: {json.dumps({'error': {'message': error, 'type': 'server_error'}})}\n\n"
            return
        if answer.broken:
            yield chunk({}, "schema_invalid")
            yield f"data: {json.dumps({'error': {'message': answer.broken, 'type': 'schema_validation_error'}})}\n\n"
        else:
            if answer.tool_calls:
                yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(answer.tool_calls)]})
            elif held:
                yield chunk({"content": "".join(held)})
            yield chunk({}, answer.finish)
        yield "data: [DONE]\n\n"
    finally:
        if getter is not None:
            getter.cancel()
        if not finished:  # the client left: stop generating its row (its trace is written when the row ends)
            gen.cancelled.set()


@contextlib.contextmanager
def run_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve any ASGI app from a thread; yields `http://HOST:PORT` once it accepts connections."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tuneloop-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server on {host}:{port} did not start (port taken?); pick another --port.")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def serve_in_background(model_dir: str | Path | None, trace_store_path: str | Path, host: str = "127.0.0.1",
                        port: int = 0, **options: Any) -> Iterator[str]:
    """Run the embedded server in a thread; yields the OpenAI base URL (`http://127.0.0.1:PORT/v1`)."""
    app = create_app(model_dir, trace_store_path, **options)
    with run_in_background(app, host, port) as root:
        yield f"{root}/v1"
