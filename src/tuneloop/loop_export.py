"""The stages of a round after its verdict: merge (with the merge gate's reload check and template parity) and the
serve smoke (the export served on loopback, one test prompt through the official openai client, the answer checked).

Both take the `tuneloop.loop.Round` and raise `RoundRefused` when their check says no; `tuneloop.loop.ROUND_STAGES`
lists them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from tuneloop.loop_stage import RoundRefused

if TYPE_CHECKING:
    from tuneloop.loop import Round


def merge(round_: Round) -> dict[str, Any]:
    """Merge with its reload gate and template parity."""
    from tuneloop.export.merge import MergeGateError, merge_run

    run_dir, export_dir = round_.trained_run_dir, round_.export_dir
    try:
        report = merge_run(run_dir, export_dir)
    except MergeGateError as err:
        raise RoundRefused("merge gate", err.failures,
                           f"the merged model differs from the evaluated one and was not exported or served; "
                           f"check that {run_dir / 'run.json'} `base_model` is the model the adapter was trained "
                           f"on, then rerun `{round_.options.command}` (details: `tuneloop export merge --run {run_dir} "
                           f"--out {export_dir}`).") from err
    return {"export_dir": str(export_dir), "report": _plain(report)}


def serve_smoke(round_: Round) -> dict[str, Any]:
    """Serve the export on loopback (embedded server), ask one test prompt through the official openai client with
    response_format, validate the answer, stop.

    An answer the server refuses, cuts, or that is not valid JSON for the task's schema refuses the round.
    """

    from tuneloop.answers import schema_problem, schema_validator
    from tuneloop.llm_client import Endpoint, LLMError
    from tuneloop.data.io.formats import load_samples
    from tuneloop.records import to_messages
    from tuneloop.serve.requests import SMOKE_HEADER
    from tuneloop.serve.server import serve_in_background
    from tuneloop.tools import answers_with_calls, openai_tools, sample_tools

    project, export_dir, round_dir, schema, system = (round_.project, round_.export_dir, round_.round_dir,
                                                     round_.schema, round_.system)
    samples = load_samples(round_dir / "test.jsonl")
    # a project that trains calls smokes a call: its tools offered and a call required, as a client would ask
    sample = next((s for s in samples if answers_with_calls(s)), samples[0])
    messages = to_messages(sample, system, with_answer=False)
    functions = sample_tools(sample) if answers_with_calls(sample) else []
    request: dict[str, Any] = (
        {"tools": openai_tools(functions), "tool_choice": "required"} if functions else
        {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
         if schema else {"type": "json_object"}})
    advice = (f"the export {export_dir} is kept but not trusted; try it by hand with `tuneloop serve --model "
              f"{export_dir}`, fix what the reason names, then rerun `{round_.options.command}`.")
    outputs = {"prompt": sample.prompt, "expected": sample.output}
    with serve_in_background(export_dir, trace_store_path=project.traces_db) as base_url:
        endpoint = Endpoint(base_url, model="", api_key="local", max_retries=1)
        endpoint.model = endpoint.client.models.list().data[0].id
        started = time.time()
        try:
            reply = endpoint.create(messages=messages, **request, max_tokens=200, temperature=0,
                                    extra_headers={SMOKE_HEADER: "1"})  # stored smoke=1: never data
        except LLMError as err:
            raise RoundRefused("serve smoke", [f"the server refused the smoke request: {err}"], advice, outputs) from err
        latency = time.time() - started
    if functions:
        return _check_smoke_call(reply, functions, sample, latency, advice, outputs)
    text = reply.choices[0].message.content or ""
    finish = reply.choices[0].finish_reason
    outputs.update(text=text, finish_reason=finish, latency_s=round(latency, 2))
    if finish != "stop":
        raise RoundRefused("serve smoke", [f"the served answer stopped with finish_reason {finish!r}, not 'stop' "
                                           f"(cut or refused by the server): {text[:120]!r}"], advice, outputs)
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as err:
        raise RoundRefused("serve smoke", [f"the served answer is not JSON ({err.msg} at char {err.pos}): "
                                           f"{text[:120]!r}"], advice, outputs) from err
    if schema:
        problem = schema_problem(schema_validator(schema), answer)
        if problem is not None:
            raise RoundRefused("serve smoke", [f"the served answer fails the task's schema at {problem}"], advice,
                               outputs)
    return {"prompt": sample.prompt, "answer": answer, "expected": sample.output, "latency_s": round(latency, 2),
            "finish_reason": finish}


def _check_smoke_call(reply: Any, functions: list[dict[str, Any]], sample: Any, latency: float, advice: str,
                      outputs: dict[str, Any]) -> dict[str, Any]:
    """The smoke answer of a required call: a `tool_calls` finish whose calls name offered functions and fit their
    parameters (checked here, as a client would, not taken from the server's word)."""
    from tuneloop.tools import call_problems

    choice = reply.choices[0]
    wire = choice.message.tool_calls or []
    outputs.update(finish_reason=choice.finish_reason, tool_calls=[c.model_dump() for c in wire],
                   latency_s=round(latency, 2))
    if choice.finish_reason != "tool_calls" or not wire:
        raise RoundRefused("serve smoke", [f"a required call came back with finish_reason {choice.finish_reason!r} "
                                           f"and {len(wire)} tool call(s): {(choice.message.content or '')[:120]!r}"],
                           advice, outputs)
    try:
        calls = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in wire]
    except json.JSONDecodeError as err:
        raise RoundRefused("serve smoke", [f"a served call's arguments are not JSON ({err.msg} at char {err.pos})"],
                           advice, outputs) from err
    problems = call_problems(calls, functions)
    if problems:
        raise RoundRefused("serve smoke", [f"the served call does not fit its function: {'; '.join(problems[:3])}"],
                           advice, outputs)
    return {"prompt": sample.prompt, "answer": calls, "expected": sample.output, "latency_s": round(latency, 2),
            "finish_reason": choice.finish_reason}


def _plain(value: Any) -> Any:
    """A stage result as JSON-ready data (dataclasses and pydantic models included)."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(value), default=str))
    return json.loads(json.dumps(value, default=str))
