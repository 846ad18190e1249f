"""The canary router: sticky routing at the configured share, per-arm traces, and rollback of a bad canary."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tuneloop.serve.canary import CanaryConfig, arm_for, canary_status, create_router, sprt
from tuneloop.serve.server import run_in_background
from tuneloop.traces.store import TraceStore

SCHEMA = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
FORMAT = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}


def fake_backend(answer: str, name: str) -> FastAPI:
    """An OpenAI-compatible backend that always gives the same answer."""
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        return {"id": "x", "object": "chat.completion", "created": 0, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}

    return app


@pytest.fixture(scope="module")
def backends():
    good = fake_backend('{"intent": "refund"}', "good")
    bad = fake_backend("Sorry, but I can't help with that.", "bad")
    with run_in_background(good) as good_url, run_in_background(bad) as bad_url:
        yield f"{good_url}/v1", f"{bad_url}/v1"


def ask(client: openai.OpenAI, user: str):
    return client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "refund please"}], response_format=FORMAT, user=user)


def route(config: CanaryConfig, store_path, users: list[str]) -> tuple[list[str], dict]:
    """Send one request per user through a router; the arm each landed on, and the router's gate state."""
    with run_in_background(create_router(config, str(store_path))) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        arms = [ask(client, user).headers["x-arm"] for user in users]
        return arms, httpx.get(f"{root}/canary").json()


def test_routing_is_sticky_and_near_the_weight():
    users = [f"user-{i}" for i in range(4000)]
    share = sum(arm_for(u, 0.1) == "canary" for u in users) / len(users)
    assert 0.085 <= share <= 0.115
    assert all(arm_for(u, 0.1) == arm_for(u, 0.1) for u in users[:200])
    assert {arm_for(u, 0.0) for u in users} == {"stable"} and {arm_for(u, 1.0) for u in users} == {"canary"}


def test_router_share_within_tolerance_and_every_call_traced_with_its_arm(backends, tmp_path):
    good, _ = backends
    store_path = tmp_path / "traces.db"
    arms, state = route(CanaryConfig(stable_url=good, canary_url=good, weight=0.3), store_path,
                        [f"u{i}" for i in range(300)] + ["u7"] * 5)
    arms, repeat = arms[:300], set(arms[300:])
    assert 0.22 <= arms.count("canary") / len(arms) <= 0.38
    assert repeat == {arms[7]}
    with TraceStore(store_path) as store:
        assert store.count() == 305
        assert store.count(arm="canary") == arms.count("canary") + 5 * (arms[7] == "canary")
    assert state["decision"] in ("collecting", "promote") and state["arms"]["canary"]["schema_valid"] == 1.0


def test_a_bad_canary_is_rolled_back_and_traffic_returns_to_stable(backends, tmp_path):
    good, bad = backends
    store_path = tmp_path / "traces.db"
    arms, _ = route(CanaryConfig(stable_url=good, canary_url=bad, weight=0.3), store_path,
                    [f"u{i}" for i in range(200)])
    first_rollback = len(arms) - arms[::-1].index("canary")
    assert "canary" in arms and all(arm == "stable" for arm in arms[first_rollback:])
    assert first_rollback < 120
    status = canary_status(str(store_path))
    assert status["decision"] == "rollback" and status["decided_at"]
    assert status["arms"]["canary"]["refusal"] == 1.0 and status["arms"]["stable"]["failures"] == 0
    # a restarted router with the same pair keeps the rollback
    again = create_router(CanaryConfig(stable_url=good, canary_url=bad, weight=0.3), str(store_path))
    assert again.state.gate.rolled_back


def test_a_good_canary_is_promoted(backends, tmp_path):
    good, _ = backends
    _, state = route(CanaryConfig(stable_url=good, canary_url=good, weight=0.5), tmp_path / "t.db",
                     [f"u{i}" for i in range(150)])
    assert state["decision"] == "promote" and canary_status(str(tmp_path / "t.db"))["decision"] == "promote"


def test_an_unreachable_canary_counts_as_errors(backends, tmp_path):
    good, _ = backends
    router = create_router(CanaryConfig(stable_url=good, canary_url="http://127.0.0.1:9/v1", weight=1.0),
                           str(tmp_path / "t.db"))
    with run_in_background(router) as root:
        response = httpx.post(f"{root}/v1/chat/completions", json={"messages": [], "user": "a"})
    assert response.status_code == 502
    with TraceStore(tmp_path / "t.db") as store:
        trace = store.traces(arm="canary")[0]
    assert trace.error and json.dumps(trace.model_dump())


def test_sprt_needs_evidence_before_deciding():
    assert sprt(0, 5, 3, 3, 0.05, 0.2, 0.05, 20)["decision"] == "collecting"
    assert sprt(1, 100, 1, 30, 0.05, 0.2, 0.05, 20)["decision"] in ("collecting", "promote")


def test_canary_status_command_shows_both_arms_and_the_decision(backends, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    good, bad = backends
    route(CanaryConfig(stable_url=good, canary_url=bad, weight=0.5), tmp_path / "t.db", [f"u{i}" for i in range(80)])
    result = CliRunner().invoke(app, ["canary", "status", "--traces", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    assert "ROLLBACK" in result.output and "stable" in result.output and "canary" in result.output


def echo_auth_backend() -> FastAPI:
    """A backend that answers with the Authorization header it received (and refuses calls without one)."""
    app = FastAPI()

    @app.get("/v1/models")
    def models(request: Request):
        if not request.headers.get("authorization"):
            return JSONResponse({"error": {"message": "no key"}}, status_code=401)
        return {"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    def chat(request: Request):
        seen = request.headers.get("authorization") or ""
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "echo",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps({"intent": seen})},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    return app


def test_the_callers_authorization_reaches_url_backends_and_every_router_path_needs_the_key(tmp_path):
    with run_in_background(echo_auth_backend()) as echo:
        config = CanaryConfig(f"{echo}/v1", f"{echo}/v1", weight=0.5, api_key="router-key")
        with run_in_background(create_router(config, str(tmp_path / "t.db"))) as root:
            for path in ("/canary", "/docs", "/v1/models"):
                assert httpx.get(f"{root}{path}").status_code == 401
                assert httpx.get(f"{root}{path}", headers={"authorization": "Bearer nope"}).status_code == 401
            key = {"authorization": "Bearer router-key"}
            assert httpx.get(f"{root}/canary", headers=key).json()["decision"] == "collecting"
            assert httpx.get(f"{root}/v1/models", headers=key).status_code == 200
            for user in ("u1", "u2", "u3", "u4"):
                answer = httpx.post(f"{root}/v1/chat/completions", headers=key, json={
                    "model": "m", "user": user, "messages": [{"role": "user", "content": "x"}]}).json()
                assert json.loads(answer["choices"][0]["message"]["content"]) == {"intent": "Bearer router-key"}


def test_the_gate_counts_each_call_without_rescanning_the_store(backends, tmp_path, monkeypatch):
    scans = []
    original = TraceStore.iter_outcomes

    def counted(self, *args, **kwargs):
        scans.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TraceStore, "iter_outcomes", counted)
    good, bad = backends
    arms, state = route(CanaryConfig(good, bad, weight=0.5, min_samples=10), tmp_path / "t.db",
                        [f"user-{i}" for i in range(40)])
    assert len(scans) == 1  # once, when the gate starts
    assert state["arms"]["canary"]["requests"] == arms.count("canary")
    assert state["arms"]["stable"]["requests"] == arms.count("stable")
    with TraceStore(tmp_path / "t.db") as store:  # the running counts equal a full recount
        assert state["arms"] == {arm: {k: v for k, v in m.items()} for arm, m in _recount(store).items()}


def _recount(store):
    from tuneloop.serve.canary import arm_metrics

    return arm_metrics(store, since=0)


def test_malformed_calls_to_the_router_are_400_and_a_backend_without_a_completion_is_502(backends, tmp_path):
    weird = FastAPI()

    @weird.post("/v1/chat/completions")
    def chat():
        return {"nothing": "here"}

    good, _ = backends
    with run_in_background(weird) as weird_root:
        config = CanaryConfig(good, f"{weird_root}/v1", weight=1.0)
        with run_in_background(create_router(config, str(tmp_path / "t.db"))) as root:
            for body in (b"\xff\xfe", b"{broken", b"[1]", b"NaN"):
                for path in ("/v1/chat/completions", "/v1/feedback"):
                    assert httpx.post(f"{root}{path}", content=body).status_code == 400
            assert httpx.post(f"{root}/v1/feedback", json={"trace_id": 5}).status_code == 400
            answer = httpx.post(f"{root}/v1/chat/completions",
                                json={"model": "m", "user": "u", "messages": [{"role": "user", "content": "x"}]})
            assert answer.status_code == 502
    with TraceStore(tmp_path / "t.db") as store:
        (trace,) = store.traces()
        assert trace.arm == "canary" and "without a chat completion" in trace.error


def test_a_callers_schema_that_cannot_judge_is_a_failed_answer_not_a_router_crash(backends, tmp_path):
    good, _ = backends
    with run_in_background(create_router(CanaryConfig(good, good, weight=0.0), str(tmp_path / "t.db"))) as root:
        for schema in ({"type": 5}, {"$ref": "#/nowhere"}, {"type": "string", "pattern": "["}):
            answer = httpx.post(f"{root}/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
            assert answer.status_code == 200
    with TraceStore(tmp_path / "t.db") as store:
        assert [t.schema_valid for t in store.traces()] == [False, False, False]
