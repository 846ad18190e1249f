"""File manifests: the sha256 of every file a folder is made of, written beside them and checked before use.

```
round  data/rounds/r0001/manifest.json   {..., "files": {"train.jsonl": {"sha256": "…", "bytes": 1234}, …}}
export exports/<name>/manifest.json      {..., "files": {"model.safetensors": {"sha256": "…", "bytes": …}, …}}
registry data/registry.json              per data set a list of {"path", "sha256", "file_sha1", "bytes", "rows"}
```
Rounds and exports share one shape (`folder_files`, `write_manifest`, `verify_folder`); the registry keeps its list
of records (other tools read it) and compares them with `changed_files`. Every check names each file that changed:
missing, different bytes, or (for a folder) present but not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.files import file_digest, read_json, write_json

MANIFEST = "manifest.json"


class ManifestMismatch(RuntimeError):
    """A folder whose files differ from its manifest; the message names every file that changed."""


@dataclass(frozen=True)
class Mismatch:
    """One file that differs from its manifest entry."""

    path: str
    expected: str | None  # None: the file is there but the manifest does not list it
    actual: str | None  # None: the file is gone

    def problem(self) -> str:
        if self.actual is None:
            return "missing"
        if self.expected is None:
            return "not in the manifest"
        return "sha256 differs"

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.path}: missing; expected sha256 {self.expected}"
        if self.expected is None:
            return f"{self.path}: not in the manifest"
        return f"{self.path}: sha256 expected {self.expected}, actual {self.actual}"


def file_entry(path: str | Path) -> dict[str, Any]:
    """What a manifest records of one file: its sha256 and size."""
    path = Path(path)
    return {"sha256": file_digest(path), "bytes": path.stat().st_size}


def folder_files(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every file below `folder` but the manifest itself, by its relative path, sorted."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_entry(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST}


def changed_files(root: str | Path, expected: Mapping[str, str], complete: bool = False) -> list[Mismatch]:
    """Files under `root` (by relative path → expected sha256) whose bytes differ or that are gone; with
    `complete`, also the files below `root` that `expected` does not list (the manifest itself excepted)."""
    root = Path(root)
    mismatches = []
    for name, sha256 in expected.items():
        file = root / name
        actual = file_digest(file) if file.is_file() else None
        if actual != sha256:
            mismatches.append(Mismatch(name, sha256, actual))
    if complete:
        listed = {Path(name).as_posix() for name in expected}
        for file in sorted(root.rglob("*")):
            name = file.relative_to(root).as_posix()
            if file.is_file() and name != MANIFEST and name not in listed:
                mismatches.append(Mismatch(name, None, file_digest(file)))
    return mismatches


def write_manifest(folder: str | Path, fields: dict[str, Any],
                   files: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write `fields` plus the `files` of the folder (hashed now unless given) as `folder`/manifest.json."""
    fields["files"] = folder_files(folder) if files is None else files
    write_json(Path(folder) / MANIFEST, fields)
    return fields


def read_manifest(folder: str | Path, advice: str, error: type[Exception] = ManifestMismatch) -> dict[str, Any]:
    """The manifest of a folder; `error` with `advice` (what writes one) when there is none or it is not one."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise error(f"{folder}: no {MANIFEST}; {advice}.")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise error(f"{path}: not a tuneloop manifest (no 'files' object); {advice}.")
    return manifest


def verify_folder(folder: str | Path, what: str = "the folder", advice: str = "write it again",
                  error: type[Exception] = ManifestMismatch) -> dict[str, Any]:
    """The folder's manifest once every file matches it; else `error` naming each file that does not (changed,
    truncated, missing, or added since). A stage passes its own error class so its callers catch what they did."""
    manifest = read_manifest(folder, advice, error)
    expected = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    mismatches = changed_files(folder, expected, complete=True)
    if mismatches:
        problems = "; ".join(f"{m.path}: {m.problem()}" for m in mismatches)
        raise error(f"{folder}: {what} does not match its manifest ({problems}); {advice}.")
    return manifest
