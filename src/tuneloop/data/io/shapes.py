"""Row shapes ↔ `Sample`: Alpaca and ShareGPT rows, with column mapping and role tags.

```
alpaca row    {instruction, input, output, system, history, [chosen, rejected], [tools], [answer_kind], [kto_tag], ...}
              (answer_kind: "tool_calls" when output is JSON text of a call {"name", "arguments"} or a list of calls)
sharegpt row  {conversations: [{from, value}, ...], [system], [tools], [chosen: {from, value}, rejected: ...], ...}
              → Sample(instruction ← prompt, input ← query, output ← response or chosen, rejected, history, system,
                       extra fields tools (text) and kto_tag (true/false), every other column kept as it came)
```

A column named `tuneloop` (JSON text) carries the fields a format cannot express — id, meta, lineage, sample_type,
turn roles — so that tuneloop's own exports import back without loss; other tools ignore the extra column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from pydantic import ValidationError

from tuneloop.data.io.conversation import (
    ASSISTANT, CONVERSATION_EXTRAS, FUNCTION_CALL, OBSERVATION, SYSTEM, USER, Conversation, RowError, check_text,
    conversation_of, sample_fields, type_name,
)
from tuneloop.records import Sample, join_prompt
from tuneloop.tools import TOOL_CALLS, answers_with_calls

TUNELOOP_COLUMN = "tuneloop"
MEDIA_COLUMNS = ("images", "videos", "audios")


@dataclass(frozen=True)
class Columns:
    """Which source column holds which part of a sample (LLaMA-Factory's `columns` names, tuneloop's defaults)."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    history: str = "history"
    system: str = "system"
    tools: str = "tools"
    messages: str = "conversations"
    chosen: str = "chosen"
    rejected: str = "rejected"
    kto_tag: str = "kto_tag"
    images: str = "images"
    videos: str = "videos"
    audios: str = "audios"

    def with_mapping(self, mapping: dict[str, str]) -> Columns:
        """Columns renamed by a `{part: column}` mapping; parts are the field names above or tuneloop's names."""
        known = {f.name for f in fields(self)}
        renamed: dict[str, str] = {}
        for part, column in mapping.items():
            name = FIELD_ALIASES.get(part, part)
            if name not in known:
                raise ValueError(f"unknown field '{part}' in a column mapping; use one of {', '.join(sorted(known | set(FIELD_ALIASES)))}")
            renamed[name] = column
        return replace(self, **renamed)


FIELD_ALIASES = {"instruction": "prompt", "input": "query", "output": "response", "conversations": "messages"}


@dataclass(frozen=True)
class Tags:
    """ShareGPT message keys and role names (LLaMA-Factory's `tags`)."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    def role_names(self) -> dict[str, str]:
        return {self.user_tag: USER, self.assistant_tag: ASSISTANT, self.observation_tag: OBSERVATION,
                self.function_tag: FUNCTION_CALL, self.system_tag: SYSTEM}

    def tag_of(self, role: str) -> str:
        return {USER: self.user_tag, ASSISTANT: self.assistant_tag, OBSERVATION: self.observation_tag,
                FUNCTION_CALL: self.function_tag, SYSTEM: self.system_tag}[role]


OPENAI_TAGS = Tags(role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant")


STRUCTURED_FIELDS = ("meta", "lineage", "turn_roles", "history")
BOOLEAN_TEXT = {"true": True, "false": False}


def structured(value: Any) -> Any:
    """A list or object given as JSON text (CSV cells, flat Parquet columns) as the value it spells; else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def build_sample(row: dict[str, Any], consumed: set[str], parts: dict[str, Any], source: str | None) -> Sample:
    """A Sample from the parts a shape read, the row's other columns, and the `tuneloop` column; RowError if invalid."""
    base: dict[str, Any] = {}
    carried = row.get(TUNELOOP_COLUMN)
    if isinstance(carried, str) and carried:
        try:
            base = json.loads(carried)
        except json.JSONDecodeError as err:
            raise RowError(f"column '{TUNELOOP_COLUMN}' is not valid JSON ({err.msg})") from None
        if not isinstance(base, dict):
            raise RowError(f"column '{TUNELOOP_COLUMN}' must hold a JSON object, got {type_name(base)}")
    passthrough = {k: v for k, v in row.items() if k not in consumed and k != TUNELOOP_COLUMN}
    data = {**base, **passthrough, **parts}
    for name in STRUCTURED_FIELDS:
        if name in data:
            data[name] = structured(data[name])
    for name in ("rejected", "output_schema"):  # an empty cell is no value (CSV has no null)
        if data.get(name) == "":
            data[name] = None
    if parts.get("input") == "" and base.get("input") and join_prompt(base.get("instruction", ""), base["input"]) == parts.get("instruction"):
        data["instruction"], data["input"] = base.get("instruction", ""), base["input"]  # a chat turn joined them
    if isinstance(data.get("id"), int) and not isinstance(data.get("id"), bool):
        data["id"] = str(data["id"])
    try:
        sample = Sample.model_validate(data)
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in err.errors())
        raise RowError(reasons) from None
    if not sample.meta.source and source:
        sample.meta.source = source
    return sample


def _optional_parts(row: dict[str, Any], columns: Columns, consumed: set[str]) -> dict[str, Any]:
    """tools (kept as text), kto_tag (true/false) and media columns, where the row has them."""
    parts: dict[str, Any] = {}
    if columns.tools in row:
        consumed.add(columns.tools)
        tools = row[columns.tools]
        if isinstance(tools, (list, dict)):
            tools = json.dumps(tools, ensure_ascii=False)
        if tools not in (None, ""):
            parts["tools"] = check_text(tools, f"column '{columns.tools}' (tools)")
    if "answer_kind" in row:  # an empty cell (CSV, Parquet beside rows that have one) is no marker
        consumed.add("answer_kind")
        if row["answer_kind"] not in (None, ""):
            parts["answer_kind"] = row["answer_kind"]
    if columns.kto_tag in row:
        consumed.add(columns.kto_tag)
    if row.get(columns.kto_tag) not in (None, ""):
        label = row[columns.kto_tag]
        label = BOOLEAN_TEXT.get(label.lower(), label) if isinstance(label, str) else label
        if not isinstance(label, bool):
            raise RowError(f"column '{columns.kto_tag}' (kto_tag) must be true or false, got {label!r}")
        parts["kto_tag"] = label
    for media in MEDIA_COLUMNS:
        column = getattr(columns, media)
        if column != media and column in row:
            consumed.add(column)
            parts[media] = row[column]
    return parts


def alpaca_to_sample(row: dict[str, Any], columns: Columns = Columns(), ranking: bool | None = None,
                     source: str | None = None) -> Sample:
    """One Alpaca row as a Sample. `ranking=None` reads chosen/rejected when the row has them and no answer column."""
    consumed: set[str] = set()
    parts = _optional_parts(row, columns, consumed)
    if columns.prompt not in row and columns.query not in row:
        raise RowError(f"missing field '{columns.prompt}' (the instruction); map another column with --map COLUMN=instruction")
    for part, column in (("instruction", columns.prompt), ("input", columns.query), ("system", columns.system)):
        if column in row:
            consumed.add(column)
            parts[part] = "" if row[column] is None else check_text(row[column], f"field '{column}'")
    if row.get(columns.history) not in (None, ""):
        consumed.add(columns.history)
        parts["history"] = _history(structured(row[columns.history]), columns.history)
    if ranking is None:
        ranking = columns.chosen in row and columns.response not in row
    answer_column = columns.chosen if ranking else columns.response
    if row.get(answer_column) is None:
        raise RowError(f"missing field '{answer_column}' (the answer); map another column with --map COLUMN=output")
    consumed.add(answer_column)
    parts["output"] = row[answer_column]
    if ranking:
        if row.get(columns.rejected) is None:
            raise RowError(f"missing field '{columns.rejected}' (the rejected answer of a preference row)")
        consumed.add(columns.rejected)
        parts["rejected"] = row[columns.rejected]
    return build_sample(row, consumed, parts, source)


def _history(value: Any, column: str) -> list[list[str]]:
    if not isinstance(value, list):
        raise RowError(f"field '{column}' must be a list of [user, assistant] pairs, got {type_name(value)}")
    for index, pair in enumerate(value, start=1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RowError(f"field '{column}' turn {index} must be a [user, assistant] pair of texts")
    return value


def _message(value: Any, tags: Tags, where: str) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise RowError(f"{where} must be an object with '{tags.role_tag}' and '{tags.content_tag}', got {type_name(value)}")
    tag = value.get(tags.role_tag)
    names = tags.role_names()
    if tag not in names:
        raise RowError(f"{where} has role {tag!r}; expected one of {', '.join(repr(t) for t in names)} (set the tags)")
    if tags.content_tag not in value:
        raise RowError(f"{where} has no '{tags.content_tag}'")
    return names[tag], check_text(value[tags.content_tag], f"{where} '{tags.content_tag}'")


def sharegpt_to_sample(row: dict[str, Any], columns: Columns = Columns(), tags: Tags = Tags(),
                       ranking: bool | None = None, source: str | None = None) -> Sample:
    """One ShareGPT row as a Sample (a leading system message becomes `system`)."""
    consumed = {columns.messages}
    parts = _optional_parts(row, columns, consumed)
    messages = structured(row.get(columns.messages))
    if not isinstance(messages, list):
        raise RowError(f"missing field '{columns.messages}' (a list of messages), got {type_name(messages)}")
    turns = [_message(m, tags, f"message {i}") for i, m in enumerate(messages, start=1)]
    system = ""
    if turns and turns[0][0] == SYSTEM:
        system = turns.pop(0)[1]
    elif row.get(columns.system) is not None:
        consumed.add(columns.system)
        system = check_text(row[columns.system], f"field '{columns.system}'")
    if ranking is None:
        ranking = isinstance(structured(row.get(columns.chosen)), dict)
    if ranking or row.get(columns.chosen) in (None, ""):  # tabular files hold empty cells for absent values
        consumed.update((columns.chosen, columns.rejected))
    if ranking:
        chosen = _message(structured(row.get(columns.chosen)), tags, f"field '{columns.chosen}'")
        rejected = _message(structured(row.get(columns.rejected)), tags, f"field '{columns.rejected}'")
        conversation = Conversation(system, turns, chosen, rejected)
    else:
        if not turns:
            raise RowError(f"field '{columns.messages}' holds no messages")
        conversation = Conversation(system, turns[:-1], turns[-1])
    parts.update(sample_fields(conversation))
    return build_sample(row, consumed, parts, source)


def carried_fields(sample: Sample, expressed: set[str]) -> str:
    """The `tuneloop` column: every field of the sample the format does not express, as JSON text."""
    data = sample.model_dump(mode="json")
    return json.dumps({k: v for k, v in data.items() if k not in expressed}, ensure_ascii=False)


def _common_parts(sample: Sample, row: dict[str, Any], carry: bool, expressed: set[str]) -> dict[str, Any]:
    extras = sample.extras
    for name in ("tools", "kto_tag"):
        if name in extras:
            row[name] = extras[name]
            expressed.add(name)
    if "answer_kind" in extras:
        row["answer_kind"] = extras["answer_kind"]
        expressed.add("answer_kind")
    if carry:
        row[TUNELOOP_COLUMN] = carried_fields(sample, expressed)
    return row


ALPACA_EXPRESSED = {"instruction", "input", "output", "system", "history", "rejected"}


def sample_to_alpaca(sample: Sample, carry: bool = True) -> dict[str, Any]:
    """An Alpaca row (output always text; preference rows add `rejected`)."""
    row: dict[str, Any] = {"instruction": sample.instruction, "input": sample.input, "output": sample.output,
                           "system": sample.system, "history": sample.history}
    if sample.rejected is not None:
        row["rejected"] = sample.rejected
    if answers_with_calls(sample):  # a conversation's function_call answer: Alpaca says so with answer_kind
        row["answer_kind"] = TOOL_CALLS
    return _common_parts(sample, row, carry, set(ALPACA_EXPRESSED) | {"answer_kind"})


def sample_to_sharegpt(sample: Sample, tags: Tags = Tags(), messages_column: str = "conversations",
                       carry: bool = True) -> dict[str, Any]:
    """A ShareGPT row; preference rows put the answers in `chosen`/`rejected` messages after the prompt turns."""
    conversation = conversation_of(sample)
    expressed = ALPACA_EXPRESSED | set(CONVERSATION_EXTRAS)
    if sample.input:
        expressed.discard("input")  # the prompt turn joins instruction and input; the split travels in the carry
        expressed.discard("instruction")

    def message(role: str, text: str) -> dict[str, str]:
        return {tags.role_tag: tags.tag_of(role), tags.content_tag: text}

    turns = [message(role, text) for role, text in conversation.turns]
    row: dict[str, Any] = {messages_column: turns, "system": sample.system}
    if conversation.rejected is None:
        turns.append(message(*conversation.answer))
    else:
        row["chosen"] = message(*conversation.answer)
        row["rejected"] = message(*conversation.rejected)
    return _common_parts(sample, row, carry, expressed)
