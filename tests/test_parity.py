"""Template parity: the served prompt is token for token the training prompt, and drift is caught."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tuneloop.export.parity import PROBE_SAMPLES, check_template_parity, served_prompt_ids
from tuneloop.records import Sample


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
