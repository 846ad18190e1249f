"""Constrained decoding keeps its promise on the official JSON-Schema-Test-Suite (draft 2020-12, vendored).

Every schema of the suite gets a verdict per keyword (`tuneloop serve --check-schema`). For each schema the engine
accepts, the grammar it compiles must reject every instance the suite marks invalid: an accepted keyword is a
keyword enforced. Refused ones get a 400 naming the keyword, and no answer the server returns as valid fails its
schema.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import jsonschema
import pytest
import xgrammar as xgr
from typer.testing import CliRunner

from tuneloop.decoding.coverage import schema_coverage

SUITE = Path(__file__).parent / "fixtures" / "json-schema-test-suite" / "draft2020-12"


def suite_groups() -> list[tuple[str, dict]]:
    groups = []
    for path in sorted(SUITE.glob("*.json")):
        groups += [(f"{path.stem}: {group['description']}", group) for group in json.loads(path.read_text())]
    return groups


def _accepts(compiled: xgr.CompiledGrammar, value) -> bool:
    """Whether the grammar lets the model write `value` (in any of the spellings a model could use)."""
    for separators in ((",", ":"), (", ", ": ")):
        for ascii_only in (True, False):
            matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
            text = json.dumps(value, separators=separators, ensure_ascii=ascii_only)
            if matcher.accept_string(text) and matcher.is_terminated():
                return True
    return False


@pytest.fixture(scope="module")
def grammars(tiny_model_dir):
    from tuneloop.models import load_causal_lm
    from tuneloop.decoding.engine import Engine

    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    return Engine(model, tokenizer).grammars


def test_the_vendored_suite_is_whole():
    assert (SUITE.parent / "LICENSE").read_text().startswith("Copyright")
    assert len(list(SUITE.glob("*.json"))) >= 45 and len(suite_groups()) > 350


def test_every_accepted_suite_schema_compiles_and_its_grammar_rejects_every_invalid_instance(grammars):
    accepted, refused, leaks = 0, 0, []
    for name, group in suite_groups():
        coverage = schema_coverage(group["schema"])
        assert coverage.keywords or group["schema"] in (True, {}), name
        if not coverage.ok:
            refused += 1
            assert all(k.reason for k in coverage.refused)
            continue
        accepted += 1
        compiled = grammars.compile({"type": "json_schema", "json_schema": {"schema": group["schema"]}})
        for test in group["tests"]:
            if not test["valid"] and _accepts(compiled, test["data"]):
                leaks.append(f"{name} / {test['description']}")
    assert not leaks, leaks
    assert accepted >= 70 and refused >= 250  # both sides are exercised


def test_the_keywords_that_used_to_pass_unenforced_are_refused_by_name():
    for schema, keyword in (
        ({"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}}, "not"),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
        ({"type": "string", "if": {"minLength": 2}, "then": {"maxLength": 3}}, "if"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "unevaluatedProperties": False}, "unevaluatedProperties"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "maxProperties": 0}, "maxProperties"),
        ({"required": ["a"]}, "required"),
        ({"type": "object", "required": ["a"]}, "required"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "requird": ["a"]}, "requird"),
    ):
        coverage = schema_coverage(schema)
        assert not coverage.ok and keyword in coverage.message(), (schema, coverage.message())


def test_suite_schemas_through_the_server_never_return_an_invalid_answer_as_valid(tiny_model_dir, tmp_path):
    from tuneloop.serve.server import serve_in_background

    rng = random.Random(5)
    groups = suite_groups()
    accepted = [g for _, g in groups if schema_coverage(g["schema"]).ok]
    refused = [g for _, g in groups if not schema_coverage(g["schema"]).ok]
    sample = rng.sample(accepted, 30) + rng.sample(refused, 30)
    statuses = {"valid": 0, "refused": 0}
    with serve_in_background(tiny_model_dir, tmp_path / "t.db", model_name="tiny") as base_url:
        with httpx.Client(timeout=120) as http:
            for seed, group in enumerate(sample):
                response = http.post(f"{base_url}/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "answer"}], "max_tokens": 96,
                    "temperature": 1.0, "seed": seed,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": group["schema"]}}})
                body = response.json()
                if response.status_code == 200:
                    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), group["schema"])
                    statuses["valid"] += 1
                else:
                    assert response.status_code == 400, body
                    message = body["error"]["message"]
                    if group in refused:
                        assert any(f"/{k.keyword} (" in message for k in schema_coverage(group["schema"]).refused)
                    else:
                        assert "cannot hold a complete answer" in message
                    statuses["refused"] += 1
    print(f"\n60 suite schemas through the server: {statuses}")
    assert statuses["valid"] >= 25 and statuses["refused"] >= 30


def test_check_schema_lists_each_keyword_and_fails_on_a_refused_one(tmp_path):
    from tuneloop.cli.main import app

    good = tmp_path / "ticket.json"
    good.write_text(json.dumps({"type": "object", "title": "ticket", "properties": {
        "intent": {"type": "string", "enum": ["refund", "other"]}, "qty": {"type": "integer", "minimum": 0}},
        "required": ["intent"]}))
    result = CliRunner().invoke(app, ["serve", "--check-schema", str(good)])
    assert result.exit_code == 0, result.output
    assert "enforced   #/properties/qty/minimum" in result.output and "annotation #/title" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "string"}}, "maxProperties": 1}))
    result = CliRunner().invoke(app, ["serve", "--check-schema", str(bad)])
    assert result.exit_code != 0 and "refused    #/maxProperties" in result.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object",\n "properties": }')
    result = CliRunner().invoke(app, ["serve", "--check-schema", str(broken)])
    assert result.exit_code != 0 and "line 2" in result.output


def test_type_lists_and_enums_beside_type_are_enforced_or_refused_never_leaked(grammars):
    """The shapes the suite rarely uses: nullable types with bounds, enums beside a type, every pair of types."""
    import itertools

    values = [None, True, 0, 1, 2, 3, -1, 2.5, 10, "", "a", "ab", "abc", "aaa", [], [1], [1, 2], ["a"], {}, {"a": 1}]
    keywords = [{"minimum": 1}, {"exclusiveMaximum": 2}, {"minLength": 2}, {"maxLength": 2}, {"pattern": "^a+$"},
                {"minItems": 1}, {"maxItems": 1}, {"multipleOf": 2}, {"items": {"type": "integer"}},
                {"properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"enum": [1, "a", None, 2.5]}]
    types = ["integer", "number", "string", "array", "object", "null", "boolean"]
    leaks, enforced = [], 0
    for size in (1, 2):
        for chosen in itertools.combinations(types, size):
            for keyword in keywords:
                schema = {"type": list(chosen) if size > 1 else chosen[0], **keyword}
                if not schema_coverage(schema).ok:
                    continue
                try:
                    compiled = grammars.compile({"type": "json_schema", "json_schema": {"schema": schema}})
                except Exception:  # refused at compile time: a 400, not a leak
                    continue
                enforced += 1
                validator = jsonschema.Draft202012Validator(schema)
                leaks += [(schema, v) for v in values if not validator.is_valid(v) and _accepts(compiled, v)]
    assert not leaks, leaks[:5]
    assert enforced > 250
    assert schema_coverage({"type": ["number", "null"], "minimum": 0}).ok
    assert not schema_coverage({"type": "integer", "enum": [1, "a"]}).ok


def test_the_shipped_example_schema_is_enforced_whole():
    example = Path(__file__).parents[1] / "src" / "tuneloop" / "examples" / "json_extraction" / "ticket.schema.json"
    coverage = schema_coverage(json.loads(example.read_text()))
    assert coverage.ok, coverage.message()
