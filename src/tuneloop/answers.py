"""What an answer is: the JSON it holds, whether it fits the task's schema, whether it declines the task.

Every stage that looks at an answer asks these questions (data checks, synthesis, augmentation, eval, serving, the
round's serve smoke check), and asks them here, so a refusal counted by eval is a refusal counted by serving.

```
answer text ──parse_json──▶ (True, value) | (False, None)          the whole text is one JSON value
            ──find_json───▶ (value | MISSING, noise)               the first object/array inside prose or a fence
            ──is_refusal──▶ bool                                   refusal form, refusal key, or refusal phrase
schema ──schema_validator──▶ validator (its $schema's draft, 2020-12 when it names none; checked; cached)
       ──schema_errors / schema_problem──▶ "where: what" for every error / the best one
```
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

MISSING = object()  # no JSON at all (distinct from a JSON null)
REFUSAL_KEY = "x-refusal"  # where a task's schema declares its refusal answer
# Keys whose truthy value marks a JSON answer as a refusal, e.g. {"refusal": "out of scope"}.
REFUSAL_KEYS = ("refusal", "refused", "refuse", "cannot_answer", "unanswerable", "error")
REFUSAL_PHRASES = (
    "i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "i'm unable", "i am unable", "unable to help",
    "not able to help", "i won't", "i will not", "cannot help", "can't help", "cannot assist", "can't assist",
    "cannot provide", "can't provide", "as an ai",
    "无法", "不能", "抱歉", "对不起", "不可以", "拒绝", "无可奉告",
)
FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when the whole text is one JSON value (surrounding whitespace allowed); (False, None) otherwise.

    >>> parse_json(' {"a": 1} ')
    (True, {'a': 1})
    >>> parse_json('Here: {"a": 1}')
    (False, None)
    """
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return False, None


def find_json(text: str) -> tuple[Any, list[str]]:
    """The first JSON object or array in a text, and the noise around it (MISSING when there is none).

    >>> find_json('Here is the JSON:\\n```json\\n{"a": 1}\\n``` hope it helps')
    ({'a': 1}, ['prefix', 'code_fence', 'suffix'])
    """
    ok, value = parse_json(text)
    if ok:
        return value, []
    noise: list[str] = []
    body, before, after = text, "", ""
    fence = FENCE.search(text)
    if fence:
        noise.append("code_fence")
        body, before, after = fence.group(1), text[: fence.start()], text[fence.end():]
    decoder = json.JSONDecoder()
    for start, char in enumerate(body):
        if char not in "{[":
            continue
        try:
            value, end = decoder.raw_decode(body, start)
        except json.JSONDecodeError:
            continue
        if (before + body[:start]).strip():
            noise.insert(0, "prefix")
        if (body[end:] + after).strip():
            noise.append("suffix")
        return value, noise
    return MISSING, noise


def refusal_form(schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The refusal answer a task's schema declares under `x-refusal`, if it declares one with a non-null value.

    >>> refusal_form({"type": "object", "x-refusal": {"intent": "out_of_scope", "order_id": None}})
    {'intent': 'out_of_scope', 'order_id': None}
    >>> refusal_form({"type": "object"}) is None
    True
    """
    form = schema.get(REFUSAL_KEY) if isinstance(schema, Mapping) else None
    return form if isinstance(form, dict) and any(v is not None for v in form.values()) else None


def is_refusal(text: str, value: Any = MISSING, form: Mapping[str, Any] | None = None) -> bool:
    """Whether an answer declines the task.

    `value` is the JSON found in `text` (`find_json(text)[0]`; found here when not given), `form` the task's
    declared refusal (`refusal_form(schema)`). A JSON object is a refusal when its values equal every non-null
    value of `form` (e.g. `{"intent": "out_of_scope", ...}`) or when it has a truthy `refusal`, `refused`,
    `refuse`, `cannot_answer`, `unanswerable` or `error` key; an object whose values merely mention refusal words
    is an answer. Prose (or a bare JSON string) is a refusal when it has a refusal phrase in English or Chinese
    ("I can't", "I'm sorry", "无法", "抱歉", ...).

    >>> form = {"intent": "out_of_scope", "order_id": None}
    >>> is_refusal('{"intent": "out_of_scope", "order_id": null}', form=form)
    True
    >>> is_refusal('{"note": "customer says: I cannot log in"}', form=form)
    False
    >>> is_refusal("抱歉，我无法处理这个请求。")
    True
    """
    if value is MISSING:
        value, _ = find_json(text)
    if isinstance(value, dict):
        if form and all(value.get(k) == v for k, v in form.items() if v is not None):
            return True
        return any(value.get(key) not in (None, False, "", 0) for key in REFUSAL_KEYS)
    if isinstance(value, str):  # a bare JSON string is prose in quotes
        text = value
    elif value is not MISSING:
        return False
    lowered = text.casefold().replace("’", "'")
    return any(phrase in lowered for phrase in REFUSAL_PHRASES)


def schema_validator(schema: Mapping[str, Any] | None) -> Any:
    """The validator of a JSON Schema: the draft its `$schema` names (2020-12 when it names none), the schema
    itself checked against that draft (`jsonschema.SchemaError` when it is not a valid schema). None for None.

    Validators are cached by the schema's canonical JSON: per-row and per-request callers (synthesis, inline
    row schemas, serving) build each one once. A caller's later edit of its dict never reaches the cache.

    >>> schema_validator({"$schema": "http://json-schema.org/draft-07/schema#"}).__class__.__name__
    'Draft7Validator'
    >>> schema_validator({"type": "object"}) is schema_validator({"type": "object"})
    True
    """
    if schema is None:
        return None
    return _validator(json.dumps(schema, sort_keys=True, ensure_ascii=False))


@functools.lru_cache(maxsize=256)
def _validator(canonical: str) -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.validators import validator_for

    schema = json.loads(canonical)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _where(error: Any) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def schema_errors(validator: Any, value: Any) -> list[str]:
    """Every way `value` breaks the schema, as "where: what" (empty: it is valid).

    >>> schema_errors(schema_validator({"required": ["a"]}), {})
    ["(root): 'a' is a required property"]
    """
    return [f"{_where(e)}: {e.message}" for e in validator.iter_errors(value)]


def schema_problem(validator: Any, value: Any) -> str | None:
    """The most telling way `value` breaks the schema (jsonschema's `best_match`), as "where: what"; None if valid.

    >>> schema_problem(schema_validator({"properties": {"n": {"type": "integer"}}}), {"n": "3"})
    "n: '3' is not of type 'integer'"
    """
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    return None if error is None else f"{_where(error)}: {error.message}"
