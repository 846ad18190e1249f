"""Errors are not answers: `eval run --endpoint`, the judge and `data augment --llm` against a scripted server on
loopback, end to end through the real openai client (its own retries, its own error classes)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from tuneloop.cli.main import app as cli
from tuneloop.data.io.formats import write_samples
from tuneloop.eval.gate import gate_eval
from tuneloop.eval.runner import run_eval
from tuneloop.llm_client import EndpointConfigError
from tuneloop.project import EvalConfig, EvalGate
from tuneloop.records import Sample
from tuneloop.serve.server import run_in_background

SCHEMA = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
FAST_RETRY = {"retry-after-ms": "5"}  # the openai client honours it, so its backoff stays short in tests


def completion(content: str) -> dict:
    return {"id": "c", "object": "chat.completion", "created": int(time.time()), "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}


class Script:
    """A chat server whose answer depends on the sample input in the prompt.

    "429 once" / "500 once": that status on the first attempt, then an answer; "slow once": the first attempt
    outlasts the client's timeout; "always 500" / "bad 400": that status every time; `state["all"]` = a status
    every request gets (401, 404, ...). `state["after"]` = n: that status only after n answers.
    """

    def __init__(self):
        self.seen: Counter = Counter()
        self.answered = 0
        self.all: int | None = None
        self.after: int | None = None
        self.healed = False  # "always 500" answers once healed
        self.judge_down: str | None = None  # the judge fails (503) on answers to prompts with this text
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request):
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.seen[text] += 1
        first = self.seen[text] == 1
        if self.all and (self.after is None or self.answered >= self.after):
            messages = {401: "Invalid API key", 403: "forbidden", 404: "model 'm' not found"}
            return JSONResponse({"error": {"message": messages.get(self.all, "no")}}, status_code=self.all)
        if "429 once" in text and first:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers=FAST_RETRY)
        if "500 once" in text and first:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500, headers=FAST_RETRY)
        if "always 500" in text and not self.healed:
            return JSONResponse({"error": {"message": "boom"}}, status_code=500, headers=FAST_RETRY)
        if "bad 400" in text:
            return JSONResponse({"error": {"message": "context length exceeded"}}, status_code=400)
        if "slow once" in text and first:
            await asyncio.sleep(3)
        if "Answer to grade" in text and self.judge_down and self.judge_down in text:
            return JSONResponse({"error": {"message": "judge down"}}, status_code=503, headers=FAST_RETRY)
        if "Answer to grade" in text:  # the judge
            verdict = {"scores": {"correctness": 5, "completeness": 5, "format": 5}, "reasons": {}, "verdict": "pass"}
            return completion(json.dumps(verdict))
        self.answered += 1
        return completion('{"intent": "refund"}')


@pytest.fixture()
def script():
    fake = Script()
    with run_in_background(fake.app) as root:
        fake.url = f"{root}/v1"
        yield fake


def write_test_set(tmp_path, inputs: list[str]):
    samples = [Sample(id=f"s{i}", instruction="Extract the intent as JSON.", input=text, output={"intent": "refund"})
               for i, text in enumerate(inputs)]
    return write_samples(tmp_path / "test.jsonl", samples)


def evaluate(script, tmp_path, inputs, out="ev", **spec):
    target = {"base_url": script.url, "model": "m", "max_retries": 2, "timeout_s": 1.0, "concurrency": 2, **spec}
    return run_eval("served", write_test_set(tmp_path, inputs), tmp_path / out, SCHEMA, EvalConfig(), endpoint=target,
                    progress=False)


@pytest.mark.parametrize("status, words", [
    (401, "API key"), (403, "API key"), (404, "model name"), (400, "first request"),
])
def test_a_configuration_error_stops_the_run_after_one_request(script, tmp_path, status, words):
    script.all = status
    with pytest.raises(EndpointConfigError, match=words):
        evaluate(script, tmp_path, [f"ticket {i}" for i in range(6)])
    assert sum(script.seen.values()) == 1  # the first request went alone; the other five were never sent
    assert not (tmp_path / "ev" / "results.jsonl").exists()  # nothing scored as a model failure


def test_nothing_listening_is_a_configuration_error_naming_the_address(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    target = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 1}
    with pytest.raises(EndpointConfigError, match=f"cannot connect to endpoint http://127.0.0.1:{port}/v1"):
        run_eval("served", write_test_set(tmp_path, ["a", "b"]), tmp_path / "ev", SCHEMA, EvalConfig(), endpoint=target,
                 progress=False)


def test_transient_errors_are_retried_by_the_client_and_the_answers_count(script, tmp_path):
    summary = evaluate(script, tmp_path, ["plain", "429 once", "500 once", "slow once"])
    mode = summary["modes"]["unconstrained"]
    assert mode["errors"] == 0 and mode["n"] == 4 and mode["ok"] == 1.0
    for text in ("429 once", "500 once", "slow once"):
        assert sum(n for prompt, n in script.seen.items() if text in prompt) == 2  # one retry each, by openai itself


def test_a_request_that_still_fails_is_an_error_not_a_wrong_answer_and_fails_the_gate(script, tmp_path):
    summary = evaluate(script, tmp_path, ["plain", "always 500", "bad 400", "also plain"])
    mode = summary["modes"]["unconstrained"]
    assert mode["errors"] == 2 and mode["n"] == 2 and mode["ok"] == 1.0  # rates over the answers only
    assert sum(n for prompt, n in script.seen.items() if "always 500" in prompt) == 3  # max_retries=2
    assert sum(n for prompt, n in script.seen.items() if "bad 400" in prompt) == 1  # a rejected request is not retried
    rows = {r["sample_id"]: r for r in map(json.loads, (tmp_path / "ev" / "results.jsonl").read_text().splitlines())}
    assert "500" in rows["s1"]["error"] and rows["s1"]["scores"] == {} and rows["s1"]["raw"] == ""
    assert "context length exceeded" in rows["s2"]["error"]
    errors = [json.loads(line) for line in (tmp_path / "ev" / "errors.jsonl").read_text().splitlines()]
    assert [e["sample_id"] for e in errors] == ["s1", "s2"]
    report = (tmp_path / "ev" / "report.html").read_text()
    assert "Errors (2)" in report and "Bad cases (0)" in report
    decision = gate_eval(tmp_path / "ev", EvalGate(schema_valid=0.5))
    assert not decision.passed and decision.reasons[0].startswith("run has 2 failed requests")
    assert gate_eval(tmp_path / "ev", EvalGate(schema_valid=0.5, max_errors=2)).passed


def test_a_key_revoked_mid_run_stops_it(script, tmp_path):
    script.all, script.after = 401, 2
    with pytest.raises(EndpointConfigError, match="401"):
        evaluate(script, tmp_path, [f"ticket {i}" for i in range(12)], concurrency=1)
    assert sum(script.seen.values()) == 3  # two answers, the refused third, nothing after


def test_a_rerun_resumes_and_retries_only_what_failed(script, tmp_path):
    inputs = ["plain", "always 500", "also plain", "third"]
    assert evaluate(script, tmp_path, inputs)["modes"]["unconstrained"]["errors"] == 1
    script.seen.clear()
    script.healed = True
    summary = evaluate(script, tmp_path, inputs)
    assert summary["resumed"] == 3 and summary["modes"]["unconstrained"]["errors"] == 0
    assert sum(script.seen.values()) == 1  # only the sample that failed was asked again
    assert summary["modes"]["unconstrained"]["n"] == 4 and summary["modes"]["unconstrained"]["ok"] == 1.0


def test_eval_cli_shows_errors_in_its_table_and_exits_nonzero(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_test_set(tmp_path, ["plain", "always 500"])
    result = CliRunner().invoke(cli, ["eval", "run", "--endpoint", script.url, "--endpoint-model", "m",
                                      "--test", "test.jsonl", "--out", "ev"])
    assert result.exit_code == 1, result.output
    row = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("errors"))
    assert "1" in row
    assert "1 requests failed after retries" in result.output and "errors.jsonl" in result.output
    assert "max_tokens" in result.output and "ETA" in result.output  # the derived budget, explained; the bar


def test_eval_cli_reports_a_refused_key_in_one_line(script, tmp_path, monkeypatch):
    script.all = 401
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVAL_KEY", "wrong")
    write_test_set(tmp_path, ["plain", "plain 2"])
    result = CliRunner().invoke(cli, ["eval", "run", "--endpoint", script.url, "--api-key-env", "EVAL_KEY",
                                      "--test", "test.jsonl", "--out", "ev", "--quiet"])
    assert result.exit_code == 2 and "Invalid API key" in result.output and "--api-key-env" in result.output
    assert "Traceback" not in result.output


def test_a_failed_judge_call_is_a_judge_error_not_a_score(script, tmp_path):
    inputs = ["plain", "also plain"]
    settings = EvalConfig(judge={"base_url": script.url, "model": "judge"})
    target = {"base_url": script.url, "model": "m", "max_retries": 1}

    script.judge_down = "also plain"
    summary = run_eval("served", write_test_set(tmp_path, inputs), tmp_path / "ev", SCHEMA, settings, endpoint=target,
                       progress=False)
    mode = summary["modes"]["unconstrained"]
    assert mode["judge_errors"] == 1 and mode["judge_mean"] == 5.0  # the failed call is no 0 in the mean
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert "judge down" in rows[1]["scores"]["judge"]["error"] and "mean" not in rows[1]["scores"]["judge"]
    assert not gate_eval(tmp_path / "ev", EvalGate(schema_valid=None)).passed


def test_a_judge_with_a_refused_key_stops_the_run(script, tmp_path):
    settings = EvalConfig(judge={"base_url": script.url.replace("/v1", "/nowhere/v1"), "model": "judge"})
    target = {"base_url": script.url, "model": "m"}
    with pytest.raises(EndpointConfigError, match="404"):
        run_eval("served", write_test_set(tmp_path, ["plain"]), tmp_path / "ev", SCHEMA, settings, endpoint=target,
                 progress=False)


def test_augment_with_a_refused_key_stops_instead_of_quarantining_every_seed(script, tmp_path, monkeypatch):
    script.all = 401
    write_samples(tmp_path / "seeds.jsonl", [Sample(id=f"a{i}", input=f"Cancel order P{i}.", output={"order": f"P{i}"})
                                             for i in range(4)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELOOP_LLM_BASE_URL", script.url)
    monkeypatch.setenv("TUNELOOP_LLM_MODEL", "m")
    result = CliRunner().invoke(cli, ["data", "augment", "seeds.jsonl", "--out", "v.jsonl", "--llm"])
    assert result.exit_code == 2 and "Invalid API key" in result.output, result.output
    assert sum(script.seen.values()) == 1 and not (tmp_path / "v.quarantine.jsonl").exists()


def test_a_killed_endpoint_eval_resumes_where_it_stopped(tmp_path):
    """SIGKILL `tuneloop eval run` mid-run; the same command again asks only for what the journal lacks."""
    import os
    import signal
    import subprocess
    import sys

    seen: Counter = Counter()
    gate = asyncio.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        async with gate:  # one at a time, slowly: the kill lands mid-run
            seen[body["messages"][-1]["content"]] += 1
            await asyncio.sleep(0.15)
        return completion('{"intent": "refund"}')

    inputs = [f"ticket {i}" for i in range(16)]
    write_test_set(tmp_path, inputs)
    args = ["eval", "run", "--endpoint", "URL", "--endpoint-model", "m", "--test", "test.jsonl", "--out", "ev", "--quiet"]
    journal = tmp_path / "ev" / "answers.jsonl"
    with run_in_background(app) as root:
        args[3] = f"{root}/v1"
        child = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", *args], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 4):
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kept = len(journal.read_text().splitlines())
        assert 4 <= kept < 16 and not (tmp_path / "ev" / "results.jsonl").exists()
        settled = -1
        while settled != sum(seen.values()):  # the server finishes what the dead client had already sent
            settled = sum(seen.values())
            time.sleep(0.5)
        seen.clear()
        os.chdir(tmp_path)
        try:
            result = CliRunner().invoke(cli, args)
        finally:
            os.chdir("/")
    assert result.exit_code == 0, result.output
    assert sum(seen.values()) == 16 - kept  # the finished answers were not asked for again
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["scores"]["ok"] for r in rows)


def test_augment_shows_progress_asks_a_derived_max_tokens_and_resumes_from_its_cache(script, tmp_path, monkeypatch):
    from tuneloop.data.create.llm import rewrite_budget
    from tuneloop.llm_client import LLMClient

    seeds = [Sample(id=f"a{i}", input=f"Cancel order P{i} please.", output={"order": f"P{i}"}) for i in range(4)]
    write_samples(tmp_path / "seeds.jsonl", seeds)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELOOP_LLM_BASE_URL", script.url)
    monkeypatch.setenv("TUNELOOP_LLM_MODEL", "m")
    bodies: list[dict] = []
    original_create = LLMClient.complete
    calls = {"n": 0}

    def killed_after_three(self, messages, **params):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        bodies.append(params)
        return original_create(self, messages, **params)

    monkeypatch.setattr(LLMClient, "complete", killed_after_three)
    args = ["data", "augment", "seeds.jsonl", "--out", "v.jsonl", "--llm", "--per-seed", "2", "--rules", "tone"]
    killed = CliRunner().invoke(cli, args)
    assert killed.exit_code != 0 and sum(script.seen.values()) == 3
    assert bodies[0]["max_tokens"] == rewrite_budget(seeds, 2)[0]
    monkeypatch.setattr(LLMClient, "complete", original_create)
    script.seen.clear()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sum(script.seen.values()) == 8 - 3  # 4 seeds x 2 kinds; three came from the cache
    assert "3 answered from the cache" in result.output
    assert f"max_tokens {rewrite_budget(seeds, 2)[0]}: n=2 rewrites" in result.output and "ETA" in result.output


def test_judge_verdicts_are_journaled_and_a_rerun_asks_only_for_missing_ones(script, tmp_path):
    settings = EvalConfig(judge={"base_url": script.url, "model": "judge"})
    target = {"base_url": script.url, "model": "m"}
    test_file = write_test_set(tmp_path, ["plain", "also plain", "third"])
    run_eval("served", test_file, tmp_path / "ev", SCHEMA, settings, endpoint=target, progress=False)
    assert len((tmp_path / "ev" / "judge.jsonl").read_text().splitlines()) == 3
    script.seen.clear()
    summary = run_eval("served", test_file, tmp_path / "ev", SCHEMA, settings, endpoint=target, progress=False)
    assert sum(script.seen.values()) == 0 and summary["resumed"] == 3  # neither answers nor verdicts asked again
    assert summary["modes"]["unconstrained"]["judge_mean"] == 5.0


def test_augment_stops_when_a_rewrite_request_still_fails_and_the_rerun_retries_only_it(script, tmp_path, monkeypatch):
    seeds = [Sample(id=f"a{i}", input=f"Cancel order P{i} please.", output={"order": f"P{i}"}) for i in range(3)]
    seeds[1] = seeds[1].model_copy(update={"input": "Cancel order P1 please, always 500."})
    write_samples(tmp_path / "seeds.jsonl", seeds)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELOOP_LLM_BASE_URL", script.url)
    monkeypatch.setenv("TUNELOOP_LLM_MODEL", "m")
    args = ["data", "augment", "seeds.jsonl", "--out", "v.jsonl", "--llm", "--per-seed", "2", "--rules", "tone"]
    failed = CliRunner().invoke(cli, args)
    assert failed.exit_code == 2 and "2 rewrite requests failed after retries" in failed.output, failed.output
    assert not (tmp_path / "v.jsonl").exists() and not (tmp_path / "v.quarantine.jsonl").exists()
    script.healed = True
    script.seen.clear()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert sum(script.seen.values()) == 2  # the seed's two kinds; the four answers that came are in the cache
