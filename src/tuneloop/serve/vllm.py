"""Serving an export with vLLM: the exact `vllm serve` command, a launch, a health wait and a JSON smoke test.

vLLM pins its own torch build, so it never goes into tuneloop's environment: it runs as a separate process
(from its own virtual environment) and tuneloop talks to it over its OpenAI-compatible HTTP API.

The API key never goes on the command line (any user of the machine can read argv in `ps`): vLLM reads it from
`VLLM_API_KEY` in its environment, and the printed command names only that variable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tuneloop.serve.outcome import judge_output

INSTALL_HINT = (
    "vLLM is not installed here. Install it in its own environment (it pins its own torch):\n"
    "  python -m venv ~/.venvs/vllm && ~/.venvs/vllm/bin/pip install vllm\n"
    "then put ~/.venvs/vllm/bin on PATH (or pass --vllm ~/.venvs/vllm/bin/vllm) and run this command again."
)
SMOKE_SCHEMA = {
    "type": "object",
    "properties": {"intent": {"type": "string", "enum": ["refund", "delivery", "other"]},
                   "order_id": {"type": "string"}},
    "required": ["intent", "order_id"],
}


KEY_ENV = "VLLM_API_KEY"  # vllm serve reads its --api-key from this variable


class VLLMError(RuntimeError):
    """vLLM that did not start, answer, or pass the structured-output smoke test; says what to do."""


@dataclass
class VLLMSettings:
    model_dir: str
    served_name: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    trust_remote_code: bool = False
    tool_call_parser: str | None = None
    api_key: str | None = None
    tensor_parallel_size: int = 1


# vLLM's --tool-call-parser per model family: (words in the model id or its config's model_type, parser)
TOOL_PARSERS = (("hermes", "hermes"), ("qwen", "hermes"), ("llama-3", "llama3_json"), ("llama3", "llama3_json"),
                ("mistral", "mistral"), ("mixtral", "mistral"), ("granite", "granite"), ("internlm", "internlm"),
                ("deepseek-v3", "deepseek_v3"), ("deepseek_v3", "deepseek_v3"))


def _template_source(folder: Path) -> str | None:
    """A local model's chat template text (None: not a local folder)."""
    if not folder.is_dir():
        return None
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.exists() else None
    return template if isinstance(template, str) else json.dumps(template or "")


def tool_call_parser(model: str | Path) -> str | None:
    """The vLLM tool parser for a model: `hermes` for one trained in tuneloop's hermes format (its saved template
    carries the format), else its family's parser, or None when its template has no tool syntax or carries the
    json_block format (no vLLM parser reads bare JSON calls: such a model calls through the embedded server).

    >>> tool_call_parser("Qwen/Qwen2.5-7B-Instruct"), tool_call_parser("HuggingFaceTB/SmolLM2-135M-Instruct")
    ('hermes', None)
    """
    from tuneloop.train.templates import split_tool_format

    folder = Path(model)
    names = [str(model).lower()]
    template = _template_source(folder)
    if template is not None:
        carried, own = split_tool_format(template)
        if carried is not None:
            return "hermes" if carried == "hermes" else None
        if "tools" not in own:
            return None
        config = folder / "config.json"
        if config.exists():
            names.append(str(json.loads(config.read_text(encoding="utf-8")).get("model_type", "")).lower())
    for word, parser in TOOL_PARSERS:
        if any(word in name for name in names):
            return parser
    return None


def chat_template_file(model_dir: str | Path) -> Path | None:
    """The export's pinned training template (chat_template.jinja), when it has one."""
    path = Path(model_dir) / "chat_template.jinja"
    return path if path.exists() else None


def build_command(settings: VLLMSettings, executable: str = "vllm") -> list[str]:
    """The `vllm serve` argv for an export: pinned template and generation config, bf16, bounded memory."""
    command = [
        executable, "serve", settings.model_dir,
        "--served-model-name", settings.served_name,
        "--host", settings.host, "--port", str(settings.port),
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.gpu_memory_utilization),
        # sampling defaults come from the export's generation_config.json, not from vLLM's own defaults
        "--generation-config", settings.model_dir,
    ]
    template = chat_template_file(settings.model_dir)
    if template is not None:
        command += ["--chat-template", str(template)]
    if settings.tensor_parallel_size > 1:
        command += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    if settings.trust_remote_code:
        command.append("--trust-remote-code")
    if settings.tool_call_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
    return command  # the key, if any, goes through `launch_env`, never argv


def launch_env(settings: VLLMSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vllm runs in: ours, plus the API key in VLLM_API_KEY when one is set."""
    env = dict(os.environ if base is None else base)
    env.pop(KEY_ENV, None)
    if settings.api_key:
        env[KEY_ENV] = settings.api_key
    return env


def find_vllm(explicit: str | None = None) -> str | None:
    """The vllm executable: an explicit path, else `vllm` on PATH; None when it is not installed."""
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return shutil.which("vllm")


def wait_for_models(base_url: str, timeout_s: float = 600.0, process: subprocess.Popen | None = None,
                    api_key: str | None = None) -> list[str]:
    """Poll `/v1/models` until the server answers; the served model ids."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise VLLMError(f"vllm exited with code {process.returncode} before serving; read its log above.")
        try:
            response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=5)
            if response.status_code == 200:
                return [m["id"] for m in response.json()["data"]]
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last_error = str(err)
        time.sleep(1.0)
    raise VLLMError(f"{base_url}/models did not answer within {timeout_s:.0f} s ({last_error}); "
                    "read vLLM's log above; a large model can take longer to load than this wait.")


def smoke_test(base_url: str, model: str, schema: dict[str, Any] | None = None, api_key: str | None = None,
               max_tokens: int = 128) -> dict[str, Any]:
    """One json_schema request; the parsed answer, or VLLMError when it does not parse or validate."""
    from tuneloop.llm_client import Endpoint, LLMError

    schema = schema or SMOKE_SCHEMA
    response_format = {"type": "json_schema", "json_schema": {"name": "smoke", "schema": schema, "strict": True}}
    endpoint = Endpoint(base_url, model, api_key, concurrency=1, timeout_s=300)  # tuneloop's one chat client
    try:
        response = endpoint.create(max_tokens=max_tokens, temperature=0, response_format=response_format, messages=[
            {"role": "user", "content": "Ticket: my order A12345 never arrived. Answer as JSON."}])
    except LLMError as err:
        raise VLLMError(f"smoke request failed: {err}") from None
    content = response.choices[0].message.content or ""
    outcome = judge_output(content, response_format)
    if not outcome.schema_valid:
        raise VLLMError(f"smoke answer does not match the schema (json_valid={outcome.json_valid}): {content[:300]!r}; "
                        "check that the server enforces structured outputs.")
    return json.loads(content)


def launch(settings: VLLMSettings, executable: str, timeout_s: float = 900.0) -> subprocess.Popen:
    """Start vllm, wait for it to serve, smoke-test structured output; the running process."""
    process = subprocess.Popen(build_command(settings, executable), env=launch_env(settings))
    base_url = f"http://{settings.host}:{settings.port}/v1"
    try:
        wait_for_models(base_url, timeout_s, process, settings.api_key)
        smoke_test(base_url, settings.served_name, api_key=settings.api_key)
    except BaseException:
        process.terminate()
        raise
    return process
