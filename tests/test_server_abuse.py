"""The embedded server under abuse, on loopback with the tiny random model.

Thousands of malformed and hostile requests (bad JSON, huge bodies, bad schemas, unknown and unsupported fields,
non-UTF-8, odd roles, streams that hang up) interleaved with well-formed neighbours: no 5xx, every neighbour
answered correctly, every completed request traced.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

from tuneloop.serve.server import create_app, run_in_background
from tuneloop.traces.store import TraceStore

BODY_LIMIT = 20_000
GOOD_SCHEMA = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "other"]},
                                                "qty": {"type": "integer", "minimum": 0, "maximum": 9}},
               "required": ["intent", "qty"]}


def _chat(**fields) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}


def _schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}


def _deep(depth: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    return node


BAD_SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}},
    {"type": "object", "propertyNames": {"maxLength": 2}},
    {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "maxProperties": 0},
    {"if": {"type": "string"}, "then": {"minLength": 2}},
    {"type": "object", "unevaluatedProperties": False},
    {"type": "object", "required": ["a"]},
    {"maxLength": 3},
    {"type": 5},
    {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1},
    {"type": "integer", "maximum": 2**80},
    {"$ref": "http://example.com/schema.json"},
    {"$ref": "#/$defs/missing"},
    {"type": "string", "pattern": "(?<=a)b"},
    {"type": "string", "pattern": "["},
    _deep(200),
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "string"}}, "requird": ["a"]},
]


def malformed(rng: random.Random, index: int) -> tuple[str, bytes, dict[str, str], set[int]]:
    """(kind, body bytes, extra headers, statuses allowed) for one hostile request."""
    kind = index % 16
    plain = {"content-type": "application/json"}
    if kind == 0:
        good = json.dumps(_chat()).encode()
        return "bad json", good[: rng.randint(0, len(good) - 1)], plain, {400}
    if kind == 1:
        return "huge body", json.dumps(_chat(messages=[{"role": "user", "content": "x" * (BODY_LIMIT + 10)}])).encode(), plain, {413}
    if kind == 2:
        return "bad schema", json.dumps(_chat(response_format=_schema_format(rng.choice(BAD_SCHEMAS)))).encode(), plain, {400}
    if kind == 3:
        return "unknown field", json.dumps(_chat(**{rng.choice(["foo", "guided_json", "best_of"]): 1})).encode(), plain, {400}
    if kind == 4:
        field = rng.choice([{"tools": [{"type": "function", "function": {"description": "no name"}}]}, {"logprobs": True},
                            {"n": 3}, {"tool_choice": "required"}, {"logit_bias": {"5": 10}}, {"frequency_penalty": 1.0}])
        return "unsupported field", json.dumps(_chat(**field)).encode(), plain, {400}
    if kind == 5:
        return "non-utf8", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}', plain, {400}
    if kind == 6:
        message = rng.choice([{"role": "function", "content": "x"}, {"role": "wizard", "content": "x"}, {"role": None},
                              {"role": 5, "content": "x"}, "just text", {"role": "user", "content": {"a": 1}},
                              {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                              {"role": "user", "content": "x", "tool_calls": []}])
        return "odd role", json.dumps(_chat(messages=[message])).encode(), plain, {400}
    if kind == 7:
        field = rng.choice([{"max_tokens": "ten"}, {"max_tokens": -1}, {"max_tokens": 0}, {"max_tokens": 10**9},
                            {"max_tokens": True}, {"temperature": -1}, {"temperature": "hot"}, {"top_p": 0},
                            {"seed": 2**80}, {"stop": [""]}, {"stop": ["a", "b", "c", "d", "e"]}, {"stream": [1]},
                            {"messages": []}, {"messages": "hi"}, {"response_format": {"type": "xml"}},
                            {"response_format": "json"}, {"response_format": {"type": "json_schema"}},
                            {"response_format": {"type": "json_schema", "json_schema": "s"}}, {"max_tokens": 1.5}])
        return "bad value", json.dumps(_chat(**field)).encode(), plain, {400}
    if kind == 8:
        return "lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', plain, {400}
    if kind == 9:
        return "not an object", rng.choice([b"[]", b'"hi"', b"3", b"null", b"NaN", b'{"a": NaN}']), plain, {400}
    if kind == 10:
        return "missing messages", json.dumps({"model": "tiny"}).encode(), plain, {400}
    if kind == 11:
        return "deep json", b"[" * 100_00 + b"]" * 100_00, plain, {400}
    if kind == 12:
        return "wrong content type", json.dumps(_chat(max_tokens=10**6)).encode(), {"content-type": "text/plain"}, {400}
    if kind == 13:
        return "schema not an object", json.dumps(_chat(response_format=_schema_format([1, 2]))).encode(), plain, {400}
    if kind == 14:
        return "empty body", b"", plain, {400}
    return "bad feedback", b'{"trace_id": 5}', plain, {400}


def neighbour(index: int) -> dict:
    if index % 2:
        return _chat(max_tokens=40, temperature=1.0, seed=index, response_format=_schema_format(GOOD_SCHEMA),
                     messages=[{"role": "system", "content": "JSON"}, {"role": "user", "content": f"ticket {index}"}])
    return _chat(max_tokens=6, temperature=1.0, seed=index, messages=[{"role": "user", "content": f"hello {index}"}])


def hang_up_mid_stream(http: httpx.Client, root: str, index: int) -> str:
    """Start a long stream, read its first chunk, hang up; the trace id the server gave it."""
    body = _chat(stream=True, max_tokens=300, temperature=1.0, seed=index,
                 messages=[{"role": "user", "content": f"tell a long story {index}"}])
    with http.stream("POST", f"{root}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        trace_id = response.headers["x-trace-id"]
        next(response.iter_lines())
    return trace_id


def hang_up_mid_body(root: str) -> None:
    """Announce a body and close the socket after a few bytes of it."""
    host, port = root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 5000\r\n\r\n{\"messages\": [")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("abuse") / "traces.db"
    app = create_app(tiny_model_dir, store, model_name="tiny", max_batch=8, max_body_bytes=BODY_LIMIT,
                     max_tokens_limit=512, max_queue=256)
    with run_in_background(app) as root:
        yield root, store, app


def test_two_thousand_hostile_requests_get_no_5xx_and_neighbours_are_answered_and_traced(server):
    root, store_path, _ = server
    rng = random.Random(11)
    plan = []
    for index in range(2200):
        if index % 20 == 0:
            plan.append(("neighbour", index))
        elif index % 97 == 0:
            plan.append(("hang up stream", index))
        elif index % 101 == 0:
            plan.append(("hang up body", index))
        else:
            plan.append(("malformed", index))

    local = threading.local()  # one client per thread: a client per request costs more CPU than the server

    def send(item):
        what, index = item
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=60)
        http = local.http
        if what == "neighbour":
            response = http.post(f"{root}/v1/chat/completions", json=neighbour(index))
            return what, index, response.status_code, response.json(), None
        if what == "hang up stream":
            return what, index, 200, None, hang_up_mid_stream(http, root, index)
        if what == "hang up body":
            hang_up_mid_body(root)
            return what, index, None, None, None
        kind, body, headers, allowed = malformed(random.Random(index), index)
        path = "/v1/feedback" if kind == "bad feedback" else "/v1/chat/completions"
        response = http.post(f"{root}{path}", content=body, headers=headers)
        return kind, allowed, response.status_code, response.json(), None

    started = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(send, plan))
    seconds = time.monotonic() - started
    print(f"\n{len(plan)} requests in {seconds:.1f} s")

    statuses = [status for _, _, status, _, _ in outcomes if status is not None]
    assert not [s for s in statuses if s >= 500], "a hostile request got a 5xx"
    wrong = [(kind, status, body) for kind, allowed, status, body, _ in outcomes
             if isinstance(allowed, set) and status not in allowed]
    assert not wrong, wrong[:5]
    for kind, allowed, status, body, _ in outcomes:
        if isinstance(allowed, set):
            assert body["error"]["message"] and body["error"]["code"] == status
    answered = [(index, body) for what, index, status, body, _ in outcomes if what == "neighbour"]
    assert len(answered) == 110 and all("choices" in body for _, body in answered)
    for index, body in answered:
        choice = body["choices"][0]
        assert choice["finish_reason"] in ("stop", "length")
        if index % 2:
            assert choice["finish_reason"] == "stop"
            jsonschema.validate(json.loads(choice["message"]["content"]), GOOD_SCHEMA)
        assert body["usage"]["completion_tokens"] <= neighbour(index)["max_tokens"]
    hung = [trace_id for what, _, _, _, trace_id in outcomes if what == "hang up stream"]
    deadline = time.monotonic() + 30
    with TraceStore(store_path) as store:
        for _, body in answered:
            trace = store.get(body["id"])
            assert trace.output == body["choices"][0]["message"]["content"]
        for trace_id in hung:  # a stream whose client left still leaves its trace, and stopped early
            while True:
                try:
                    trace = store.get(trace_id)
                    break
                except Exception:
                    assert time.monotonic() < deadline, f"no trace for the hung-up stream {trace_id}"
                    time.sleep(0.1)
            assert trace.finish_reason == "cancelled" and "disconnected" in trace.error
            assert trace.completion_tokens < 300
        assert store.count() == len(answered) + len(hung)
    assert seconds < 60


def test_a_full_queue_answers_429_with_retry_after(tiny_model_dir, tmp_path):
    app = create_app(tiny_model_dir, tmp_path / "t.db", model_name="tiny", max_batch=1, max_queue=2)
    with run_in_background(app) as root:
        def send(index):
            body = _chat(max_tokens=48, temperature=1.0, seed=index)
            response = httpx.post(f"{root}/v1/chat/completions", json=body, timeout=60)
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, range(12)))
    statuses = sorted(status for status, _ in results)
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
    assert all(retry == "1" for status, retry in results if status == 429)


def test_a_schema_that_does_not_compile_fails_only_its_own_request_in_a_batch(server):
    _, _, app = server
    from tuneloop.decoding.engine import GenerationRequest
    from tuneloop.decoding.grammar import ResponseFormatError
    from tuneloop.train.templates import prompt_ids

    engine, batcher = app.state.engine, app.state.batcher
    prompt = prompt_ids(engine.tokenizer, [{"role": "user", "content": "x"}])
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": "array", "items": {"type": "integer"},
                                                             "minItems": 3, "maxItems": 1}}}
    good = {"type": "json_schema", "json_schema": {"schema": GOOD_SCHEMA}}
    futures = [batcher.submit(GenerationRequest(prompt, 40, 1.0, seed=i, response_format=bad if i == 2 else good))
               for i in range(5)]
    for i, future in enumerate(futures):
        if i == 2:
            with pytest.raises(ResponseFormatError, match="cannot be compiled"):
                future.result(timeout=60)
        else:
            jsonschema.validate(json.loads(future.result(timeout=60).text), GOOD_SCHEMA)


def test_the_grammar_cache_is_bounded_and_keeps_the_recently_used(server, monkeypatch):
    _, _, app = server
    grammars = app.state.engine.grammars
    monkeypatch.setattr(grammars, "cache_size", 4)
    formats = [_schema_format({"type": "object", "properties": {f"k{i}": {"type": "integer"}}, "required": [f"k{i}"]})
               for i in range(10)]
    first = grammars.compile(formats[0])
    for response_format in formats[1:]:
        grammars.compile(response_format)
        assert grammars.compile(formats[0]) is first  # used again: stays
        assert grammars.cached <= 4
    assert grammars.cached == 4
    assert grammars.compiler.get_cache_size_bytes() == 0  # xgrammar keeps no second, unbounded copy


def test_max_tokens_too_small_for_any_complete_answer_is_refused_up_front(server):
    root, _, _ = server
    response = httpx.post(f"{root}/v1/chat/completions", json=_chat(max_tokens=3, response_format=_schema_format(GOOD_SCHEMA)))
    assert response.status_code == 400 and "max_tokens 3 cannot hold a complete answer" in response.json()["error"]["message"]


def test_unsupported_fields_are_named_in_a_400(server):
    root, _, _ = server
    for field, name in (({"tools": [{"type": "function"}]}, "tools"), ({"logprobs": True}, "logprobs"),
                        ({"n": 2}, "n=1"), ({"colour": "red"}, "colour")):
        response = httpx.post(f"{root}/v1/chat/completions", json=_chat(**field))
        assert response.status_code == 400 and name in response.json()["error"]["message"]
    neutral = httpx.post(f"{root}/v1/chat/completions", json=_chat(logprobs=False, n=1, stream_options=None))
    assert neutral.status_code == 200


def test_docs_and_api_need_the_key_and_odd_authorization_headers_get_401(tiny_model_dir, tmp_path):
    app = create_app(tiny_model_dir, tmp_path / "t.db", model_name="tiny", api_key="s3cret")
    with run_in_background(app) as root:
        for path in ("/docs", "/openapi.json", "/v1/models", "/redoc"):
            assert httpx.get(f"{root}{path}").status_code == 401
        for header in ("Bearer s3cre", "Bearer s3cretX", "s3cret", "Bearer " + "x" * 5000, "Bearer s3crét"):
            assert httpx.get(f"{root}/v1/models", headers={"authorization": header.encode()}).status_code == 401
        assert httpx.get(f"{root}/docs", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{root}/health").status_code == 200


def test_serving_beyond_loopback_without_a_key_is_refused_unless_insecure(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    monkeypatch.chdir(tmp_path)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        result = CliRunner().invoke(app, ["serve", "--host", host, "--model", str(tmp_path / "no-model")])
        assert result.exit_code != 0 and "--insecure" in result.output and "API key" in result.output
    # with --insecure it goes on to load the model (which does not exist here): a different error
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--insecure", "--model", str(tmp_path / "no-model")])
    assert result.exit_code != 0 and "--insecure" not in result.output


def test_an_answer_that_fails_its_schema_is_an_error_never_a_success(server, monkeypatch):
    """Should the grammar ever let through what the schema forbids, validation after generation catches it."""
    root, store_path, app = server
    grammars = app.state.engine.grammars
    loose = grammars.compile({"type": "json_object"})
    monkeypatch.setattr(grammars, "compile", lambda response_format: loose)  # a grammar wider than the schema
    schema = {"type": "object", "properties": {"code": {"type": "string", "const": "a-value-no-random-model-writes"}},
              "required": ["code"]}
    for seed in range(3):
        response = httpx.post(f"{root}/v1/chat/completions", json=_chat(
            max_tokens=32, temperature=1.0, seed=seed, response_format=_schema_format(schema)))
        body = response.json()
        assert response.status_code == 500 and body["error"]["type"] == "schema_validation_error"
        assert body["choices"][0]["finish_reason"] == "schema_invalid"
        with TraceStore(store_path) as store:
            trace = store.get(body["id"])
        assert trace.finish_reason == "schema_invalid" and trace.schema_valid is False and trace.error
    with httpx.stream("POST", f"{root}/v1/chat/completions", json=_chat(
            max_tokens=32, temperature=1.0, seed=9, stream=True, response_format=_schema_format(schema))) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert any('"finish_reason": "schema_invalid"' in e for e in events)
    assert any("schema_validation_error" in e for e in events)
