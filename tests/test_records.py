"""Records: stable ids, JSON answers as text, unknown fields kept, the one chat rendering."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tuneloop.data.io.formats import sample_to_dict
from tuneloop.records import Sample, to_messages

text = st.text(max_size=40)


@given(instruction=text, input_text=text, output=text, system=text)
def test_a_sample_without_id_gets_the_same_content_id_every_time(instruction, input_text, output, system):
    first = Sample(instruction=instruction, input=input_text, output=output, system=system)
    again = Sample(instruction=instruction, input=input_text, output=output, system=system)
    assert first.id == again.id == first.content_id()
    assert first.lineage.source_id == first.id


def test_the_id_changes_with_the_answer_but_not_with_metadata():
    base = Sample(instruction="Extract the city", input="I live in Lyon", output='{"city": "Lyon"}')
    other_answer = Sample(instruction="Extract the city", input="I live in Lyon", output='{"city": "Paris"}')
    with_meta = Sample(instruction="Extract the city", input="I live in Lyon", output='{"city": "Lyon"}',
                       meta={"annotator": "ana", "domain": "travel"})
    assert base.id != other_answer.id
    assert base.id == with_meta.id


def test_a_given_id_is_kept():
    assert Sample(id="ticket-17", instruction="q", output="a").id == "ticket-17"


def test_a_json_object_answer_becomes_text_without_ascii_escapes():
    sample = Sample(instruction="提取城市", output={"城市": "北京", "count": 2})
    assert sample.output == '{"城市": "北京", "count": 2}'
    assert json.loads(sample.output) == {"城市": "北京", "count": 2}
    line = json.dumps(sample_to_dict(sample), ensure_ascii=False)
    assert "北京" in line and "\\u" not in line


def test_a_rejected_json_answer_is_text_too():
    assert Sample(instruction="q", output={"a": 1}, rejected=["x"]).rejected == '["x"]'


def test_unknown_fields_are_kept_and_written_back():
    sample = Sample.model_validate({"instruction": "q", "output": "a", "tools": "[]", "kto_tag": True,
                                    "meta": {"source": "f.jsonl", "batch": 7}})
    assert sample.extras == {"tools": "[]", "kto_tag": True}
    data = sample_to_dict(sample)
    assert data["tools"] == "[]" and data["kto_tag"] is True and data["meta"]["batch"] == 7
    assert Sample.model_validate(data) == sample


def test_to_messages_renders_system_history_prompt_and_answer():
    sample = Sample(system="You extract JSON.", history=[["hi", "hello"]], instruction="Extract", input="Lyon",
                    output='{"city": "Lyon"}')
    assert to_messages(sample) == [
        {"role": "system", "content": "You extract JSON."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Extract\nLyon"},
        {"role": "assistant", "content": '{"city": "Lyon"}'},
    ]


def test_to_messages_uses_the_task_system_only_when_the_sample_has_none_and_can_leave_the_answer_out():
    sample = Sample(instruction="Extract", output="{}")
    assert to_messages(sample, default_system="Task prompt", with_answer=False) == [
        {"role": "system", "content": "Task prompt"},
        {"role": "user", "content": "Extract"},
    ]
    assert to_messages(Sample(system="own", instruction="q", output="a"), default_system="task")[0]["content"] == "own"


def test_the_prompt_key_text_is_everything_read_before_the_answer_one_part_per_line():
    plain = Sample(instruction="Extract the city", input="I live in Lyon", output="Lyon")
    assert plain.prompt_key_text == plain.prompt == "Extract the city\nI live in Lyon"
    chat = Sample(system="Only JSON.", history=[["hi", "hello"], ["and?", "yes"]], instruction="Go", output="x")
    assert chat.history_text == "hi\nhello\nand?\nyes"
    assert chat.prompt_key_text == "Only JSON.\nhi\nhello\nand?\nyes\nGo"
    assert Sample(system="S", instruction="", input="only input", output="x").prompt_key_text == "S\nonly input"


def test_quality_ranks_reviewed_over_annotated_over_original_over_augmented():
    ranks = [Sample(instruction="q", output="a", meta={"reviewer": "rea", "annotator": "ana"}),
             Sample(instruction="q", output="a", meta={"annotator": "ana"}),
             Sample(instruction="q", output="a"),
             Sample(instruction="q", output="a", lineage={"augment_type": "tone"})]
    assert [s.quality for s in ranks] == [3, 2, 1, 0]


def test_a_user_column_named_like_a_record_helper_is_kept_as_data():
    sample = Sample.model_validate({"instruction": "q", "output": "a", "quality": 0.9, "prompt_key_text": "theirs"})
    assert sample.extras == {"quality": 0.9, "prompt_key_text": "theirs"}
    assert sample_to_dict(sample)["quality"] == 0.9 and sample.quality == 1
