"""The planner answers offline for the common families, and every hub lookup fails fast with one clear line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop import models
from tuneloop.cli.main import app
from tuneloop.train.plan import CONFIG_DIR, read_shape, shipped_configs, shipped_shape

SHIPPED = sorted(CONFIG_DIR.glob("*.json"))
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "tie_word_embeddings", "max_position_embeddings")


@pytest.fixture
def no_network(monkeypatch):
    """A hub that accepts the connection and never answers, and no HF_HUB_OFFLINE to say so: the worst case of a
    machine without internet (a firewall that drops packets, a proxy that cannot reach out)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel's backlog; nothing ever reads or answers them
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    models._probe.cache_clear()
    yield
    models._probe.cache_clear()
    silent.close()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_matches_the_published_parameter_count(path):
    config = json.loads(path.read_text())
    assert all(key in config for key in REQUIRED), path
    assert config["source"].startswith("https://huggingface.co/") and config["source"].endswith("/config.json")
    shape = shipped_shape(config["ids"][0])
    # the planner counts the text model; a multimodal card's size also holds its (frozen) vision encoder
    counted_b = shape.params / 1e9 + config.get("vision_params_b", 0.0)
    assert counted_b == pytest.approx(config["published_params_b"], rel=0.02), path.stem


def test_the_families_of_the_gpu_table_ship():
    ids = set(shipped_configs())
    wanted = [f"qwen/qwen2.5-{s}-instruct" for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")]
    wanted += [f"qwen/qwen3-{s}" for s in ("0.6b", "1.7b", "4b", "8b", "14b", "32b")]
    wanted += ["meta-llama/llama-3.2-1b-instruct", "meta-llama/llama-3.2-3b-instruct", "meta-llama/llama-3.1-8b-instruct",
               "meta-llama/llama-3.3-70b-instruct", "mistralai/mistral-7b-instruct-v0.3"]
    wanted += [f"google/gemma-2-{s}-it" for s in ("2b", "9b", "27b")] + ["google/gemma-3-27b-it"]
    wanted += [f"huggingfacetb/smollm2-{s}-instruct" for s in ("135m", "360m", "1.7b")]
    assert not [w for w in wanted if w not in ids]


def test_the_help_example_answers_offline_in_a_second(no_network):
    env = {**os.environ}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "plan", "--model", "Qwen/Qwen2.5-7B-Instruct",
                           "--method", "lora", "--seq-len", "4096", "--json"], capture_output=True, text=True, env=env,
                          timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["params_b"] == pytest.approx(7.6, abs=0.05) and "24 GB" in plan["recommendation"]
    assert plan["config_source"] == "https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json"
    assert elapsed < 15  # Python start-up included; no hub is asked


def test_ids_match_case_insensitively_and_default_is_the_embedded_model():
    assert read_shape("qwen/qwen2.5-7b-instruct").params == read_shape("Qwen/Qwen2.5-7B").params
    default = read_shape("default")
    assert default.name == "default" and default.hidden == 576 and default.layers == 30


def test_an_unknown_hub_id_without_network_fails_in_seconds_with_one_line(no_network):
    started = time.monotonic()
    result = CliRunner().invoke(app, ["plan", "--model", "someone/unknown-model-7b"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert elapsed < models.HUB_PROBE_TIMEOUT_S + 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: someone/unknown-model-7b"), result.output
    assert "does not answer" in lines[0] and "qwen2.5 0.5b/" in lines[0] and "Traceback" not in result.output


def test_hf_hub_offline_fails_at_once_without_a_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_probe", lambda url: pytest.fail("probed the network although HF_HUB_OFFLINE is set"))
    with pytest.raises(models.ModelError, match="HF_HUB_OFFLINE is set"):
        models.resolve_model("someone/unknown-model-7b")


def _cache_one_model(monkeypatch, tmp_path) -> Path:
    """A Hugging Face cache holding someone/cached-model, laid out as `hf download` leaves it."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--someone--cached-model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached-model" / "refs").mkdir()
    (tmp_path / "models--someone--cached-model" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return snapshot


def test_offline_a_cached_hub_model_resolves_to_its_snapshot(monkeypatch, tmp_path):
    """train/eval/serve with a hub id work offline when `tuneloop models pull` put the model in the cache before."""
    snapshot = _cache_one_model(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(models.resolve_model("someone/cached-model")) == snapshot.resolve()


def test_models_pull_of_a_hub_id_offline(monkeypatch, tmp_path):
    _cache_one_model(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = CliRunner().invoke(app, ["models", "pull", "someone/cached-model"])
    assert cached.exit_code == 0 and "already in the Hugging Face cache" in cached.output
    missing = CliRunner().invoke(app, ["models", "pull", "someone/missing-model"])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set" in missing.stderr


def test_doctor_says_offline_is_fine_and_what_works(monkeypatch):
    from tuneloop.doctor import check_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check = check_hub()
    assert check.level == "info" and check.value == "offline" and "tuneloop plan" in check.fix


def test_a_typo_is_neither_a_folder_nor_a_hub_id():
    with pytest.raises(models.ModelError, match="not a Hugging Face model id"):
        models.resolve_model("defualt")


def test_a_sequence_longer_than_the_model_was_trained_on_is_flagged():
    result = CliRunner().invoke(app, ["plan", "--model", "HuggingFaceTB/SmolLM2-360M", "--seq-len", "16384", "--json"])
    assert result.exit_code == 0, result.output
    assert "max_position_embeddings (8192)" in json.loads(result.output)["warnings"][0]


def test_a_lora_adapter_folder_plans_its_base_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}))
    shape = read_shape(str(tmp_path))
    assert shape.params == shipped_shape("Qwen/Qwen2.5-0.5B-Instruct").params
