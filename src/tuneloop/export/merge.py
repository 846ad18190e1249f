"""Merge a run's LoRA adapter into its base, write a servable folder, and prove the folder is the same model.

```
runs/<id>/run.json + adapter/      base (unquantized; a QLoRA base is reloaded in bf16/fp32) + adapter
        │  reference: logits and greedy answers of base + adapter on N check prompts
        ▼  merge_and_unload
exports/<name>/ (built in a staging folder, swapped in only when every check passes: `files.atomic_dir`, so a
                 kill at any instant leaves the previous export or the new one at the path, never neither)
  model-0000k-of-0000n.safetensors   shards of `shard_size`
  config.json, generation_config.json
  tokenizer.json, tokenizer_config.json (with chat_template), chat_template.jinja (the training template)
  manifest.json                      sha256 of every file, the gate and the template parity results
gate  manifest hashes verified → merged model reloaded from disk → fp32: max |logit diff| < 1e-4,
      bf16: identical greedy answers; template parity of training rows vs served prompts
```
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.export.parity import check_template_parity, parity_samples, served_prompt_ids, template_sha256
from tuneloop.files import atomic_dir, read_json, write_json
from tuneloop.manifest import folder_files, verify_folder, write_manifest

FP32_TOLERANCE = 1e-4
GREEDY_TOKENS = 8
TEMPLATE_FILE = "chat_template.jinja"


class MergeError(RuntimeError):
    """A merge that cannot run or whose result differs from base + adapter; says what to do."""


class MergeGateError(MergeError):
    """The merged folder is not the model that was evaluated (reload gate or template parity failed)."""

    def __init__(self, message: str, failures: list[str]):
        super().__init__(message)
        self.failures = failures


@dataclass
class MergeReport:
    out_dir: str
    dtype: str
    prompts_checked: int
    max_logit_diff: float
    greedy_identical: bool
    parity: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    untied_embeddings: bool = False
    passed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_shard_size(value: str | int | float) -> str:
    """`5` → `5GB`; strings with a unit (`500MB`, `200KB`) pass through."""
    text = str(value).strip().upper()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return f"{text}GB"
    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|KIB|MIB|GIB)", text):
        raise MergeError(f"shard size {value!r}: give a number of GB (5) or a size with a unit (500MB).")
    return text.replace(" ", "")


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.exists():
        raise MergeError(f"{run_dir}: no run.json; pass a run folder written by `tuneloop train sft` (runs/<run-id>).")
    run = read_json(path)
    for key in ("base_model", "method"):
        if not run.get(key):
            raise MergeError(f"{path}: `{key}` is missing; re-run training or add it by hand.")
    return run


def refuse_quantized_base(base: str) -> None:
    config = Path(base) / "config.json"
    if config.exists() and json.loads(config.read_text()).get("quantization_config"):
        raise MergeError(
            f"{config}: the base model is stored quantized ({json.loads(config.read_text())['quantization_config'].get('quant_method', '?')}); "
            "merging into quantized weights loses the adapter's precision. Point run.json `base_model` at the "
            "full-precision weights (for QLoRA: the model you trained from, which tuneloop reloads in bf16/fp32).")


def _torch_dtype(dtype: str | None):
    import torch

    name = (dtype or "float32").replace("torch.", "")
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise MergeError(f"dtype {dtype!r}: use float32 (exact gate) or bfloat16 (greedy gate).")
    return table[name], ("bfloat16" if table[name] == torch.bfloat16 else "float32")


def _check_inputs(tokenizer: Any, samples: list, count: int, default_system: str) -> list[list[int]]:
    """Served prompts of the samples; shorter prefixes of them when there are fewer samples than `count`."""
    prompts = [served_prompt_ids(tokenizer, s, default_system) for s in samples][:count]
    for extra in range(max(0, count - len(prompts))):
        base = prompts[extra % len(samples)]
        prompts.append(base[: max(2, len(base) - 3 * (extra // len(samples) + 1))])
    return prompts


def _default_system(run_dir: Path) -> str:
    config_file = run_dir / "config.json"
    return read_json(config_file).get("default_system", "") if config_file.exists() else ""


def _observe(model: Any, prompts: list[list[int]]) -> tuple[list[Any], list[list[int]]]:
    """Last-position-agnostic logits of each prompt and its greedy continuation."""
    import torch

    logits, greedy = [], []
    with torch.inference_mode():
        for ids in prompts:
            tensor = torch.tensor([ids])
            logits.append(model(input_ids=tensor).logits[0].float())
            out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=GREEDY_TOKENS,
                                 do_sample=False, pad_token_id=model.config.eos_token_id)
            greedy.append(out[0, len(ids):].tolist())
    return logits, greedy


def _untie_if_adapted(peft_model: Any, adapter_config: dict[str, Any]) -> bool:
    """A tied model whose embeddings or lm_head the adapter changes must be untied before merging."""
    import torch

    config = peft_model.base_model.model.config
    touched = " ".join(str(m) for m in (adapter_config.get("target_modules") or []) +
                       (adapter_config.get("modules_to_save") or []))
    if not getattr(config, "tie_word_embeddings", False) or not re.search(r"lm_head|embed", touched):
        return False
    head = peft_model.base_model.model.get_output_embeddings()
    layer = getattr(head, "base_layer", head)
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone())
    config.tie_word_embeddings = False
    return True


def _load_reference(run_dir: Path, run: dict[str, Any], dtype: Any):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.models import resolve_model

    if not run.get("adapter_dir"):
        raise MergeError(f"{run_dir}/run.json: a {run['method']} run has no adapter to merge; its model folder "
                         f"`{run.get('model_dir')}` can be served as is (tuneloop serve --model {run_dir / str(run.get('model_dir'))}).")
    adapter_dir = run_dir / run["adapter_dir"]
    if not (adapter_dir / "adapter_config.json").exists():
        raise MergeError(f"{adapter_dir}: no adapter_config.json; the run's adapter was not saved.")
    base = resolve_model(run["base_model"])
    refuse_quantized_base(base)
    # QLoRA trained on a 4-bit view of these weights; the merge reloads them unquantized in `dtype`
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if any("4bit" in type(m).__name__ or "8bit" in type(m).__name__ for m in model.modules()):
        raise MergeError(f"{base}: the base loaded with quantized layers; merge needs unquantized weights.")
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else Path(base)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    return peft_model, tokenizer, read_json(adapter_dir / "adapter_config.json")


def _write_template(folder: Path, tokenizer: Any) -> None:
    """The training template as a jinja file and inside tokenizer_config.json, so no server can drift from it."""
    from tuneloop.files import write_text

    template = tokenizer.chat_template
    if not template:
        raise MergeError("the run's tokenizer has no chat template; training must have saved one with the adapter.")
    write_text(folder / TEMPLATE_FILE, template)
    config = read_json(folder / "tokenizer_config.json")
    config["chat_template"] = template
    write_json(folder / "tokenizer_config.json", config)


def verify_export_files(folder: str | Path) -> dict[str, Any]:
    """The export's manifest once every file matches it; MergeError naming each tampered, truncated, missing or
    added file (the check itself is `tuneloop.manifest`, shared with rounds and the registry)."""
    return verify_folder(folder, "the export", "re-export it with `tuneloop export merge`", error=MergeError)


def _check_dtype(export_dtype: Any) -> Any:
    """fp32 exports are checked in fp64: merge and reference then differ only by the fp32 rounding of the merged
    weights, not by the order of fp32 sums in two different forward passes (which alone reaches ~1e-4 on
    30-layer models with large logits). bf16 exports keep their own dtype and the greedy-identity gate."""
    import torch

    return torch.float64 if export_dtype == torch.float32 else export_dtype


def compare_with_reference(folder: Path, prompts: list[list[int]], reference: tuple[list[Any], list[list[int]]],
                           dtype: Any) -> tuple[float, bool]:
    """Reload the merged model from disk and measure how far it is from base + adapter."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    logits, greedy = _observe(reloaded, prompts)
    diff = max(float((a - b).abs().max()) for a, b in zip(reference[0], logits))
    return diff, greedy == reference[1]


def gate(report: MergeReport) -> None:
    failures = []
    if report.dtype == "float32" and not report.max_logit_diff < FP32_TOLERANCE:
        failures.append(f"max logit difference {report.max_logit_diff:.2e} ≥ {FP32_TOLERANCE:.0e}")
    if not report.greedy_identical:
        failures.append("greedy answers differ from base + adapter")
    if not report.parity["passed"]:
        bad = [r for r in report.parity["results"] if not r["match"]]
        failures.append(f"template parity failed ({bad[:2]})")
    if failures:
        raise MergeGateError(f"merge gate failed for {report.out_dir}: {'; '.join(failures)}. Nothing was exported "
                             "(an earlier export at that path is left as it was); check that run.json `base_model` "
                             "is the exact model the adapter was trained on.", failures)


def merge_run(run_dir: str | Path, out_dir: str | Path, shard_size: str | int = "5GB", check_prompts: int = 8,
              dtype: str | None = None, samples: list | None = None) -> MergeReport:
    """Merge, write, reload and compare; the export folder appears only when the gate passes."""
    from transformers import AutoTokenizer, GenerationConfig

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    torch_dtype, dtype_name = _torch_dtype(dtype)
    max_shard = parse_shard_size(shard_size)
    default_system = _default_system(run_dir)
    check_dtype = _check_dtype(torch_dtype)
    peft_model, tokenizer, adapter_config = _load_reference(run_dir, run, check_dtype)
    samples = samples or parity_samples(run_dir, run, check_prompts)
    prompts = _check_inputs(tokenizer, samples, check_prompts, default_system)
    untied = _untie_if_adapted(peft_model, adapter_config)
    reference = _observe(peft_model, prompts)
    merged = peft_model.merge_and_unload().to(torch_dtype)
    with atomic_dir(out_dir) as staging:
        merged.save_pretrained(str(staging), max_shard_size=max_shard, safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        _write_template(staging, tokenizer)
        if not (staging / "generation_config.json").exists():
            GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             do_sample=False).save_pretrained(str(staging))
        files = folder_files(staging)
        manifest = write_manifest(staging, {
            "format": "tuneloop-export/1", "created_at": time.time(), "run_dir": str(run_dir.resolve()),
            "base_model": run["base_model"], "method": run["method"], "dtype": dtype_name, "shard_size": max_shard,
            "chat_template_sha256": template_sha256(tokenizer)}, files)
        verify_export_files(staging)
        diff, identical = compare_with_reference(staging, prompts, reference, check_dtype)
        served = AutoTokenizer.from_pretrained(str(staging))
        parity = check_template_parity(tokenizer, served, samples, int(run.get("max_length") or 1024), default_system,
                                       limit=check_prompts)
        report = MergeReport(str(out_dir), dtype_name, len(prompts), diff, identical, parity.as_dict(), files, untied)
        gate(report)
        report.passed = True
        manifest.update(gate={"max_logit_diff": diff, "greedy_identical": identical, "prompts": len(prompts),
                              "tolerance": FP32_TOLERANCE if dtype_name == "float32" else "greedy"},
                        parity=report.parity, untied_embeddings=untied)
        write_manifest(staging, manifest, files)
    return report


def verify_export(out_dir: str | Path, run_dir: str | Path | None = None, check_prompts: int = 4) -> MergeReport:
    """Check an existing export: manifest hashes, then (given its run) reload and compare with base + adapter."""
    out_dir = Path(out_dir)
    manifest = verify_export_files(out_dir)
    run_dir = Path(run_dir or manifest["run_dir"])
    run = read_run(run_dir)
    torch_dtype, dtype_name = _torch_dtype(manifest.get("dtype"))
    check_dtype = _check_dtype(torch_dtype)
    peft_model, tokenizer, adapter_config = _load_reference(run_dir, run, check_dtype)
    _untie_if_adapted(peft_model, adapter_config)
    samples = parity_samples(run_dir, run, check_prompts)
    prompts = _check_inputs(tokenizer, samples, check_prompts, _default_system(run_dir))
    diff, identical = compare_with_reference(out_dir, prompts, _observe(peft_model, prompts), check_dtype)
    report = MergeReport(str(out_dir), dtype_name, len(prompts), diff, identical, manifest.get("parity", {"passed": False,
                         "results": []}), manifest["files"])
    gate(report)
    report.passed = True
    return report
