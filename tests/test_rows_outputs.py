"""No command writes over its input, and none replaces an existing file unless told to with --force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import read_samples, write_samples
from tuneloop.records import Sample

SPEC = ("from tuneloop.data.create.synth import Generator, SynthSpec, Template, Verifier, grounded, pool\n"
        "good = Template('My {product} broke.', {'product': '{product}'}, name='good')\n"
        "SPEC = SynthSpec(Generator([good], {'product': pool(['kettle', 'lamp', 'mug'])}), Verifier(rules=[grounded('product')]))\n")


def seed_file(folder: Path, name: str = "seed.jsonl") -> Path:
    samples = [Sample(id=f"s{i}", instruction="Extract the product as JSON.", input=f"My {p} broke after {i} days.",
                      output=json.dumps({"product": p})) for i, p in enumerate(["kettle", "lamp", "mug", "fan", "iron"])]
    return write_samples(folder / name, samples)


# command → argv writing to OUT from the seed file SRC (both replaced below)
COMMANDS = {
    "import": ["data", "import", "SRC", "--out", "OUT"],
    "export": ["data", "export", "SRC", "--to", "alpaca", "--out", "OUT"],
    "check": ["data", "check", "SRC", "--out", "OUT"],
    "dedup": ["data", "dedup", "SRC", "--out", "OUT"],
    "dedup --removed": ["data", "dedup", "SRC", "--out", "elsewhere.jsonl", "--removed", "OUT"],
    "redact": ["data", "redact", "SRC", "--out", "OUT"],
    "mix": ["data", "mix", "SRC", "--out", "OUT"],
    "leakage --report": ["data", "leakage", "--train", "SRC", "--eval", "other.jsonl", "--report", "OUT"],
    "augment": ["data", "augment", "SRC", "--out", "OUT", "--per-seed", "1"],
    "split": ["data", "split", "SRC", "--out-dir", "OUTDIR"],
}


def argv(command: str, src: Path, out: Path) -> list[str]:
    if command == "split":  # the split writes OUTDIR/train.jsonl, so OUT stands for that file
        return ["data", "split", str(src), "--out-dir", str(out.parent)]
    return [str(src) if a == "SRC" else str(out) if a == "OUT" else a for a in COMMANDS[command]]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed_file(tmp_path, "other.jsonl")
    return tmp_path


VIAS = ("same path", "symlink", "hard link", "dot path")


# the split names its files itself (OUTDIR/train.jsonl): only the plain path can point there
@pytest.mark.parametrize(("command", "via"), [(c, v) for c in COMMANDS for v in VIAS if c != "split" or v == VIAS[0]])
def test_an_output_that_is_an_input_is_refused_even_with_force(workdir, command, via):
    src = seed_file(workdir / "in", "train.jsonl")
    before = src.read_bytes()
    out = {"same path": src, "dot path": workdir / "in" / "." / "train.jsonl",
           "symlink": workdir / "in" / "link.jsonl", "hard link": workdir / "in" / "hard.jsonl"}[via]
    if via == "symlink":
        out.symlink_to(src)
    if via == "hard link":
        os.link(src, out)
    result = CliRunner().invoke(app, [*argv(command, src, out), "--force"])
    assert result.exit_code == 2, result.output
    assert "also an input" in "".join(result.output.split()).replace("alsoaninput", "also an input")
    assert src.read_bytes() == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_existing_output_is_kept_unless_force_is_given(workdir, command):
    src = seed_file(workdir)
    out = workdir / "results" / "train.jsonl"
    out.parent.mkdir()
    out.write_text("the user's own file\n", encoding="utf-8")
    refused = CliRunner().invoke(app, argv(command, src, out))
    assert refused.exit_code == 2, refused.output
    assert "alreadyexists" in "".join(refused.output.split()) and "--force" in refused.output
    assert out.read_text(encoding="utf-8") == "the user's own file\n"
    forced = CliRunner().invoke(app, [*argv(command, src, out), "--force"])
    assert forced.exit_code in (0, 1), forced.output  # leakage exits 1 when it finds overlaps
    assert out.read_text(encoding="utf-8") != "the user's own file\n"


def test_a_side_file_that_exists_is_guarded_too(workdir):
    src = seed_file(workdir)
    stale = workdir / "kept.quarantine.jsonl"
    stale.write_text("keep me\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "import", str(src), "--out", str(workdir / "kept.jsonl")])
    assert result.exit_code == 2 and stale.read_text() == "keep me\n" and not (workdir / "kept.jsonl").exists()


def test_two_outputs_of_one_command_cannot_share_a_file(workdir):
    src = seed_file(workdir)
    result = CliRunner().invoke(app, ["data", "dedup", str(src), "--out", "a.jsonl", "--removed", "a.jsonl"])
    assert result.exit_code == 2 and "two outputs" in "".join(result.output.split()).replace("twooutputs", "two outputs")


def test_synth_keeps_an_existing_file_and_never_writes_over_its_spec(workdir):
    (workdir / "gen.py").write_text(SPEC, encoding="utf-8")
    (workdir / "out.jsonl").write_text("mine\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["data", "synth", "--spec", "gen.py:SPEC", "--n", "3", "--out", "out.jsonl"]).exit_code == 2
    assert (workdir / "out.jsonl").read_text() == "mine\n"
    over_spec = runner.invoke(app, ["data", "synth", "--spec", "gen.py:SPEC", "--n", "3", "--out", "gen.py", "--force"])
    assert over_spec.exit_code == 2 and (workdir / "gen.py").read_text() == SPEC
    assert runner.invoke(app, ["data", "synth", "--spec", "gen.py:SPEC", "--n", "3", "--out", "out.jsonl", "--force"]).exit_code == 0
    assert read_samples(workdir / "out.jsonl").samples  # replaced by verified rows (exact repeats are skipped)


def test_a_llamafactory_export_keeps_an_existing_entry_unless_forced(workdir):
    src = seed_file(workdir)
    runner = CliRunner()
    first = runner.invoke(app, ["data", "export", str(src), "--to", "llamafactory", "--out", "lf"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["data", "export", str(src), "--to", "llamafactory", "--out", "lf"])
    assert again.exit_code == 2 and "--force" in again.output
    other = runner.invoke(app, ["data", "export", str(src), "--to", "llamafactory", "--out", "lf", "--name", "more"])
    assert other.exit_code == 0  # a new entry beside the first is no overwrite
    info = json.loads((workdir / "lf" / "dataset_info.json").read_text())
    assert set(info) == {"seed", "more"}
    assert runner.invoke(app, ["data", "export", str(src), "--to", "llamafactory", "--out", "lf", "--force"]).exit_code == 0


def test_register_refuses_a_manifest_that_is_one_of_the_registered_files(workdir):
    src = seed_file(workdir)
    before = src.read_bytes()
    result = CliRunner().invoke(app, ["data", "register", "seed", str(src), "--manifest", str(src)])
    assert result.exit_code == 2 and src.read_bytes() == before
