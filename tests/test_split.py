"""Split: lineage groups never straddle, hard rows sit in val, frozen val/test never move into train."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.split import FrozenSplits, split_samples
from tuneloop.project import SplitConfig
from tuneloop.records import Sample


def rows(count: int, variants: int = 3, prefix: str = "") -> list[Sample]:
    out = []
    for seed in range(count):
        for v in range(variants):
            out.append(Sample(id=f"{prefix}s{seed}v{v}", instruction="Extract the order.",
                              input=f"{prefix}order {seed} variant {v}", output=f'{{"order": {seed}}}',
                              lineage={"source_id": f"{prefix}seed{seed}"}))
    return out


def where(result) -> dict[str, str]:
    return {s.id: name for name in ("train", "val", "test") for s in result.split(name)}


def test_shares_are_close_to_the_config_and_every_row_is_placed():
    data = rows(100)
    result = split_samples(data, SplitConfig(val=0.1, test=0.1))
    assert len(result.train) + len(result.val) + len(result.test) == 300
    assert 27 <= len(result.test) <= 33 and 27 <= len(result.val) <= 33


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=80), st.integers(0, 5))
def test_variants_of_one_seed_never_straddle_a_split(seed_of_row, shuffle_seed):
    data = [Sample(id=f"r{i}", instruction="Say.", input=f"row {i}", output="x", lineage={"source_id": f"seed{k}"})
            for i, k in enumerate(seed_of_row)]
    placed = where(split_samples(data, SplitConfig(val=0.2, test=0.2, seed=shuffle_seed)))
    by_seed: dict[str, set[str]] = {}
    for sample in data:
        by_seed.setdefault(sample.lineage.source_id, set()).add(placed[sample.id])
    assert all(len(splits) == 1 for splits in by_seed.values())
    assert len(placed) == len(data)


def test_rows_sharing_a_prompt_stay_together_even_from_different_seeds():
    data = rows(50, variants=1)
    twin = Sample(id="twin", instruction="Extract the order.", input="order 3 variant 0", output="{}", lineage={"source_id": "other"})
    placed = where(split_samples([*data, twin], SplitConfig(val=0.3, test=0.3)))
    assert placed["twin"] == placed["s3v0"]


def test_hard_rows_and_failures_are_kept_in_val():
    data = rows(40)
    data[4] = data[4].model_copy(update={"meta": data[4].meta.model_copy(update={"difficulty": "hard"})})
    data[10] = data[10].model_copy(update={"meta": data[10].meta.model_copy(update={"source": "eval-failure"})})
    placed = where(split_samples(data))
    assert placed[data[4].id] == "val" and placed[data[10].id] == "val"
    assert {placed[f"s1v{v}"] for v in range(3)} == {"val"}  # the hard row's whole seed group


def test_a_later_round_reuses_frozen_val_and_test_and_adds_new_rows_to_train():
    first = split_samples(rows(30))
    frozen = first.frozen()
    later = split_samples([*rows(30), *rows(10, prefix="new")], frozen=frozen)
    assert {s.id for s in later.val} == {s.id for s in first.val}
    assert {s.id for s in later.test} == {s.id for s in first.test}
    assert {s.id for s in later.train} >= {s.id for s in rows(10, prefix="new")}


def test_relabeling_never_moves_a_frozen_item_into_train_matched_by_id_and_by_source_id():
    first = split_samples(rows(30))
    test_item = first.test[0]
    relabeled = test_item.model_copy(update={"output": '{"order": -1}'})
    new_variant = Sample(id="fresh-id", instruction="Extract the order.", input="a brand new wording", output="{}",
                         lineage={"source_id": test_item.lineage.source_id})
    same_prompt = Sample(id="other-id", instruction=test_item.instruction, input=test_item.input, output="{}",
                         lineage={"source_id": "unrelated"})
    others = [s for s in rows(30) if s.id != test_item.id]
    later = split_samples([*others, relabeled, new_variant, same_prompt], frozen=first.frozen())
    train_ids = {s.id for s in later.train}
    assert test_item.id not in train_ids and "fresh-id" not in train_ids and "other-id" not in train_ids
    assert [s.output for s in later.test if s.id == test_item.id] == ['{"order": -1}']
    assert later.relabeled[0]["id"] == test_item.id
    assert {s.id for s, _ in later.held_out} == {"fresh-id", "other-id"}


def test_frozen_items_missing_from_the_sources_are_carried_over(tmp_path):
    from tuneloop.data.io.formats import write_samples

    first = split_samples(rows(30))
    write_samples(tmp_path / "val.jsonl", first.val)
    write_samples(tmp_path / "test.jsonl", first.test)
    frozen = FrozenSplits.from_round(tmp_path)
    later = split_samples(rows(5, prefix="new"), frozen=frozen)
    assert later.carried_over == len(first.val) + len(first.test)
    assert [s.id for s in later.test] == [s.id for s in first.test]


def test_related_rows_stay_together_and_an_oversized_group_goes_to_train():
    import numpy as np

    data = rows(60, variants=1)
    related = np.array([[0, 5], [5, 9]])
    placed = where(split_samples(data, SplitConfig(val=0.2, test=0.2), related=related))
    assert placed["s0v0"] == placed["s5v0"] == placed["s9v0"]
    chain = np.array([[i, i + 1] for i in range(30)])
    placed = where(split_samples(data, SplitConfig(val=0.1, test=0.1), related=chain))
    assert {placed[f"s{i}v0"] for i in range(31)} == {"train"}
