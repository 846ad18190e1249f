"""LLM variants through an OpenAI-compatible server on loopback: cache, retries, concurrency, the CLI path."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from tuneloop.cli.main import app as cli
from tuneloop.data.create.augment import augment_samples
from tuneloop.data.create.llm import parse_rewrites, request_rewrites
from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.llm_client import LLMClient, LLMError, request_key
from tuneloop.records import Sample


class FakeEndpoint:
    """A chat-completions server that rewrites the message it is given; counts what it is asked."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_first: dict[str, int] = {}  # model -> how many 503s to answer first
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)

    async def complete(self, request: Request):
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            if self.fail_first.get(body["model"], 0) > 0:
                self.fail_first[body["model"]] -= 1
                # a short Retry-After keeps the openai client's own backoff fast in tests
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503, headers={"retry-after-ms": "5"})
        if body["model"] == "slow":  # held open a moment so concurrent requests overlap
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await asyncio.sleep(0.1)
            with self._lock:
                self.in_flight -= 1
        message = body["messages"][-1]["content"].split("Message:\n", 1)[-1]
        rewrites = [f"Hello! {message}", f"{message} Thanks a lot.",
                    re.sub(r"order \w+", "my order", message)]  # the third drops the order id: must be rejected
        if body["model"] == "prose-model":
            content = "Sure, here are some rewrites."
        else:
            content = "```json\n" + json.dumps(rewrites) + "\n```"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture(scope="module")
def endpoint():
    import uvicorn

    fake = FakeEndpoint()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the loopback endpoint did not start"
    fake.base_url = f"http://127.0.0.1:{port}/v1"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


def seeds() -> list[Sample]:
    answer = {"intent": "cancel_order", "product": "desk lamp", "order_id": "P431535", "urgency": "medium", "refund_amount": None}
    return [
        Sample(id="a", input="Please cancel my order P431535 for the desk lamp.", output=answer),
        Sample(id="b", input="I changed my mind about the desk lamp, cancel order P431535.", output=answer),
    ]


def client_for(endpoint, tmp_path, model="rewriter", **kwargs) -> LLMClient:
    return LLMClient(base_url=endpoint.base_url, model=model, api_key="test", cache_path=tmp_path / "cache.sqlite",
                     **kwargs)


def test_llm_variants_keep_the_contract_and_the_cache_prevents_a_second_call(endpoint, tmp_path):
    rows = seeds()
    keep = [["P431535", "desk lamp"]] * len(rows)
    before = len(endpoint.requests)
    first = request_rewrites(client_for(endpoint, tmp_path), rows, keep, n=3, kinds=["paraphrase"])
    assert len(endpoint.requests) - before == 2
    assert '"P431535"' in endpoint.requests[-1]["messages"][-1]["content"]  # the facts to keep are in the prompt

    again_client = client_for(endpoint, tmp_path)
    again = request_rewrites(again_client, rows, keep, n=3, kinds=["paraphrase"])
    assert len(endpoint.requests) - before == 2  # answered from the SQLite cache, not the server
    assert again_client.stats.cached == 2 and again_client.stats.called == 0
    assert [r.texts for r in again] == [r.texts for r in first]

    result = augment_samples(rows, per_seed=2, rewrites={r.seed_id: r for r in first})
    assert [v.lineage.augment_type for v in result.variants] == ["llm:paraphrase"] * 4
    dropped = [q for q in result.quarantined if "order_id" in q.reason]
    assert len(dropped) == 0  # two good rewrites per seed were enough; the third was never needed
    wide = augment_samples(rows, per_seed=3, rules=["tone"], rewrites={r.seed_id: r for r in first})
    assert sum("$.order_id 'P431535' is stated by the seed input" in q.reason for q in wide.quarantined) == 2


def test_a_changed_request_is_not_served_from_the_cache():
    messages = [{"role": "user", "content": "hi"}]
    assert request_key("http://h/v1", "m", messages, {"temperature": 0.8}) == request_key("http://h/v1/", "m", messages, {"temperature": 0.8})
    assert request_key("http://h/v1", "m", messages, {"temperature": 0.8}) != request_key("http://h/v1", "m", messages, {"temperature": 0.7})
    assert request_key("http://h/v1", "m", messages, {}) != request_key("http://h/v1", "m2", messages, {})


def test_server_errors_are_retried_with_backoff(endpoint, tmp_path):
    endpoint.fail_first["flaky"] = 2
    before = len(endpoint.requests)
    client = client_for(endpoint, tmp_path, model="flaky")
    text = client.complete([{"role": "user", "content": "Message:\nPlease cancel order P1."}])
    assert parse_rewrites(text)[0] == "Hello! Please cancel order P1."
    assert len(endpoint.requests) - before == 3 and client.stats.retries == 2


def test_a_request_that_keeps_failing_names_the_endpoint(endpoint, tmp_path):
    endpoint.fail_first["down"] = 10
    client = client_for(endpoint, tmp_path, model="down", max_retries=1)
    before = len(endpoint.requests)
    with pytest.raises(LLMError, match=r"127\.0\.0\.1.*'down'.*still 503 after 1 retries"):
        client.complete([{"role": "user", "content": "x"}])
    assert len(endpoint.requests) - before == 2  # the openai client's one retry, then the error


def test_concurrency_is_bounded_and_results_keep_their_order(endpoint, tmp_path):
    client = client_for(endpoint, tmp_path, model="slow", concurrency=3)
    requests = [[{"role": "user", "content": f"Message:\nrow {i}"}] for i in range(9)]
    answers = client.complete_many(requests)
    assert [parse_rewrites(a)[0] for a in answers] == [f"Hello! row {i}" for i in range(9)]
    assert 2 <= endpoint.max_in_flight <= 3  # requests overlap, never more than the bound


def test_an_answer_that_is_not_a_list_becomes_a_reason(endpoint, tmp_path):
    result = request_rewrites(client_for(endpoint, tmp_path, model="prose-model"), seeds()[:1], [[]], n=2, kinds=["scenario"])
    assert result[0].texts == []
    assert result[0].errors == ["llm:scenario: the LLM answer is not a JSON array of strings: 'Sure, here are some rewrites.'"]
    with pytest.raises(ValueError):
        parse_rewrites('{"a": 1}')


def test_missing_endpoint_settings_say_which_variables_to_set(monkeypatch):
    monkeypatch.delenv("TUNELOOP_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_LLM_MODEL", raising=False)
    with pytest.raises(LLMError, match="TUNELOOP_LLM_BASE_URL"):
        LLMClient(cache_path=None)


def test_augment_command_with_llm_reads_the_endpoint_from_the_environment(endpoint, tmp_path, monkeypatch):
    write_samples(tmp_path / "seeds.jsonl", seeds())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELOOP_LLM_BASE_URL", endpoint.base_url)
    monkeypatch.setenv("TUNELOOP_LLM_MODEL", "cli-model")
    before = len(endpoint.requests)
    args = ["data", "augment", "seeds.jsonl", "--out", "v.jsonl", "--per-seed", "3", "--llm", "--rules", "tone"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert len(endpoint.requests) - before == 4  # 2 seeds x (paraphrase, scenario)
    second = CliRunner().invoke(cli, [*args, "--force"])  # the same --out again: replacing it is asked for
    assert second.exit_code == 0 and "0 requests sent, 4 answered from the cache" in second.output
    assert len(endpoint.requests) - before == 4
    variants = load_samples(tmp_path / "v.jsonl")
    # per seed: two good paraphrases, one that lost the order id (quarantined), the scenario answers repeat them,
    # so an offline rule makes the third variant
    assert sorted(v.lineage.augment_type for v in variants) == ["llm:paraphrase"] * 4 + ["tone"] * 2
    quarantined = (tmp_path / "v.quarantine.jsonl").read_text().splitlines()
    assert len(quarantined) == 2 and all("order_id" in line for line in quarantined)
