"""A chat conversation as a `Sample`, and back — the shape sharegpt, OpenAI messages and LLaMA-Factory share.

```
conversation                                   Sample
[system]                                  →    system
user, assistant, user, function_call,     →    history = [[user, assistant], [user, function_call]]
observation, assistant                    →    instruction = observation text, output = assistant text
roles other than plain user/assistant     →    extra field turn_roles = [every turn's role, answer included]
preference pair (chosen, rejected)        →    output = chosen, rejected = rejected (rejected_role if not assistant)
```

Turns alternate: a prompt-side turn (`user` or `observation`, a tool's result) then an answer-side turn
(`assistant` or `function_call`, a tool call). The roles are kept in `turn_roles` only when they differ from plain
user/assistant, so ordinary chats stay ordinary samples and tool-call conversations round-trip without loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

USER, ASSISTANT, FUNCTION_CALL, OBSERVATION, SYSTEM = "user", "assistant", "function_call", "observation", "system"
PROMPT_ROLES = (USER, OBSERVATION)
ANSWER_ROLES = (ASSISTANT, FUNCTION_CALL)


class RowError(ValueError):
    """A row that cannot become a sample; the message says what is wrong and is the quarantine reason."""


@dataclass
class Conversation:
    """A conversation split the way a Sample holds it: turns before the answer, the answer, an optional rejected one."""

    system: str = ""
    turns: list[tuple[str, str]] = field(default_factory=list)  # (role, text), ending with the final prompt turn
    answer: tuple[str, str] = (ASSISTANT, "")
    rejected: tuple[str, str] | None = None


def type_name(value: Any) -> str:
    """A JSON reader's word for a Python value's type, for error messages."""
    names = {dict: "object", list: "array", str: "text", bool: "true/false", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where} must be text, got {type_name(value)}")
    return value


def sample_fields(conversation: Conversation) -> dict[str, Any]:
    """Sample fields for a conversation; raises RowError when turns do not alternate prompt/answer."""
    turns = conversation.turns
    if not turns:
        raise RowError("the conversation has no prompt turn")
    for index, (role, text) in enumerate(turns):
        expected = PROMPT_ROLES if index % 2 == 0 else ANSWER_ROLES
        if role not in expected:
            raise RowError(f"turn {index + 1} has role '{role}' where {' or '.join(expected)} was expected")
        check_text(text, f"turn {index + 1} content")
    if len(turns) % 2 == 0:
        raise RowError(f"the conversation ends with a {turns[-1][0]} turn; it must end with the prompt before the answer")
    answer_role, answer = conversation.answer
    if answer_role not in ANSWER_ROLES:
        raise RowError(f"the answer has role '{answer_role}' where {' or '.join(ANSWER_ROLES)} was expected")
    fields: dict[str, Any] = {
        "system": check_text(conversation.system, "system"),
        "history": [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns) - 1, 2)],
        "instruction": turns[-1][1],
        "input": "",
        "output": answer,
    }
    roles = [role for role, _ in turns] + [answer_role]
    if roles != [USER if i % 2 == 0 else ASSISTANT for i in range(len(roles))]:
        fields["turn_roles"] = roles
    if conversation.rejected is not None:
        rejected_role, rejected = conversation.rejected
        if rejected_role not in ANSWER_ROLES:
            raise RowError(f"the rejected answer has role '{rejected_role}' where assistant or function_call was expected")
        fields["rejected"] = rejected
        if rejected_role != ASSISTANT:
            fields["rejected_role"] = rejected_role
    return fields


def conversation_of(sample: Any) -> Conversation:
    """The conversation a sample holds (the inverse of `sample_fields`)."""
    extras = sample.extras
    pairs = [(list(turn) + ["", ""])[:2] for turn in sample.history]
    count = 2 * len(pairs) + 2
    roles = extras.get("turn_roles")
    if not (isinstance(roles, list) and len(roles) == count):
        roles = [USER if i % 2 == 0 else ASSISTANT for i in range(count)]
    texts = [text for pair in pairs for text in pair] + [sample.prompt]
    conversation = Conversation(
        system=sample.system,
        turns=list(zip(roles[:-1], texts, strict=True)),
        answer=(roles[-1], sample.output),
    )
    if sample.rejected is not None:
        conversation.rejected = (str(extras.get("rejected_role") or ASSISTANT), sample.rejected)
    return conversation


# Extra fields a conversation-shaped format expresses itself (so they need not travel in the tuneloop column).
CONVERSATION_EXTRAS = ("turn_roles", "rejected_role")
