"""The engine's CPU LoRA dropout: one mask per distinct input of a decoder layer, standard dropout per module."""

import pytest
import torch

from tuneloop.train.engine.dropout import SharedInputDropout, share_lora_dropout
from tuneloop.train.engine.runtime import apply_recompute, decoder_of
from tests.test_train_engine_recompute import _grads

P = 0.1


def lora_model(tiny_model_dir, dropout=P):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():  # LoRA B starts at zero: make the adapters matter for gradients
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model.train()


def lora_inputs(model):
    """{(layer, module): the tensors its lora_A received}, filled on each forward."""
    seen, handles = {}, []
    for index, layer in enumerate(decoder_of(model).layers):
        for name, module in layer.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                key = (index, name.split(".")[-1])
                handles.append(module.lora_A["default"].register_forward_pre_hook(
                    lambda mod, args, key=key: seen.setdefault(key, []).append(args[0])))
    return seen, handles


def test_every_lora_module_of_a_layer_gets_the_layers_one_dropout(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    layers = decoder_of(model).layers
    assert share_lora_dropout(model, layers) == 7 * len(layers)
    for layer in layers:
        found = {id(m) for m in layer.modules() if isinstance(m, SharedInputDropout)}
        assert len(found) == 1
    assert share_lora_dropout(lora_model(tiny_model_dir, dropout=0.0), layers) == 0  # PEFT uses Identity at rate 0


def test_q_k_v_share_one_mask_and_gate_up_another_different_across_layers_and_steps(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    layers = decoder_of(model).layers
    share_lora_dropout(model, layers)
    seen, _ = lora_inputs(model)
    ids = torch.randint(5, 200, (1, 40))
    model(input_ids=ids)
    for index in range(len(layers)):
        q, k, v = (seen[(index, n)][0] for n in ("q_proj", "k_proj", "v_proj"))
        assert k is q and v is q  # one dropped tensor, one mask
        assert seen[(index, "up_proj")][0] is seen[(index, "gate_proj")][0]
        assert seen[(index, "o_proj")][0] is not q and seen[(index, "down_proj")][0] is not seen[(index, "up_proj")][0]
    draws = [m.draws for layer in layers for m in layer.modules() if isinstance(m, SharedInputDropout)]
    assert draws == [4] * len(layers)  # 4 masks per layer, not 7
    mask = lambda index, step: seen[(index, "q_proj")][step] == 0  # noqa: E731 (dropped elements)
    assert mask(0, 0).shape == mask(1, 0).shape and not torch.equal(mask(0, 0), mask(1, 0))
    model(input_ids=ids)
    assert not torch.equal(mask(0, 0), mask(0, 1))  # a new forward pass, new masks
    model.eval()
    model(input_ids=ids)
    assert (seen[(0, "q_proj")][2] != 0).all()  # no dropout in eval


def test_the_rate_and_the_expectation_are_right():
    for p in (0.05, 0.1, 0.3):
        dropout = SharedInputDropout(p).train()
        assert abs(dropout.rate - p) <= 2 ** -16  # the 15-bit threshold's rounding
        x = torch.ones(1000, 2000)
        out = dropout(x)
        dropped = (out == 0).float().mean().item()
        sigma = (p * (1 - p) / x.numel()) ** 0.5
        assert abs(dropped - p) < 5 * sigma, (p, dropped)
        lanes = (out == 0).float().view(-1, 2).mean(0)  # both 16-bit halves of one 32-bit draw are unbiased
        assert (lanes - p).abs().max().item() < 10 * sigma, lanes
        assert abs(out.mean().item() - 1.0) < 5 * sigma / (1 - p)  # kept values scaled by 1 / (1 - rate)
        assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - dropout.rate)))
    with pytest.raises(ValueError):
        SharedInputDropout(1.0)


class _FixedMask(torch.nn.Module):
    """PEFT's dropout slot given a known mask: x * keep."""

    def __init__(self, keeps):
        super().__init__()
        self.keeps = keeps

    def forward(self, x):
        return x * self.keeps.pop(0)


def test_gradients_equal_pefts_with_the_same_masks(tiny_model_dir):
    import copy

    model = lora_model(tiny_model_dir)
    reference = copy.deepcopy(model)
    share_lora_dropout(model, decoder_of(model).layers)
    seen, _ = lora_inputs(model)
    ids = torch.randint(5, 200, (1, 40))
    torch.manual_seed(7)
    model(input_ids=ids, labels=ids).loss.backward()
    # the mask each module saw, given to the same module of a PEFT model with its own dropout slots
    for index, layer in enumerate(decoder_of(reference).layers):
        for name, module in layer.named_modules():
            if hasattr(module, "lora_dropout") and "default" in module.lora_dropout:
                dropped = seen[(index, name.split(".")[-1])][0]
                module.lora_dropout["default"] = _FixedMask([(dropped != 0).float() * SharedInputDropout(P).scale])
    reference(input_ids=ids, labels=ids).loss.backward()
    ours = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    theirs = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys() and len(ours) == 2 * 7 * len(decoder_of(model).layers)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)


def test_activation_checkpointing_replays_the_shared_masks(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    share_lora_dropout(model, decoder_of(model).layers)
    ids = torch.randint(5, 200, (1, 48))
    loss, grads = _grads(model, ids, seed=3)
    assert apply_recompute(model, keep=0.0, compiled=False, random_layers=True).layers == len(decoder_of(model).layers)
    again, grads_again = _grads(model, ids, seed=3)
    torch.testing.assert_close(again, loss, rtol=0, atol=1e-6)
    assert grads.keys() == grads_again.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_again[name], grads[name], rtol=1e-5, atol=1e-7)
