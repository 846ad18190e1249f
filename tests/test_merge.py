"""Merging a LoRA run into its base: sharded export, manifest, and a reload gate that catches differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneloop.export.merge import MergeError, merge_run, parse_shard_size, verify_export, verify_export_files
from tuneloop.files import write_json


def make_run(base: Path, run_dir: Path, target_modules="all-linear", seed: int = 0) -> Path:
    """A run folder as `tuneloop train sft` writes it, with LoRA B weights perturbed so the merge matters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(run_dir / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run_dir / "adapter")
    write_json(run_dir / "run.json", {"base_model": str(base), "method": "lora", "adapter_dir": "adapter",
                                      "model_dir": None, "max_length": 256})
    return run_dir


def logits_of(folder: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    run = make_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "r1")
    out = tmp_path_factory.mktemp("exports") / "merged"
    return run, out, merge_run(run, out, shard_size="150KB", check_prompts=4)


def test_merge_gate_passes_on_the_tiny_model_in_fp32(exported):
    _, out, report = exported
    assert report.passed and report.dtype == "float32"
    assert report.max_logit_diff < 1e-4 and report.greedy_identical and report.prompts_checked == 4
    assert report.parity["passed"] and report.parity["checked"] >= 1


def test_the_merge_changes_the_model(exported, tiny_model_dir):
    _, out, _ = exported
    ids = [1, 420, 201, 387, 2]
    assert (logits_of(out, ids) - logits_of(tiny_model_dir, ids)).abs().max() > 1e-2


def test_export_is_sharded_with_tokenizer_template_generation_config_and_manifest(exported, tiny_model_dir):
    _, out, report = exported
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).exists(), name
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    assert (out / "chat_template.jinja").read_text() == template
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == template
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.name != "manifest.json"}
    assert manifest["gate"]["max_logit_diff"] < 1e-4 and manifest["parity"]["passed"]
    assert report.files == manifest["files"]


def test_a_tampered_shard_fails_the_manifest_and_the_reload_gate(exported, tmp_path):
    import shutil

    run, out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    verify_export_files(copy)
    shard = sorted(copy.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for offset in range(header, len(data), 7):  # flip tensor bytes, keep the safetensors header loadable
        data[offset] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(MergeError, match="sha256 differs"):
        verify_export_files(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][shard.name]["sha256"] = __import__("tuneloop.files", fromlist=["file_digest"]).file_digest(shard)
    write_json(copy / "manifest.json", manifest)
    with pytest.raises(MergeError, match="merge gate failed"):
        verify_export(copy, run)


def test_verify_export_passes_on_an_untouched_export(exported):
    run, out, _ = exported
    assert verify_export(out, run).max_logit_diff < 1e-4


def test_tied_embeddings_stay_tied_when_the_adapter_leaves_them_alone(tiny_tied_model_dir, tmp_path):
    run = make_run(tiny_tied_model_dir, tmp_path / "run")
    report = merge_run(run, tmp_path / "out", check_prompts=3)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert report.passed and not report.untied_embeddings and merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()


def test_tied_embeddings_are_untied_when_the_adapter_changes_the_output_layer(tiny_tied_model_dir, tmp_path):
    run = make_run(tiny_tied_model_dir, tmp_path / "run", target_modules=["q_proj", "v_proj", "lm_head"])
    report = merge_run(run, tmp_path / "out", check_prompts=3)
    assert report.passed and report.untied_embeddings and report.max_logit_diff < 1e-4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False


def test_a_quantized_base_is_refused_with_a_fix(tiny_model_dir, tmp_path):
    import shutil

    base = tmp_path / "quantized-base"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    run = make_run(tiny_model_dir, tmp_path / "run")
    run_json = json.loads((run / "run.json").read_text())
    write_json(run / "run.json", {**run_json, "base_model": str(base), "method": "qlora"})
    with pytest.raises(MergeError, match="stored quantized.*full-precision"):
        merge_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_wrong_base_fails_the_gate_and_exports_nothing(tiny_model_dir, tmp_path):
    from tuneloop.testing.tiny import build_tiny_model

    run = make_run(tiny_model_dir, tmp_path / "run")
    other = build_tiny_model(tmp_path / "other-base", seed=1)
    run_json = json.loads((run / "run.json").read_text())
    write_json(run / "run.json", {**run_json, "base_model": str(other)})
    report = merge_run(run, tmp_path / "out", check_prompts=2)  # merging onto another base is self-consistent
    assert report.passed
    write_json(run / "run.json", run_json)  # the run's real base: the export is not base + adapter any more
    with pytest.raises(MergeError, match="merge gate failed"):
        verify_export(tmp_path / "out", run)


def test_bf16_merge_is_gated_on_identical_greedy_answers(tiny_model_dir, tmp_path):
    run = make_run(tiny_model_dir, tmp_path / "run", seed=3)
    report = merge_run(run, tmp_path / "out", dtype="bfloat16", check_prompts=3)
    assert report.dtype == "bfloat16" and report.greedy_identical and report.passed


@pytest.mark.parametrize("given, expected", [("5", "5GB"), (2, "2GB"), ("500MB", "500MB"), ("150kb", "150KB")])
def test_shard_sizes_read_as_gigabytes_unless_a_unit_is_given(given, expected):
    assert parse_shard_size(given) == expected


def test_a_shard_size_without_a_number_is_an_error():
    with pytest.raises(MergeError, match="500MB"):
        parse_shard_size("big")


def test_export_merge_command_reports_the_gate(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    run = make_run(tiny_model_dir, tmp_path / "run")
    result = CliRunner().invoke(app, ["export", "merge", "--run", str(run), "--out", str(tmp_path / "out"),
                                      "--shard-size", "200KB", "--check-prompts", "2"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "max logit diff" in output and "template parity 2 samples pass" in output
    missing = CliRunner().invoke(app, ["export", "merge", "--run", str(tmp_path), "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "no run.json" in " ".join(missing.output.split())


def test_a_new_merge_that_fails_its_gate_leaves_the_previous_export_in_place(exported, tmp_path, monkeypatch):
    import tuneloop.export.merge as merge
    from tuneloop.export.merge import MergeGateError
    from tuneloop.files import tree_digest

    run, out, _ = exported
    before = tree_digest(out)
    monkeypatch.setattr(merge, "compare_with_reference", lambda *args: (0.5, False))
    with pytest.raises(MergeGateError) as failed:
        merge_run(run, out, shard_size="150KB", check_prompts=2)
    assert failed.value.failures == ["max logit difference 5.00e-01 ≥ 1e-04", "greedy answers differ from base + adapter"]
    assert tree_digest(out) == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging folder left beside it


def test_export_merge_exits_1_with_one_failed_line_when_its_gate_says_no(exported, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tuneloop.export.merge as merge
    from tuneloop.cli.main import app

    run, _, _ = exported
    monkeypatch.setattr(merge, "compare_with_reference", lambda *args: (0.5, False))
    result = CliRunner().invoke(app, ["export", "merge", "--run", str(run), "--out", str(tmp_path / "out"),
                                      "--check-prompts", "2"])
    assert result.exit_code == 1, result.output
    assert [line for line in result.output.splitlines() if line.startswith("failed: merge gate failed")]
    assert not (tmp_path / "out").exists()
