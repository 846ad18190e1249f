"""The embedded OpenAI-compatible server: a transformers model behind FastAPI, every call traced.

```
GET  /v1/models              the one served model
POST /v1/chat/completions    messages → answer; stream (SSE), response_format json_object / json_schema
                             (xgrammar-constrained), max_tokens, temperature, top_p, seed, stop, user
POST /v1/feedback            {trace_id, score, comment} for a trace a completion returned (its `id`)
GET  /health                 liveness and batching counters
```
Requests from concurrent clients are batched by one generation worker. Each completion's `id` is its trace id;
the trace (messages, output, model and version, latency, tokens, JSON/schema validity, finish reason) is in the
trace store before the response (or the stream's last event) is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.records import Trace
from tuneloop.serve.generation import BatchingGenerator, Engine, GenerationRequest, GenerationResult
from tuneloop.serve.grammar import ResponseFormatError, grammar_key
from tuneloop.serve.outcome import judge_output
from tuneloop.traces.store import TraceStore, new_trace_id


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    response_format: dict[str, Any] | None = None
    user: str | None = None
    n: int = 1


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


def _text_content(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def create_app(model_dir: str | Path | None, trace_store_path: str | Path, model_name: str | None = None,
               api_key: str | None = None, max_batch: int = 8, default_max_tokens: int = 256,
               engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving `model_dir` (a folder, hub id or `default`), tracing into `trace_store_path`."""
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
    batcher = BatchingGenerator(engine, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        store.close()

    app = FastAPI(title="tuneloop embedded server", lifespan=lifespan)
    app.state.store, app.state.batcher, app.state.engine = store, batcher, engine

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
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
            body = FeedbackRequest.model_validate(await request.json())
        except (ValidationError, json.JSONDecodeError) as err:
            return _error(400, f"feedback needs {{trace_id, score, comment}}: {err}")
        from tuneloop.traces.store import TraceStoreError

        try:
            feedback_id = store.add_feedback(body.trace_id, body.score, body.comment)
        except TraceStoreError as err:
            return _error(404, str(err))
        return {"id": feedback_id, "trace_id": body.trace_id}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = ChatRequest.model_validate(await request.json())
            grammar_key(body.response_format)
        except (ValidationError, json.JSONDecodeError, ResponseFormatError) as err:
            return _error(400, f"bad chat completion request: {err}")
        if body.n != 1:
            return _error(400, "only n=1 is supported; send several requests instead.")
        messages = [{"role": m.get("role", "user"), "content": _text_content(m.get("content"))} for m in body.messages]
        prompt_ids = engine.encode_chat(messages)
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        if engine.max_positions and len(prompt_ids) + max_tokens > engine.max_positions:
            return _error(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                               f"{engine.max_positions} positions; shorten the prompt or lower max_tokens.")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        trace_id, started = new_trace_id(), time.perf_counter()
        gen = GenerationRequest(prompt_ids, max_tokens, body.temperature, body.top_p, body.seed, stop,
                                body.response_format)

        def trace(result: GenerationResult | None, error: str | None = None) -> None:
            output = result.text if result else ""
            outcome = judge_output(output, body.response_format)
            store.record(Trace(
                id=trace_id, created_at=time.time(), model=name, model_version=version, messages=messages,
                output=output, response_format=body.response_format,
                latency_ms=(time.perf_counter() - started) * 1000, prompt_tokens=len(prompt_ids),
                completion_tokens=result.completion_tokens if result else 0, json_valid=outcome.json_valid,
                schema_valid=outcome.schema_valid, refusal=outcome.refusal,
                finish_reason=result.finish_reason if result else None, user=body.user, error=error,
            ))

        if body.stream:
            return StreamingResponse(_stream(batcher, gen, trace, trace_id, name), media_type="text/event-stream",
                                     headers={"X-Trace-Id": trace_id})
        try:
            result = await asyncio.wrap_future(batcher.submit(gen))
        except Exception as err:  # recorded, then reported: a failed generation still leaves a trace
            await asyncio.to_thread(trace, None, f"{type(err).__name__}: {err}")
            return _error(500, f"generation failed: {err}", "server_error")
        await asyncio.to_thread(trace, result)
        return JSONResponse({
            "id": trace_id, "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        }, headers={"X-Trace-Id": trace_id})

    return app


async def _stream(batcher: BatchingGenerator, gen: GenerationRequest, trace, trace_id: str,
                  name: str) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    gen.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    future = asyncio.wrap_future(batcher.submit(gen))
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        event = {"id": trace_id, "object": "chat.completion.chunk", "created": created, "model": name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while True:
        getter = asyncio.ensure_future(pieces.get())
        done, _ = await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield chunk({"content": getter.result()})
            continue
        getter.cancel()
        break
    while not pieces.empty():
        yield chunk({"content": pieces.get_nowait()})
    try:
        result = future.result()
    except Exception as err:
        await asyncio.to_thread(trace, None, f"{type(err).__name__}: {err}")
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        return
    await asyncio.to_thread(trace, result)
    yield chunk({}, result.finish_reason)
    yield "data: [DONE]\n\n"


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
