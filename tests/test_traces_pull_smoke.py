"""tuneloop's own check traffic is stored as smoke (never data): the round's serve smoke through the real embedded
server on the tiny model, a request with the smoke header, and the canary router passing the mark on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
from fastapi import FastAPI, Request

from tuneloop.serve.requests import SMOKE_HEADER
from tuneloop.traces.store import TraceStore

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "order 7 is late"}], "max_tokens": 4}


def test_the_embedded_server_stores_smoke_only_for_requests_marked_so(tiny_model_dir, tmp_path):
    from tuneloop.serve.server import serve_in_background

    store_path = tmp_path / "traces.db"
    with serve_in_background(tiny_model_dir, store_path, model_name="tiny") as base_url:
        marked = httpx.post(f"{base_url}/chat/completions", json=ASK, headers={SMOKE_HEADER: "1"}, timeout=60)
        real = httpx.post(f"{base_url}/chat/completions", json=ASK, timeout=60)
    assert marked.status_code == real.status_code == 200
    with TraceStore(store_path) as store:
        smoke = {t.id: t.smoke for t in store.traces()}
    assert smoke == {marked.json()["id"]: True, real.json()["id"]: False}


def test_the_round_serve_smoke_marks_its_request(tiny_model_dir, tmp_path):
    from tuneloop.loop import RoundRefused, serve_smoke

    round_dir = tmp_path / "round"
    round_dir.mkdir()
    (round_dir / "test.jsonl").write_text(json.dumps({"id": "s1", "instruction": "Order 7 is late.",
                                                      "output": '{"order": "7"}'}) + "\n")
    project = SimpleNamespace(traces_db=tmp_path / "traces.db")
    round_ = SimpleNamespace(project=project, export_dir=tiny_model_dir, round_dir=round_dir, schema=None,
                             system="Extract the order as JSON.", options=SimpleNamespace(command="tuneloop run"))
    try:  # the tiny random model may well fail the check; its request is traced either way
        serve_smoke(round_)
    except RoundRefused:
        pass
    with TraceStore(project.traces_db) as store:
        traces = store.traces()
    assert len(traces) == 1 and traces[0].smoke is True
    assert traces[0].messages[-1]["content"].startswith("Order 7 is late.")


def test_the_canary_router_stores_the_smoke_mark_and_passes_it_on(tmp_path):
    from tuneloop.serve.canary import CanaryConfig, create_router
    from tuneloop.serve.server import run_in_background

    seen: list[str | None] = []
    backend = FastAPI()

    @backend.post("/v1/chat/completions")
    async def chat(request: Request):
        seen.append(request.headers.get(SMOKE_HEADER))
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "b", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}]}

    store_path = tmp_path / "traces.db"
    with run_in_background(backend) as url:
        config = CanaryConfig(stable_url=f"{url}/v1", canary_url=f"{url}/v1", weight=0.5)
        with run_in_background(create_router(config, str(store_path))) as root:
            marked = httpx.post(f"{root}/v1/chat/completions", json=ASK, headers={SMOKE_HEADER: "1"})
            real = httpx.post(f"{root}/v1/chat/completions", json=ASK)
    with TraceStore(store_path) as store:
        smoke = {t.id: t.smoke for t in store.traces()}
    assert smoke == {marked.json()["id"]: True, real.json()["id"]: False}
    assert seen == ["1", None]
