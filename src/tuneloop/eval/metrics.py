"""Scoring one answer against its test sample, and rates over a run.

Per answer (`score_answer`), each a plain value so results stay one JSON line:

```
json_valid      the whole output is one JSON value (json.loads; surrounding whitespace allowed)
json_found      a JSON object or array appears somewhere in the output
schema_valid    json_valid and valid under the JSON Schema (None when there is no schema or the sample must refuse)
exact_match     canonical JSON equality when the expected output is JSON, else stripped text equality
noise           what wraps the JSON (clean = no noise; None when the output holds no JSON at all): "prefix" ("Here is the JSON:"), "code_fence" (```json), "suffix" (trailing text)
fields          {dotted.path: [exact, normalized]} for every leaf of the expected JSON, read from the answer
                when it is valid JSON (json_valid); an answer that is not is wrong on every field (strict: the headline
                field accuracy, what a program parsing the answer gets)
fields_lenient  the same read from the JSON found inside the noise (only when the answer is not valid JSON): says
                whether the content was right under the wrapping, so noise and wrong fields are counted apart
                A key the answer lacks is wrong, unless the schema leaves it optional (not in `required`) and the
                expected value is null.
refused         the answer is a refusal (`tuneloop.answers.is_refusal`, with the schema's `x-refusal` form)
refusal_ok      must-refuse refused / must-answer answered; on boundary samples and samples with expected "refuse"
truncated       finish_reason == "length"
ok              no failure of any kind above: the per-sample pass used for failure rates and bad cases; for a
                sample that offers tools, also the call's checks (`eval.tool_metrics`: the expected call matched by
                its AST and valid, or no call where none was expected)
tool_*          function-calling scores of samples with tools (`eval.tool_metrics`)
```
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tuneloop.answers import MISSING, find_json, is_refusal, parse_json, refusal_form, schema_errors
from tuneloop.eval.tool_metrics import TOOL_METRICS, tool_ok, tool_scores, tool_summary
from tuneloop.records import Sample

NULL_LIKE = {"", "null", "none", "n/a", "na", "无", "空"}
BINARY_METRICS = ("ok", "json_valid", "schema_valid", "exact_match", "clean", "refusal_ok", "complete", *TOOL_METRICS)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a JSON value by dotted path; list items by index; empty objects and lists are leaves.

    >>> flatten({"a": {"b": 1, "c": [2, None]}, "d": {}})
    {'a.b': 1, 'a.c.0': 2, 'a.c.1': None, 'd': {}}
    """
    if isinstance(value, dict) and value:
        items: Iterable[tuple[str, Any]] = value.items()
    elif isinstance(value, list) and value:
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, child in items:
        flat.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def normalize(value: Any) -> Any:
    """A leaf as compared leniently: case, width and spacing folded; numbers by value; null-like text is null."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 6)
    if isinstance(value, str):
        text = " ".join(unicodedata.normalize("NFKC", value).casefold().split())
        if text in NULL_LIKE:
            return None
        try:
            number = float(text.replace(",", ""))
        except ValueError:
            return text
        return round(number, 6) if math.isfinite(number) else text
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def field_scores(expected: Any, actual: Any, schema: dict[str, Any] | None = None) -> dict[str, list[bool]]:
    """[exact, normalized] per leaf of the expected JSON.

    A key missing from the answer is wrong, unless `schema` leaves it optional (not in `required`) and the expected
    value is null; without a schema nothing is optional. With no JSON at all (`actual` is MISSING) every field is
    wrong, expected nulls too.

    >>> schema = {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["b"]}
    >>> field_scores({"a": None, "b": None}, {}, schema)
    {'a': [True, True], 'b': [False, False]}
    """
    if actual is MISSING:
        return {path: [False, False] for path in flatten(expected)}
    got = flatten(actual)
    scores: dict[str, list[bool]] = {}
    for path, want in flatten(expected).items():
        have = got.get(path, MISSING)
        if have is MISSING:
            allowed = want is None and key_optional(schema, actual, path)
            scores[path] = [allowed, allowed]
            continue
        exact = have == want and type(have) is type(want)
        scores[path] = [bool(exact), normalize(have) == normalize(want)]
    return scores


def _object_node(node: Any) -> dict[str, Any] | None:
    """The object-describing part of a schema node (itself, or the object member of anyOf/oneOf/allOf)."""
    if not isinstance(node, dict):
        return None
    if "properties" in node or "required" in node:
        return node
    for combinator in ("anyOf", "oneOf", "allOf"):
        for member in node.get(combinator) or []:
            found = _object_node(member)
            if found is not None:
                return found
    return node if node.get("type") == "object" or "object" in (node.get("type") or []) else None


def key_optional(schema: dict[str, Any] | None, answer: Any, path: str) -> bool:
    """Whether the first key of `path` that `answer` lacks is optional in `schema` (absent from its `required`).

    A missing list item, or a scalar where the path needs an object, is never optional.
    """
    node: Any = schema
    value = answer
    for part in path.split("."):
        if isinstance(value, list):
            if not part.isdigit() or int(part) >= len(value):
                return False
            index = int(part)
            value = value[index]
            prefix = node.get("prefixItems") if isinstance(node, dict) else None
            node = prefix[index] if isinstance(prefix, list) and index < len(prefix) else (node or {}).get("items")
            continue
        if not isinstance(value, dict):
            return False
        described = _object_node(node)
        if part not in value:
            return described is not None and part not in (described.get("required") or [])
        value = value[part]
        node = (described or {}).get("properties", {}).get(part)
    return False


def score_answer(sample: Sample, raw: str, finish_reason: str | None, validator: Any = None) -> dict[str, Any]:
    """Every metric of one answer (see the module docstring); `validator` is a jsonschema validator or None."""
    json_valid, strict_value = parse_json(raw)
    found, noise = find_json(raw)
    expected_is_json, expected_value = parse_json(sample.output)
    expected_is_json = expected_is_json and isinstance(expected_value, (dict, list))
    must_refuse = sample.expected == "refuse"
    refused = is_refusal(raw, found, refusal_form(getattr(validator, "schema", None)))
    scores: dict[str, Any] = {
        "json_valid": json_valid,
        "json_found": found is not MISSING,
        "noise": noise,
        "clean": not noise if found is not MISSING else None,
        "refused": refused,
        "complete": finish_reason != "length",
        "truncated": finish_reason == "length",
    }
    if expected_is_json:
        scores["exact_match"] = json_valid and canonical(strict_value) == canonical(expected_value)
    else:
        scores["exact_match"] = raw.strip() == sample.output.strip()
    if validator is not None and not must_refuse:
        errors = schema_errors(validator, strict_value) if json_valid else ["output is not JSON"]
        scores["schema_valid"] = not errors
        scores["schema_errors"] = errors[:3]
    if expected_is_json and not must_refuse:
        schema = getattr(validator, "schema", None) if validator is not None else None
        fields = field_scores(expected_value, strict_value if json_valid else MISSING, schema)
        lenient = field_scores(expected_value, found, schema) if not json_valid else fields
        scores["fields"] = fields
        if not json_valid:
            scores["fields_lenient"] = lenient
        for name, chosen in (("", fields), ("_lenient", lenient)):
            scores[f"field_exact{name}"] = sum(e for e, _ in chosen.values()) / len(chosen)
            scores[f"field_normalized{name}"] = sum(n for _, n in chosen.values()) / len(chosen)
    if sample.sample_type == "boundary" or must_refuse:
        scores["refusal_ok"] = refused == must_refuse
    scores["ok"] = sample_ok(scores, expected_is_json, must_refuse)
    tool = tool_scores(sample, raw)
    if tool:
        scores.update(tool)
        passed = bool(tool_ok(scores)) and not scores["truncated"]
        # a call answer is judged by its call alone; a text answer beside tools must also not call
        scores["ok"] = passed if scores.get("tool_call_made") is not None else passed and scores["ok"]
    return scores


def sample_ok(scores: Mapping[str, Any], expected_is_json: bool, must_refuse: bool) -> bool:
    if scores.get("refusal_ok") is False or scores["truncated"]:
        return False
    if must_refuse:
        return True
    if scores.get("schema_valid") is False:
        return False
    if expected_is_json:
        return bool(scores["json_valid"]) and scores["field_normalized"] == 1.0
    return bool(scores["exact_match"])


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def rate(values: Iterable[Any]) -> tuple[float | None, int]:
    """Share of true values among those that apply (None = does not apply), and how many applied."""
    present = [bool(v) for v in values if v is not None]
    return (sum(present) / len(present) if present else None), len(present)


def summarize(scores: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Rates over one run's per-answer scores, per-field accuracy (micro and macro) and noise kinds."""
    summary: dict[str, Any] = {"n": len(scores)}
    for metric in (*BINARY_METRICS, "truncated", "refused"):
        value, applies = rate(s.get(metric) for s in scores)
        summary[metric] = value
        summary[f"{metric}_n"] = applies
    summary["noise_rate"] = None if summary["clean"] is None else 1 - summary["clean"]
    summary["noise_kinds"] = {kind: sum(kind in s.get("noise", []) for s in scores) for kind in ("prefix", "code_fence", "suffix")}
    per_field: dict[str, list[list[bool]]] = defaultdict(list)
    lenient_pairs: list[list[bool]] = []
    for s in scores:
        for path, pair in (s.get("fields") or {}).items():
            per_field[generic_path(path)].append(pair)
        lenient_pairs += list((s.get("fields_lenient") or s.get("fields") or {}).values())
    all_pairs = [pair for pairs in per_field.values() for pair in pairs]
    for index, name in ((0, "exact"), (1, "normalized")):
        summary[f"field_accuracy_{name}_micro"] = (sum(p[index] for p in all_pairs) / len(all_pairs)) if all_pairs else None
        field_rates = [sum(p[index] for p in pairs) / len(pairs) for pairs in per_field.values()]
        summary[f"field_accuracy_{name}_macro"] = (sum(field_rates) / len(field_rates)) if field_rates else None
    summary["field_accuracy"] = summary["field_accuracy_normalized_micro"]  # strict: the headline
    summary["field_accuracy_lenient"] = (sum(p[1] for p in lenient_pairs) / len(lenient_pairs)) if lenient_pairs else None
    summary.update(tool_summary(scores))
    summary["per_field"] = {
        path: {"n": len(pairs), "exact": sum(p[0] for p in pairs) / len(pairs), "normalized": sum(p[1] for p in pairs) / len(pairs)}
        for path, pairs in sorted(per_field.items())
    }
    return summary


def generic_path(path: str) -> str:
    """List indices folded, so `items.0.sku` and `items.1.sku` count as one field `items.*.sku`."""
    return ".".join("*" if part.isdigit() else part for part in path.split("."))
