"""Selective activation checkpointing in tuneloop's SFT engine: the planner's choice and the exactness of recompute."""

import math

import pytest
import torch

from tuneloop.train.engine.loss import liger_chunk_const
from tuneloop.train.engine.memory import DEFAULT_KEEP, choose_recompute
from tuneloop.train.engine.runtime import apply_recompute, decoder_of, recompute_path, spread
from tuneloop.train.plan import estimate, shape_from_config


def qwen_05b():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)


def test_spread_picks_evenly_spaced_layers():
    assert spread(8, 2) == {3, 7}
    assert spread(24, 12) == set(range(1, 24, 2))
    assert len(spread(28, 14)) == 14 and spread(4, 4) == {0, 1, 2, 3} and spread(5, 0) == set()


def test_the_path_follows_compilation_and_random_ops():
    assert recompute_path(compiled=True, random_layers=False) == "partitioner"
    assert recompute_path(compiled=True, random_layers=True) == "layers"  # dropout masks cannot be replayed
    assert recompute_path(compiled=False, random_layers=False) == "layers"


def test_defaults_without_a_budget():
    config = qwen_05b()
    keep, _ = choose_recompute(config, "full", 8192, None, False, cuda=True, compiled=True, random_layers=False)
    assert keep == DEFAULT_KEEP["partitioner"] == 0.25
    keep, _ = choose_recompute(config, "lora", 8192, None, False, cuda=True, compiled=True, random_layers=True)
    assert keep == DEFAULT_KEEP["layers"] == 0.5
    keep, why = choose_recompute(config, "lora", 1024, None, False, cuda=False, compiled=False, random_layers=True)
    assert keep == 1.0 and "CPU" in why
    keep, _ = choose_recompute(config, "full", 8192, 500.0, True, cuda=True, compiled=True, random_layers=False)
    assert keep == 0.0  # gradient_checkpointing wins over any budget


def test_a_budget_buys_exactly_the_recompute_it_needs():
    config = qwen_05b()
    plan = estimate(shape_from_config(config), "full", 8192, compiled=True)
    fixed = plan.total_gib - plan.parts["activations"]
    roomy, _ = choose_recompute(config, "full", 8192, plan.total_gib + 1, False, True, True, False)
    assert roomy == 1.0
    budget = fixed + plan.checkpointed_activations_gib + 0.4 * (plan.parts["activations"] - plan.checkpointed_activations_gib)
    keep, why = choose_recompute(config, "full", 8192, budget, False, True, True, False)
    assert keep == pytest.approx(0.4) and "planned peak" in why
    keep, why = choose_recompute(config, "full", 8192, fixed, False, True, True, False)
    assert keep == 0.0 and "over the budget" in why


def test_planner_compiled_estimate_is_within_ten_percent_of_the_h200_measurement():
    # docs/benchmarks.md, engine: 0.5B full at 8,192 tokens, peak minus bf16 weights 10.61 GiB (keep 1), 3.52 (keep 0)
    plan = estimate(shape_from_config(qwen_05b()), "full", 8192, compiled=True)
    beyond_weights = plan.total_gib - plan.parts["weights"]
    assert abs(beyond_weights - 10.61) / 10.61 < 0.1
    assert abs(beyond_weights - plan.parts["activations"] + plan.checkpointed_activations_gib - 3.52) / 3.52 < 0.1


def _grads(model, ids, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_a_share_of_layers_changes_no_loss_and_no_gradient(dropout, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    ids = torch.randint(5, 200, (1, 48))
    loss, grads = _grads(model, ids, seed=3)
    layers = decoder_of(model).layers
    recompute = apply_recompute(model, keep=0.5, compiled=False, random_layers=dropout > 0)
    assert recompute.how == "layers" and recompute.layers == len(layers) // 2
    assert [layer.gradient_checkpointing for layer in layers].count(True) == len(layers) // 2
    again, grads_again = _grads(model, ids, seed=3)  # checkpoint replays the dropout masks (RNG state kept)
    torch.testing.assert_close(again, loss, rtol=0, atol=1e-6)
    assert grads.keys() == grads_again.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_again[name], grads[name], rtol=1e-5, atol=1e-7)


def test_keep_one_leaves_the_model_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert apply_recompute(model, 1.0, compiled=False, random_layers=False).how == "none"
    assert not any(layer.gradient_checkpointing for layer in decoder_of(model).layers)


def test_liger_chunks_hold_about_the_logit_budget():
    rows, hidden, vocab = 3000, 896, 151936  # Qwen2.5-0.5B answer tokens of one 8,192-token bin
    for budget in (2**28, 2**26):
        const = liger_chunk_const(rows, hidden, vocab, budget)
        # Liger's own rule (liger_kernel.ops.fused_linear_cross_entropy)
        chunk = min(rows, 2 ** math.ceil(math.log2(math.ceil(rows / math.ceil(vocab / (const * hidden))))))
        assert budget // (2 * vocab) <= chunk and chunk * vocab * 2 <= 4 * budget
    assert liger_chunk_const(rows, hidden, vocab, 0) == 1  # Liger's own sizing: 32-row chunks here
    assert 2 ** math.ceil(math.log2(math.ceil(rows / math.ceil(vocab / hidden)))) == 32


def test_train_sft_wires_the_budget_through_to_the_run_record(tiny_model_dir, tmp_path):
    """A budget below what the planner gives the run checkpoints layers, and run.json says so and why."""
    from tuneloop.data.io.formats import write_samples
    from tuneloop.project import TrainConfig
    from tuneloop.train.sft import train_sft
    from tests.test_train_engine import samples

    train = write_samples(tmp_path / "train.jsonl", samples(16, 2))
    settings = dict(method="lora", max_length=128, per_device_batch=1, effective_batch=4, max_steps=2, eval_steps=100)
    tight = train_sft(train, None, tmp_path / "tight", str(tiny_model_dir),
                      TrainConfig(**settings, memory_budget_gib=1e-6), progress=False)
    recompute = tight.run["engine"]["recompute"]
    assert recompute["how"] == "layers" and recompute["keep"] == 0.0 and "over the budget" in recompute["reason"]
    plain = train_sft(train, None, tmp_path / "plain", str(tiny_model_dir), TrainConfig(**settings), progress=False)
    assert plain.run["engine"]["recompute"]["how"] == "none"
    assert [m["loss"] for m in tight.metrics if "loss" in m] == pytest.approx(
        [m["loss"] for m in plain.metrics if "loss" in m], rel=1e-6)
