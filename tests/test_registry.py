"""The registry records files by content hash and refuses a silently changed file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tuneloop.cli.data  # noqa: F401  (registers the data commands)
from tuneloop.cli.apps import data_app
from tuneloop.data.io.registry import DataChanged, register, require_unchanged, verify_manifest
from tuneloop.files import file_digest


def squash(text: str) -> str:
    return "".join(text.split())


@pytest.fixture
def seed_files(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    seed = raw / "seed.jsonl"
    seed.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(5)))
    table = raw / "extra.csv"
    table.write_text("instruction,output\nq,a\nq2,a2\n")
    return seed, table


def test_register_records_sha256_sha1_and_row_counts(tmp_path, seed_files):
    seed, table = seed_files
    manifest = tmp_path / "data" / "registry.json"
    entry = register(manifest, "seed", [seed, table])
    records = {r["path"]: r for r in entry["files"]}
    assert records["raw/seed.jsonl"]["sha256"] == file_digest(seed)
    assert records["raw/seed.jsonl"]["file_sha1"] == file_digest(seed, "sha1")
    assert (records["raw/seed.jsonl"]["rows"], records["raw/extra.csv"]["rows"]) == (5, 2)
    assert json.loads(manifest.read_text())["datasets"]["seed"] == entry
    assert verify_manifest(manifest) == []


def test_a_changed_file_is_named_with_expected_and_actual_hash(tmp_path, seed_files):
    seed, table = seed_files
    manifest = tmp_path / "registry.json"
    register(manifest, "seed", [seed, table])
    before = file_digest(seed)
    with open(seed, "a") as handle:
        handle.write(json.dumps({"instruction": "sneaked in", "output": "x"}) + "\n")
    [mismatch] = verify_manifest(manifest)
    assert (mismatch.dataset, mismatch.path, mismatch.expected, mismatch.actual) == ("seed", str(seed), before, file_digest(seed))
    with pytest.raises(DataChanged, match=f"expected {before}, actual {file_digest(seed)}"):
        require_unchanged(manifest)
    require_unchanged(manifest, files=[table])  # a stage that reads only the unchanged file may go on


def test_a_deleted_file_is_reported_missing(tmp_path, seed_files):
    seed, table = seed_files
    manifest = tmp_path / "registry.json"
    register(manifest, "seed", [seed, table])
    table.unlink()
    [mismatch] = verify_manifest(manifest)
    assert mismatch.actual is None and "registered file is missing" in str(mismatch)


def test_cli_verify_exits_non_zero_naming_the_changed_file_and_both_hashes(tmp_path, seed_files):
    seed, table = seed_files
    manifest = tmp_path / "data" / "registry.json"
    runner = CliRunner()
    registered = runner.invoke(data_app, ["register", "seed", str(seed), str(table), "--manifest", str(manifest)])
    assert registered.exit_code == 0, registered.output
    assert "5rows" in squash(registered.output)
    clean = runner.invoke(data_app, ["verify", "--manifest", str(manifest)])
    assert clean.exit_code == 0 and "2registeredfilesunchanged" in squash(clean.output)

    before = file_digest(seed)
    seed.write_text(seed.read_text().replace("a3", "A3"))  # same size, different bytes
    changed = runner.invoke(data_app, ["verify", "--manifest", str(manifest)])
    assert changed.exit_code == 1
    assert squash(f"{seed} (data set 'seed'): sha256 expected {before}, actual {file_digest(seed)}") in squash(changed.output)


def test_cli_uses_the_project_registry_by_default(tmp_path, seed_files, monkeypatch):
    seed, _ = seed_files
    (tmp_path / "tuneloop.yaml").write_text("task:\n  name: t\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_app, ["register", "seed", str(seed)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "registry.json").exists()


def test_cli_verify_without_a_manifest_says_how_to_make_one(tmp_path):
    result = CliRunner().invoke(data_app, ["verify", "--manifest", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "tuneloopdataregisterNAMEFILE" in squash(result.output)
