"""tuneloop's SFT engine against TRL's SFTTrainer (the reference), on the tiny model, on CPU."""

import json
import random

import pytest
import torch

from tuneloop.data.io.formats import write_samples
from tuneloop.project import TrainConfig
from tuneloop.records import Sample
from tuneloop.train.engine.batches import IGNORE, collate
from tuneloop.train.engine.loss import _ChunkedLinearCrossEntropy, answer_loss
from tuneloop.train.sft import train_sft

# same seed, data order and initialisation, no dropout: the curves differ only by float summation order
# (measured largest relative gap over 50 steps: 1.9e-7 LoRA, 2.8e-7 full); 1e-4 leaves room for other BLAS builds
LOSS_TOLERANCE = 1e-4


def samples(count, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        intent, order = rng.choice(["refund", "delivery", "complaint"]), f"A{rng.randint(10000, 99999)}"
        rows.append(Sample(id=f"e{seed}-{i}", instruction="Extract the ticket fields as JSON.",
                           input=f"Order {order}: I want a {intent}. " * rng.randint(1, 4),
                           output=json.dumps({"intent": intent, "order_id": order})))
    return rows


def losses(result):
    return [m["loss"] for m in result.metrics if "loss" in m]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_engine_loss_curve_matches_trl_over_50_steps(method, tiny_model_dir, tmp_path):
    train = write_samples(tmp_path / "train.jsonl", samples(64, 1))
    settings = dict(method=method, max_length=192, per_device_batch=1, effective_batch=8, max_steps=50,
                    lora_dropout=0.0, learning_rate=2e-3 if method == "lora" else 1e-3, eval_steps=100,
                    cpu_precision="fp32")  # bf16 and mixed have their own test against fp32 (test_train_engine_precision)
    ours = train_sft(train, None, tmp_path / "ours", str(tiny_model_dir), TrainConfig(**settings), progress=False)
    trl = train_sft(train, None, tmp_path / "trl", str(tiny_model_dir), TrainConfig(**settings, engine="trl"),
                    progress=False)
    assert ours.run["engine"]["engine"] == "tuneloop" and trl.run["engine"] == {"engine": "trl"}
    a, b = losses(ours), losses(trl)
    assert len(a) == len(b) == 50
    gaps = [abs(x - y) / y for x, y in zip(a, b)]
    print(f"{method}: largest relative loss gap over 50 steps {max(gaps):.2e}")
    assert max(gaps) < LOSS_TOLERANCE, list(zip(a, b))
    assert a[-1] < a[0] - 0.5  # it learns


def test_the_answer_only_loss_equals_full_vocabulary_cross_entropy_and_its_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    loss, correct = _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, 8)  # 5 chunks, the last one short
    (loss * 0.5).backward()
    reference_hidden = hidden.detach().clone().requires_grad_(True)
    reference_weight = weight.detach().clone().requires_grad_(True)
    logits = reference_hidden @ reference_weight.t()
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (reference * 0.5).backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(hidden.grad, reference_hidden.grad)
    torch.testing.assert_close(weight.grad, reference_weight.grad)
    assert correct.item() == (logits.argmax(-1) == targets).sum().item()


def test_evaluation_computes_the_same_loss_and_accuracy_with_no_gradient_work():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, targets = torch.randn(37, 16), torch.randint(0, 50, (37,))
    with torch.no_grad():
        loss, correct = answer_loss(hidden, head, targets)
    assert not loss.requires_grad
    logits = hidden @ head.weight.detach().t()
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    assert correct.item() == (logits.argmax(-1) == targets).sum().item()


def test_a_frozen_head_gets_no_weight_gradient_and_the_prompt_no_lm_head():
    head = torch.nn.Linear(8, 20, bias=False).requires_grad_(False)
    hidden = torch.randn(5, 8, requires_grad=True)
    loss, _ = answer_loss(hidden, head, torch.tensor([1, 2, 3, 4, 5]))
    loss.backward()
    assert head.weight.grad is None and hidden.grad is not None


def test_targets_shift_inside_each_sample_and_never_across_a_boundary():
    # two samples in one bin: prompt tokens 1,2 / answer 3,4 and prompt 5 / answer 6
    bins = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [IGNORE, IGNORE, 3, 4, IGNORE, 6], "seq_lengths": [4, 2]}]
    batch = collate(bins, pad_to=8, pad_id=0)
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 1]]
    assert batch.doc_ids.tolist() == [0, 0, 0, 0, 1, 1, -1, -1]
    # position 1 predicts 3, position 2 predicts 4, position 4 predicts 6; position 3 (end of sample 1) predicts nothing
    assert batch.answer_index.tolist() == [1, 2, 4] and batch.answer_targets.tolist() == [3, 4, 6]
    assert batch.tokens == 6 and batch.answers == 3


def test_the_document_blockmask_path_equals_each_sample_alone(tiny_model_dir):
    """The GPU's attention path (flex_attention + per-document BlockMask) run on CPU: no sample sees another."""
    from transformers import AutoModelForCausalLM

    from tuneloop.train.engine.runtime import Runtime, hidden_states

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model.set_attn_implementation("flex_attention")
    ids = list(range(5, 45))
    batch = collate([{"input_ids": ids, "labels": [IGNORE] * 20 + ids[20:], "seq_lengths": [12, 28]}], pad_to=128)
    flex = Runtime(torch.device("cpu"), flex=True, compiled=False, threads=None)
    with torch.no_grad():
        together = hidden_states(model, flex, batch)
        for start, length in ((0, 12), (12, 28)):
            alone = model.model(input_ids=torch.tensor([ids[start:start + length]])).last_hidden_state[0]
            torch.testing.assert_close(together[start:start + length], alone, rtol=1e-4, atol=1e-4)
        batch.doc_ids[:40] = 0  # one document over both samples: the second now sees the first
        leaky = hidden_states(model, flex, batch)
    assert not torch.allclose(leaky[12:40], together[12:40], atol=1e-3)
