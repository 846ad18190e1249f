"""GRPO (`tuneloop train grpo`): a few steps on the tiny model, the completion length from the data, cuts logged."""

import json
import random

import pytest

from tuneloop.data.io.formats import write_samples
from tuneloop.files import read_json
from tuneloop.project import AlignConfig, TrainConfig
from tuneloop.records import Sample

SYSTEM = "You extract tickets."
SCHEMA = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "delivery"]},
                                           "order_id": {"type": "string"}},
          "required": ["intent", "order_id"], "additionalProperties": False}


def prompts(count, seed, long_input=0):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        intent, order = rng.choice(["refund", "delivery"]), f"A{rng.randint(100, 999)}"
        text = f"Order {order}: {intent} please." + (" filler words" * 80 if i < long_input else "")
        rows.append(Sample(id=f"g{seed}-{i}", instruction="Extract the ticket fields as JSON.", input=text,
                           output=json.dumps({"intent": intent, "order_id": order})))
    return rows


SETTINGS = TrainConfig(max_length=160, effective_batch=2, per_device_batch=1, lora_dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("grpo-data") / "train.jsonl", prompts(6, 1, long_input=1))


@pytest.fixture(scope="module")
def grpo_run(data, tiny_model_dir, tmp_path_factory):
    from tuneloop.train.grpo import train_grpo

    align = AlignConfig(max_steps=3, num_generations=2, learning_rate=1e-3, preset="format")
    return train_grpo(data, tmp_path_factory.mktemp("grpo-runs") / "g1", str(tiny_model_dir), SETTINGS, align,
                      default_system=SYSTEM, schema=SCHEMA, progress=False)


def test_the_completion_length_comes_from_the_longest_reference_answer(grpo_run, tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneloop.train.grpo import completion_budget

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = prompts(6, 1, long_input=1)
    budget, why = completion_budget(tokenizer, samples, 0.5, SYSTEM)
    longest = max(len(tokenizer(s.output)["input_ids"]) + 1 for s in samples)  # + the end-of-turn token
    assert budget == -(-longest * 3 // 2) and f"longest reference answer {longest} tokens" in why
    run = grpo_run.run
    assert run["kind"] == "grpo" and run["max_completion_length"] == budget != 256
    assert "longest reference answer" in run["max_completion_length_reason"]
    assert "max_completion_length" in (grpo_run.out_dir / "run_card.md").read_text()
    import torch

    checkpoint = grpo_run.out_dir / "checkpoints" / "checkpoint-3" / "training_args.bin"
    args = torch.load(checkpoint, weights_only=False)  # what TRL was given, read back from the run
    assert args.max_completion_length == budget and args.num_generations == 2 and args.bf16 is False


def test_a_few_steps_log_rewards_and_the_share_of_cut_completions(grpo_run):
    steps = [m for m in grpo_run.metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(0.0 <= m["completions/clipped_ratio"] <= 1.0 for m in steps)
    assert all("rewards/json_parses/mean" in m or "rewards/not_truncated/mean" in m for m in steps)
    clipped = grpo_run.run["clipped_ratio"]
    assert clipped["per_step"] == [m["completions/clipped_ratio"] for m in steps]
    assert (grpo_run.out_dir / "adapter" / "adapter_model.safetensors").exists()
    # a random tiny model never ends its turn: every completion is cut, and the run card says what to do
    if clipped["last"] > 0.1:
        assert "cut at max_completion_length" in (grpo_run.out_dir / "run_card.md").read_text()


def test_a_prompt_that_leaves_no_room_for_the_answer_is_quarantined(grpo_run):
    quarantined = [json.loads(line) for line in (grpo_run.out_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [q["sample_id"] for q in quarantined] == ["g1-0"]
    assert "max_completion_length" in quarantined[0]["reason"] and grpo_run.run["prompts"] == 5


def test_constrained_rollouts_always_parse_and_fit_the_schema(data, tiny_model_dir, tmp_path):
    from tuneloop.train.grpo import train_grpo

    align = AlignConfig(max_steps=2, num_generations=2, learning_rate=1e-3, preset="format",
                        constrained_rollouts=True, max_completion_length=48)
    result = train_grpo(data, tmp_path / "c1", str(tiny_model_dir), SETTINGS, align, default_system=SYSTEM,
                        schema=SCHEMA, progress=False)
    steps = [m for m in result.metrics if "reward" in m]
    assert len(steps) == 2
    # the grammar closes every answer inside its budget: all parse, all fit the schema, none is cut
    assert all(m["rewards/json_parses/mean"] == 1.0 and m["rewards/schema_valid/mean"] == 1.0 for m in steps)
    assert all(m["completions/clipped_ratio"] == 0.0 for m in steps)
    assert read_json(result.out_dir / "run.json")["constrained_rollouts"] is True


def test_tuneloop_train_grpo_runs_from_the_command_line(data, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "grpo", "--train", str(data), "--out", str(out), "--model",
                                      str(tiny_model_dir), "--schema", str(schema), "--num-generations", "2",
                                      "--max-steps", "1", "--max-length", "160", "--preset", "practice", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "max_completion_length" in result.output and "cut completions" in result.output
    assert read_json(out / "run.json")["rewards"] == {"practice": 1.0}
