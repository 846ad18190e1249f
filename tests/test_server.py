"""The embedded server, driven by the official openai client over loopback with the tiny random model.

A random model has no idea what JSON is, so every valid answer here is the constraint's doing.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

from tuneloop.serve.server import serve_in_background
from tuneloop.traces.store import TraceStore

FIELDS = ["order_id", "intent", "urgency", "amount", "name", "email", "city", "sku", "qty", "tags", "note", "ok"]
ENUMS = [["refund", "delivery", "other"], ["low", "medium", "high"], ["yes", "no"], ["cn", "us", "de", "fr"]]


def _leaf(rng: random.Random) -> dict:
    kind = rng.choice(["string", "integer", "number", "boolean", "enum", "nullable"])
    if kind == "enum":
        return {"type": "string", "enum": rng.choice(ENUMS)}
    if kind == "nullable":
        return {"type": ["string", "null"]}
    return {"type": kind}


def _object(rng: random.Random, depth: int) -> dict:
    names = rng.sample(FIELDS, rng.randint(1, 3 if depth else 4))
    properties = {}
    for name in names:
        roll = rng.random()
        if depth < 2 and roll < 0.2:
            properties[name] = _object(rng, depth + 1)
        elif depth < 2 and roll < 0.4:
            items = _object(rng, depth + 1) if rng.random() < 0.5 else _leaf(rng)
            properties[name] = {"type": "array", "items": items, "minItems": rng.choice([0, 1])}
        else:
            properties[name] = _leaf(rng)
    required = [n for n in names if rng.random() < 0.7]
    return {"type": "object", "properties": properties, "required": required}


def realistic_schemas(count: int, seed: int = 7) -> list[dict]:
    """Nested objects, arrays (of objects and scalars), enums, nullable fields and required lists."""
    rng = random.Random(seed)
    return [_object(rng, 0) for _ in range(count)]


def json_schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("serve") / "traces.db"
    with serve_in_background(tiny_model_dir, store, model_name="tiny") as base_url:
        yield base_url, store


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_json_schema_answers_always_parse_and_validate_over_50_schemas(client, server):
    schemas = realistic_schemas(50)
    assert any("enum" in json.dumps(s) for s in schemas) and any('"array"' in json.dumps(s) for s in schemas)

    def ask(index_schema):
        index, schema = index_schema
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Extract the fields of ticket {index}."}],
            response_format=json_schema_format(schema), max_tokens=160, temperature=1.0, seed=index)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, enumerate(schemas)))
    for schema, answer in zip(schemas, answers):
        content = answer.choices[0].message.content
        jsonschema.validate(json.loads(content), schema)
        assert answer.choices[0].finish_reason == "stop"
    with TraceStore(server[1]) as store:
        traces = [store.get(a.id) for a in answers]
    assert all(t.json_valid and t.schema_valid for t in traces)
    assert all(t.completion_tokens > 0 and t.latency_ms > 0 and t.model == "tiny" for t in traces)


def test_json_object_mode_returns_a_json_object(client):
    answer = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], response_format={"type": "json_object"},
        max_tokens=40, temperature=1.0, seed=3)
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_unconstrained_random_model_output_is_traced_as_not_json(client, server):
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=12, temperature=1.0, seed=1)
    with TraceStore(server[1]) as store:
        trace = store.get(answer.id)
    assert trace.output == answer.choices[0].message.content
    assert trace.schema_valid is None and trace.finish_reason == answer.choices[0].finish_reason
    assert trace.messages == [{"role": "user", "content": "hi"}]


def test_same_seed_gives_the_same_answer_and_greedy_is_deterministic(client):
    def ask(**kwargs):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "seeded"}],
                                              max_tokens=10, **kwargs).choices[0].message.content
    assert ask(temperature=1.0, seed=11) == ask(temperature=1.0, seed=11)
    assert ask(temperature=0) == ask(temperature=0)


def test_max_tokens_bounds_the_answer(client):
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}],
                                            max_tokens=5, temperature=1.0, seed=2)
    assert answer.usage.completion_tokens <= 5


def test_stop_string_cuts_the_answer(client):
    free = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "stop test"}],
                                          max_tokens=20, temperature=0).choices[0].message.content
    stop = free[3:5]
    assert len(stop) == 2
    cut = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "stop test"}],
                                         max_tokens=20, temperature=0, stop=[stop])
    assert stop not in cut.choices[0].message.content
    assert free.startswith(cut.choices[0].message.content)
    assert cut.choices[0].finish_reason == "stop"


def test_streaming_yields_the_answer_in_pieces_and_leaves_a_trace(client, server):
    schema = realistic_schemas(1, seed=99)[0]
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "stream it"}], stream=True, max_tokens=120,
        response_format=json_schema_format(schema), temperature=1.0, seed=5)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    jsonschema.validate(json.loads(text), schema)
    assert chunks[-1].choices[0].finish_reason == "stop"
    with TraceStore(server[1]) as store:
        trace = store.get(chunks[0].id)
    assert trace.output == text and trace.schema_valid


def test_feedback_attaches_to_a_trace_and_unknown_ids_are_rejected(client, server):
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "rate me"}],
                                            max_tokens=4)
    root = server[0]
    ok = httpx.post(f"{root}/feedback", json={"trace_id": answer.id, "score": 0.0, "comment": "wrong intent"})
    assert ok.status_code == 200
    missing = httpx.post(f"{root}/feedback", json={"trace_id": "tr-nope", "score": 1})
    assert missing.status_code == 404
    with TraceStore(server[1]) as store:
        assert [(f["score"], f["comment"]) for f in store.feedback(answer.id)] == [(0.0, "wrong intent")]


def test_bad_requests_are_400_with_a_reason(client):
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "xml"})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=10**6)


def test_api_key_is_required_when_configured(tiny_model_dir, tmp_path):
    with serve_in_background(tiny_model_dir, tmp_path / "t.db", model_name="tiny", api_key="s3cret") as base_url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        models = openai.OpenAI(base_url=base_url, api_key="s3cret", max_retries=0).models.list()
        assert models.data[0].id == "tiny"
    assert base_url.startswith("http://127.0.0.1:")
