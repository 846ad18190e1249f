"""One manifest module: rounds, exports and the registry hash and check files the same way, naming each change."""

import json

import pytest

from tuneloop.files import append_jsonl, file_digest, read_json, write_jsonl
from tuneloop.manifest import (
    MANIFEST,
    ManifestMismatch,
    Mismatch,
    changed_files,
    folder_files,
    verify_folder,
    write_manifest,
)


def _folder(tmp_path):
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"alpha")
    (folder / "sub" / "b.txt").write_text("beta", encoding="utf-8")
    return folder


def test_a_written_manifest_lists_every_file_but_itself_with_sha256_and_bytes(tmp_path):
    folder = _folder(tmp_path)
    manifest = write_manifest(folder, {"format": "test/1"})
    assert read_json(folder / MANIFEST) == manifest
    assert manifest["files"] == {"a.bin": {"sha256": file_digest(folder / "a.bin"), "bytes": 5},
                                 "sub/b.txt": {"sha256": file_digest(folder / "sub" / "b.txt"), "bytes": 4}}
    assert folder_files(folder) == manifest["files"]  # the manifest itself is never one of its files
    assert verify_folder(folder) == manifest


@pytest.mark.parametrize("change, problem", [
    (lambda f: (f / "a.bin").write_bytes(b"alphA"), "a.bin: sha256 differs"),
    (lambda f: (f / "sub" / "b.txt").unlink(), "sub/b.txt: missing"),
    (lambda f: (f / "extra.bin").write_bytes(b"x"), "extra.bin: not in the manifest"),
])
def test_verify_names_the_file_that_changed(tmp_path, change, problem):
    folder = _folder(tmp_path)
    write_manifest(folder, {})
    change(folder)
    with pytest.raises(ManifestMismatch, match=problem) as raised:
        verify_folder(folder, "the export", "re-export it")
    assert str(folder) in str(raised.value) and "re-export it" in str(raised.value)


def test_verify_raises_the_callers_error_class_and_says_what_writes_a_manifest(tmp_path):
    class ExportError(RuntimeError):
        pass

    folder = _folder(tmp_path)
    with pytest.raises(ExportError, match="no manifest.json; run the export"):
        verify_folder(folder, advice="run the export", error=ExportError)
    (folder / MANIFEST).write_text(json.dumps({"version": 1}), encoding="utf-8")
    with pytest.raises(ExportError, match="no 'files' object"):
        verify_folder(folder, advice="run the export", error=ExportError)


def test_changed_files_reports_expected_and_actual_digests(tmp_path):
    folder = _folder(tmp_path)
    before = file_digest(folder / "a.bin")
    (folder / "a.bin").write_bytes(b"changed")
    assert changed_files(folder, {"a.bin": before, "gone.bin": "0" * 64}) == [
        Mismatch("a.bin", before, file_digest(folder / "a.bin")), Mismatch("gone.bin", "0" * 64, None)]
    # without `complete`, unlisted files are not this check's business (the registry lists files, not folders)
    assert changed_files(folder, {"sub/b.txt": file_digest(folder / "sub" / "b.txt")}) == []


def test_the_round_and_the_export_write_one_manifest_shape(tmp_path):
    """A round's files entry is what `folder_files` computes: a reader of one shape reads both."""
    from tuneloop.data.gate.round import run_gate_on

    seed = tmp_path / "seed.jsonl"
    write_jsonl(seed, [{"instruction": f"Extract the ticket number {i}", "input": f"ticket A{i:05d} broke",
                        "output": json.dumps({"id": f"A{i:05d}"})} for i in range(30)])
    result = run_gate_on([seed], tmp_path / "rounds")
    manifest = verify_folder(result.round_dir)
    assert manifest["files"] == folder_files(result.round_dir)
    assert {"train.jsonl", "val.jsonl", "test.jsonl", "quarantine.jsonl", "report.html"} <= set(manifest["files"])


def test_write_jsonl_is_whole_file_and_append_jsonl_adds_durable_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"text": "Grüße"}, {"n": 1}])
    assert path.read_text(encoding="utf-8") == '{"text": "Grüße"}\n{"n": 1}\n'
    assert append_jsonl(path, [{"n": 2}]) == 1
    assert append_jsonl(path, []) == 0
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"text": "Grüße"}, {"n": 1}, {"n": 2}]
    with pytest.raises(TypeError):  # a value JSON cannot hold is an error, not a silently stringified row
        write_jsonl(path, [{"when": object()}])
    assert path.read_text(encoding="utf-8").count("\n") == 3  # the failed write left the old file whole
