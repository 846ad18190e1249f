"""The label checks: the one place a label is validated before it is accepted (relabel import, the annotation tool).

```
label text ──strict JSON?──no──▶ prose / code fence around it: "remove them"  (checks go on with the JSON inside)
   │                        └──▶ no JSON at all: "write one JSON object", stop
   ▼
expected=refuse ──▶ exactly the schema's refusal form (`x-refusal`), else "replace it with the form"; stop
expected=answer ──▶ not the refusal, else "answer it (or set expected: refuse)"; stop
   ▼
task schema (every error: type, enum, required, additional keys) ─▶ SOP rules: every schema key in schema order,
no "N/A" / "unknown" / "" for an absent value (null), ids copied from the message as written ─▶ custom rules
(`annotate.rules` in tuneloop.yaml: a field path with a pattern or an enum)
```

Every problem names the field it is about (`output`, `output.order_id`, `output.items[0].sku`, `expected`) and the
fix, so the annotation tool can show it beside the field and an import can say it on one line. Answers are read
through `tuneloop.answers` (one JSON parse, one refusal rule, one schema check): a label accepted here is an answer
eval scores as valid.

>>> schema = {"type": "object", "properties": {"order_id": {"type": ["string", "null"]}}, "required": ["order_id"]}
>>> check_label('{"order_id": "N/A"}', schema)
['output.order_id: "N/A" stands for an absent value; write null (an absent value is JSON null)']
>>> check_label('```json\\n{"order_id": null}\\n```', schema)
['output: text or code fences around the JSON (code_fence); the answer is the bare JSON object: remove them']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneloop.answers import MISSING, find_json, is_refusal, parse_json, refusal_form, schema_validator
from tuneloop.project import LabelRule
from tuneloop.records import Sample

# Strings annotators write for "the message does not say" (casefolded, stripped); the SOP asks for null instead.
ABSENT_MARKERS = frozenset({
    "", "null", "none", "nil", "n/a", "na", "n.a.", "unknown", "not stated", "not given", "not provided", "-", "—",
    "?", "无", "未知", "不详", "空", "暂无", "没有",
})
# An id-like value: letters and digits mixed (A123456, ORD-7781); such values are copied, never normalized.
ID_LIKE = re.compile(r"(?=[^\s]*\d)(?=[^\s]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9_\-/#.]{3,}")


@dataclass(frozen=True)
class Problem:
    """One way a label breaks a rule: the field it is about, which rule, what is wrong and how to fix it."""

    field: str  # output | output.<path> | expected | input
    rule: str   # json | noise | refusal | not_refusal | schema | keys | key_order | absent_value | copied | custom | empty
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}; {self.fix}"


def check_label(label: str | Sample, schema: Mapping[str, Any] | None = None, expected: str | None = None,
                rules: Sequence[LabelRule] = (), prompt: str | None = None) -> list[str]:
    """Every problem of a label as one line "field: what is wrong; the fix" (empty: the label may be accepted).

    `label` is the answer text, or a Sample (its output, its `expected`, its prompt for the copied-value rule and
    its inline `output_schema` when no `schema` is given).
    """
    return [str(p) for p in label_problems(label, schema, expected, rules, prompt)]


def label_problems(label: str | Sample, schema: Mapping[str, Any] | None = None, expected: str | None = None,
                   rules: Sequence[LabelRule] = (), prompt: str | None = None) -> list[Problem]:
    """The problems of a label, as `Problem`s (see `check_label`)."""
    if isinstance(label, Sample):
        if schema is None and isinstance(label.output_schema, dict):
            schema = label.output_schema
        expected = expected or label.expected
        prompt = label.prompt_key_text if prompt is None else prompt
        problems = [] if label.prompt.strip() else [
            Problem("input", "empty", "the sample has no prompt (instruction and input are empty)",
                    "give the message the model answers")]
        return problems + _output_problems(label.output, schema, expected or "answer", rules, prompt)
    return _output_problems(label, schema, expected or "answer", rules, prompt)


def _output_problems(text: str, schema: Mapping[str, Any] | None, expected: str, rules: Sequence[LabelRule],
                     prompt: str | None) -> list[Problem]:
    if expected not in ("answer", "refuse"):
        return [Problem("expected", "schema", f"{expected!r} is not a kind of answer", "use answer or refuse")]
    if not text.strip():
        return [Problem("output", "empty", "the label is empty",
                        "write the correct answer" + (" (one JSON object)" if schema else ""))]
    if schema is None:  # a text task: only the refusal rule applies
        return _refusal_problems(text, MISSING, None, expected)
    problems: list[Problem] = []
    ok, value = parse_json(text)
    if not ok:
        value, noise = find_json(text)
        if value is MISSING:
            return [Problem("output", "json", f"not JSON ({_json_error(text)})",
                            "write one JSON object and nothing else")]
        problems.append(Problem("output", "noise", f"text or code fences around the JSON ({', '.join(noise)})",
                                "the answer is the bare JSON object: remove them"))
    refusal = _refusal_problems(text, value, schema, expected)
    if refusal or expected == "refuse":
        return problems + refusal
    problems += _schema_problems(schema, value)
    problems += _sop_problems(schema, value, prompt)
    problems += [p for rule in rules for p in _custom_problems(rule, value)]
    return problems


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    return "not one JSON value"


# -- refusals ----------------------------------------------------------------------------------------------------
def _refusal_problems(text: str, value: Any, schema: Mapping[str, Any] | None, expected: str) -> list[Problem]:
    """expected=refuse: exactly the schema's refusal form (a refusal of any kind without one); expected=answer:
    no refusal (the one rule of `answers.is_refusal`)."""
    form = refusal_form(schema)
    if expected == "refuse":
        if form is not None:
            if value != form:
                shown = json.dumps(form, ensure_ascii=False)
                return [Problem("output", "refusal", "expected is refuse, but this is not the schema's refusal form",
                                f"replace the answer with exactly {shown} (or set expected to answer if the task "
                                "covers this message)")]
            return []
        if not is_refusal(text, value):
            return [Problem("output", "refusal", "expected is refuse, but the answer does not decline the task",
                            "write the task's refusal (or set expected to answer if the task covers this message)")]
        return []
    if is_refusal(text, value, form):
        return [Problem("output", "not_refusal", "expected is answer, but this is a refusal",
                        "answer the message (or set expected to refuse if it is outside the task)")]
    return []


# -- the task schema -----------------------------------------------------------------------------------------------
def field_path(parts: Sequence[Any]) -> str:
    """A JSON path inside the answer as the field name the annotator sees.

    >>> field_path(["items", 0, "sku"]), field_path([])
    ('output.items[0].sku', 'output')
    """
    out = "output"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _schema_problems(schema: Mapping[str, Any], value: Any) -> list[Problem]:
    problems = []
    for error in sorted(schema_validator(schema).iter_errors(value), key=lambda e: list(map(str, e.absolute_path))):
        where = list(error.absolute_path)
        if error.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", error.message)
            for name in missing or ["?"]:
                problems.append(Problem(field_path([*where, name]), "schema", "required key missing",
                                        "add it (null when the message does not state it)"))
        elif error.validator == "additionalProperties":
            problems.append(Problem(field_path(where), "schema", error.message, "remove the keys the schema does not name"))
        elif error.validator == "enum":
            allowed = ", ".join(json.dumps(v, ensure_ascii=False) for v in error.validator_value)
            problems.append(Problem(field_path(where), "schema", f"{json.dumps(error.instance, ensure_ascii=False)} "
                                    "is not an allowed value", f"pick one of {allowed}"))
        elif error.validator == "type":
            kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            problems.append(Problem(field_path(where), "schema", error.message,
                                    f"write a JSON {' or '.join(map(str, kinds))} (numbers unquoted, absent values null)"))
        else:
            problems.append(Problem(field_path(where), "schema", error.message, "change it to what the schema allows"))
    return problems


# -- the SOP's checkable rules ---------------------------------------------------------------------------------------
def _objects(spec: Mapping[str, Any], value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Mapping[str, Any], Any]]:
    """(path, schema, value) for the answer itself and every nested object or array item the schema describes."""
    yield where, spec, value
    if isinstance(value, dict):
        for key, item in value.items():
            child = (spec.get("properties") or {}).get(key)
            if isinstance(child, Mapping):
                yield from _objects(child, item, (*where, key))
    elif isinstance(value, list) and isinstance(spec.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _objects(spec["items"], item, (*where, index))


def _allows(spec: Mapping[str, Any], value: Any) -> bool:
    """Whether a field's schema names this exact value (an enum or const that lists "unknown" allows it)."""
    return value in (spec.get("enum") or ()) or ("const" in spec and spec["const"] == value)


def _stated(value: str, prompt: str) -> bool:
    """Whether the message holds the value as a whole token (A12345 is not stated by "A123456").

    >>> _stated("A123", "order A123, please"), _stated("A12", "order A123")
    (True, False)
    """
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])", prompt) is not None


def _sop_problems(schema: Mapping[str, Any], value: Any, prompt: str | None) -> list[Problem]:
    """The SOP's common errors that a program can see: keys missing/added/out of order, placeholder strings for
    an absent value, id-like values not copied from the message."""
    problems: list[Problem] = []
    required_missing = set()
    for where, spec, item in _objects(schema, value):
        properties = spec.get("properties")
        if isinstance(item, dict) and isinstance(properties, Mapping) and properties:
            names = list(properties)
            required_missing |= {(*where, k) for k in spec.get("required", ()) if k not in item}
            for key in names:
                if key not in item and (*where, key) not in required_missing:
                    problems.append(Problem(field_path([*where, key]), "keys", "key missing (the SOP wants every "
                                            "key of the schema)", "add it, null when the message does not state it"))
            extra = [k for k in item if k not in properties]
            if extra and spec.get("additionalProperties", True) is not False:  # else the schema check said it
                problems.append(Problem(field_path(where), "keys", f"keys the schema does not name: {', '.join(extra)}",
                                        "remove or rename them to the schema's keys"))
            known = [k for k in item if k in properties]
            if known != [k for k in names if k in item]:
                problems.append(Problem(field_path(where), "key_order", "keys out of the schema's order",
                                        f"write them in this order: {', '.join(k for k in names if k in item)}"))
        if isinstance(item, str) and where:
            if item.strip().casefold() in ABSENT_MARKERS and not _allows(spec, item):
                problems.append(Problem(field_path(where), "absent_value",
                                        f"{json.dumps(item, ensure_ascii=False)} stands for an absent value",
                                        "write null (an absent value is JSON null)"))
            elif prompt is not None and ID_LIKE.fullmatch(item.strip()) and not _stated(item.strip(), prompt) \
                    and not _allows(spec, item):
                problems.append(Problem(field_path(where), "copied", f"{item!r} is not in the message",
                                        "copy ids character for character from the message (null if it states none)"))
    return problems


# -- custom rules from tuneloop.yaml ---------------------------------------------------------------------------------
def _resolve(value: Any, parts: Sequence[str], where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every field a rule's dotted path reaches; `name[]` walks each list item."""
    if not parts:
        yield where, value
        return
    head, rest = parts[0], parts[1:]
    name, each = (head[:-2], True) if head.endswith("[]") else (head, False)
    if not isinstance(value, dict) or name not in value:
        return
    item = value[name]
    if each:
        for index, element in enumerate(item if isinstance(item, list) else []):
            yield from _resolve(element, rest, (*where, name, index))
    else:
        yield from _resolve(item, rest, (*where, name))


def _custom_problems(rule: LabelRule, value: Any) -> list[Problem]:
    """A rule from `annotate.rules`: each value its path reaches (null skipped) matches the pattern / the enum.

    >>> rule = LabelRule(field="items[].sku", pattern=r"SKU-\\d{4}", message="SKUs look like SKU-1234")
    >>> [str(p) for p in _custom_problems(rule, {"items": [{"sku": "SKU-1234"}, {"sku": "sku 7"}]})]
    ["output.items[1].sku: 'sku 7' breaks a project rule; SKUs look like SKU-1234"]
    """
    problems = []
    for where, found in _resolve(value, rule.field.split(".")):
        if found is None:
            continue
        if rule.pattern is not None and not (isinstance(found, str) and re.fullmatch(rule.pattern, found)):
            problems.append(Problem(field_path(where), "custom", f"{found!r} breaks a project rule", rule.message))
        elif rule.enum is not None and found not in rule.enum:
            problems.append(Problem(field_path(where), "custom", f"{found!r} breaks a project rule", rule.message))
    return problems
