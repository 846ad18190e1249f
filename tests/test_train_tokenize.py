import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.records import Sample, to_messages
from tuneloop.train.templates import end_of_turn_id
from tuneloop.train.tokenize import IGNORE, encode_sample, encode_samples, window_starts


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def answer_tokens(row):
    return [t for t in row.labels if t != IGNORE]


def test_prompt_is_exactly_the_serving_rendering(tokenizer):
    sample = Sample(instruction="Extract the ticket fields as JSON.", input="order A12345, refund please",
                    output='{"intent": "refund"}', history=[["hi", "hello"]])
    rows = encode_sample(tokenizer, sample, 512, default_system="You extract tickets.")
    served = tokenizer.apply_chat_template(to_messages(sample, "You extract tickets.", with_answer=False),
                                           add_generation_prompt=True, tokenize=True)
    served = served["input_ids"] if hasattr(served, "keys") else served
    prompt_length = rows[0].labels.index(next(t for t in rows[0].labels if t != IGNORE))
    assert rows[0].input_ids[:prompt_length] == list(served)
    assert all(label == IGNORE for label in rows[0].labels[:prompt_length])


def test_answer_and_end_of_turn_are_in_the_labels(tokenizer):
    sample = Sample(instruction="Extract.", input="refund A12345", output='{"intent": "refund", "order_id": "A12345"}')
    (row,) = encode_sample(tokenizer, sample, 512)
    learned = answer_tokens(row)
    assert learned[-1] == end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(learned[:-1]) == sample.output
    assert row.input_ids[-len(learned):] == learned


def test_history_turns_are_in_the_prompt_not_the_labels(tokenizer):
    sample = Sample(instruction="and now?", output="done", history=[["first question", "first answer"]])
    (row,) = encode_sample(tokenizer, sample, 512)
    assert "first answer" in tokenizer.decode(row.input_ids)
    assert tokenizer.decode(answer_tokens(row)) == "done<|im_end|>"


def test_a_long_input_is_windowed_and_every_window_keeps_the_whole_answer(tokenizer):
    sample = Sample(instruction="Extract.", input="My order has not arrived, please help. " * 40,
                    output='{"intent": "delivery", "urgency": "high"}')
    rows = encode_sample(tokenizer, sample, 96, overlap=8)
    assert len(rows) > 1 and all(len(r) <= 96 for r in rows)
    first = answer_tokens(rows[0])
    assert all(answer_tokens(r) == first for r in rows)
    assert tokenizer.decode(first) == sample.output + "<|im_end|>"
    assert [r.window for r in rows] == list(range(len(rows)))


def test_an_answer_that_cannot_fit_is_quarantined_not_truncated(tokenizer):
    sample = Sample(instruction="Extract.", input="x", output='{"items": [' + ", ".join(["1"] * 200) + "]}")
    reason = encode_sample(tokenizer, sample, 64)
    assert isinstance(reason, str) and "answer" in reason and "max_length" in reason
    rows, quarantined = encode_samples(tokenizer, [sample], 64, source_file="train.jsonl")
    assert rows == [] and quarantined[0].sample_id == sample.id and quarantined[0].source_file == "train.jsonl"


def test_window_starts_overlap_and_cover_everything():
    assert window_starts(10, 4, 1) == [0, 3, 6]
    starts = window_starts(100, 30, 5)
    assert starts[-1] + 30 >= 100 and all(b - a == 25 for a, b in zip(starts, starts[1:]))


text = st.text(alphabet=st.sampled_from(list("abcdefghij klmnop{}\":,0123456789订单退款")), max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=text, input_text=text, output=text.filter(lambda s: s.strip()), limit=st.integers(24, 300))
def test_every_row_holds_the_complete_answer_and_fits_the_limit(tokenizer, instruction, input_text, output, limit):
    sample = Sample(instruction=instruction or "Extract.", input=input_text, output=output)
    result = encode_sample(tokenizer, sample, limit, overlap=16)
    alone = tokenizer(output, add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    if isinstance(result, str):
        return  # quarantined with a reason, never cut
    for row in result:
        learned = answer_tokens(row)
        assert len(row) <= limit
        assert learned[-1] == eot
        assert tokenizer.decode(learned[:-1]) == tokenizer.decode(alone)
        assert row.input_ids[-len(learned):] == learned
