"""Content-hash registry: which files a data set is made of, so no stage trains on a silently changed file.

```
data/registry.json
{"version": 1,
 "datasets": {"seed": {"registered_at": "2025-01-01T00:00:00+00:00",
                       "files": [{"path": "raw/seed.jsonl",          relative to the manifest's folder
                                  "sha256": "…", "file_sha1": "…",  sha1 is LLaMA-Factory's file_sha1
                                  "bytes": 1234, "rows": 100}]}}}  rows: data rows (null for other files)
```
`verify_manifest(path)` lists every mismatch; `require_unchanged(path)` raises `DataChanged` naming file, expected
and actual hash — the check every later stage runs on its inputs.
The hashing and comparing are `tuneloop.manifest`'s, shared with rounds and exports; this file keeps the
registry's own shape (a list of records per data set, which LLaMA-Factory users read for `file_sha1`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.data.io.containers import iter_rows
from tuneloop.files import file_digest, write_json
from tuneloop.manifest import changed_files, file_entry

MANIFEST = Path("data") / "registry.json"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".pq")


class DataChanged(RuntimeError):
    """A registered file is missing or its bytes changed since it was registered."""


class ManifestError(ValueError):
    """A manifest that cannot be read, naming the file and what to do."""


@dataclass(frozen=True)
class Mismatch:
    dataset: str
    path: str
    expected: str
    actual: str | None  # None: the file is gone

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.path} (data set '{self.dataset}'): registered file is missing; expected sha256 {self.expected}"
        return (f"{self.path} (data set '{self.dataset}'): sha256 expected {self.expected}, actual {self.actual}; "
                f"the file changed since it was registered. If the change is intended, register it again with "
                f"`tuneloop data register {self.dataset} {self.path}`")


def count_rows(path: Path) -> int | None:
    """Data rows in a data file (good and bad alike); None for files that are not row files."""
    if path.suffix.lower() not in DATA_SUFFIXES or path.name == "dataset_info.json":
        return None
    return sum(1 for _ in iter_rows(path, "register"))


def file_record(path: Path, base: Path) -> dict[str, Any]:
    entry = file_entry(path)  # sha256 and bytes, as every tuneloop manifest records them
    return {
        "path": Path(os.path.relpath(path.resolve(), base.resolve())).as_posix(),
        "sha256": entry["sha256"],
        "file_sha1": file_digest(path, "sha1"),
        "bytes": entry["bytes"],
        "rows": count_rows(path),
    }


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {"version": 1, "datasets": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}, line {err.lineno}: the manifest is not valid JSON ({err.msg}); restore it "
                            "from version control or register the files again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), dict):
        raise ManifestError(f"{path}: not a tuneloop registry manifest (no 'datasets' object)")
    return manifest


def register(manifest_path: str | Path, name: str, files: Iterable[str | Path]) -> dict[str, Any]:
    """Record (or re-record) data set `name` as these files with their hashes and row counts; returns its entry."""
    manifest_path = Path(manifest_path)
    paths = [Path(f) for f in files]
    if not paths:
        raise ManifestError(f"data set '{name}': name at least one file to register")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a file; register data files (folders: list their files)")
    manifest = load_manifest(manifest_path)
    entry = {
        "registered_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": [file_record(path, manifest_path.parent) for path in paths],
    }
    manifest["datasets"][name] = entry
    write_json(manifest_path, manifest)
    return entry


def verify_manifest(path: str | Path, names: Iterable[str] | None = None,
                    files: Iterable[str | Path] | None = None) -> list[Mismatch]:
    """Every registered file (of the named data sets, or all; only `files` when given) that differs from its record."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no manifest here; register files first with `tuneloop data register NAME FILE...`")
    datasets = load_manifest(path)["datasets"]
    wanted = list(names) if names is not None else list(datasets)
    unknown = [name for name in wanted if name not in datasets]
    if unknown:
        raise ManifestError(f"{path}: no data set named {', '.join(unknown)}; registered: {', '.join(datasets)}")
    only = {Path(f).resolve() for f in files} if files is not None else None
    mismatches = []
    for name in wanted:
        records = [r for r in datasets[name]["files"] if only is None or (path.parent / r["path"]).resolve() in only]
        for changed in changed_files(path.parent, {r["path"]: r["sha256"] for r in records}):
            mismatches.append(Mismatch(name, str(path.parent / changed.path), changed.expected or "", changed.actual))
    return mismatches


def require_unchanged(path: str | Path, names: Iterable[str] | None = None,
                      files: Iterable[str | Path] | None = None) -> None:
    """Raise `DataChanged` naming each changed file with expected and actual hash; stages call it on their inputs.

    Example: `require_unchanged(project.root / "data/registry.json", files=[train_path])` before training.
    """
    mismatches = verify_manifest(path, names, files)
    if mismatches:
        raise DataChanged("registered data changed: " + " | ".join(str(m) for m in mismatches))

