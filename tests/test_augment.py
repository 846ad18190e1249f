"""Clone augmentation: the answer contract, the offline rules, lineage, and the `data augment` command."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.create.augment import augment_samples, make_variant, parse_per_seed, rule_context
from tuneloop.data.create.llm import Rewrites
from tuneloop.data.create.rules import RULES, Edit, RuleContext, entity_swap, punctuation_width, typo
from tuneloop.data.create.contract import contract_violations
from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.records import Sample

ANSWER = {"intent": "refund", "product": "wireless earbuds", "order_id": "K482913", "urgency": "high", "refund_amount": 35.5}
POOLS = {"product": ["desk lamp", "yoga mat", "蓝牙音箱", "保温杯"], "order_id": ["P100200", "Q300400"]}


def seed_en() -> Sample:
    return Sample(id="s-en", instruction="Extract the ticket fields as JSON.",
                  input="My wireless earbuds arrived broken (order K482913). I want a refund of $35.50. This is urgent!",
                  output=ANSWER, rejected={**ANSWER, "intent": "exchange"})


def seed_zh() -> Sample:
    return Sample(id="s-zh", instruction="Extract the ticket fields as JSON.",
                  input="您好，我的蓝牙音箱收到就坏了，订单号B778812，我要退款49元。很急！",
                  output={**ANSWER, "product": "蓝牙音箱", "order_id": "B778812", "refund_amount": 49})


def variant_of(seed: Sample, text: str, output: dict | None = None) -> Sample:
    return seed.model_copy(update={"id": "v", "input": text, "output": json.dumps(output or json.loads(seed.output), ensure_ascii=False)})


# -- the answer contract -----------------------------------------------------------------------------------------
def test_contract_rejects_a_variant_whose_answer_changed_meaning():
    seed = seed_en()
    variant = variant_of(seed, seed.input + " Thanks!", {**ANSWER, "refund_amount": 40})
    reasons = contract_violations(seed, variant)
    assert len(reasons) == 1
    assert "refund_amount 35.5 → 40" in reasons[0]


def test_contract_accepts_a_consistent_entity_swap():
    seed = seed_en()
    swap = {"wireless earbuds": "desk lamp"}
    variant = variant_of(seed, seed.input.replace("wireless earbuds", "desk lamp"), {**ANSWER, "product": "desk lamp"})
    assert contract_violations(seed, variant, swap) == []


def test_contract_rejects_a_swap_the_answer_does_not_follow():
    seed = seed_en()
    swap = {"wireless earbuds": "desk lamp"}
    variant = variant_of(seed, seed.input.replace("wireless earbuds", "desk lamp"))  # answer still says earbuds
    reasons = contract_violations(seed, variant, swap)
    assert any('$.product "desk lamp" → "wireless earbuds"' in r for r in reasons)


def test_contract_rejects_changed_keys_and_types():
    seed = seed_en()
    as_string = variant_of(seed, seed.input, {**ANSWER, "refund_amount": "35.5"})
    assert "type changed from number to string" in contract_violations(seed, as_string)[0]
    renamed = dict(ANSWER)
    renamed["amount"] = renamed.pop("refund_amount")
    assert "keys changed" in contract_violations(seed, variant_of(seed, seed.input, renamed))[0]


def test_contract_rejects_an_input_that_no_longer_states_the_answer():
    seed = seed_en()
    variant = variant_of(seed, seed.input.replace("K482913", "K48913"))  # a typo inside the order id
    reasons = contract_violations(seed, variant)
    assert reasons == ["$.order_id 'K482913' is stated by the seed input but no longer by the variant input"]


def test_contract_compares_plain_text_answers_exactly():
    seed = Sample(input="Translate: cat", output="chat")
    assert contract_violations(seed, seed.model_copy(update={"input": "Translate:  cat"})) == []
    assert contract_violations(seed, seed.model_copy(update={"output": "chien"})) != []


# -- rules -------------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(sorted(RULES)), rng_seed=st.integers(0, 10_000), zh=st.booleans())
def test_every_rule_keeps_the_answer_contract(rule, rng_seed, zh):
    seed = seed_zh() if zh else seed_en()
    edit = RULES[rule](rule_context(seed, POOLS), random.Random(rng_seed))
    if edit is None:
        return
    variant = make_variant(seed, edit, rule)
    assert contract_violations(seed, variant, edit.replacements) == []
    assert variant.input != seed.input


def test_typo_never_lands_in_an_order_id_or_amount():
    seed = seed_en()
    for rng_seed in range(200):
        edit = typo(rule_context(seed, {}), random.Random(rng_seed))
        assert "K482913" in edit.text and "35.50" in edit.text and "wireless earbuds" in edit.text


def test_entity_swap_applies_the_same_replacement_to_the_answer_and_rejected():
    seed = seed_en()
    edit = entity_swap(rule_context(seed, POOLS), random.Random(3))
    (old, new), = edit.replacements.items()
    variant = make_variant(seed, edit, "entity_swap")
    answer, rejected = json.loads(variant.output), json.loads(variant.rejected)
    assert new in variant.input and old not in variant.input
    assert new in answer.values() and old not in answer.values()
    assert new in rejected.values()
    assert not any("\u4e00" <= ch <= "\u9fff" for ch in new)  # an English message gets an English entity


def test_chinese_punctuation_rule_changes_width_but_not_the_order_id():
    seed = seed_zh()
    edits = [punctuation_width(rule_context(seed, {}), random.Random(i)) for i in range(30)]
    changed = {e.text for e in edits if e is not None}
    assert any("您好," in t for t in changed)  # full-width comma made half-width
    assert len(changed) >= 2
    assert all("B778812" in t and "49元" in t for t in changed)


def test_rules_that_do_not_apply_say_so():
    assert typo(RuleContext(text="请问B778812", protected=("B778812",)), random.Random(0)) is None  # nothing to misspell
    assert entity_swap(rule_context(seed_en(), {}), random.Random(0)) is None  # no pools


# -- orchestration -----------------------------------------------------------------------------------------------
def test_every_variant_carries_lineage_back_to_its_seed():
    seeds = [seed_en(), seed_zh()]
    result = augment_samples(seeds, per_seed=4, pools=POOLS)
    assert len(result.variants) == 8 and not result.quarantined
    for variant in result.variants:
        assert variant.lineage.source_id == variant.lineage.parent_id == variant.id.split("~")[0]
        assert variant.lineage.augment_round == 1
        assert all(rule in RULES for rule in variant.lineage.augment_type.split("+"))
    second = augment_samples(result.variants[:1], per_seed=1)
    assert second.variants[0].lineage.augment_round == 2
    assert second.variants[0].lineage.source_id == result.variants[0].lineage.source_id
    assert second.variants[0].lineage.parent_id == result.variants[0].id


def test_augmentation_is_deterministic_and_order_independent():
    first = augment_samples([seed_en(), seed_zh()], per_seed=5, pools=POOLS, seed=1)
    again = augment_samples([seed_zh(), seed_en()], per_seed=5, pools=POOLS, seed=1)
    assert sorted(v.input for v in first.variants) == sorted(v.input for v in again.variants)
    other = augment_samples([seed_en(), seed_zh()], per_seed=5, pools=POOLS, seed=2)
    assert sorted(v.input for v in first.variants) != sorted(v.input for v in other.variants)


def test_rewrites_that_break_the_contract_are_quarantined_with_reasons():
    seed = seed_en()
    rewrites = {seed.id: Rewrites(seed.id, [
        ("paraphrase", "My wireless earbuds (order K482913) came broken; please refund $35.50, urgent!"),
        ("paraphrase", "My earbuds came broken, please refund me. Urgent!"),  # lost product, order id and amount
    ], ["llm:scenario: the LLM answer is not a JSON array of strings: 'sorry'"])}
    result = augment_samples([seed], per_seed=2, rules=["tone"], rewrites=rewrites, source_file="seeds.jsonl")
    kinds = [v.lineage.augment_type for v in result.variants]
    assert kinds == ["llm:paraphrase", "tone"]
    reasons = [q.reason for q in result.quarantined]
    assert reasons[0].startswith("llm:scenario: the LLM answer is not a JSON array")
    assert "$.order_id 'K482913'" in reasons[1] and "$.product 'wireless earbuds'" in reasons[1]
    assert result.quarantined[1].raw["input"].startswith("My earbuds came broken")


@pytest.mark.parametrize(("text", "bounds"), [("3", (3, 3)), ("3..8", (3, 8)), (5, (5, 5))])
def test_per_seed_takes_a_count_or_a_range(text, bounds):
    assert parse_per_seed(text) == bounds


@pytest.mark.parametrize("text", ["0", "9", "5..3", "three"])
def test_per_seed_outside_one_to_eight_is_an_error(text):
    with pytest.raises(ValueError, match="--per-seed"):
        parse_per_seed(text)


def test_augment_command_writes_variants_quarantine_and_spot_check(tmp_path, monkeypatch):
    seeds_file = write_samples(tmp_path / "seeds.jsonl", [seed_en(), seed_zh()])
    pools_file = tmp_path / "pools.json"
    pools_file.write_text(json.dumps(POOLS), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "augment", str(seeds_file), "--out", "out/v.jsonl", "--per-seed", "3..5",
                                      "--pools", str(pools_file)])
    assert result.exit_code == 0, result.output
    variants = load_samples(tmp_path / "out" / "v.jsonl")
    assert 6 <= len(variants) <= 10
    checks = [json.loads(line) for line in (tmp_path / "out" / "v.spotcheck.jsonl").read_text().splitlines()]
    assert len(checks) == len(variants)  # fewer variants than the default spot-check size: all of them
    assert {c["seed_input"] for c in checks} == {seed_en().input, seed_zh().input}
    assert "Augmentation spot check" in (tmp_path / "out" / "v.spotcheck.html").read_text()
    assert (tmp_path / "out" / "v.quarantine.jsonl").exists()


def test_augment_command_names_the_fix_for_a_bad_range(tmp_path):
    seeds_file = write_samples(tmp_path / "seeds.jsonl", [seed_en()])
    result = CliRunner().invoke(app, ["data", "augment", str(seeds_file), "--out", str(tmp_path / "v.jsonl"), "--per-seed", "12"])
    assert result.exit_code == 2
    assert "between 1 and 8" in result.output


def test_make_variant_keeps_extras_and_meta():
    seed = seed_en().model_copy(update={"sample_type": "negative"})
    variant = make_variant(seed, Edit(seed.input + " Thanks."), "length")
    assert variant.sample_type == "negative" and variant.instruction == seed.instruction
    assert variant.id != seed.id and variant.output == seed.output
