"""The records every stage shares.

A `Sample` is one Alpaca-style row with metadata and lineage. Every stage takes samples and returns samples;
file formats are read and written only in `tuneloop.data.io.formats`.

`output` is always a string: a JSON object or list given as output is serialized with
`json.dumps(..., ensure_ascii=False)` so that a model is trained on exactly the text it must produce.
Unknown fields are kept (pydantic `extra="allow"`) and written back out, so nothing a user brought is lost.

Function calling (`tuneloop.tools` reads these fields):
```
tools          extra field: JSON text of the bare function definitions [{"name", "description", "parameters"}, ...]
               (OpenAI's {"type": "function", "function": F} is unwrapped on load: one stored form)
answer kinds   text      output is the answer's text (or JSON text for a JSON task)
               refusal   expected = "refuse"
               tool_calls  output is JSON text of one call {"name": ..., "arguments": {...}} or a list of calls;
                         marked by turn_roles[-1] = "function_call" (conversations) or answer_kind = "tool_calls"
history        [[prompt turn, answer turn], ...]; with turn_roles a prompt turn may be a tool result ("observation")
               and an answer turn a call ("function_call", its text a call as above); old [[user, assistant]]
               files are the same thing without turn_roles
```
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SampleType = Literal["golden", "negative", "boundary", "generic"]
Expected = Literal["answer", "refuse"]
SAMPLE_TYPES: tuple[str, ...] = ("golden", "negative", "boundary", "generic")


def as_text(value: Any) -> str:
    """A field value as text: strings stay, JSON values are serialized without ASCII escaping."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short sha256 over JSON-serialized parts; stable across runs and machines."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolError(ValueError):
    """Tool definitions that cannot be used, with what to change."""


def normalize_tools(value: Any) -> list[dict[str, Any]]:
    """Function definitions in the bare form, from OpenAI's `{"type": "function", "function": F}` or F itself.

    >>> normalize_tools('[{"type": "function", "function": {"name": "f"}}]')
    [{'name': 'f', 'parameters': {'type': 'object', 'properties': {}}}]
    >>> normalize_tools([{"name": "g", "parameters": {"type": "object"}}])[0]["name"]
    'g'
    """
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ToolError(f"tools are not valid JSON ({err.msg}); give a JSON list of function definitions") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ToolError(f"tools must be a list of function definitions, got {type(value).__name__}")
    functions, seen = [], set()
    for index, tool in enumerate(value, start=1):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ToolError(f"tool {index} has no name: give each tool {{'name': ..., 'parameters': {{...}}}}")
        if tool["name"] in seen:
            raise ToolError(f"tool {index}: the name '{tool['name']}' is defined twice")
        seen.add(tool["name"])
        parameters = tool.get("parameters")
        if parameters is None:
            tool = {**tool, "parameters": dict(EMPTY_PARAMETERS)}
        elif not isinstance(parameters, dict):
            raise ToolError(f"tool '{tool['name']}': parameters must be a JSON Schema object")
        functions.append(tool)
    return functions


def tools_text(functions: Sequence[Mapping[str, Any]]) -> str:
    """The stored form of a sample's tools: JSON text of the bare definitions (LLaMA-Factory's `tools` column)."""
    return json.dumps(list(functions), ensure_ascii=False)



class Meta(BaseModel):
    """Who made a sample, for what task, and how hard it is."""

    model_config = ConfigDict(extra="allow")

    task_type: str | None = Field(None, description="Kind of task, e.g. extraction, classification.")
    difficulty: str | None = Field(None, description="easy | medium | hard; hard samples are kept in val.")
    domain: str | None = Field(None, description="Business domain, e.g. e-commerce support.")
    source: str | None = Field(None, description="Where the row came from: file, data set id, trace, synth.")
    annotator: str | None = Field(None, description="Who wrote the answer.")
    reviewer: str | None = Field(None, description="Who reviewed the answer; reviewed rows win dedup ties.")
    version: str | None = Field(None, description="Data or SOP version the row was made under.")


class Lineage(BaseModel):
    """Where a sample comes from. Variants keep their seed's `source_id`; splits group by it."""

    model_config = ConfigDict(extra="allow")

    source_id: str | None = Field(None, description="Id of the seed this row descends from (itself for a seed).")
    augment_type: str | None = Field(None, description="How the row was derived: None for an original.")
    augment_round: int | None = Field(None, description="Augmentation round that made the row.")
    parent_id: str | None = Field(None, description="Id of the row this one was made from.")


class Sample(BaseModel):
    """One training/eval row in Alpaca shape, with metadata and lineage."""

    model_config = ConfigDict(extra="allow")

    id: str = ""
    instruction: str = ""
    input: str = ""
    output: str = ""
    system: str = ""
    history: list[list[str]] = Field(default_factory=list, description="Earlier [user, assistant] turns.")
    rejected: str | None = Field(None, description="A worse answer for preference training (DPO).")
    sample_type: SampleType = "golden"
    expected: Expected = "answer"
    output_schema: str | dict[str, Any] | None = None
    meta: Meta = Field(default_factory=Meta)
    lineage: Lineage = Field(default_factory=Lineage)

    @field_validator("output", "rejected", mode="before")
    @classmethod
    def _serialize_json_answers(cls, value: Any) -> Any:
        if isinstance(value, (dict, list, int, float, bool)) and not isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        return value

    @field_validator("instruction", "input", "system", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("history", mode="before")
    @classmethod
    def _history_none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _stable_identity(self) -> Sample:
        extras = self.model_extra or {}
        if extras.get("tools") not in (None, ""):
            try:
                extras["tools"] = tools_text(normalize_tools(extras["tools"]))
            except ToolError:
                pass  # kept as given: the gate quarantines the row with the reason
        roles = extras.get("turn_roles")
        if extras.get("answer_kind") == "tool_calls" and isinstance(roles, list) and roles[-1:] == ["function_call"]:
            del extras["answer_kind"]  # the answer turn's role says it already: one marker stored
        if not self.id:
            self.id = self.content_id()
        if not self.lineage.source_id:
            self.lineage.source_id = self.id
        return self

    def content_id(self) -> str:
        """Content hash of what the model sees and must answer; the id of a row that brought none.

        The offered tools are part of what the model sees (rows without tools keep the hash they always had).
        """
        tools = (self.model_extra or {}).get("tools")
        if tools not in (None, ""):
            return content_hash(self.system, self.history, self.instruction, self.input, self.output, tools)
        return content_hash(self.system, self.history, self.instruction, self.input, self.output)

    @property
    def prompt(self) -> str:
        """The user turn: instruction and input joined the way every stage renders them."""
        return join_prompt(self.instruction, self.input)

    @property
    def history_text(self) -> str:
        """Earlier turns as one text: each turn's user and assistant parts, one per line ("" without history)."""
        return "\n".join("\n".join(turn) for turn in self.history)

    @property
    def prompt_key_text(self) -> str:
        """Everything the model reads before answering: system, earlier turns and the prompt, one per line.

        The record's side of "the same prompt": dedup, split, mix and the length checks compare this text; how it
        is compared (width, case, whitespace, n-grams) is the gate's `text` normalization, not the record's.
        """
        tools = self._tool_names()
        if not self.system and not self.history and not tools:
            return self.prompt
        return "\n".join(part for part in (self.system, tools, self.history_text, self.prompt) if part)

    def _tool_names(self) -> str:
        """The offered functions' names ("" without tools): the same question with other tools is another prompt."""
        raw = (self.model_extra or {}).get("tools")
        if raw in (None, ""):
            return ""
        try:
            return "tools: " + ", ".join(sorted(f["name"] for f in normalize_tools(raw)))
        except ToolError:
            return f"tools: {raw}"

    @property
    def quality(self) -> int:
        """Which copy of a duplicate to keep: reviewed 3 > annotated 2 > original 1 > augmented 0."""
        if self.meta.reviewer:
            return 3
        if self.meta.annotator:
            return 2
        return 1 if not self.lineage.augment_type else 0

    @property
    def extras(self) -> dict[str, Any]:
        """Fields the user brought that tuneloop has no name for (kept and written back)."""
        return dict(self.model_extra or {})


def join_prompt(instruction: str, input_text: str) -> str:
    """Instruction and input as one user turn (LLaMA-Factory's alpaca convention: a newline between them)."""
    if instruction and input_text:
        return f"{instruction}\n{input_text}"
    return instruction or input_text


class Chat(list):
    """Chat messages with the functions offered beside them (`tools`, bare definitions; None without tools).

    A list, so every caller that takes messages takes a Chat; the renderer (`train.templates`) and the endpoint
    backends read `.tools`, so a sample's tools reach the template wherever its messages go.
    """

    def __init__(self, messages: Any = (), tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(messages)
        self.tools = tools


def _wire_calls(text: str, turn: int) -> list[dict[str, Any]] | None:
    """A function_call turn's calls in OpenAI's wire shape (arguments as JSON text); None when it holds no call."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in items):
        return None
    calls = []
    for index, call in enumerate(items):
        arguments = call.get("arguments", {})
        calls.append({"id": f"call_{turn}_{index}", "type": "function", "function": {
            "name": call["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)}})
    return calls


def _tool_turns(sample: Sample, roles: list[str], texts: list[str]) -> list[dict[str, Any]]:
    """Turns of a tool conversation as OpenAI messages: a call turn → assistant tool_calls, a result → tool."""
    messages: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for turn, (role, text) in enumerate(zip(roles, texts), start=1):
        wire = _wire_calls(text, turn) if role == "function_call" else None
        if wire is not None:
            calls = wire
            messages.append({"role": "assistant", "content": None, "tool_calls": wire})
        elif role == "observation":
            results = [text]
            if len(calls) > 1:  # parallel results of one call turn travel as a JSON list of texts
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    value = None
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    results = value
            for index, result in enumerate(results):
                call_id = calls[index]["id"] if index < len(calls) else f"call_{turn}_{index}"
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        else:
            messages.append({"role": "user" if role in ("user", "observation") else "assistant", "content": text})
    return messages


def to_messages(sample: Sample, default_system: str = "", with_answer: bool = True) -> Chat:
    """The chat a model sees for a sample, the one rendering train, eval and serve all use.

    ```
    [system]            sample.system, else the task's default system prompt (omitted when both empty)
    [user, assistant]*  sample.history
    user                instruction + "\n" + input
    assistant           output            (only when with_answer)
    ```
    A sample with tools or tool turns (`turn_roles`) gets OpenAI's shape: a call turn is an assistant message with
    `tool_calls`, a tool result a `tool` message, and the Chat carries the sample's `tools`.
    """
    messages = Chat()
    system = sample.system or default_system
    if system:
        messages.append({"role": "system", "content": system})
    extras = sample.model_extra or {}
    roles = extras.get("turn_roles")
    texts = [text for turn in sample.history for text in (list(turn) + ["", ""])[:2]] + [sample.prompt]
    if with_answer:
        texts.append(sample.output)
    tooled = extras.get("tools") not in (None, "") or (isinstance(roles, list) and bool(
        {"function_call", "observation"} & set(roles)))
    if not tooled:
        for index, text in enumerate(texts):
            messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
        return messages
    if not (isinstance(roles, list) and len(roles) == 2 * len(sample.history) + 2):
        roles = ["user" if i % 2 == 0 else "assistant" for i in range(2 * len(sample.history) + 2)]
    if extras.get("answer_kind") == "tool_calls":
        roles = [*roles[:-1], "function_call"]
    messages.extend(_tool_turns(sample, roles[: len(texts)], texts))
    try:
        messages.tools = normalize_tools(extras.get("tools")) or None
    except ToolError:
        messages.tools = None  # the gate quarantines such a row; a renderer shows it without tools
    return messages


class QuarantinedRow(BaseModel):
    """A row a stage refused, with where it came from and why; nothing is dropped silently."""

    model_config = ConfigDict(extra="allow")

    source_file: str
    line: int | None = Field(None, description="1-based line (JSONL/CSV) or element index + 1 (JSON array).")
    sample_id: str | None = None
    stage: str
    reason: str
    raw: Any = None


class PreferencePair(BaseModel):
    """A prompt with a better and a worse answer (DPO), made from a sample with `rejected` or by best-of-N."""

    model_config = ConfigDict(extra="allow")

    id: str
    prompt: list[dict[str, Any]]  # a tool chat's messages hold tool_calls and null content
    chosen: str
    rejected: str
    source_id: str | None = None

    def trl_row(self) -> dict[str, Any]:
        """TRL's conversational preference row (DPOTrainer): the prompt's messages, each answer one assistant turn.

        >>> PreferencePair(id="a", prompt=[{"role": "user", "content": "Q"}], chosen="1", rejected="2").trl_row()["chosen"]
        [{'role': 'assistant', 'content': '1'}]
        """
        return {"id": self.id, "prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


class Trace(BaseModel):
    """One served request and answer, as the trace store and Langfuse keep it."""

    model_config = ConfigDict(extra="allow")

    id: str
    created_at: float
    model: str
    model_version: str | None = None
    messages: list[dict[str, Any]]
    output: str
    response_format: dict[str, Any] | None = None
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    json_valid: bool | None = None
    schema_valid: bool | None = None
    finish_reason: str | None = None
    arm: str | None = None
    user: str | None = None
    error: str | None = None
    source_id: str | None = Field(None, description="Where the trace came from: store:<id> | langfuse:<trace id>.")
    session_id: str | None = None
    tags: list[str] | None = None
    cost: float | None = None
    smoke: bool = Field(False, description="tuneloop's own check traffic (serve smoke, load test): never data.")

    @model_validator(mode="after")
    def _own_origin(self) -> Trace:
        if not self.source_id:
            self.source_id = f"store:{self.id}"
        return self


class EvalResult(BaseModel):
    """What one model answered for one test sample, and how that answer scores."""

    model_config = ConfigDict(extra="allow")

    sample_id: str
    model: str
    prompt_hash: str
    template_hash: str | None = None
    raw: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    constrained: bool = False
    scores: dict[str, Any] = Field(default_factory=dict)
