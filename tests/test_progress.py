"""One progress helper: every bar, the data gate's stages included, is made by `tuneloop.progress`."""

import contextlib
import io
import json
import os
import subprocess
import sys

from rich.console import Console

from tuneloop.files import remove_dead_temps, write_jsonl
from tuneloop.progress import progress_bar


def test_a_bar_of_named_stages_shows_the_stage_it_reached():
    out = io.StringIO()
    with progress_bar(out=Console(file=out, width=120)) as bar:
        advance = bar("gate: validate", 6)
        advance(1, label="gate: redact")
        advance()
    text = out.getvalue()
    assert "gate: redact" in text and "2/6" in text


def test_a_disabled_bar_takes_the_same_calls_and_shows_nothing(capsys):
    with progress_bar(False) as bar:
        advance = bar("gate: validate", 6)
        advance(1, label="gate: redact")
    assert capsys.readouterr().out == ""


def test_the_gate_reports_each_stage_through_the_one_progress_helper(tmp_path, monkeypatch):
    import tuneloop.data.gate.round as round_module

    seen = []

    @contextlib.contextmanager
    def recording(enabled=True, out=None, transient=False):
        def task(label, total, completed=0):
            seen.append((label, total, transient))
            return lambda n=1, label=None: seen.append((label, n))
        yield task

    monkeypatch.setattr(round_module, "progress_bar", recording)
    seed = tmp_path / "seed.jsonl"
    write_jsonl(seed, [{"instruction": "Extract the ticket", "input": f"ticket A{i:05d} broke",
                        "output": json.dumps({"id": f"A{i:05d}"})} for i in range(20)])
    round_module.run_gate_on([seed], tmp_path / "rounds", progress=True)
    assert seen == [("gate: validate", 6, True)] + [(f"gate: {name}", 1) for name in
                                                     ("validate", "redact", "dedup", "split", "leakage", "mix")]


def test_a_killed_gates_staging_is_removed_and_a_running_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".r0003.{dead_pid}.0a1b2c3d.tmp", tmp_path / f".r0004-failed.{dead_pid}.0a1b2c3d.tmp"]
    live = tmp_path / f".r0003.{os.getpid()}.0a1b2c3d.tmp"  # another gate writing now: not ours to delete
    other = tmp_path / f".notes.{dead_pid}.0a1b2c3d.tmp"  # not a round's
    for folder in (*stale, live, other):
        folder.mkdir()
    remove_dead_temps(tmp_path, r"r\d{4}(?:-failed)?")
    assert [p.exists() for p in stale] == [False, False]
    assert live.exists() and other.exists()


def test_the_default_model_conversion_steps_go_through_the_one_bar(capsys):
    from tuneloop.models import _progress

    bar = _progress(["read GGUF", "tokenizer"], True)
    bar.step("read GGUF")
    bar.step("tokenizer")
    bar.done()
    out = capsys.readouterr().out
    assert "tokenizer" in out and "2/2" in out


def test_the_training_bar_shows_steps_and_the_latest_losses(capsys):
    from types import SimpleNamespace

    from tuneloop.train.callbacks import RichProgress

    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=1)  # resumed at step 1
    bar = RichProgress(True)
    bar.on_train_begin(None, state, None)
    state.global_step = 3
    bar.on_step_end(None, state, None)
    bar.on_log(None, state, None, logs={"loss": 1.25, "eval_loss": 1.5})
    bar.on_train_end(None, state, None)
    out = capsys.readouterr().out
    assert "3/4" in out and "loss=1.2500" in out and "val=1.5000" in out
    silent = RichProgress(False)
    silent.on_train_begin(None, state, None)
    silent.on_log(None, state, None, logs={"loss": 1.0})
    silent.on_train_end(None, state, None)
    assert capsys.readouterr().out == ""
