"""The endpoint backend and the LLM judge, against OpenAI-compatible apps on loopback, through the official client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneloop.eval.backends import EndpointBackend, json_schema_format
from tuneloop.eval.judge import JudgeError, judge_pairs, judge_results, parse_verdict, review_queue
from tuneloop.records import EvalResult, Sample
from tuneloop.serve.server import run_in_background


def completion(content: str, finish_reason: str = "stop") -> dict:
    return {"id": "c1", "object": "chat.completion", "created": int(time.time()), "model": "m",
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """An app on 127.0.0.1 and a free port (uvicorn in a thread); yields its /v1 base URL."""
    with run_in_background(app) as root:
        yield f"{root}/v1"


def echo_app(state: dict) -> FastAPI:
    """Answers {"echo": <user text>}; fails the first request of "flaky" prompts with 503; counts concurrency."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["requests"].append(body)
        user = body["messages"][-1]["content"]
        if user.startswith("flaky") and state["failures"].get(user, 0) < 1:
            state["failures"][user] = state["failures"].get(user, 0) + 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if user == "bad request":
            return JSONResponse({"error": {"message": "bad"}}, status_code=400)
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        await asyncio.sleep(0.05)
        state["in_flight"] -= 1
        return completion(json.dumps({"echo": user}), "length" if user == "long" else "stop")

    return app


@pytest.fixture()
def echo_server():
    state = {"requests": [], "failures": {}, "in_flight": 0, "peak": 0}
    with serve(echo_app(state)) as url:
        yield url, state


def test_endpoint_answers_in_order_with_concurrency_tokens_and_finish_reason(echo_server):
    url, state = echo_server
    backend = EndpointBackend(url, "m", concurrency=4)
    prompts = [f"p{i}" for i in range(12)] + ["long"]
    generations = backend.generate_chats([[{"role": "user", "content": p}] for p in prompts])
    assert [json.loads(g.text)["echo"] for g in generations] == prompts
    assert generations[-1].finish_reason == "length" and generations[0].finish_reason == "stop"
    assert (generations[0].prompt_tokens, generations[0].completion_tokens) == (11, 7)
    assert all(g.latency_ms > 0 for g in generations)
    assert 2 <= state["peak"] <= 4  # several in flight, never more than asked


def test_endpoint_retries_transient_errors_with_backoff_but_not_bad_requests(echo_server):
    url, state = echo_server
    backend = EndpointBackend(url, "m", concurrency=2, max_retries=3)
    flaky, bad = backend.generate_chats([[{"role": "user", "content": "flaky one"}], [{"role": "user", "content": "bad request"}]])
    assert json.loads(flaky.text) == {"echo": "flaky one"} and flaky.error is None
    assert state["failures"]["flaky one"] == 1
    assert bad.error and "400" in bad.error and bad.text == ""
    assert sum(r["messages"][-1]["content"] == "bad request" for r in state["requests"]) == 1


def test_endpoint_sends_response_format_json_schema_when_asked(echo_server):
    url, state = echo_server
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    EndpointBackend(url, "m").chat([{"role": "user", "content": "x"}], json_schema_format(schema))
    sent = state["requests"][-1]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    assert "guided_json" not in sent and sent["temperature"] == 0


# -- judge ---------------------------------------------------------------------------------------------------------

def judge_app(first_position_bias: bool) -> FastAPI:
    """A judge: rubric 5s for answers containing "refund", 1s otherwise; pairwise prefers the answer with "refund"
    (or, when biased, always answer 1)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = body["messages"][-1]["content"]
        if "Answer 1:" in text:
            one = text.split("Answer 1:\n", 1)[1].split("\n\nAnswer 2:", 1)[0]
            winner = "1" if first_position_bias or "refund" in one else "2"
            return completion(json.dumps({"winner": winner, "reason": "r"}))
        answer = text.split("Answer to grade:\n", 1)[1].split("\n\nCriteria:", 1)[0]
        score = 5 if "refund" in answer else 1
        if "garbled" in answer:
            return completion("no verdict today")
        verdict = {"scores": {c: score for c in ("correctness", "completeness", "format")},
                   "reasons": {"correctness": "checked"}, "verdict": "pass" if score == 5 else "fail"}
        return completion(json.dumps(verdict))

    return app


def result(sample: Sample, raw: str, ok: bool) -> EvalResult:
    return EvalResult(sample_id=sample.id, model="m", prompt_hash="h", raw=raw, mode="unconstrained",
                      scores={"ok": ok}, sample=sample.model_dump(mode="json"))


def test_rubric_judge_scores_every_answer_and_disagreements_go_to_the_review_queue():
    samples = [Sample(id=f"s{i}", instruction="Extract", output='{"intent": "refund"}') for i in range(3)]
    boundary = Sample(id="b", instruction="Write a poem", output='{"refusal": "out of scope"}', expected="refuse",
                      sample_type="boundary")
    results = [result(samples[0], '{"intent": "refund"}', ok=True),          # both agree: pass
               result(samples[1], '{"intent": "refund "}', ok=False),        # judge passes, metrics fail
               result(samples[2], '{"intent": "other"}', ok=True),           # judge fails, metrics pass
               result(boundary, '{"refusal": "no"}', ok=True)]               # boundary case (the judge fails it too)
    with serve(judge_app(first_position_bias=False)) as url:
        verdicts = judge_results(results, {"base_url": url, "model": "judge"}, schema=None)
    assert verdicts[("s0", "unconstrained")]["mean"] == 5.0
    assert results[2].scores["judge"]["verdict"] == "fail"
    queue = {row["sample_id"]: row["reasons"] for row in review_queue(results, verdicts)}
    assert queue == {"s1": ["judge passed, metrics failed"], "s2": ["judge failed, metrics passed"],
                     "b": ["boundary", "judge failed, metrics passed"]}


def test_a_judge_reply_without_the_verdict_form_is_an_error_not_a_guess():
    sample = Sample(id="g", instruction="Extract", output="{}")
    results = [result(sample, "garbled", ok=False)]
    with serve(judge_app(first_position_bias=False)) as url:
        verdicts = judge_results(results, {"base_url": url}, schema=None)
    assert "error" in verdicts[("g", "unconstrained")]
    with pytest.raises(JudgeError, match="1-5"):
        parse_verdict('{"scores": {"correctness": 9}, "verdict": "pass"}', ["correctness"])


def test_pairwise_judging_uses_both_orders_and_counts_disagreement_as_a_tie():
    sample = Sample(id="p", instruction="Extract", output='{"intent": "refund"}')
    items = [(sample, '{"intent": "other"}', '{"intent": "refund"}')]
    with serve(judge_app(first_position_bias=False)) as url:
        fair = judge_pairs(EndpointBackend(url, "judge"), items)
    assert fair[0]["winner"] == "candidate" and fair[0]["orders"] == ["candidate", "candidate"]
    with serve(judge_app(first_position_bias=True)) as url:
        biased = judge_pairs(EndpointBackend(url, "judge"), items)
    assert biased[0]["winner"] == "tie" and biased[0]["orders"] == ["baseline", "candidate"]


def test_run_eval_through_the_embedded_server_constrained_and_not(tiny_model_dir, tmp_path):
    from tuneloop.data.io.formats import write_samples
    from tuneloop.eval.runner import run_eval
    from tuneloop.project import EvalConfig
    from tuneloop.serve.server import serve_in_background

    schema = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "other"]}},
              "required": ["intent"], "additionalProperties": False}
    samples = [Sample(id=f"e{i}", instruction="Extract the intent as JSON.", input="refund " * (i + 1),
                      output={"intent": "refund"}) for i in range(3)]
    test_file = write_samples(tmp_path / "test.jsonl", samples)
    settings = EvalConfig(max_new_tokens=24, constrained=True, concurrency=3)
    with serve_in_background(tiny_model_dir, tmp_path / "traces.db") as url:
        summary = run_eval("served", test_file, tmp_path / "ev", schema, settings,
                           endpoint={"base_url": url, "model": "tiny"}, progress=False)
    constrained = summary["modes"]["constrained"]
    assert summary["modes"]["unconstrained"]["n"] == constrained["n"] == 3 and constrained["errors"] == 0
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    finished = [r for r in rows if r["mode"] == "constrained" and r["finish_reason"] == "stop"]
    assert finished and all(r["scores"]["schema_valid"] for r in finished)  # the server held the answer to the schema
    assert all(r["completion_tokens"] > 0 and r["model"] == "tiny" for r in rows)
