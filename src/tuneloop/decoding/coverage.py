"""What the constrained decoder enforces of a JSON Schema, keyword by keyword, before any request is served.

xgrammar turns a schema into a grammar, but not every keyword becomes part of it: some are silently dropped
(`not`, `if/then/else`, `propertyNames`, `uniqueItems`, …), some only count where the node names its `type`
(`{"maxLength": 2}` alone lets any JSON through; `{"type": ["number", "null"], "minimum": 0}` is enforced),
`oneOf` becomes `anyOf`. So tuneloop walks the schema itself:
```
keyword at a node           verdict
  annotation (title, …)     annotation: no effect on what is valid
  enforced (see ENFORCED)   enforced: the grammar cannot write a value that breaks it
  anything else             refused: the request gets a 400 that names the keyword and where it sits
```
The rules are conservative: a keyword is listed as enforced only where `tests/test_schema_suite.py` shows, on the
whole draft 2020-12 JSON-Schema-Test-Suite, that the grammar accepts no instance the keyword forbids. The server
still validates every answer after generation (a grammar bug is reported as an error, never as a valid answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tuneloop.answers import schema_validator

ANNOTATIONS = frozenset({
    "title", "description", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly",
    "contentMediaType", "contentEncoding", "contentSchema",
    # `format` asserts nothing under draft 2020-12 (the format-annotation vocabulary); the grammar may narrow it
    "format",
})
TYPES = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})
# keyword → the one `type` a node must name for the grammar to enforce it ("any": enforced on every node)
ENFORCED = {
    "type": "any", "enum": "any", "const": "any", "anyOf": "any", "allOf": "any", "$ref": "any", "$defs": "any",
    "definitions": "any",
    "minLength": "string", "maxLength": "string", "pattern": "string",
    "minimum": "number", "maximum": "number", "exclusiveMinimum": "number", "exclusiveMaximum": "number",
    "multipleOf": "integer",
    "items": "array", "prefixItems": "array", "minItems": "array", "maxItems": "array", "uniqueItems": "array",
    "properties": "object", "required": "object", "additionalProperties": "object",
}
WHY_REFUSED = {
    "not": "the grammar cannot exclude values", "if": "conditional schemas are not compiled",
    "then": "conditional schemas are not compiled", "else": "conditional schemas are not compiled",
    "oneOf": "the grammar treats oneOf as anyOf (it cannot forbid matching two branches); use anyOf",
    "propertyNames": "the grammar does not constrain property names",
    "patternProperties": "the grammar does not constrain properties by pattern; name them in `properties`",
    "unevaluatedProperties": "not compiled; use additionalProperties", "unevaluatedItems": "not compiled; use items",
    "dependentRequired": "dependencies between properties are not compiled",
    "dependentSchemas": "dependencies between properties are not compiled",
    "contains": "not compiled", "minContains": "not compiled", "maxContains": "not compiled",
    "minProperties": "property counts are not compiled; list the keys in `required`",
    "maxProperties": "property counts are not compiled; name the allowed keys in `properties`",
    "$anchor": "only `#/...` JSON-pointer references are resolved", "$dynamicRef": "dynamic references are not compiled",
    "$dynamicAnchor": "dynamic references are not compiled", "$recursiveRef": "dynamic references are not compiled",
    "$recursiveAnchor": "dynamic references are not compiled", "$vocabulary": "custom vocabularies are not compiled",
    "$id": "a nested $id changes how references resolve; drop it",
}
INT64 = 2**63 - 1
MAX_DEPTH = 64


@dataclass(frozen=True)
class KeywordVerdict:
    path: str  # JSON pointer of the node, "#" for the root
    keyword: str
    verdict: str  # enforced | annotation | refused
    reason: str = ""

    def line(self) -> str:
        return f"{self.verdict:<10} {self.path}/{self.keyword}" + (f"  ({self.reason})" if self.reason else "")


@dataclass
class Coverage:
    """Every keyword of a schema with its verdict; `refused` empty means the engine enforces the whole schema."""

    keywords: list[KeywordVerdict] = field(default_factory=list)

    @property
    def refused(self) -> list[KeywordVerdict]:
        return [k for k in self.keywords if k.verdict == "refused"]

    @property
    def enforced(self) -> list[KeywordVerdict]:
        return [k for k in self.keywords if k.verdict == "enforced"]

    @property
    def ok(self) -> bool:
        return not self.refused

    def message(self) -> str:
        """One line naming every refused keyword and where it sits."""
        parts = [f"{k.path}/{k.keyword} ({k.reason})" for k in self.refused]
        return "the schema uses keywords the constrained decoder cannot enforce: " + "; ".join(parts)


def schema_coverage(schema: Any) -> Coverage:
    """Walk a JSON Schema (draft 2020-12) and give each keyword its verdict.

    >>> [k.line() for k in schema_coverage({"type": "string", "maxLength": 3, "not": {"const": "x"}}).keywords]
    ['enforced   #/type', 'enforced   #/maxLength', 'refused    #/not  (the grammar cannot exclude values)']
    >>> schema_coverage({"maxLength": 3}).refused[0].reason
    'maxLength is enforced only where the node names its type ("type": "string")'
    """
    coverage = Coverage()
    if not isinstance(schema, dict):
        coverage.keywords.append(KeywordVerdict("#", "(schema)", "refused", "the schema must be a JSON object"))
        return coverage
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        where = "#/" + "/".join(str(p) for p in err.absolute_path) if err.absolute_path else "#"
        coverage.keywords.append(KeywordVerdict(where, "(schema)", "refused", f"not a valid JSON Schema: {err.message}"))
        return coverage
    _walk(schema, "#", schema, coverage, depth=0, root=True)
    return coverage


def _walk(node: Any, path: str, root_schema: dict, coverage: Coverage, depth: int, root: bool = False) -> None:
    add = coverage.keywords.append
    if depth > MAX_DEPTH:
        add(KeywordVerdict(path, "(schema)", "refused", f"nested deeper than {MAX_DEPTH} levels"))
        return
    if node is True:
        return
    if node is False:
        add(KeywordVerdict(path, "false", "refused", "a `false` schema accepts nothing (only additionalProperties/items may be false)"))
        return
    node_type = node.get("type")
    types = {node_type} if isinstance(node_type, str) else set(node_type) if isinstance(node_type, list) else set()
    constraining = [k for k in node if k not in ANNOTATIONS and not k.startswith("x-")
                    and k not in ("$defs", "definitions", "$schema", "$id")]
    for keyword, value in node.items():
        here = f"{path}/{_escape(keyword)}"
        if keyword in ANNOTATIONS or keyword.startswith("x-"):
            add(KeywordVerdict(path, keyword, "annotation"))
        elif keyword in ("$schema", "$id") and root:
            add(KeywordVerdict(path, keyword, "annotation"))
        elif keyword in WHY_REFUSED:
            add(KeywordVerdict(path, keyword, "refused", WHY_REFUSED[keyword]))
        elif keyword not in ENFORCED:
            add(KeywordVerdict(path, keyword, "refused", "unknown keyword (a typo?); draft 2020-12 would ignore it"))
        else:
            reason = _refusal(keyword, value, node, types, constraining, root_schema)
            add(KeywordVerdict(path, keyword, "refused" if reason else "enforced", reason or ""))
            if reason:
                continue
            for child_path, child in _children(keyword, value, here):
                if child is False and keyword in ("additionalProperties", "items"):
                    continue
                _walk(child, child_path, root_schema, coverage, depth + 1)


def _refusal(keyword: str, value: Any, node: dict, types: set[str], constraining: list[str],
             root_schema: dict) -> str | None:
    """Why the grammar would not enforce `keyword` at this node, or None when it does.

    A type keyword applies to the values of its type the node's `type` lists; without a `type` the grammar
    drops it (any value passes), so it is refused there.
    """
    kind = ENFORCED[keyword]
    if kind != "any" and not types:
        return f'{keyword} is enforced only where the node names its type ("type": "{kind}")'
    if keyword == "type" and isinstance(value, list) and len(value) != len(set(value)):
        return "repeated types"
    if keyword in ("enum", "const") and "type" in node:  # the grammar writes the values as listed, ignoring type
        values = value if keyword == "enum" else [value]
        typed = schema_validator({"type": node["type"]})
        outside = [v for v in values if not typed.is_valid(v)]
        if outside:
            return f"{keyword} values {outside[:3]} are not of the node's type; the grammar would write them anyway"
    if keyword in ("anyOf", "allOf", "$ref") and len(constraining) > 1:
        others = ", ".join(k for k in constraining if k != keyword)
        return f"{keyword} beside other constraints ({others}) is not combined by the grammar; move them into it"
    if keyword == "allOf" and len(value) != 1:
        return "allOf with several schemas is not compiled; merge them into one schema"
    if keyword == "$ref":
        return _ref_problem(value, root_schema)
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and "integer" in types:
        if abs(value) > INT64:
            return "integer bounds beyond 64 bits are not compiled"
    if keyword == "multipleOf" and ("number" in types or not float(value).is_integer()):
        return "multipleOf is enforced only as a whole number on integers (\"type\": \"integer\")"
    if keyword == "uniqueItems" and value:
        return "the grammar cannot forbid repeated items"
    if keyword == "required":
        properties = node.get("properties") or {}
        missing = [name for name in value if name not in properties]
        if missing:
            return f"required names keys that `properties` does not define: {missing}"
    return None


def _ref_problem(ref: str, root_schema: dict) -> str | None:
    if ref == "#":
        return None
    if not ref.startswith("#/"):
        return "only local `#/...` references are resolved (no remote or relative URIs)"
    target: Any = root_schema
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return f"{ref} points at nothing in this schema"
    return None


def _children(keyword: str, value: Any, here: str):
    if keyword in ("properties", "$defs", "definitions"):
        return [(f"{here}/{_escape(name)}", child) for name, child in value.items()]
    if keyword in ("anyOf", "allOf", "prefixItems"):
        return [(f"{here}/{index}", child) for index, child in enumerate(value)]
    if keyword in ("items", "additionalProperties"):
        return [(here, value)]
    return []


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")
