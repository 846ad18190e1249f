"""Crash safety of training's outputs: the adapter is swapped in whole, and resume skips a half-saved checkpoint."""

from __future__ import annotations

import json

import pytest

from tuneloop.data.io.formats import write_samples
from tuneloop.files import tree_digest, write_json
from tuneloop.project import TrainConfig
from tuneloop.records import Sample
from tuneloop.train.checkpoints import last_checkpoint
from tuneloop.train.sft import train_sft


def test_resume_passes_over_a_checkpoint_killed_mid_save(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_json(checkpoints / "checkpoint-3" / "trainer_state.json", {"global_step": 3})
    write_json(checkpoints / "checkpoint-6" / "trainer_state.json", {"global_step": 6})
    # killed while saving step 9: weights written, trainer_state.json (the Trainer's last file) not yet
    (checkpoints / "checkpoint-9").mkdir()
    (checkpoints / "checkpoint-9" / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    # killed while writing trainer_state.json itself
    (checkpoints / "checkpoint-12").mkdir()
    (checkpoints / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')
    assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-6")
    assert last_checkpoint(tmp_path / "none") is None


def samples(count: int) -> list[Sample]:
    return [Sample(id=f"s{i}", instruction="Extract the order as JSON.", input=f"Order A{1000 + i} is late.",
                   output=json.dumps({"order_id": f"A{1000 + i}"})) for i in range(count)]


def test_a_save_that_dies_half_way_leaves_the_previous_adapter_whole(tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel

    train = write_samples(tmp_path / "train.jsonl", samples(16))
    val = write_samples(tmp_path / "val.jsonl", samples(4))
    settings = TrainConfig(max_length=96, per_device_batch=2, effective_batch=4, eval_steps=2, max_steps=2)
    out = tmp_path / "run"
    train_sft(train, val, out, str(tiny_model_dir), settings, progress=False)
    before = tree_digest(out / "adapter")

    real_save = PeftModel.save_pretrained

    def dies_half_way(self, save_directory, *args, **kwargs):
        from pathlib import Path

        if "checkpoints" in Path(save_directory).parts:  # the Trainer's own checkpoints save as usual
            return real_save(self, save_directory, *args, **kwargs)
        Path(save_directory, "adapter_model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(PeftModel, "save_pretrained", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        train_sft(train, val, out, str(tiny_model_dir), settings, progress=False)  # resumes at the end, saves again
    assert tree_digest(out / "adapter") == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".adapter")]
