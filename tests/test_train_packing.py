import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tuneloop.records import Sample
from tuneloop.train.packing import PackingError, best_fit_decreasing, pack_rows, position_ids
from tuneloop.train.tokenize import encode_samples


@given(lengths=st.lists(st.integers(1, 64), max_size=80), capacity=st.integers(64, 200))
def test_every_row_lands_in_exactly_one_bin_that_it_fits(lengths, capacity):
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # best fit never opens a bin while an earlier one could still take the row
    assert len(bins) <= max(1, 2 * sum(lengths) // capacity + 1)


def test_a_row_longer_than_a_bin_is_an_error():
    with pytest.raises(PackingError, match="more than the bin size"):
        best_fit_decreasing([10, 300], 256)


def test_positions_restart_for_each_sample():
    assert position_ids([3, 2, 1]) == [0, 1, 2, 0, 1, 0]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_packing_efficiency_on_the_alpaca_demo_is_at_least_95_percent(tokenizer, llamafactory_demo):
    rows = json.loads((llamafactory_demo / "alpaca_en_demo.json").read_text())
    samples = [Sample(**r) for r in rows]
    encoded, quarantined = encode_samples(tokenizer, samples, 4096)
    _, report = pack_rows(encoded, 4096)
    assert report.efficiency >= 0.95, report.as_dict()
    assert len(encoded) + len(quarantined) >= len(samples)


def test_a_packed_sample_sees_exactly_what_it_sees_alone(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    samples = [Sample(instruction="Extract the ticket.", input="refund A12345 " * k, output='{"intent": "refund"}')
               for k in (1, 4, 2)]
    encoded, _ = encode_samples(tokenizer, samples, 512)
    packed, report = pack_rows(encoded, 512)
    assert report.bins == 1
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(packed)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # training forwards run without a KV cache (the trainer sets use_cache=False); that is when the mask applies
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for length in packed[0]["seq_lengths"]:
            ids = torch.tensor([packed[0]["input_ids"][offset:offset + length]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(together[offset:offset + length], alone, rtol=1e-4, atol=1e-4)
            offset += length
        # without the position restart the later samples would attend to the earlier ones: the test can fail
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        assert not torch.allclose(leaky[offset - length:offset], alone, atol=1e-3)
