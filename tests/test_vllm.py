"""The vLLM command builder, and the health wait + structured-output smoke test against a live endpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tuneloop.serve.vllm import SMOKE_SCHEMA, VLLMError, VLLMSettings, build_command, smoke_test, wait_for_models


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_command_pins_dtype_length_memory_generation_config_and_the_export_template(tiny_model_dir):
    command = build_command(VLLMSettings(str(tiny_model_dir), "ticket-v2", port=8123, max_model_len=2048,
                                         gpu_memory_utilization=0.8))
    assert command[:3] == ["vllm", "serve", str(tiny_model_dir)]
    assert option(command, "--served-model-name") == "ticket-v2"
    assert option(command, "--dtype") == "bfloat16"
    assert option(command, "--max-model-len") == "2048"
    assert option(command, "--gpu-memory-utilization") == "0.8"
    assert option(command, "--generation-config") == str(tiny_model_dir)
    assert option(command, "--chat-template") == str(tiny_model_dir / "chat_template.jinja")
    assert option(command, "--host") == "127.0.0.1" and option(command, "--port") == "8123"
    assert "--trust-remote-code" not in command and "--tool-call-parser" not in command


def test_command_adds_tool_parser_remote_code_only_when_asked_and_never_the_key(tmp_path):
    command = build_command(VLLMSettings(str(tmp_path), "m", trust_remote_code=True, tool_call_parser="hermes",
                                         api_key="k-secret", tensor_parallel_size=2), executable="/opt/vllm/bin/vllm")
    assert command[0] == "/opt/vllm/bin/vllm"
    assert "--trust-remote-code" in command and "--enable-auto-tool-choice" in command
    assert option(command, "--tool-call-parser") == "hermes"
    assert "--api-key" not in command and not any("k-secret" in part for part in command)
    assert option(command, "--tensor-parallel-size") == "2"
    assert "--chat-template" not in command  # a folder without chat_template.jinja keeps its tokenizer's own


def test_health_wait_and_json_smoke_pass_against_an_openai_compatible_server(tiny_model_dir, tmp_path):
    from tuneloop.serve.server import serve_in_background

    with serve_in_background(tiny_model_dir, tmp_path / "t.db", model_name="tiny") as base_url:
        assert wait_for_models(base_url, timeout_s=10) == ["tiny"]
        answer = smoke_test(base_url, "tiny", max_tokens=64)
    assert set(SMOKE_SCHEMA["required"]) <= set(answer)


def test_smoke_fails_loudly_when_the_server_ignores_the_schema(tmp_path):
    from fastapi import FastAPI

    from tuneloop.serve.server import run_in_background

    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        return {"choices": [{"message": {"content": "not json"}}]}

    with run_in_background(app) as root, pytest.raises(VLLMError, match="does not match the schema"):
        smoke_test(f"{root}/v1", "m")


def test_health_wait_gives_up_with_advice():
    with pytest.raises(VLLMError, match="take longer to load"):
        wait_for_models("http://127.0.0.1:9/v1", timeout_s=1.5)


@pytest.mark.skipif(shutil.which("vllm") is not None, reason="vllm is installed here: the CLI would launch it")
def test_cli_prints_the_command_and_how_to_install_when_vllm_is_missing(tiny_model_dir):
    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--backend", "vllm", "--model", str(tiny_model_dir), "--name", "t"])
    assert result.exit_code == 1
    assert f"vllm serve {tiny_model_dir} --served-model-name t" in result.output
    assert "own environment" in result.output and "pip install vllm" in result.output


def test_launch_hands_the_key_to_vllm_through_its_environment_not_argv(tmp_path, monkeypatch):
    from tuneloop.serve.vllm import launch

    seen = tmp_path / "seen.json"
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\n"
                    f"python3 -c 'import json,os,sys; json.dump({{\"argv\": sys.argv[1:], \"key\": os.environ.get(\"VLLM_API_KEY\")}}, open(\"{seen}\", \"w\"))' \"$@\"\n"
                    "exit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("VLLM_API_KEY", "stale-from-the-shell")
    settings = VLLMSettings(str(tmp_path), "m", port=9, api_key="k-secret")
    with pytest.raises(VLLMError, match="exited with code 3"):
        launch(settings, str(fake), timeout_s=20)
    recorded = json.loads(seen.read_text())
    assert recorded["key"] == "k-secret"
    assert not any("k-secret" in part for part in recorded["argv"])


@pytest.mark.skipif(shutil.which("vllm") is not None, reason="vllm is installed here: the CLI would launch it")
def test_cli_never_prints_the_key(tiny_model_dir, tmp_path, monkeypatch):
    from tuneloop.cli.main import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tuneloop.yaml").write_text("serve: {backend: vllm, api_key_env: MY_KEY}\n")
    monkeypatch.setenv("MY_KEY", "k-very-secret")
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--name", "t"])
    assert result.exit_code == 1
    assert "k-very-secret" not in result.output and "VLLM_API_KEY" in result.output


def test_smoke_request_goes_through_the_one_client_and_a_refusal_names_the_status(tmp_path):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from tuneloop.serve.server import run_in_background

    app = FastAPI()
    seen, agents = [], []

    @app.middleware("http")
    async def agent(request, call_next):  # who sent it: the openai client names itself in User-Agent
        agents.append(request.headers.get("user-agent", ""))
        return await call_next(request)

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        seen.append(body)
        return JSONResponse({"error": {"message": "structured outputs are off"}}, status_code=400)

    with run_in_background(app) as root, pytest.raises(VLLMError, match="smoke request failed.*400.*structured outputs"):
        smoke_test(f"{root}/v1", "m")
    assert len(seen) == 1 and seen[0]["model"] == "m" and seen[0]["response_format"]["type"] == "json_schema"
    assert agents[0].startswith("OpenAI/Python")  # the openai client (llm_client.Endpoint), not a second httpx one
