"""The data gate reads answers through `tuneloop.answers` and CJK text through `data.gate.text`'s one definition."""

from __future__ import annotations

import pytest

from tuneloop.answers import schema_validator
from tuneloop.data.create.rules import is_chinese
from tuneloop.data.gate.checks import approximate_tokens, sample_problems
from tuneloop.data.gate.text import is_cjk
from tuneloop.records import Sample

# compatibility ideographs (U+F900-FAFF) and the supplementary planes (U+20000-2FFFF) are Chinese characters too
RARE_HAN = ("\uf9a8", "\ufa11", "\U00020000", "\U0002a6d6")


def test_the_data_gate_names_the_most_telling_schema_error():
    # the first error jsonschema yields sits inside the answer; best_match names the missing key at the root
    validator = schema_validator({"properties": {"a": {"type": "integer"}}, "required": ["b"]})
    row = Sample(instruction="Extract.", output='{"a": "x"}')
    assert sample_problems(row, validator) == ["output does not match the task schema at (root): 'b' is a required property"]


@pytest.mark.parametrize("char", [*RARE_HAN, "字", "か", "한", "a", "1", "，"])
def test_one_cjk_definition_for_token_estimates_similarity_and_language(char):
    cjk = is_cjk(char)
    assert approximate_tokens([char * 3]) == [3 if cjk else 1]
    assert is_chinese(char) == (cjk and char not in "か한")


def test_rare_chinese_characters_count_one_token_each():
    assert approximate_tokens(["".join(RARE_HAN)]) == [4]  # was 1: one run of "other" characters
