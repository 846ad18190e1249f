"""What the embedded server accepts: a chat-completions body read within limits and checked field by field.

Every way a body can be wrong ends here as a `BadRequest` with the HTTP status and one line that says what to send
instead, before any model work: too large (413), not UTF-8, not JSON, not an object, a field the server does not
implement (`logprobs`, `n` > 1 …: refused, never ignored), an unknown field, an odd role, content that is
not text, a schema the decoder cannot enforce, tools or a tool_choice that cannot be honoured (400).
`tools` and `tool_choice` are read by `serve.tool_calls`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request

from tuneloop.decoding.grammar import ResponseFormatError, check_response_format
from tuneloop.serve.tool_calls import ToolPlan, ToolRequestError, plan_tools

# tuneloop's own check traffic (the round's serve smoke, the load test) says so; its traces are stored smoke=1
# and never become data
SMOKE_HEADER = "X-Tuneloop-Smoke"


def is_smoke(request: Request) -> bool:
    return request.headers.get(SMOKE_HEADER, "").strip().lower() in ("1", "true", "yes")


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}
# OpenAI fields that change what an answer is: the server does not implement them, so it says so
UNSUPPORTED = {
    "functions": "the legacy `functions` field is not supported; send `tools` instead",
    "function_call": "the legacy `function_call` field is not supported; send `tool_choice` instead",
    "logprobs": "logprobs are not returned by the embedded server",
    "top_logprobs": "logprobs are not returned by the embedded server",
    "logit_bias": "logit_bias is not applied by the embedded server",
    "audio": "audio output is not supported", "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "presence_penalty": "presence_penalty is not applied by the embedded server",
    "frequency_penalty": "frequency_penalty is not applied by the embedded server",
    "reasoning_effort": "reasoning_effort is not supported",
    "web_search_options": "web search is not supported",
}
# sent by common clients with their neutral value: harmless when neutral, refused otherwise
NEUTRAL = {"logprobs": (False, None), "top_logprobs": (None, 0), "logit_bias": (None, {}),
           "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
           "modalities": (None, ["text"])}
IGNORED = {"stream_options", "metadata", "store", "service_tier", "parallel_tool_calls"}  # no effect on the answer


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, strict=True)
    stop: str | list[str] | None = None
    stream: bool = False
    response_format: dict[str, Any] | None = None
    user: str | None = None
    n: int = Field(1, strict=True)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or BadRequest(413) as soon as it passes `limit` bytes (never read whole into memory)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {declared} bytes is over the server's {limit}-byte limit.")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request body is over the server's {limit}-byte limit.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest(400, "the client went away before sending the whole body.") from None
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"request body is not UTF-8 (byte {err.start}); send UTF-8 JSON.") from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:
        raise BadRequest(400, f"request body is not JSON: {str(err)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"request body must be a JSON object, got {type(body).__name__}.")
    try:  # a lone surrogate (`"\ud800"`) is valid JSON but no text: it would fail the tokenizer and the trace
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(400, "request body has a lone UTF-16 surrogate escape (\\udXXX); send real characters.") from None
    except RecursionError:
        raise BadRequest(400, "request body is nested too deeply.") from None
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    """A checked ChatRequest; BadRequest(400) naming the first thing wrong."""
    for name, why in UNSUPPORTED.items():
        if name in body and body[name] not in NEUTRAL.get(name, (None,)):
            raise BadRequest(400, f"`{name}` is not supported: {why}.")
    if body.get("n", 1) not in (1, None):
        raise BadRequest(400, "only n=1 is supported; send several requests instead.")
    known = set(ChatRequest.model_fields) | set(UNSUPPORTED) | IGNORED
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(map(repr, unknown))}: not a chat-completions field this "
                              "server implements; remove them.")
    fields = {k: v for k, v in body.items() if k in ChatRequest.model_fields and not (k == "n" and v is None)}
    try:
        chat = ChatRequest.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(400, f"bad chat completion request: {where}: {first['msg']}.") from None
    stops = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise BadRequest(400, "stop takes up to 4 non-empty strings.")
    try:
        check_response_format(chat.response_format)
    except ResponseFormatError as err:
        raise BadRequest(400, f"bad response_format: {err}") from None
    except RecursionError:
        raise BadRequest(400, "bad response_format: the schema is nested too deeply.") from None
    tool_plan(chat)  # tools and tool_choice checked here too, before any model work
    return chat


def tool_plan(chat: ChatRequest) -> ToolPlan | None:
    """The request's tools and tool_choice as a plan; BadRequest(400) when they cannot be honoured."""
    try:
        plan = plan_tools(chat.tools, chat.tool_choice, chat.response_format)
        if plan is not None and plan.response_format is not None:
            check_response_format(plan.response_format)
    except ToolRequestError as err:
        raise BadRequest(400, str(err)) from None
    except ResponseFormatError as err:
        raise BadRequest(400, f"bad tools: a function's parameters cannot be enforced: {err}") from None
    except RecursionError:
        raise BadRequest(400, "bad tools: a parameter schema is nested too deeply.") from None
    return plan


def chat_messages(raw_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for the chat template: known roles, text content; BadRequest(400) naming the first bad one."""
    messages = []
    for index, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            raise BadRequest(400, f"messages[{index}] must be an object with role and content.")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(400, f"messages[{index}].role {role!r} is not one of system, developer, user, assistant, tool.")
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            raise BadRequest(400, f"messages[{index}] has fields the server does not implement: {extra}.")
        if "tool_calls" in message and role != "assistant" or "tool_call_id" in message and role != "tool":
            raise BadRequest(400, f"messages[{index}]: tool_calls belong to assistant messages, tool_call_id to tool ones.")
        checked: dict[str, Any] = {"role": ROLES[role], "content": _text_content(message.get("content"), index)}
        if message.get("tool_calls") and role == "assistant":
            checked["tool_calls"] = _tool_calls(message["tool_calls"], index)
        if role == "tool":
            checked["tool_call_id"] = str(message.get("tool_call_id") or "")
        messages.append(checked)
    return messages


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An earlier assistant turn's calls, as the renderer takes them (OpenAI's shape, arguments as JSON text)."""
    if not isinstance(calls, list):
        raise BadRequest(400, f"messages[{index}].tool_calls must be a list.")
    out = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments", ""), str)):
            raise BadRequest(400, f"messages[{index}].tool_calls[{number}] must be {{\"type\": \"function\", "
                                  "\"function\": {\"name\": ..., \"arguments\": \"<JSON text>\"}}.")
        out.append({"id": str(call.get("id") or f"call_{index}_{number}"), "type": "function",
                    "function": {"name": function["name"], "arguments": function.get("arguments") or "{}"}})
    return out


def _text_content(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # OpenAI content parts: text parts only
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise BadRequest(400, f"messages[{index}].content: only text parts ({{\"type\": \"text\", "
                                      "\"text\": ...}) are supported.")
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(400, f"messages[{index}].content must be a string or a list of text parts.")
