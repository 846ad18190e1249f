import json

import pytest
import yaml

from tuneloop.files import file_digest
from tuneloop.train.plan import ModelShape, estimate

QWEN_7B = ModelShape("qwen2.5-7b", 152064, 3584, 28, 28, 4, 128, 18944, False)
QWEN_05B = ModelShape("qwen2.5-0.5b", 151936, 896, 24, 14, 2, 64, 4864, True)
QWEN_32B = ModelShape("qwen2.5-32b", 152064, 5120, 64, 40, 8, 128, 27648, False)


def test_parameter_counts_match_the_published_sizes():
    assert QWEN_7B.params / 1e9 == pytest.approx(7.6, abs=0.1)
    assert QWEN_05B.params / 1e9 == pytest.approx(0.49, abs=0.02)


def test_planner_follows_the_rule_of_thumb():
    assert "24 GB" in estimate(QWEN_7B, "lora", 2048).recommendation
    assert "24 GB" in estimate(QWEN_7B, "qlora", 2048).recommendation
    assert "80 GB" in estimate(QWEN_7B, "full", 2048).recommendation
    big = estimate(QWEN_32B, "full", 2048).recommendation
    assert "FSDP2" in big and 4 <= int(big.split(" ")[0]) <= 8


def test_full_fine_tuning_states_shard_over_gpus_but_lora_replicates():
    one, four = estimate(QWEN_7B, "full", 2048), estimate(QWEN_7B, "full", 2048, gpus=4)
    assert four.parts["optimizer"] == pytest.approx(one.parts["optimizer"] / 4)
    assert estimate(QWEN_7B, "lora", 2048, gpus=4).parts["weights"] == estimate(QWEN_7B, "lora", 2048).parts["weights"]


def test_checkpointing_shrinks_activations():
    plan = estimate(QWEN_7B, "lora", 4096)
    assert plan.total_checkpointed_gib < plan.total_gib / 2


def test_plan_command_reads_only_the_config(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())  # no weights beside it
    result = CliRunner().invoke(app, ["plan", "--model", str(tmp_path), "--method", "full", "--seq-len", "512", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recommendation"]


def test_llamafactory_export_carries_the_same_choices(tiny_model_dir, tmp_path):
    from tuneloop.data.io.formats import write_samples
    from tuneloop.project import TrainConfig
    from tuneloop.records import Sample
    from tuneloop.train.llamafactory import export_run
    from tuneloop.train.sft import train_sft

    long_input = "my parcel never arrived and nobody answers the phone. " * 30
    samples = [Sample(instruction="Extract.", input=long_input if i == 0 else f"refund order A{i:05d}",
                      output=json.dumps({"order_id": f"A{i:05d}"})) for i in range(12)]
    train = write_samples(tmp_path / "train.jsonl", samples)
    val = write_samples(tmp_path / "val.jsonl", samples[1:4])
    run = train_sft(train, val, tmp_path / "run", str(tiny_model_dir),
                    TrainConfig(max_length=128, max_steps=2, per_device_batch=2), progress=False)
    written = export_run(run.out_dir, tmp_path / "lf")
    names = {p.name for p in written}
    assert {"dataset_info.json", "tuneloop_train.json", "tuneloop_val.json", "train_sft.yaml", "export.yaml"} <= names
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["tuneloop_train"]["file_sha1"] == file_digest(tmp_path / "lf" / "tuneloop_train.json", "sha1")
    rows = json.loads((tmp_path / "lf" / "tuneloop_train.json").read_text())
    assert len(rows) > len(samples)  # the long input became several windows, each with the whole answer
    assert all(isinstance(r["output"], str) and r["output"].endswith("}") for r in rows)
    config = yaml.safe_load((tmp_path / "lf" / "train_sft.yaml").read_text())
    assert config["stage"] == "sft" and config["finetuning_type"] == "lora" and config["lora_target"] == "all"
    assert config["lora_rank"] == 16 and config["lora_alpha"] == 32 and config["neat_packing"] is True
    recorded = json.loads((run.out_dir / "config.json").read_text())
    assert config["cutoff_len"] >= recorded["data"]["train"]["longest_row_tokens"] > 100  # LF never truncates
    assert config["gradient_accumulation_steps"] == recorded["derived"]["gradient_accumulation"]
    assert config["lr_scheduler_type"] == "cosine" and config["learning_rate"] == 2e-4
    assert config["early_stopping_steps"] == 3 and config["metric_for_best_model"] == "eval_loss"
    export = yaml.safe_load((tmp_path / "lf" / "export.yaml").read_text())
    assert {"export_dir", "export_size", "export_device", "adapter_name_or_path"} <= set(export)
