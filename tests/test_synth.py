"""Synthesis: generators declared from templates × enums × pools, verifiers, the corner-case pack, `data synth`."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.create.corner_cases import KINDS, LONG_INPUT_CHARS, CornerCasePack
from tuneloop.data.io.formats import load_samples
from tuneloop.data.create.synth import Choice, Generator, SynthSpec, Template, Verifier, enum, grounded, keep_verified, pool
from tuneloop.answers import is_refusal
from tuneloop.examples.json_extraction import REFUSAL, synth_spec

SCHEMA = {
    "type": "object",
    "properties": {"product": {"type": ["string", "null"]}, "order": {"type": ["string", "null"]},
                   "urgency": {"enum": ["high", "medium"]}, "amount": {"type": ["number", "null"]}},
    "required": ["product", "order", "urgency", "amount"],
    "additionalProperties": False,
}
SLOTS = {
    "product": pool(["kettle", "lamp"]),
    "order": lambda rng: Choice(f"A{rng.randint(100, 999)}", f"A{rng.randint(100, 999)}"),
    "urgency": enum({"high": [" Urgent!"], "medium": [""]}),
    "amount": [Choice("$12.50", 12.5), Choice("$3.00", 3)],
}
ANSWER = {"product": "{product}", "order": "{order}", "urgency": "{urgency}", "amount": "{amount}"}


def small_generator(templates=None) -> Generator:
    return Generator(templates or [Template("My {product} broke[ (order {order})]. Refund {amount}.{urgency}", ANSWER)],
                     {**SLOTS, "order": pool(["A100", "B200"])}, instruction="Extract.")


def test_a_template_renders_typed_values_into_the_answer():
    sample = small_generator().render(small_generator().templates[0], random.Random(0), optional="keep")
    answer = json.loads(sample.output)
    assert answer["product"] in sample.input and answer["order"] in sample.input
    assert isinstance(answer["amount"], float | int) and f"{answer['amount']:.2f}" in sample.input
    assert answer["urgency"] == ("high" if "Urgent!" in sample.input else "medium")
    assert list(answer) == ["product", "order", "urgency", "amount"]
    assert sample.meta.source == "synth" and sample.lineage.source_id == sample.id


def test_a_dropped_optional_segment_makes_its_fields_null():
    gen = small_generator()
    dropped = gen.render(gen.templates[0], random.Random(0), optional="drop")
    assert "order" not in dropped.input and json.loads(dropped.output)["order"] is None
    unknown = gen.render(gen.templates[0], random.Random(0), optional="null")
    assert "(order unknown)" in unknown.input or "(order N/A)" in unknown.input
    assert json.loads(unknown.output)["order"] is None


def test_generation_is_deterministic_and_uses_every_template():
    templates = [Template("A {product}.", ANSWER | {"order": None, "amount": None, "urgency": "medium"}, name="a"),
                 Template("B {product}.", ANSWER | {"order": None, "amount": None, "urgency": "medium"}, name="b")]
    gen = small_generator(templates)
    first, again = gen.generate(10, seed=4), gen.generate(10, seed=4)
    assert [s.input for s in first] == [s.input for s in again]
    assert Counter(s.meta.template for s in first) == {"a": 5, "b": 5}


def test_the_verifier_rejects_invented_entities_and_schema_errors_with_reasons():
    invented = Template("Where is my parcel?", {"product": "lamp", "order": None, "urgency": "medium", "amount": None}, name="inv")
    wrong_type = Template("My {product} broke.", {"product": "{product}", "order": None, "urgency": "soon", "amount": None}, name="wt")
    good = Template("My {product} broke.", {"product": "{product}", "order": None, "urgency": "medium", "amount": None}, name="ok")
    rows = small_generator([invented, wrong_type, good]).generate(6, seed=0)
    result = keep_verified(rows, Verifier(schema=SCHEMA, rules=[grounded("product", "order")]), source="t.jsonl")
    assert {s.meta.template for s in result.samples} == {"ok"}
    reasons = {row.raw["meta"]["template"]: row.reason for row in result.failures}
    assert reasons["inv"] == "answer fields ['product'] are not stated in the input"
    assert reasons["wt"].startswith("schema: urgency: 'soon' is not one of")
    assert len(result.samples) + result.duplicates == 2  # two "ok" rows: kept, or counted as exact repeats
    assert all(row.stage == "synth" and row.source_file == "t.jsonl" for row in result.failures)


def test_a_free_check_function_adds_its_reasons():
    verifier = Verifier(check=lambda s: "too short" if len(s.input) < 20 else None)
    rows = small_generator().generate(4, seed=1)
    assert all(verifier.verify(r) == ([] if len(r.input) >= 20 else ["too short"]) for r in rows)


def test_synthesized_rows_all_pass_their_verifier():
    spec = synth_spec()
    result = spec.synthesize(400, seed=3)
    assert result.failures == []
    assert len(result.samples) + result.duplicates == 400
    assert all(spec.verifier.verify(row) == [] for row in result.samples)
    assert set(result.counts) == {"golden", "negative", "boundary", "generic"}


def test_the_corner_case_pack_covers_every_kind():
    gen = synth_spec().generator
    rows = CornerCasePack(refusal=REFUSAL).rows(gen, 4 * len(KINDS), seed=0)
    by_kind: dict[str, list] = {}
    for row in rows:
        by_kind.setdefault(row.meta.corner_case, []).append(row)
        assert row.sample_type == "boundary" and row.meta.difficulty == "hard"
    assert set(by_kind) == set(KINDS)
    for row in by_kind["empty_input"]:
        assert row.input.strip() == "" and row.expected == "refuse" and is_refusal(row.output, form=REFUSAL)
    for kind in ("null_values", "missing_fields"):
        assert all(None in json.loads(r.output).values() and not is_refusal(r.output, form=REFUSAL) for r in by_kind[kind])
    assert all(len(r.input) >= LONG_INPUT_CHARS[r.meta.lang] for r in by_kind["extreme_length"])
    assert all(r.expected == "answer" for k in KINDS if k != "empty_input" for r in by_kind[k])
    assert any("30" in r.input or "13" in r.input or "31" in r.input for r in by_kind["malformed_dates"])


def test_a_corner_pack_without_usable_templates_says_what_it_needs():
    gen = small_generator([Template("Hi {product}", ANSWER | {"order": None, "amount": None, "urgency": "medium"})])
    with pytest.raises(ValueError, match="optional"):
        CornerCasePack(refusal={}).rows(gen, 1)  # null_values needs an optional segment


def test_synth_command_keeps_verified_rows_and_reports_failures(tmp_path, monkeypatch):
    (tmp_path / "gen.py").write_text(
        "from tuneloop.data.create.synth import Generator, SynthSpec, Template, Verifier, grounded, pool\n"
        "good = Template('My {product} broke.', {'product': '{product}'}, name='good')\n"
        "bad = Template('It broke.', {'product': 'lamp'}, name='bad')\n"
        "SPEC = SynthSpec(Generator([good, bad], {'product': pool(['kettle', 'lamp', 'mug'])}), Verifier(rules=[grounded('product')]))\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "synth", "--spec", "gen.py:SPEC", "--n", "10", "--out", "out.jsonl"])
    assert result.exit_code == 0, result.output
    kept = load_samples(tmp_path / "out.jsonl")
    assert kept and all(r.meta.template == "good" for r in kept)
    failures = (tmp_path / "out.quarantine.jsonl").read_text().splitlines()
    assert len(failures) == 5 and "5 failed verification" in result.output


def test_synth_command_names_a_missing_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "synth", "--spec", "nothere.py:SPEC"])
    assert result.exit_code == 2 and "no such spec file" in result.output


def test_spec_shares_corner_cases():
    spec = SynthSpec(synth_spec().generator, synth_spec().verifier, CornerCasePack(refusal=REFUSAL), corner_share=0.5)
    result = spec.synthesize(40, seed=0)
    assert sum(1 for s in result.samples if s.meta.model_extra.get("corner_case")) >= 15
