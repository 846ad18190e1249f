"""The embedded default model: converted once from the GGUF in a PyPI package, loads offline, answers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop import models
from tuneloop.cli.main import app


def test_resolve_model_keeps_hub_ids_and_resolves_folders(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(models, "hub_unavailable_reason", lambda: None)  # a hub that answers: the id goes through
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert models.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    with pytest.raises(models.ModelError, match="config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(models.ModelError, match="no such model folder"):
        models.resolve_model("./does-not-exist")


def test_default_model_pulls_offline_and_generates_an_answer():
    runner = CliRunner()
    result = runner.invoke(app, ["models", "pull", "default"])
    assert result.exit_code == 0, result.output
    folder = models.default_model_dir()
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"

    import torch

    model, tokenizer = models.load_causal_lm("default", dtype=torch.float32, device="cpu")
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer

    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0
    assert any(m["name"] == models.DEFAULT_LABEL for m in json.loads(listed.output))


def test_default_is_refused_when_not_converted_and_pull_is_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match="tuneloop models pull default"):
        models.resolve_model("default", pull=False)
