import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tuneloop.data.io.formats import write_samples
from tuneloop.files import read_json
from tuneloop.project import TrainConfig
from tuneloop.records import Sample
from tuneloop.train.sft import TrainError, train_sft

INTENTS = ["refund", "delivery", "complaint", "question"]


def ticket_samples(count, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        intent, order = rng.choice(INTENTS), f"A{rng.randint(10000, 99999)}"
        rows.append(Sample(id=f"t{seed}-{i}", instruction="Extract the ticket fields as JSON.",
                           input=f"Order {order}: I want a {intent}. " * rng.randint(1, 3),
                           output=json.dumps({"intent": intent, "order_id": order})))
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft-data")
    return write_samples(folder / "train.jsonl", ticket_samples(48, 1)), write_samples(folder / "val.jsonl", ticket_samples(8, 2))


SMALL = dict(max_length=160, per_device_batch=2, effective_batch=8, eval_steps=3, max_steps=6)


@pytest.fixture(scope="module")
def run(data, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r1"
    return train_sft(*data, out, str(tiny_model_dir), TrainConfig(**SMALL), default_system="You extract tickets.",
                     progress=False)


def test_a_run_writes_its_folder(run, data):
    out = run.out_dir
    for name in ("run.json", "config.json", "metrics.jsonl", "run_card.html", "run_card.md", "adapter", "checkpoints"):
        assert (out / name).exists(), name
    info = read_json(out / "run.json")
    assert info["method"] == "lora" and info["adapter_dir"] == "adapter" and info["max_length"] == 160
    assert info["data"]["train"]["sha256"] == __import__("tuneloop.files", fromlist=["x"]).file_digest(data[0])
    assert 1 <= info["best_step"] <= 6 and info["best_val_loss"] is not None
    assert (out / "checkpoints" / "BEST").read_text().startswith(f"checkpoint-{info['best_step']}")
    config = read_json(out / "config.json")
    assert config["derived"]["lora_alpha"] == 32 and config["derived"]["scheduler"] == "cosine"
    html = (out / "run_card.html").read_text()
    assert "Derived values" in html and "data:image/png;base64" in html and info["data"]["train"]["sha256"] in html


def test_the_adapter_folder_loads_standalone_with_its_chat_template(run):
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(run.adapter_dir, device="cpu")
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert type(model).__name__ == "PeftModelForCausalLM"


def test_metrics_hold_train_and_val_loss_per_step(run):
    metrics = [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
    every = run.settings.eval_steps  # the rules cap eval_steps at a quarter of the run
    assert [m["step"] for m in metrics if "eval_loss" in m] == list(range(every, 7, every))


def test_the_same_command_twice_gives_the_same_loss_curve(run, data, tiny_model_dir, tmp_path):
    again = train_sft(*data, tmp_path / "r2", str(tiny_model_dir), TrainConfig(**SMALL),
                      default_system="You extract tickets.", progress=False)
    losses = lambda r: [m["loss"] for m in r.metrics if "loss" in m]  # noqa: E731
    assert losses(again) == losses(run)


def test_early_stopping_keeps_the_best_checkpoint(data, tiny_model_dir, tmp_path):
    # a learning rate far too high makes val loss worse after the first evaluation; full fine-tuning, since a
    # rank-16 LoRA on the tiny model kept improving at 5.0 (on TRL's Trainer and on the engine alike)
    settings = TrainConfig(**{**SMALL, "max_steps": 12, "eval_steps": 2, "early_stopping_patience": 1,
                              "learning_rate": 5.0, "method": "full"})
    result = train_sft(*data, tmp_path / "r", str(tiny_model_dir), settings, progress=False)
    assert result.run["stopped_early"] and result.run["steps"] < 12
    evals = [m["eval_loss"] for m in result.metrics if "eval_loss" in m]
    assert result.run["best_val_loss"] == pytest.approx(min(evals))


def test_qlora_without_a_gpu_is_a_clear_error(data, tiny_model_dir, tmp_path):
    with pytest.raises(TrainError, match="QLoRA needs a CUDA GPU"):
        train_sft(*data, tmp_path / "q", str(tiny_model_dir), TrainConfig(**{**SMALL, "method": "qlora"}), progress=False)


def test_a_folder_of_another_run_is_not_resumed_into(run, data, tiny_model_dir):
    with pytest.raises(TrainError, match="another --out"):
        train_sft(*data, run.out_dir, str(tiny_model_dir), TrainConfig(**{**SMALL, "lora_rank": 8}), progress=False)


def test_oscillating_val_loss_recommends_a_lower_learning_rate(run):
    from tuneloop.train.runcard import write_run_card

    info = {**run.run, "val_loss_oscillating": True, "suggested_learning_rate": 5e-5}
    write_run_card(run.out_dir, info, read_json(run.out_dir / "config.json"), run.metrics)
    assert "retry with learning rate 5e-05" in (run.out_dir / "run_card.md").read_text()
    assert "--restart-with-suggested-lr" in (run.out_dir / "run_card.html").read_text()


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint(data, tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "tuneloop.cli.main", "train", "sft", "--train", str(data[0]), "--val", str(data[1]),
               "--out", str(out), "--model", str(tiny_model_dir), "--max-steps", "40", "--max-length", "160", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not (out / "run.json").exists(), "the run must be killed after its first checkpoint"
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    info = read_json(out / "run.json")
    assert info["resumed_from"] and info["resumed_from"].rsplit("-", 1)[-1].isdigit()
    assert "resumed from" in finished.stdout and info["steps"] == 40
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))  # the curve continues, no step twice
