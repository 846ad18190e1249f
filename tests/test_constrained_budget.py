"""The closing budget of constrained decoding: whatever a model writes, the answer closes within max_tokens.

A random "model" here picks any token the grammar allows; the budget must still end every answer as JSON that
matches the schema, without a model forward, on the tiny tokenizer.
"""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.decoding.engine import Engine, GenerationRequest
from tuneloop.decoding.grammar import Budget, Grammars
from tuneloop.train.templates import prompt_ids

SCHEMAS = [
    {"type": "object", "properties": {
        "intent": {"type": "string", "enum": ["refund", "delivery", "other"]},
        "order_id": {"type": ["string", "null"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["name", "qty"]}},
        "note": {"type": "string"}},
     "required": ["intent", "order_id", "items", "note"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                      "ok": {"type": "boolean"}, "amount": {"type": "number"}},
     "required": ["tags", "ok", "amount"]},
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir), dtype=torch.float32, device="cpu")
    return Engine(model, tokenizer)


def _random_answer(engine: Engine, schema: dict, spare: int, seed: int) -> tuple[str, int, int]:
    """Decode with uniformly random allowed tokens, max_tokens = shortest closing + `spare`.

    Returns the answer text, its token count and max_tokens.
    """
    rng, grammars = random.Random(seed), engine.grammars
    row = grammars.row(grammars.compile({"type": "json_schema", "json_schema": {"schema": schema}}))
    max_tokens = row.closing_length() + spare
    budget = Budget(row, max_tokens)
    written: list[int] = []
    while not row.finished and len(written) < max_tokens:
        logits = torch.zeros(grammars.vocab_size)
        row.mask_logits(logits)
        allowed = torch.nonzero(logits > float("-inf")).flatten().tolist()
        token = budget.choose(rng.choice(allowed))
        budget.step()
        row.accept(token)
        written.append(token)
    return engine.tokenizer.decode(written, skip_special_tokens=True), len(written), max_tokens


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema_index=st.integers(0, len(SCHEMAS) - 1), spare=st.integers(0, 80), seed=st.integers(0, 10**6))
def test_any_allowed_tokens_still_close_as_valid_json_within_max_tokens(engine, schema_index, spare, seed):
    schema = SCHEMAS[schema_index]
    text, tokens, max_tokens = _random_answer(engine, schema, spare, seed)
    assert tokens <= max_tokens
    jsonschema.validate(json.loads(text), schema)


def test_a_token_that_spells_part_of_the_path_keeps_the_rest_of_the_path(engine):
    grammars = engine.grammars
    row = grammars.row(grammars.compile({"type": "json_object"}))
    path = row.closing_path()
    first = grammars.decoded[path[0]]
    assert first == b"{"
    # a longer first step written as two tokens: the path's first two pieces, one token at a time
    merged = grammars.token_of.get(first + grammars.decoded[path[1]])
    if merged is not None:
        assert row.respelled(path, merged) == path[2:]
    assert row.respelled(path, path[0]) == path[1:]
    assert row.finishes(path[1:], after=path[0])
    assert not row.finishes(path, after=path[0])  # one `{` too many never finishes


def test_closing_inside_a_string_ends_the_string_before_writing_anything(engine):
    grammars = engine.grammars
    row = grammars.row(grammars.compile({"type": "json_schema", "json_schema": {"schema": SCHEMAS[0]}}))
    for token in engine.tokenizer.encode('{"intent": "refund", "order_id": "A1', add_special_tokens=False):
        row.accept(token)
    assert row.nesting.in_string
    assert grammars.decoded[row.closing_token()].startswith(b'"')


def test_min_tokens_keeps_free_text_going_past_stop_tokens(engine):
    prompt = prompt_ids(engine.tokenizer, [{"role": "user", "content": "hi"}])
    result = engine.generate([GenerationRequest(prompt, max_tokens=24, min_tokens=24, temperature=0)])[0]
    assert result.completion_tokens == 24 and result.finish_reason == "length"


def test_constrained_and_free_rows_share_a_batch(engine):
    prompt = prompt_ids(engine.tokenizer, [{"role": "user", "content": "ticket"}])
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMAS[1]}}
    results = engine.generate([GenerationRequest(prompt, max_tokens=12, temperature=1.0, seed=1),
                               GenerationRequest(prompt, max_tokens=80, temperature=1.0, seed=2, response_format=fmt),
                               GenerationRequest(prompt, max_tokens=60, temperature=1.0, seed=3, response_format=fmt)])
    assert results[0].completion_tokens <= 12
    for result in results[1:]:
        jsonschema.validate(json.loads(result.text), SCHEMAS[1])


def test_constrained_eval_decodes_with_the_serving_engine_and_never_cuts_an_answer(tiny_model_dir):
    """eval's constrained mode is the server's decoder: with max_new_tokens a little above the shortest answer,
    every answer closes and validates (its own xgrammar processor used to cut them at max_new_tokens)."""
    from tuneloop.eval.backends import LocalBackend, ServedConstraint, schema_constraint
    from tuneloop.models import load_causal_lm
    from tuneloop.decoding.grammar import ResponseFormatError

    model, tokenizer = load_causal_lm(str(tiny_model_dir), dtype=torch.float32, device="cpu")
    schema = SCHEMAS[1]
    constraint = schema_constraint(model, tokenizer, schema)
    assert isinstance(constraint, ServedConstraint)
    shortest = constraint.engine.grammars.row(constraint.engine.grammars.compile(constraint.response_format)).closing_length()
    backend = LocalBackend(model, tokenizer, batch_size=4, max_new_tokens=shortest + 6, do_sample=True)
    prompts = [backend.render([{"role": "user", "content": f"ticket {i}"}]) for i in range(8)]
    generations = backend.generate(prompts, constraint)
    assert [g.finish_reason for g in generations] == ["stop"] * 8 and not any(g.error for g in generations)
    for generation in generations:
        jsonschema.validate(json.loads(generation.text), schema)
    too_short = LocalBackend(model, tokenizer, batch_size=4, max_new_tokens=shortest - 1)
    with pytest.raises(ResponseFormatError, match="max_new_tokens"):
        too_short.generate(prompts, constraint)
    with pytest.raises(ResponseFormatError, match="not"):  # the same coverage check as the server's
        schema_constraint(model, tokenizer, {"type": "object", "properties": {"a": {"type": "integer"}},
                                             "not": {"required": ["a"]}})
