"""LLaMA-Factory data folders: reading `dataset_info.json` entries, and writing samples as an entry it accepts.

```
dataset_info.json entry                     read as
{"file_name": "x.json",                     rows of x.json (a file, or a folder of files)
 "formatting": "alpaca" | "sharegpt",       row shape
 "ranking": true,                           preference rows: output = chosen, rejected = rejected
 "columns": {"prompt": ..., "kto_tag": ...} which column holds which part (prompt→instruction, query→input, ...)
 "tags": {"role_tag": ..., ...}}            sharegpt message keys and role names
{"hf_hub_url": ...} without a file_name     skipped: a hub-only entry, imported by its id when online
```
Every imported row records the entry name in `meta.source`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import ReadResult, read_file, samples_to_rows, write_rows
from tuneloop.data.io.shapes import Columns, Tags
from tuneloop.files import file_digest, read_json, write_json
from tuneloop.records import Sample

DATASET_INFO = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


class DatasetInfoError(ValueError):
    """A dataset_info.json that cannot be used, naming the entry and what to change."""


@dataclass
class DatasetEntry:
    name: str
    file_name: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    columns: Columns = field(default_factory=Columns)
    tags: Tags = field(default_factory=Tags)
    hub: str | None = None

    @classmethod
    def from_info(cls, name: str, raw: Any, info_path: Path) -> DatasetEntry:
        if not isinstance(raw, dict):
            raise DatasetInfoError(f"{info_path}: entry '{name}' must be an object, got {type(raw).__name__}")
        formatting = raw.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt"):
            raise DatasetInfoError(f"{info_path}: entry '{name}' has formatting '{formatting}'; use alpaca or sharegpt")
        known = set(Columns.__dataclass_fields__)
        mapping = {k: v for k, v in (raw.get("columns") or {}).items() if k in known and isinstance(v, str)}
        tag_names = set(Tags.__dataclass_fields__)
        tags = {k: v for k, v in (raw.get("tags") or {}).items() if k in tag_names and isinstance(v, str)}
        hub = next((f"{key}: {raw[key]}" for key in HUB_KEYS if raw.get(key)), None)
        return cls(name=name, file_name=raw.get("file_name"), formatting=formatting, ranking=bool(raw.get("ranking")),
                   columns=Columns().with_mapping(mapping), tags=Tags(**tags), hub=hub)


def read_dataset_info(folder: str | Path) -> dict[str, DatasetEntry]:
    """The entries of a folder's dataset_info.json, by name."""
    path = Path(folder) / DATASET_INFO
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {DATASET_INFO} in this folder; pass a data file, or a LLaMA-Factory data folder")
    try:
        raw = read_json(path)
    except json.JSONDecodeError as err:
        raise DatasetInfoError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); fix the file there") from None
    if not isinstance(raw, dict):
        raise DatasetInfoError(f"{path}: must hold an object of entries by name")
    return {name: DatasetEntry.from_info(name, value, path) for name, value in raw.items()}


@dataclass
class EntryOutcome:
    """What became of one entry: imported (with its read result), missing (file absent) or skipped (hub only)."""

    name: str
    status: str
    detail: str = ""
    result: ReadResult | None = None


def entry_files(folder: Path, entry: DatasetEntry) -> list[Path]:
    """The data files an entry names (a folder entry holds several); empty when they are absent."""
    if not entry.file_name:
        return []
    path = folder / entry.file_name
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.exists() else []


def read_entry(folder: str | Path, entry: DatasetEntry, stage: str = "import") -> EntryOutcome:
    """One entry's samples, or why there are none (missing file, hub-only entry)."""
    folder = Path(folder)
    if not entry.file_name:
        detail = f"hub-only entry ({entry.hub or 'no file_name'}); import it by id when online"
        return EntryOutcome(entry.name, "skipped", detail)
    files = entry_files(folder, entry)
    if not files:
        return EntryOutcome(entry.name, "missing", f"file {folder / entry.file_name} is absent")
    result = ReadResult(source=str(folder / entry.file_name))
    for path in files:
        part = read_file(path, entry.formatting, entry.columns, entry.tags, ranking=entry.ranking,
                         source=entry.name, stage=stage)
        result.extend(part)
    return EntryOutcome(entry.name, "imported", f"{len(files)} file(s)", result)


def import_folder(folder: str | Path, names: Iterable[str] | None = None, stage: str = "import") -> list[EntryOutcome]:
    """Every entry of a data folder (or the named ones); an absent file is reported, never fatal for the others."""
    entries = read_dataset_info(folder)
    wanted = list(names) if names is not None else list(entries)
    unknown = [name for name in wanted if name not in entries]
    if unknown:
        raise DatasetInfoError(f"{Path(folder) / DATASET_INFO}: no entry named {', '.join(unknown)}; "
                               f"entries with files: {', '.join(n for n, e in entries.items() if e.file_name)}")
    return [read_entry(folder, entries[name], stage) for name in wanted]


# -- export -----------------------------------------------------------------------------------------------------

def _kind(sample: Sample) -> str:
    if sample.rejected is not None:
        return "ranking"
    return "kto" if "kto_tag" in sample.extras else "sft"


def entry_names(samples: Iterable[Sample], name: str) -> list[str]:
    """The entries `export_llamafactory` writes for these samples: `name`, or one `name_<kind>` per kind present."""
    kinds = list(dict.fromkeys(_kind(s) for s in samples))
    return [name] if len(kinds) <= 1 else [f"{name}_{kind}" for kind in kinds]


STYLES = ("auto", "alpaca", "sharegpt")


def entry_info(samples: list[Sample], kind: str, file_name: str, style: str = "auto") -> tuple[str, dict[str, Any]]:
    """The row shape and dataset_info.json entry for a group of samples of one kind (sft, ranking or kto).

    `style` auto: sharegpt for rows that came from a conversation (tool roles and all), alpaca otherwise. A ranking
    entry's rows are what LLaMA-Factory's converters read as pairs: alpaca `output` (chosen) and `rejected` texts;
    sharegpt prompt turns ending with the user's, then one `chosen` and one `rejected` assistant message.
    """
    if style not in STYLES:
        raise ValueError(f"unknown LLaMA-Factory style '{style}'; use one of {', '.join(STYLES)}")
    shape = style if style != "auto" else "sharegpt" if any("turn_roles" in s.extras for s in samples) else "alpaca"
    if shape == "sharegpt":
        columns = {"messages": "conversations", "system": "system"}
    else:
        columns = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                   "history": "history"}
    if kind == "ranking":
        columns.pop("response", None)
        columns.update({"chosen": "chosen" if shape == "sharegpt" else "output", "rejected": "rejected"})
    if kind == "kto":
        columns["kto_tag"] = "kto_tag"
    if any("tools" in s.extras for s in samples):
        columns["tools"] = "tools"
    info: dict[str, Any] = {"file_name": file_name, "formatting": shape, "columns": columns}
    if kind == "ranking":
        info["ranking"] = True
    return shape, info


def export_llamafactory(samples: Iterable[Sample], out_dir: str | Path, name: str, carry: bool = True,
                        style: str = "auto") -> dict[str, Any]:
    """Write samples as data files plus dataset_info.json entries (merged into one already there); returns the entries.

    One entry per kind present: plain SFT rows under `name`, preference rows `ranking: true`, KTO rows with a
    `kto_tag` column (suffixes `_ranking`/`_kto` when a file holds several kinds). Each entry has its `file_sha1`.
    `style` picks the row shape (see `entry_info`).
    """
    out_dir = Path(out_dir)
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(_kind(sample), []).append(sample)
    entries: dict[str, Any] = {}
    for kind, group in groups.items():
        entry_name = name if len(groups) == 1 else f"{name}_{kind}"
        file_name = f"{entry_name}.json"
        shape, info = entry_info(group, kind, file_name, style)
        rows = samples_to_rows(group, shape, carry=carry)
        if "tools" in info["columns"]:
            for row in rows:
                row.setdefault("tools", "")
        path = write_rows(out_dir / file_name, rows, container="json")
        info["file_sha1"] = file_digest(path, "sha1")
        entries[entry_name] = info
    info_path = out_dir / DATASET_INFO
    existing = read_json(info_path) if info_path.exists() else {}
    write_json(info_path, {**existing, **entries})
    return entries
