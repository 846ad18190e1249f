"""Dedup never deletes a label: rows whose answers differ are kept (template siblings), the same prompt with two
answers is a label conflict sent to review, and only rows with the same answer are removed as duplicates."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.dedup import answer_keys, dedup
from tuneloop.project import DedupConfig
from tuneloop.records import Sample

INSTRUCTION = "Extract the order fields as JSON."
# long fixed frames with one or two entity slots: rows of one frame are near-duplicates by text (Jaccard > 0.8)
# while every row names other entities, in the input and in the answer
FRAMES = [
    ("Hello support team, I am writing about order {id} which I placed on your website at the end of last month. "
     "The parcel arrived yesterday with the box crushed and the glass inside broken into pieces, so I would like "
     "to ask for a full refund to my original card as soon as possible. Thank you for your help and kind regards.",
     ("id",)),
    ("Dear customer service, my name is {name} and I have been a loyal customer of your shop for many years now. "
     "Unfortunately my latest delivery never arrived at my home address and the tracking page has shown the same "
     "status for two weeks. Could you please look into this and send a replacement or refund the money soon.",
     ("name",)),
    ("订单{id}的包裹昨天送到了，但是外包装已经严重破损，里面的玻璃杯全部碎了。我希望尽快办理全额退款，退回到我原来付款的银行卡上。"
     "这是我第三次遇到这样的问题，请你们认真处理并给我一个答复，谢谢。", ("id",)),
]
NAMES = ["Alice Smith", "Bob Jones", "Chen Wei", "Dana Lee", "Eve Park", "Farid Khan", "Gita Rao", "Hugo Brandt",
         "Ines Costa", "Jonas Berg", "Kira Sato", "Liam Walsh"]


def templated_rows(count: int, seed: int = 0) -> list[Sample]:
    """Rows of a templated extraction set: frame × entity, the answer names the entity (every answer distinct)."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        frame, slots = FRAMES[index % len(FRAMES)]
        values = {"id": f"A{10_000 + index}", "name": f"{rng.choice(NAMES)} {index}"}
        rows.append(Sample(id=f"t{index}", instruction=INSTRUCTION, input=frame.format(**values),
                           output=json.dumps({f"order_{slot}" if slot == "id" else slot: values[slot] for slot in slots}),
                           lineage={"source_id": f"s{index}"}))
    return rows


def test_the_templated_set_is_near_duplicate_by_text():
    """The set is the hard case: without looking at answers, most of it would be one near-duplicate cluster."""
    rows = templated_rows(60)
    result = dedup(rows)
    assert result.siblings, "the frames must be near-duplicates by text for this test set to mean anything"
    assert sum(family["size"] for family in result.siblings) >= 45


def test_rows_with_different_answers_are_never_removed_as_duplicates():
    rows = templated_rows(90)
    result = dedup(rows)
    assert [s.id for s in result.kept] == [s.id for s in rows]
    assert not result.removed and not result.review


def unrelated_rows(count: int) -> list[Sample]:
    rng = random.Random(1)
    return [Sample(id=f"u{i}", instruction=INSTRUCTION, input=" ".join(f"w{rng.randrange(5000)}" for _ in range(25)),
                   output=json.dumps({"order_id": f"U{i}"})) for i in range(count)]


def test_template_siblings_are_reported_with_their_members():
    unrelated = unrelated_rows(40)
    copies = [r.model_copy(update={"id": f"copy-{r.id}"}) for r in unrelated[:5]]
    # duplicates before the templated rows: cluster labels and row numbers differ from there on
    rows = [*unrelated[:5], *copies, *templated_rows(30), *unrelated[5:]]
    result = dedup(rows)
    assert len(result.removed) == 5
    members = [set(family["members"]) for family in result.siblings]
    assert len(members) == len(FRAMES)  # a family holds only rows joined by similar text, nothing else
    assert set().union(*members) == {f"t{i}" for i in range(30)}
    # one family per frame (rows of different frames share no text)
    by_frame = [{f"t{i}" for i in range(30) if i % len(FRAMES) == k} for k in range(len(FRAMES))]
    for frame_rows in by_frame:
        assert any(frame_rows <= family for family in members), (frame_rows, members)
    assert all(family["answers"] == family["size"] for family in result.siblings)
    assert len(result.sibling_pairs) and result.sibling_pairs.max() < len(result.kept)


def test_a_near_duplicate_with_the_same_answer_is_still_removed():
    rows = templated_rows(30)
    copy = rows[3]  # frame 0
    same_answer = json.dumps(dict(reversed(list(json.loads(copy.output).items()))), indent=2)  # other formatting
    twin = Sample(id="twin", instruction=INSTRUCTION, input=copy.input.replace("yesterday", "today"),
                  output=same_answer, lineage={"source_id": "other"})
    result = dedup([*rows, twin])
    assert [(r.sample.id, r.kept_id, r.kind) for r in result.removed] == [("twin", "t3", "near")]


def test_json_answers_are_compared_canonically_and_text_answers_as_normalized_text():
    outputs = ['{"a": 1, "b": "X  y"}', '{ "b": "X y", "a": 1.0 }', '{"a": 2, "b": "X y"}', '["x", "y"]',
               '["y", "x"]', "Refund  please", "refund please", "refund now", "{not json", "{not  json"]
    keys = answer_keys([Sample(instruction="q", output=o) for o in outputs])
    assert keys[0] == keys[1]           # key order, whitespace, 1 == 1.0
    assert keys[0] != keys[2]           # a value differs: another label
    assert keys[3] != keys[4]           # list order is part of the answer
    assert keys[5] == keys[6] != keys[7]  # text: the gate's one normalization, nothing looser
    assert keys[8] == keys[9]           # broken JSON is compared as text


def test_same_prompt_two_answers_goes_to_review():
    a = Sample(id="a", instruction="Classify.", input="refund please", output="refund", lineage={"source_id": "A"})
    b = Sample(id="b", instruction="Classify.", input="Refund  please", output="billing", lineage={"source_id": "B"})
    c = Sample(id="c", instruction="Classify.", input="refund please", output="Refund", lineage={"source_id": "C"})
    other = Sample(id="o", instruction="Classify.", input="where is my parcel", output="shipping")
    result = dedup([a, b, c, other])
    assert [s.id for s in result.kept] == ["o"] and not result.removed
    review = {row.sample_id: row for row in result.review}
    assert set(review) == {"a", "b", "c"}
    assert {row.reason for row in review.values()} == {"label_conflict"}
    assert review["a"].conflicts_with == ["b", "c"] and review["b"].conflicts_with == ["a", "c"]
    assert review["a"].raw["output"] == "refund" and review["a"].stage == "dedup"
    assert result.conflicts == [{"members": ["a", "b", "c"], "answers": 2}]


def test_the_same_prompt_with_the_same_answer_is_an_exact_duplicate_not_a_conflict():
    a = Sample(id="a", instruction="Extract.", input="order 7", output='{"order": 7, "late": true}')
    b = Sample(id="b", instruction="Extract.", input="ORDER 7", output='{"late": true, "order": 7.0}',
               lineage={"source_id": "B"})
    result = dedup([a, b])
    assert [(r.sample.id, r.kept_id, r.kind) for r in result.removed] == [("b", "a", "exact-row")]
    assert not result.review


def test_a_negative_twin_is_not_a_label_conflict():
    golden = Sample(id="g", instruction="Extract.", input="order 12 is late", output='{"late": true}')
    negative = golden.model_copy(update={"id": "n", "output": '{"late": false}', "sample_type": "negative"})
    result = dedup([golden, negative])
    assert len(result.kept) == 2 and not result.review


def test_counts_add_up_with_conflicts_duplicates_and_siblings():
    rows = templated_rows(40)
    rows.append(rows[3].model_copy(update={"id": "copy"}))                       # exact duplicate
    rows.append(rows[5].model_copy(update={"id": "conflict", "output": "{}"}))  # same prompt, other answer
    result = dedup(rows)
    assert len(result.kept) + len(result.removed) + len(result.review) == len(rows)
    assert [r.sample.id for r in result.removed] == ["copy"]
    assert {row.sample_id for row in result.review} == {"t5", "conflict"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(FRAMES) - 1), st.integers(0, 6), st.integers(0, 3)),
                min_size=1, max_size=50))
def test_every_row_whose_answer_differs_from_all_others_survives_and_counts_add_up(plan):
    """Random templated rows: frame, entity (a few, so rows repeat) and answer variant (a few, so prompts repeat
    with other answers). A row whose answer no other row has is never removed; every row lands in one place."""
    rows = []
    for index, (frame_index, entity, variant) in enumerate(plan):
        frame, _ = FRAMES[frame_index]
        text = frame.format(id=f"A{entity}", name=NAMES[entity])
        answer = json.dumps({"entity": entity, "variant": variant} if variant else {"entity": entity})
        rows.append(Sample(id=f"r{index}", instruction=INSTRUCTION, input=text, output=answer,
                           lineage={"source_id": f"s{index % 5}"}))
    result = dedup(rows, DedupConfig(threshold=0.5, same_seed_threshold=0.6))
    removed = {r.sample.id for r in result.removed}
    review = {row.sample_id for row in result.review}
    kept = {s.id for s in result.kept}
    assert len(kept) + len(removed) + len(review) == len(rows)
    assert kept.isdisjoint(removed) and kept.isdisjoint(review) and removed.isdisjoint(review)
    answers = [r.output for r in rows]
    for row in rows:
        if answers.count(row.output) == 1:
            assert row.id not in removed, row.id
    for duplicate in result.removed:  # a removed row's kept copy carries the same answer
        kept_row = next(s for s in result.kept if s.id == duplicate.kept_id)
        assert json.loads(kept_row.output) == json.loads(duplicate.sample.output)
    prompts_with_answers: dict[str, set[str]] = {}
    for row in rows:
        prompts_with_answers.setdefault(row.input, set()).add(row.output)
    for row in rows:  # the same prompt with two answers: every such row is in review, none kept
        assert (row.id in review) == (len(prompts_with_answers[row.input]) > 1), row.id
