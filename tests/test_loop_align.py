"""`tuneloop run` with `align.method: dpo`: best-of-N and DPO between SFT and the eval after, left out otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneloop.examples import init_example
from tuneloop.loop import ROUND_STAGES, LoopOptions, Round
from tuneloop.project import Project


def demo_project(folder: Path, model: str, method: str) -> Project:
    init_example(folder, size=120)
    config = yaml.safe_load((folder / "tuneloop.yaml").read_text())
    config["model"] = model
    config["align"] = {"method": method, "n": 2, "learning_rate": 1e-3}
    config["train"].update(max_length=512, effective_batch=8)
    (folder / "tuneloop.yaml").write_text(yaml.safe_dump(config))
    return Project.load(folder)


def test_alignment_stages_sit_between_train_and_eval_after_and_are_left_out_unless_asked(tmp_path):
    names = [s.name for s in ROUND_STAGES]
    assert names.index("train") < names.index("best-of-n") < names.index("dpo") < names.index("eval after")
    off = Round(demo_project(tmp_path / "off", "default", "none"), LoopOptions(serve=False))
    assert {"best-of-n", "dpo", "serve smoke"} <= off.left_out()
    on = Round(demo_project(tmp_path / "on", "default", "dpo"), LoopOptions())
    assert not {"best-of-n", "dpo"} & on.left_out()


@pytest.mark.slow
def test_a_round_with_dpo_evaluates_and_merges_the_dpo_model(tmp_path, tiny_model_dir):
    project = demo_project(tmp_path / "dpo", str(tiny_model_dir), "dpo")
    upto = [s for s in ROUND_STAGES if s.name in ("gate", "train", "best-of-n", "dpo", "eval after")]
    lines: list[str] = []
    round_ = Round(project, LoopOptions(quick=True, serve=False), lines.append)
    from tuneloop.loop import run_stages

    run_stages(upto, round_, lines.append, left_out=round_.left_out())
    assert [r.name for r in round_.records] == ["gate", "train", "best-of-n", "dpo", "eval after"]
    counts = round_.outputs["best-of-n"]["counts"]
    assert counts["samples"] == 16 and counts["dpo_pairs"] > 0  # a random model fails; the reference is chosen
    dpo = round_.outputs["dpo"]
    assert Path(dpo["run_dir"]).name.startswith("r0001-dpo-") and dpo["pairs"]["train"] > 0
    assert round_.adapter_dir == Path(dpo["adapter_dir"]) and round_.trained_run_dir == Path(dpo["run_dir"])
    from tuneloop.files import read_json

    assert read_json(Path(dpo["run_dir"]) / "run.json")["started_from"].startswith("adapter ")
    results = read_json(Path(round_.outputs["eval after"]["eval_dir"]) / "summary.json")
    assert results["model"] == dpo["adapter_dir"]
    assert any(line.startswith("[best-of-n]") and "pairs from 16 prompts" in line for line in lines)
    # DPO's early stopping is judged on the SFT model's own failures on the val prompts, not only the data's negatives
    best = round_.outputs["best-of-n"]
    assert best["val_counts"]["samples"] == 8 and best["val_counts"]["dpo_pairs"] > 0
    val_data = read_json(Path(dpo["run_dir"]) / "config.json")["data"]["val"]
    assert val_data["file"] == best["val_samples_file"] and val_data["pairs"] > 0
