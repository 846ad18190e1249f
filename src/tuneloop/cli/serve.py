"""`tuneloop serve`: a model over an OpenAI-compatible API (embedded or vLLM), or a canary between two backends."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import typer

from tuneloop.cli.apps import app
from tuneloop.cli.common import UserError, console, find_project, friendly_errors


def _project_defaults():
    project = find_project(required=False)
    return project, (project.config.serve if project else None)


def store_path(traces: Path | None) -> Path:
    if traces is not None:
        return traces
    project = find_project(required=False)
    return project.traces_db if project else Path("traces.db")


@app.command("serve")
@friendly_errors
def serve(
    model: str = typer.Option(None, "--model", "-m", help="Model folder (an export), hub id or 'default'."),
    backend: str = typer.Option(None, "--backend", help="embedded | vllm (default: tuneloop.yaml serve.backend)."),
    host: str = typer.Option(None, "--host", help="Interface; loopback unless you mean to expose it."),
    port: int = typer.Option(None, "--port", help="Port (default: tuneloop.yaml serve.port, else 8000)."),
    traces: Path = typer.Option(None, "--traces", help="Trace store (default: the project's traces.db)."),
    name: str = typer.Option(None, "--name", help="Served model name (default: the folder name)."),
    stable: str = typer.Option(None, "--stable", help="Canary: the stable backend (URL …/v1 or model folder)."),
    canary: str = typer.Option(None, "--canary", help="Canary: the new backend (URL …/v1 or model folder)."),
    weight: float = typer.Option(0.1, "--weight", min=0.0, max=1.0, help="Canary: share of users sent to it."),
    max_model_len: int = typer.Option(4096, "--max-model-len", help="vLLM: longest prompt + answer."),
    gpu_memory_utilization: float = typer.Option(0.9, "--gpu-memory-utilization", help="vLLM: share of GPU memory."),
    tool_call_parser: str = typer.Option(None, "--tool-call-parser", help="vLLM: tool parser (default: by model family when its template renders tools, e.g. hermes for Qwen2.5)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="vLLM: allow the model's own code."),
    vllm: str = typer.Option(None, "--vllm", help="vLLM: path of the vllm executable (its own environment)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without an API key."),
    check_schema: Path = typer.Option(None, "--check-schema", help="List what constrained decoding enforces of "
                                      "this JSON Schema file, then exit (non-zero when a keyword is refused)."),
) -> None:
    """Serve a model over an OpenAI-compatible API (embedded or vLLM), or run a canary between two backends.

    Example: tuneloop serve --model exports/ticket-v2 --port 8000
    Example: tuneloop serve --check-schema schemas/ticket.json
    """
    if check_schema is not None:
        return _check_schema(check_schema)
    project, config = _project_defaults()
    host = host or (config.host if config else "127.0.0.1")
    port = port or (config.port if config else 8000)
    api_key = os.environ.get(config.api_key_env) if config and config.api_key_env else None
    if config and config.api_key_env and not api_key:
        raise UserError(f"serve.api_key_env names {config.api_key_env}, which is not set; export it or drop the key.")
    if not api_key and not insecure and not _is_loopback(host):
        raise UserError(f"--host {host} exposes the server beyond this machine without an API key; set "
                        "serve.api_key_env in tuneloop.yaml (and that variable), or pass --insecure.")
    store = store_path(traces)
    if stable or canary:
        if not (stable and canary):
            raise UserError("a canary needs both --stable and --canary (a URL ending in /v1, or a model folder).")
        return _serve_canary(stable, canary, weight, host, port, store, api_key)
    model = model or (project.config.model if project else "default")
    if (backend or (config.backend if config else "embedded")) == "vllm":
        return _serve_vllm(model, name, host, port, max_model_len, gpu_memory_utilization, tool_call_parser,
                           trust_remote_code, vllm, api_key)
    import uvicorn

    from tuneloop.serve.server import create_app

    application = create_app(model, store, model_name=name, api_key=api_key)  # a model that cannot load fails here
    console.print(f"serving {model} on http://{host}:{port}/v1 (traces → {store})")
    uvicorn.run(application, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_schema(path: Path) -> None:
    """Print each keyword's verdict (enforced, annotation, refused); exit 1 when any is refused."""
    from tuneloop.decoding.coverage import schema_coverage

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such schema file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        line = f", line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{path}{line}: not a JSON file ({err}); fix the JSON and retry.") from None
    coverage = schema_coverage(schema)
    for verdict in coverage.keywords:
        colour = {"enforced": "green", "annotation": "dim", "refused": "red"}[verdict.verdict]
        console.print(f"[{colour}]{verdict.line()}[/]", highlight=False, soft_wrap=True)
    if not coverage.ok:
        raise UserError(f"{path}: {len(coverage.refused)} keyword(s) the constrained decoder cannot enforce; requests "
                        "with this schema get a 400. Rewrite them with enforced keywords.")
    console.print(f"{path}: every keyword is enforced ({len(coverage.enforced)} enforced, "
                  f"{len(coverage.keywords) - len(coverage.enforced)} annotations).")


def _serve_vllm(model: str, name: str | None, host: str, port: int, max_model_len: int, memory: float,
                tool_call_parser: str | None, trust_remote_code: bool, executable: str | None,
                api_key: str | None) -> None:
    from tuneloop.models import resolve_model
    from tuneloop.serve.vllm import INSTALL_HINT, KEY_ENV, VLLMSettings, build_command, find_vllm, launch
    from tuneloop.serve.vllm import tool_call_parser as tool_call_parser_for

    folder = resolve_model(model)
    settings = VLLMSettings(folder, name or Path(folder).name, host, port, max_model_len=max_model_len,
                            gpu_memory_utilization=memory, trust_remote_code=trust_remote_code,
                            tool_call_parser=tool_call_parser or tool_call_parser_for(folder), api_key=api_key)
    found = find_vllm(executable)
    command = build_command(settings, found or "vllm")
    prefix = f"{KEY_ENV}=<key from serve.api_key_env> " if api_key else ""  # the key itself is never printed
    console.print("vllm command:\n  " + prefix + " ".join(command), highlight=False, soft_wrap=True)
    if found is None:
        console.print(INSTALL_HINT, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    process = launch(settings, found)
    console.print(f"vLLM serves {settings.served_name} on http://{host}:{port}/v1; structured-output smoke test passed.")
    with contextlib.suppress(KeyboardInterrupt):
        process.wait()


def _serve_canary(stable: str, canary: str, weight: float, host: str, port: int, store: Path,
                  api_key: str | None) -> None:
    import uvicorn

    from tuneloop.serve.canary import CanaryConfig, create_router
    from tuneloop.serve.server import serve_in_background

    with contextlib.ExitStack() as stack:
        urls = []
        for arm, target in (("stable", stable), ("canary", canary)):
            if target.startswith(("http://", "https://")):
                urls.append(target.rstrip("/"))
            else:  # a model folder: its own embedded server; the router keeps the arm-tagged traces
                arm_store = store.with_name(f"{store.stem}-{arm}{store.suffix}")
                urls.append(stack.enter_context(serve_in_background(target, arm_store, model_name=arm)))
        router = create_router(CanaryConfig(urls[0], urls[1], weight=weight, api_key=api_key), str(store))
        console.print(f"canary router on http://{host}:{port}/v1: stable {urls[0]}, canary {urls[1]} at {weight:.0%}")
        uvicorn.run(router, host=host, port=port, log_level="info")
