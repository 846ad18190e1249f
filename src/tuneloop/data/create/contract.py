"""The answer contract of a clone variant: what may change between a seed and a variant made from it.

```
seed      input: "My earbuds (order A123) broke"        output: {"product": "earbuds", "order_id": "A123", ...}
variant   input: "my  earbuds (order A123) broke!!"     output: unchanged                          ✓
variant   input: "My speaker (order A123) broke"        output: product "speaker"  (earbuds→speaker)  ✓
variant   input: "My earbuds (order A1Z3) broke"        output: unchanged  → order_id A123 no longer in input ✗
variant   input: "My earbuds (order A123) broke"        output: refund_amount 35 → 40, no replacement     ✗
```

A variant keeps the seed's answer, except that an entity replaced in the input is replaced the same way in the
output. A JSON answer keeps its keys and the type of every value. Every string or number of the answer that the
seed's input states must still be stated by the variant's input. `contract_violations` returns the reasons a variant
breaks the contract (empty: it holds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tuneloop.answers import parse_json
from tuneloop.records import Sample


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def shape_differences(before: Any, after: Any, path: str = "$") -> list[str]:
    """Where two JSON values differ in keys or value types (a null may become a string or back: absence is data)."""
    kinds = {json_type(before), json_type(after)}
    if len(kinds) > 1 and not ("null" in kinds and kinds <= {"null", "string", "number"}):
        return [f"{path}: type changed from {json_type(before)} to {json_type(after)}"]
    if isinstance(before, dict) and isinstance(after, dict):
        problems = []
        if list(before) != list(after):
            missing = [k for k in before if k not in after]
            extra = [k for k in after if k not in before]
            detail = f"missing {missing}" if missing else ""
            detail += f"{'; ' if detail else ''}added {extra}" if extra else ""
            problems.append(f"{path}: keys changed ({detail or 'order changed'})")
        for key in before.keys() & after.keys():
            problems.extend(shape_differences(before[key], after[key], f"{path}.{key}"))
        return problems
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{path}: list length changed from {len(before)} to {len(after)}"]
        return [p for i, (b, a) in enumerate(zip(before, after)) for p in shape_differences(b, a, f"{path}[{i}]")]
    return []


def replace_in_value(value: Any, replacements: Mapping[str, str]) -> Any:
    """A JSON value with every replaced entity swapped inside its strings; keys and types untouched."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [replace_in_value(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: replace_in_value(v, replacements) for k, v in value.items()}
    return value


def replace_in_answer(answer: str, replacements: Mapping[str, str]) -> str:
    """The seed's answer text with the variant's entity replacements applied (JSON stays serialized the same way)."""
    if not replacements:
        return answer
    ok, value = parse_json(answer)
    if ok and isinstance(value, (dict, list)):
        return json.dumps(replace_in_value(value, replacements), ensure_ascii=False)
    return replace_in_value(answer, replacements)


def stated_values(value: Any, path: str = "$") -> list[tuple[str, list[str]]]:
    """Each string and number leaf of an answer with the spellings by which an input can state it."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in stated_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in stated_values(v, f"{path}[{i}]")]
    if isinstance(value, str) and value.strip():
        return [(path, [value])]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        spellings = {str(value), f"{value:g}", f"{value:.2f}"}
        if float(value).is_integer():
            spellings.add(str(int(value)))
        return [(path, sorted(spellings, key=len, reverse=True))]
    return []


def contract_violations(seed: Sample, variant: Sample, replacements: Mapping[str, str] | None = None) -> list[str]:
    """Why `variant` breaks the answer contract of `seed` under the given input entity replacements (empty: it holds)."""
    replacements = dict(replacements or {})
    reasons: list[str] = []
    if variant.expected != seed.expected or variant.sample_type != seed.sample_type:
        reasons.append(
            f"sample_type/expected changed from {seed.sample_type}/{seed.expected} to {variant.sample_type}/{variant.expected}"
        )
    for old, new in replacements.items():
        if old not in seed.input:
            reasons.append(f"replacement {old!r}→{new!r}: {old!r} is not in the seed input")
        if new not in variant.input:
            reasons.append(f"replacement {old!r}→{new!r}: {new!r} is not in the variant input")
        if old in variant.input and old not in new:
            reasons.append(f"replacement {old!r}→{new!r}: {old!r} is still in the variant input (replaced inconsistently)")

    expected_answer = replace_in_answer(seed.output, replacements)
    seed_is_json, seed_value = parse_json(seed.output)
    if seed_is_json and isinstance(seed_value, (dict, list)):
        ok, variant_value = parse_json(variant.output)
        if not ok:
            return reasons + ["the variant's answer is not valid JSON while the seed's is"]
        shape = shape_differences(seed_value, variant_value)
        if shape:
            return reasons + [f"keys or types of the answer changed: {'; '.join(shape)}"]
        _, expected_value = parse_json(expected_answer)
        if variant_value != expected_value:
            changed = diff_leaves(expected_value, variant_value)
            reasons.append(f"the answer changed without a matching input replacement: {'; '.join(changed)}")
        reasons.extend(grounding_violations(seed, variant, expected_value, replacements))
    elif variant.output != expected_answer:
        reasons.append("the answer changed without a matching input replacement")
    return reasons


def diff_leaves(expected: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        return [d for k in expected for d in diff_leaves(expected[k], actual.get(k), f"{path}.{k}")]
    if isinstance(expected, list) and isinstance(actual, list):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in diff_leaves(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path} {json.dumps(expected, ensure_ascii=False)} → {json.dumps(actual, ensure_ascii=False)}"]


def grounding_violations(seed: Sample, variant: Sample, expected_value: Any, replacements: Mapping[str, str]) -> list[str]:
    """Answer values the seed input states that the variant input no longer states (e.g. a typo inside an order id)."""
    reasons = []
    seed_input = replace_in_value(seed.input, replacements)
    for path, spellings in stated_values(expected_value):
        stated = [s for s in spellings if s in seed_input]
        if stated and not any(s in variant.input for s in stated):
            reasons.append(f"{path} {stated[0]!r} is stated by the seed input but no longer by the variant input")
    return reasons
