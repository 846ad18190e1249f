"""Dedup: exact and near duplicates are caught, distinct rows are not, and the best copy is kept."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.dedup import dedup, lsh_bands
from tuneloop.project import DedupConfig
from tuneloop.records import Sample

WORDS = [f"w{i}" for i in range(5000)]


def sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hanzi(rng: random.Random, n: int = 60) -> str:
    return "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(n))


def clean_rows(count: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        text = sentence(rng) if i % 2 else hanzi(rng)
        rows.append(Sample(id=f"c{i}", instruction="Answer.", input=text, output=sentence(rng, 10)))
    return rows


def test_distinct_rows_are_all_kept():
    rows = clean_rows(400)
    result = dedup(rows)
    assert len(result.kept) == 400 and not result.removed


def test_exact_duplicate_after_normalization_is_removed():
    rows = clean_rows(50)
    copy = Sample(id="dup", instruction="Answer.", output=rows[7].output,
                  input="  " + rows[7].input.upper().replace(" ", "\u3000") + " ")
    result = dedup([*rows, copy])
    assert [(r.sample.id, r.kept_id, r.kind) for r in result.removed] == [("dup", "c7", "exact-row")]


def test_near_duplicates_in_english_and_chinese_are_removed():
    rows = clean_rows(200)
    english = Sample(id="near-en", instruction="Answer.", output=rows[1].output,
                     input=rows[1].input.replace(rows[1].input.split()[15], "changed"))
    chinese = Sample(id="near-zh", instruction="Answer.", output=rows[0].output, input=rows[0].input[:30] + "变" + rows[0].input[31:])
    result = dedup([*rows, english, chinese])
    removed = {r.sample.id: r for r in result.removed}
    assert set(removed) == {"near-en", "near-zh"}
    assert removed["near-en"].kind == "near" and removed["near-en"].similarity >= 0.8
    assert removed["near-zh"].kept_id == "c0"


def test_the_best_copy_is_kept_reviewed_over_annotated_over_original_over_augmented():
    base = Sample(id="orig", instruction="Summarize.", input="the same long text about an order that is late", output="late")
    augmented = base.model_copy(update={"id": "aug", "lineage": base.lineage.model_copy(update={"augment_type": "paraphrase", "source_id": "s2"})})
    annotated = base.model_copy(update={"id": "ann", "meta": base.meta.model_copy(update={"annotator": "ann"}),
                                        "lineage": base.lineage.model_copy(update={"source_id": "s3"})})
    reviewed = base.model_copy(update={"id": "rev", "meta": base.meta.model_copy(update={"reviewer": "lee"}),
                                       "lineage": base.lineage.model_copy(update={"source_id": "s4"})})
    result = dedup([augmented, base, annotated, reviewed])
    assert [s.id for s in result.kept] == ["rev"]
    assert result.clusters[0]["size"] == 4
    assert dedup([augmented, base]).kept[0].id == "orig"


def test_variants_of_one_seed_are_removed_only_above_the_high_threshold():
    rng = random.Random(3)
    text = sentence(rng, 40)
    words = text.split()
    seed = Sample(id="seed", instruction="Answer.", input=text, output="ok", lineage={"source_id": "S"})
    # change 3 of 40 words: Jaccard of word 3-grams is about 0.65-0.85, under 0.9
    variant_words = list(words)
    for position in (10, 20, 30):
        variant_words[position] = "other"
    variant = Sample(id="var", instruction="Answer.", input=" ".join(variant_words), output="ok", lineage={"source_id": "S"})
    assert len(dedup([seed, variant]).kept) == 2
    stranger = variant.model_copy(update={"id": "other-seed", "lineage": variant.lineage.model_copy(update={"source_id": "T"})})
    loose = DedupConfig(threshold=0.5)
    assert [s.id for s in dedup([seed, stranger], loose).kept] == ["seed"]
    assert len(dedup([seed, variant], loose).kept) == 2


def test_short_texts_take_the_exact_path_and_never_collapse_together():
    rows = [Sample(id=f"s{i}", instruction="Hi", input=word, output="x") for i, word in enumerate(["a", "b", "c", "d"])]
    result = dedup(rows)
    assert len(result.kept) == 4
    assert len(dedup([*rows, rows[0].model_copy(update={"id": "again"})]).kept) == 4


def test_a_negative_row_sharing_its_golden_twins_prompt_is_not_a_duplicate():
    golden = Sample(id="g", instruction="Extract.", input="order 12 is late", output='{"late": true}')
    negative = Sample(id="n", instruction="Extract.", input="order 12 is late", output='{"late": false}', sample_type="negative")
    assert len(dedup([golden, negative]).kept) == 2


def test_same_prompt_and_answer_from_different_seeds_keeps_one_row_and_another_answer_keeps_none():
    a = Sample(id="a", instruction="Classify.", input="refund please", output="refund", lineage={"source_id": "A"})
    b = Sample(id="b", instruction="Classify.", input="Refund  please", output="Refund", lineage={"source_id": "B"})
    result = dedup([a, b])
    assert [(r.sample.id, r.kind) for r in result.removed] == [("b", "exact-row")]
    other = b.model_copy(update={"output": "billing"})
    conflict = dedup([a, other])  # which answer is right is a reviewer's call, not dedup's
    assert not conflict.kept and not conflict.removed and [r.reason for r in conflict.review] == ["label_conflict"] * 2


def test_lsh_bands_give_high_recall_at_the_threshold_and_few_chance_candidates():
    bands, rows = lsh_bands(128, 0.8)
    assert bands * rows <= 128
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99
    assert 1 - (1 - 0.1**rows) ** bands < 1e-4  # two rows sharing only a template rarely become candidates


def test_rows_sharing_only_a_long_template_are_not_duplicates():
    rng = random.Random(5)
    template = "Please read the customer message below and extract every order field as JSON for the team."
    rows = [Sample(id=f"t{i}", instruction=template, input=sentence(rng, 12), output="{}") for i in range(300)]
    assert len(dedup(rows).kept) == 300


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), min_size=1, max_size=60))
def test_every_row_is_kept_or_removed_and_dedup_is_idempotent(plan):
    rng = random.Random(0)
    pool = [sentence(rng, 12) for _ in range(31)]
    rows = [Sample(id=f"r{i}", instruction="Say.", input=pool[k] + (" extra" if twist else ""), output="y")
            for i, (k, twist) in enumerate(plan)]
    result = dedup(rows)
    assert len(result.kept) + len(result.removed) == len(rows)
    assert {s.id for s in result.kept}.isdisjoint({r.sample.id for r in result.removed})
    assert len(dedup(result.kept).kept) == len(result.kept)
