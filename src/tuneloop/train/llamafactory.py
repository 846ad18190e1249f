"""A tuneloop run as LLaMA-Factory files: the same data (after our preflight) and the same choices.

```
DIR/
  dataset_info.json          tuneloop_train / tuneloop_val entries (alpaca columns, file_sha1)
  tuneloop_train.json        the rows we trained on: windowed inputs already split, outputs as strings
  tuneloop_val.json
  train_sft.yaml             `llamafactory-cli train train_sft.yaml`
  export.yaml                `llamafactory-cli export export.yaml` (merge the adapter)
```
The data is what our preflight produced (a sample whose input was windowed becomes one row per window; a
quarantined sample is left out), and `cutoff_len` is above the longest of those rows, so LLaMA-Factory never
truncates an answer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from tuneloop.data.io.formats import read_samples
from tuneloop.files import file_digest, read_json, write_json, write_text
from tuneloop.records import Sample

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                  "history": "history"}


def guess_template(model: str, chat_template: str) -> str:
    """The LLaMA-Factory template name matching a model's chat template (override with --template)."""
    name = model.lower()
    if "<|im_start|>" in chat_template:
        return "qwen" if "qwen" in name else "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    if "<start_of_turn>" in chat_template:
        return "gemma"
    if "[INST]" in chat_template:
        return "mistral"
    return "default"


def cutoff_len(longest_row: int) -> int:
    """Above the longest preflighted row with room for template differences, rounded up to 64."""
    return int(math.ceil((longest_row * 1.1 + 32) / 64) * 64)


def lf_rows(tokenizer: Any, samples: list[Sample], max_length: int, default_system: str, overlap: int) -> tuple[list[dict], int]:
    """Alpaca rows exactly as our tokenizer step cut them, and the longest row in tokens."""
    from tuneloop.train.tokenize import encode_sample

    rows, longest = [], 0
    for sample in samples:
        encoded = encode_sample(tokenizer, sample, max_length, default_system, overlap)
        if isinstance(encoded, str):
            continue
        for row in encoded:
            longest = max(longest, len(row))
            rows.append({"instruction": sample.instruction,
                         "input": row.input_text if row.input_text is not None else sample.input,
                         "output": sample.output, "system": sample.system or default_system,
                         "history": [list(turn) for turn in sample.history]})
    return rows, longest


def training_yaml(run: dict[str, Any], config: dict[str, Any], template: str, cutoff: int, has_val: bool) -> dict[str, Any]:
    train, derived = config["train"], config["derived"]
    method = run["method"]
    values: dict[str, Any] = {
        "model_name_or_path": run["base_model"],
        "stage": "sft", "do_train": True,
        "finetuning_type": "full" if method == "full" else "lora",
        "dataset": "tuneloop_train", "dataset_dir": ".", "template": template, "cutoff_len": cutoff,
        "packing": bool(train["packing"]), "neat_packing": bool(train["packing"]),
        "overwrite_cache": True, "preprocessing_num_workers": 4,
        "output_dir": f"saves/{Path(run['out_dir']).name}", "logging_steps": 1, "save_steps": derived["eval_steps"],
        "plot_loss": True, "overwrite_output_dir": True,
        "per_device_train_batch_size": derived["per_device_batch"],
        "gradient_accumulation_steps": derived["gradient_accumulation"],
        "learning_rate": derived["learning_rate"], "lr_scheduler_type": "cosine",
        "warmup_steps": derived["warmup_steps"], "max_steps": derived["optimizer_steps"],
        "bf16": True, "seed": train["seed"],
    }
    if method != "full":
        values.update(lora_rank=derived["lora_rank"], lora_alpha=derived["lora_alpha"],
                      lora_dropout=train["lora_dropout"], lora_target="all")
    if method == "qlora":
        values.update(quantization_bit=4, quantization_method="bnb")
    if has_val:
        values.update(eval_dataset="tuneloop_val", per_device_eval_batch_size=derived["per_device_batch"],
                      eval_strategy="steps", eval_steps=derived["eval_steps"], load_best_model_at_end=True,
                      metric_for_best_model="eval_loss", greater_is_better=False,
                      early_stopping_steps=train["early_stopping_patience"])
    return values


def export_yaml(run: dict[str, Any], template: str) -> dict[str, Any]:
    name = Path(run["out_dir"]).name
    values: dict[str, Any] = {"model_name_or_path": run["base_model"], "template": template,
                              "export_dir": f"exports/{name}", "export_size": 5, "export_device": "cpu",
                              "export_legacy_format": False}
    if run["method"] != "full":
        values.update(adapter_name_or_path=f"saves/{name}", finetuning_type="lora")
    else:
        values["model_name_or_path"] = f"saves/{name}"
    return values


def export_run(run_dir: str | Path, out: str | Path, template: str | None = None) -> list[Path]:
    """Write DIR (see module doc) for the run in `run_dir`; returns the files written."""
    from transformers import AutoTokenizer

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "run.json").exists():
        raise FileNotFoundError(f"{run_dir}: no run.json; pass a folder written by `tuneloop train sft` (runs/<run-id>).")
    run, config = read_json(run_dir / "run.json"), read_json(run_dir / "config.json")
    run["out_dir"] = str(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / (run.get("adapter_dir") or run["model_dir"])))
    template = template or guess_template(run["base_model"] + " " + run["model"], tokenizer.chat_template or "")
    train_cfg = config["train"]
    written, info, longest = [], {}, 0
    for split in ("train", "val"):
        data = (run["data"] or {}).get(split)
        if not data:
            continue
        samples = read_samples(data["file"]).samples
        rows, split_longest = lf_rows(tokenizer, samples, train_cfg["max_length"], config.get("default_system", ""),
                                      train_cfg["window_overlap"])
        longest = max(longest, split_longest)
        path = write_json(out / f"tuneloop_{split}.json", rows)
        info[f"tuneloop_{split}"] = {"file_name": path.name, "file_sha1": file_digest(path, "sha1"),
                                     "formatting": "alpaca", "columns": ALPACA_COLUMNS}
        written.append(path)
    written.append(write_json(out / "dataset_info.json", info))
    train_values = training_yaml(run, config, template, cutoff_len(longest), "tuneloop_val" in info)
    written.append(write_text(out / "train_sft.yaml", yaml.safe_dump(train_values, sort_keys=False, allow_unicode=True)))
    written.append(write_text(out / "export.yaml", yaml.safe_dump(export_yaml(run, template), sort_keys=False)))
    return written
