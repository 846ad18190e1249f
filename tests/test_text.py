"""Normalization and n-grams: what "the same text" means for dedup, leakage and split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.text import char_ngrams, cjk_mask, is_cjk, jaccard, ngram_set, ngram_table, normalize, normalize_many, word_ngrams


def test_full_width_case_and_whitespace_normalize_away():
    assert normalize("Ｈｅｌｌｏ，　ＷＯＲＬＤ\t\n  again ") == "hello, world again"


def test_chinese_text_keeps_its_characters_and_drops_ideographic_spaces():
    assert normalize("订单　号：１２３") == "订单 号:123"


def test_script_detection_tells_chinese_from_english():
    assert is_cjk("请把订单信息提取为JSON")
    assert not is_cjk("Extract the order fields as JSON")
    assert list(cjk_mask(["请把订单信息提取为JSON", "Extract the order", ""])) == [True, False, False]


def test_texts_shorter_than_the_ngram_have_no_ngrams_and_no_table_row():
    assert char_ngrams("你好", 4) == set()
    assert word_ngrams("two words", 3) == set()
    table = ngram_table(["你好", "two words", "今天天气很好"], char_n=4, word_n=3)
    assert table.docs.tolist() == [2]


def test_jaccard_of_two_empty_sets_is_not_a_match():
    assert jaccard(set(), set()) == 0.0
    assert jaccard({1, 2}, {2, 3}) == 1 / 3


text_strategy = st.text(alphabet=st.sampled_from(list("ab cd,.!\t\n\r\x0bＡＢ　你好天气很") + ["\u00df", "İ", "\x85", "\u2028", "\xa0", "\u2009"]), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(text_strategy, max_size=12))
def test_bulk_normalization_equals_one_by_one(texts):
    assert normalize_many(texts, chunk=5) == [normalize(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(st.lists(text_strategy, min_size=1, max_size=12), st.integers(2, 5), st.integers(1, 4))
def test_hashed_table_holds_as_many_distinct_ngrams_as_the_plain_sets(texts, char_n, word_n):
    texts = normalize_many(texts)
    table = ngram_table(texts, char_n, word_n, chunk=3)
    rows = {int(doc): k for k, doc in enumerate(table.docs)}
    for index, text in enumerate(texts):
        expected = ngram_set(text, char_n, word_n)
        if not expected:
            assert index not in rows
        else:
            assert len(table.row_set(rows[index])) == len(expected)


def test_same_ngrams_hash_the_same_in_different_texts():
    table = ngram_table(["the quick brown fox jumps", "a the quick brown fox"], char_n=4, word_n=3)
    assert len(table.row_set(0) & table.row_set(1)) == 2  # "the quick brown", "quick brown fox"
