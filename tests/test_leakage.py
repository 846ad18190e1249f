"""Leakage: every planted overlap between train and val/test is found, clean splits and shared templates are not."""

from __future__ import annotations

import random

from tuneloop.data.gate.leakage import find_leaks
from tuneloop.project import LeakageConfig
from tuneloop.records import Sample

WORDS = [f"w{i}" for i in range(8000)]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hanzi(rng: random.Random, n: int) -> str:
    return "".join(chr(0x4E00 + rng.randrange(5000)) for _ in range(n))


def clean(count: int, prefix: str, seed: int) -> list[Sample]:
    """Rows sharing one fixed instruction (template text) but nothing else."""
    rng = random.Random(seed)
    return [Sample(id=f"{prefix}{i}", instruction="Extract the ticket fields as JSON from the message below please.",
                   input=words(rng, 25) if i % 2 else hanzi(rng, 40), output=words(rng, 20)) for i in range(count)]


def test_clean_splits_with_a_shared_instruction_have_no_hits():
    report = find_leaks(clean(300, "t", 1), {"val": clean(40, "v", 2), "test": clean(40, "e", 3)})
    assert report.hits == [] and report.passed


def test_every_planted_leak_is_found_with_its_kind():
    rng = random.Random(7)
    train = clean(200, "t", 1)
    test = clean(30, "e", 3)
    passage = words(rng, 16)
    zh_passage = hanzi(rng, 20)
    test[0] = Sample(id="e0", instruction=train[5].instruction, input=train[5].input, output=train[5].output)
    test[1] = Sample(id="e1", instruction=train[6].instruction, input=train[6].input, output="a different answer")
    near_input = train[7].input.split()
    near_input[12] = "changed"
    test[2] = Sample(id="e2", instruction=train[7].instruction, input=" ".join(near_input), output=train[7].output)
    # prompt-side overlap: the eval prompt's passage sits inside a longer train prompt (eval → train direction)
    test[3] = Sample(id="e3", instruction="Summarize.", input=passage, output="short")
    train[10] = Sample(id="t10", instruction="Summarize.", input=words(rng, 30) + " " + passage, output="other")
    # answer-side overlap, in Chinese
    test[4] = Sample(id="e4", instruction="翻译这段话。", input=hanzi(rng, 30), output=zh_passage + hanzi(rng, 10))
    train[11] = Sample(id="t11", instruction="总结。", input=hanzi(rng, 30), output=hanzi(rng, 5) + zh_passage)
    report = find_leaks(train, {"test": test})
    found = {(h.train_id, h.eval_id): h for h in report.hits}
    assert found[("t5", "e0")].kind == "exact-row"
    assert found[("t6", "e1")].kind == "exact-prompt"
    assert found[("t7", "e2")].kind == "near"
    assert found[("t10", "e3")].kind == "ngram-prompt" and found[("t10", "e3")].eval_in_train == 1.0
    assert found[("t11", "e4")].kind == "ngram-answer"
    assert set(found) == {("t5", "e0"), ("t6", "e1"), ("t7", "e2"), ("t10", "e3"), ("t11", "e4")}
    assert not report.passed


def test_a_train_row_contained_in_an_eval_row_is_found_too():
    rng = random.Random(9)
    passage = words(rng, 15)
    train = [*clean(50, "t", 1), Sample(id="short", instruction="Say.", input=passage, output="x")]
    test = [Sample(id="long", instruction="Say.", input=words(rng, 30) + " " + passage + " " + words(rng, 10), output="y")]
    [hit] = find_leaks(train, {"test": test}).hits
    assert (hit.train_id, hit.eval_id, hit.kind) == ("short", "long", "ngram-prompt")
    assert hit.train_in_eval == 1.0 and hit.eval_in_train < 0.5


def test_allowing_leaks_reports_them_without_failing():
    train = clean(20, "t", 1)
    test = [train[0].model_copy(update={"id": "copy"})]
    report = find_leaks(train, {"test": test}, LeakageConfig(allow=True))
    assert report.hits and report.passed


def test_identical_short_json_answers_to_different_prompts_are_labels_not_leaks_but_long_text_values_are():
    rng = random.Random(4)
    label = '{"intent": "other", "product": "water bottle", "order_id": null, "urgency": "medium", "refund_amount": null}'
    train = [Sample(id=f"t{i}", instruction="Extract.", input=words(rng, 20), output=label) for i in range(3)]
    test = [Sample(id="e0", instruction="Extract.", input=words(rng, 20), output=label)]
    assert find_leaks(train, {"test": test}).hits == []
    summary = words(rng, 30)
    train.append(Sample(id="t-long", instruction="Extract.", input=words(rng, 20),
                        output=f'{{"intent": "other", "summary": "{summary}"}}'))
    test.append(Sample(id="e-long", instruction="Extract.", input=words(rng, 20),
                       output=f'{{"intent": "refund", "summary": "{summary}"}}'))
    [hit] = find_leaks(train, {"test": test}).hits
    assert (hit.train_id, hit.eval_id, hit.kind) == ("t-long", "e-long", "ngram-answer")


def test_overlap_pairs_name_every_pair_that_would_leak_if_split_apart():
    from tuneloop.data.gate.leakage import overlap_pairs

    rng = random.Random(12)
    rows = clean(100, "c", 5)
    passage = words(rng, 16)
    rows[3] = Sample(id="a", instruction="Summarize.", input=passage, output="x")
    rows[70] = Sample(id="b", instruction="Summarize.", input=words(rng, 10) + " " + passage, output="y")
    rows[71] = rows[40].model_copy(update={"id": "copy", "output": "other answer"})
    pairs = {tuple(p) for p in overlap_pairs(rows).tolist()}
    assert pairs == {(3, 70), (40, 71)}
