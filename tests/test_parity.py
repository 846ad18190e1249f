"""Template parity: the served prompt is token for token the training prompt, and drift is caught."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tuneloop.export.parity import PROBE_SAMPLES, check_template_parity, served_prompt_ids
from tuneloop.records import Sample, to_messages
from tuneloop.train.tokenize import IGNORE, encode_sample


@pytest.fixture()
def tokenizers(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_same_template_gives_parity_on_every_sample(tokenizers):
    training, served = tokenizers
    report = check_template_parity(training, served, PROBE_SAMPLES, max_length=512, default_system="Be brief.")
    assert report.passed and report.checked == len(PROBE_SAMPLES)
    assert report.training_template_sha256 == report.served_template_sha256


def test_a_drifted_served_template_is_caught_at_the_first_differing_token(tokenizers):
    training, served = tokenizers
    served.chat_template = served.chat_template.replace("'\\n' + message['content']", "': ' + message['content']")
    report = check_template_parity(training, served, PROBE_SAMPLES, max_length=512)
    assert not report.passed
    assert all(r.first_difference is not None and r.first_difference > 0 for r in report.results)


def test_a_windowed_long_sample_is_compared_with_its_window(tokenizers):
    training, served = tokenizers
    long = Sample(instruction="Extract the ticket.", input="my order has not arrived " * 60, output='{"a": 1}')
    report = check_template_parity(training, served, [long], max_length=96)
    assert report.passed
    assert report.results[0].served_tokens < len(served_prompt_ids(served, long))


def test_a_sample_that_cannot_be_trained_is_skipped_with_its_reason(tokenizers):
    training, served = tokenizers
    too_long = Sample(instruction="x", output="y " * 400)
    report = check_template_parity(training, served, [too_long, PROBE_SAMPLES[0]], max_length=64)
    assert report.results[0].note.startswith("skipped: answer is")
    assert report.checked == 1


def _served_against_trained(engine, training_tokenizer, default_system="Be brief."):
    """Per probe sample: (the server's prompt ids for the client's request, the training row) ."""
    from tuneloop.serve.requests import chat_messages
    from tuneloop.serve.server import encode_request

    pairs = []
    for sample in PROBE_SAMPLES:
        request = to_messages(sample, default_system, with_answer=False)  # what a client sends for the sample
        served = encode_request(engine, chat_messages(request))  # the server's own request → ids path
        pairs.append((sample, served, encode_sample(training_tokenizer, sample, 512, default_system)[0]))
    return pairs


@pytest.fixture()
def engine(tiny_model_dir):
    from tuneloop.decoding.engine import Engine
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    return Engine(model, tokenizer)


def test_the_server_renders_a_request_token_for_token_as_training_rendered_its_row(engine, tokenizers):
    training, _ = tokenizers
    for sample, served, row in _served_against_trained(engine, training):
        assert served == row.input_ids[: len(served)]
        # the served prompt ends where the trained answer starts: the assistant header is prompt, not answer
        assert all(label == IGNORE for label in row.labels[: len(served)]) and row.labels[len(served)] != IGNORE
        # and parity's serving side is that same path, so `export merge` checks what the server does
        assert served_prompt_ids(engine.tokenizer, sample, "Be brief.") == served


def test_a_server_whose_template_drifted_from_training_is_caught(engine, tokenizers):
    training, _ = tokenizers
    engine.tokenizer.chat_template = engine.tokenizer.chat_template.replace("'\\n' + message['content']",
                                                                            "': ' + message['content']")
    assert all(served != row.input_ids[: len(served)] for _, served, row in _served_against_trained(engine, training))
