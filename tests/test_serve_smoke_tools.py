"""The round's serve smoke in a project that trains calls: its tools are offered and a call required, and the
answer is checked as a client would check it (a tool_calls finish, calls that fit their functions)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.test_tools_training import CALL, WEATHER
from tuneloop.data.io.formats import write_samples
from tuneloop.loop_export import serve_smoke
from tuneloop.loop_stage import RoundRefused
from tuneloop.records import Sample
from tuneloop.traces.store import TraceStore

TEXT = Sample(instruction="Say hello.", output="hello")


def a_round(tmp_path, model_dir, samples):
    round_dir = tmp_path / "round"
    round_dir.mkdir()
    write_samples(round_dir / "test.jsonl", samples)
    project = SimpleNamespace(traces_db=tmp_path / "traces.db")
    return SimpleNamespace(project=project, export_dir=model_dir, round_dir=round_dir, schema=None,
                           system="You help with travel.", options=SimpleNamespace(command="tuneloop run"))


def test_a_tool_project_smokes_a_required_call_with_its_tools(tmp_path, tiny_model_dir):
    result = serve_smoke(a_round(tmp_path, tiny_model_dir, [TEXT, CALL]))  # the first call sample is chosen
    assert result["finish_reason"] == "tool_calls"
    assert [c["name"] for c in result["answer"]] == ["get_weather"]  # the only function offered
    assert isinstance(result["answer"][0]["arguments"], dict)
    (trace,) = TraceStore(tmp_path / "traces.db").traces()
    assert trace.smoke and trace.model_extra["tool_choice"] == "required"
    assert [f["name"] for f in trace.model_extra["tools"]] == [WEATHER["name"]]


def test_a_required_call_answered_in_text_refuses_the_round(tmp_path, tiny_model_dir, monkeypatch):
    from contextlib import contextmanager

    from fastapi import FastAPI

    import tuneloop.serve.server as server
    from tuneloop.serve.server import run_in_background

    stub = FastAPI()
    asked = []

    @stub.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "export", "object": "model", "created": 0, "owned_by": "me"}]}

    @stub.post("/v1/chat/completions")
    async def chat(request: dict):
        asked.append(request)
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": "export",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "It is sunny in Oslo."}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}}

    @contextmanager
    def stub_server(*args, **kwargs):
        with run_in_background(stub, "127.0.0.1", 0) as root:
            yield f"{root}/v1"

    monkeypatch.setattr(server, "serve_in_background", stub_server)
    with pytest.raises(RoundRefused) as refused:
        serve_smoke(a_round(tmp_path, tiny_model_dir, [CALL]))
    assert "finish_reason 'stop' and 0 tool call(s)" in str(refused.value.reasons)
    assert asked[0]["tool_choice"] == "required" and asked[0]["tools"][0]["function"]["name"] == "get_weather"
    assert "response_format" not in asked[0]
