"""train.tool_format travels with the trained model: a short `tuneloop train sft` in the hermes format saves the
format in the adapter's chat template, the merged export keeps it, and eval, serving and vLLM read it from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from tuneloop.data.io.formats import write_samples
from tuneloop.files import read_json
from tuneloop.records import Sample
from tuneloop.serve.vllm import tool_call_parser
from tuneloop.train.templates import prompt_ids, split_tool_format, tool_format, use_tool_format

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CITIES = ["Oslo", "Bergen", "Köln", "Lyon", "Porto", "Turku"]


def tool_rows() -> list[Sample]:
    rows = [Sample(id=f"w{i}", instruction=f"Weather in {city}?", tools=[WEATHER], answer_kind="tool_calls",
                   output=f'{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}')
            for i, city in enumerate(CITIES)]
    rows.append(Sample(id="obs", instruction="And in Lyon?", tools=[WEATHER],
                       history=[["Weather in Oslo?", '{"name": "get_weather", "arguments": {"city": "Oslo"}}'],
                                ['{"temp_c": 3}', "It is 3 °C in Oslo."]],
                       output='{"name": "get_weather", "arguments": {"city": "Lyon"}}',
                       turn_roles=["user", "function_call", "observation", "assistant", "user", "function_call"]))
    return rows


def tuneloop(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "tuneloop.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("tool-rows") / "train.jsonl", tool_rows())


def settings(tmp_path, fmt: str):
    path = tmp_path / f"{fmt}.yaml"
    # TRL's trainer: the tokenizer is saved by the step both engines share (sft._finish), and TRL is the reference
    path.write_text(f"train:\n  tool_format: {fmt}\n  per_device_batch: 2\n  effective_batch: 2\n  engine: trl\n",
                    encoding="utf-8")
    return str(path)


def test_a_model_trained_in_hermes_carries_it_to_its_adapter_export_and_vllm(train_file, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    trained = tuneloop("train", "sft", "--train", str(train_file), "--out", str(run), "--model", str(tiny_model_dir),
                       "--config", settings(tmp_path, "hermes"), "--max-steps", "2", "--max-length", "2048", "--quiet")
    assert trained.returncode == 0, trained.stderr[-2000:]
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    own = base.chat_template
    use_tool_format(base, "hermes")  # what training rendered

    adapter = AutoTokenizer.from_pretrained(run / "adapter")
    assert split_tool_format(adapter.chat_template) == ("hermes", own) and tool_format(adapter) == "hermes"
    assert read_json(run / "config.json")["chat_template"] == adapter.chat_template
    for sample in tool_rows():  # eval and the embedded server load this tokenizer: the prompts training saw
        assert prompt_ids(adapter, sample) == prompt_ids(base, sample)

    export = tmp_path / "export"
    merged = tuneloop("export", "merge", "--run", str(run), "--out", str(export), "--check-prompts", "2")
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (export / "chat_template.jinja").read_text(encoding="utf-8") == adapter.chat_template
    assert tool_call_parser(export) == "hermes"  # `tuneloop serve --backend vllm` passes --tool-call-parser hermes


def test_training_in_the_template_format_on_a_template_without_tools_stops_with_the_fix(train_file, tiny_model_dir,
                                                                                        tmp_path):
    result = tuneloop("train", "sft", "--train", str(train_file), "--out", str(tmp_path / "run"), "--model",
                      str(tiny_model_dir), "--config", settings(tmp_path, "template"), "--max-steps", "1", "--quiet")
    assert result.returncode != 0 and not (tmp_path / "run" / "adapter").exists()
    assert "chat template has no tool syntax" in result.stderr + result.stdout
    assert "set train.tool_format to json_block or hermes" in result.stderr + result.stdout


@pytest.mark.parametrize("fmt", ["hermes", "auto"])
def test_alignment_renders_in_the_format_of_its_start_or_its_setting(tiny_model_dir, tmp_path, fmt):
    from tuneloop.project import TrainConfig
    from tuneloop.train.alignment import begin_run

    start = tmp_path / "sft-export"
    trained = AutoTokenizer.from_pretrained(tiny_model_dir)
    use_tool_format(trained, "hermes")  # a model an SFT run trained in hermes
    trained.save_pretrained(str(start))
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model_dir / name).exists():
            (start / name).write_bytes((tiny_model_dir / name).read_bytes())
    assert tool_format(begin_run(str(start), tmp_path / "dpo", TrainConfig(tool_format=fmt), None).tokenizer) == "hermes"
    base = begin_run(str(tiny_model_dir), tmp_path / "dpo2", TrainConfig(tool_format=fmt), None).tokenizer
    assert tool_format(base) == ("hermes" if fmt == "hermes" else "json_block")


def test_a_base_model_is_evaluated_in_the_projects_tool_format(tiny_model_dir, tmp_path):
    """The baseline (a base model: no format in its template) renders tools as the trained model will: a hermes
    project's before/after compares one prompt, not json_block before and hermes after."""
    from tuneloop.eval.runner import run_eval
    from tuneloop.project import EvalConfig

    test = write_samples(tmp_path / "test.jsonl", tool_rows()[:2])
    hashes = {}
    for fmt in ("auto", "hermes"):
        run_eval(str(tiny_model_dir), test, tmp_path / fmt, None, EvalConfig(max_new_tokens=4), progress=False,
                 tool_format=fmt)
        hashes[fmt] = [json.loads(line)["template_hash"] for line in (tmp_path / fmt / "results.jsonl").open()]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    use_tool_format(tokenizer, "hermes")
    from tuneloop.records import content_hash, to_messages
    from tuneloop.train.templates import prompt_text

    expected = [content_hash(prompt_text(tokenizer, to_messages(s, "", with_answer=False))) for s in tool_rows()[:2]]
    assert hashes["hermes"] == expected and hashes["auto"] != expected
