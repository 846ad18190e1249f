"""Reading and writing samples: the one place that knows file formats.

Core contract every stage relies on:
- `read_samples(path)` → `ReadResult(samples, quarantined)`: a bad row never crashes a read and is never dropped;
  it becomes a `QuarantinedRow` with the source file, its 1-based line and the reason.
- `write_samples(path, samples)` writes tuneloop JSONL (one `Sample` per line, extras kept) atomically.
- `write_quarantine(path, rows)` writes quarantined rows as JSONL atomically.
- `read_file(path, format, columns, tags, ranking, source)` reads Alpaca (JSON array or JSONL), ShareGPT, OpenAI
  messages, CSV and Parquet with column mapping; `write_file(path, samples, shape)` writes them back.
  Row shapes live in `shapes` / `openai_chat`, reading file kinds in `containers` (and what a damaged file still
  gives in `recovery`), LLaMA-Factory entries in `llamafactory`; `write_rows` writes each file kind.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneloop.data.io.containers import RawRow, iter_rows, opened_rows
from tuneloop.data.io.conversation import RowError
from tuneloop.data.io.openai_chat import openai_to_sample, sample_to_openai
from tuneloop.data.io.shapes import (
    Columns, Tags, alpaca_to_sample, sample_to_alpaca, sample_to_sharegpt, sharegpt_to_sample, structured,
)
from tuneloop.files import atomic_open, jsonl_line, write_jsonl
from tuneloop.records import QuarantinedRow, Sample

SHAPES = ("alpaca", "sharegpt", "openai")
FORMATS = ("auto", *SHAPES, "csv", "parquet")


@dataclass
class ReadResult:
    samples: list[Sample] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    source: str = ""
    # where each sample came from, index by index: the file and its 1-based line (row number for Parquet)
    files: list[str] = field(default_factory=list)
    lines: list[int | None] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.samples) + len(self.quarantined)

    def origin(self, index: int) -> tuple[str, int | None]:
        """(file, line) of sample `index`; (source, None) when the reader did not record it."""
        if len(self.lines) == len(self.samples) and len(self.files) == len(self.samples):
            return self.files[index], self.lines[index]
        return self.source, None

    def extend(self, other: ReadResult) -> None:
        """Append another read's samples and quarantine, keeping where each sample came from."""
        self.files += [other.origin(i)[0] for i in range(len(other.samples))]
        self.lines += [other.origin(i)[1] for i in range(len(other.samples))]
        self.samples += other.samples
        self.quarantined += other.quarantined


def validation_reason(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in err.errors())


def collect(path: str | Path, items: Iterable[RawRow | QuarantinedRow], convert: Callable[[dict[str, Any]], Sample],
            stage: str) -> ReadResult:
    """Samples from rows; a row `convert` refuses (RowError, ValidationError) is quarantined with its line and reason."""
    result = ReadResult(source=str(path))
    for item in items:
        if isinstance(item, QuarantinedRow):
            result.quarantined.append(item)
            continue
        try:
            result.samples.append(convert(item.value))
            result.files.append(str(path))
            result.lines.append(item.line)
        except (RowError, ValidationError) as err:
            row_id = item.value.get("id")
            result.quarantined.append(QuarantinedRow(
                source_file=str(path), line=item.line, sample_id=row_id if isinstance(row_id, str) else None,
                stage=stage, reason=validation_reason(err) if isinstance(err, ValidationError) else str(err),
                raw=item.value,
            ))
    return result


def read_jsonl(path: str | Path, stage: str = "read") -> ReadResult:
    """tuneloop JSONL: one Sample per line. BOM, CRLF and blank lines are tolerated; everything else is quarantined."""
    return collect(path, iter_rows(path, stage, container="jsonl"), Sample.model_validate, stage)


def detect_shape(row: dict[str, Any], columns: Columns = Columns()) -> str:
    """alpaca | sharegpt | openai, from the keys of a row (and the message keys of a conversation)."""
    for key in (columns.messages, "messages", "conversations"):
        messages = structured(row.get(key))
        if isinstance(messages, list):
            first = messages[0] if messages and isinstance(messages[0], dict) else {}
            if "role" in first and key == "messages":
                return "openai"
            return "sharegpt"
    return "alpaca"


def row_to_sample(row: dict[str, Any], shape: str, columns: Columns = Columns(), tags: Tags = Tags(),
                  ranking: bool | None = None, source: str | None = None) -> Sample:
    """One row of a known shape as a Sample; raises RowError with the quarantine reason."""
    if shape == "openai":
        return openai_to_sample(row, source=source)
    if shape == "sharegpt":
        if "conversations" not in row and columns.messages == "conversations" and "messages" in row:
            columns = replace(columns, messages="messages")
        return sharegpt_to_sample(row, columns, tags, ranking=ranking, source=source)
    return alpaca_to_sample(row, columns, ranking=ranking, source=source)


def read_file(path: str | Path, format: str = "auto", columns: Columns = Columns(), tags: Tags = Tags(),
              ranking: bool | None = None, source: str | None = None, stage: str = "import") -> ReadResult:
    """Samples from a data file of any supported format; bad rows are quarantined with file, line and reason.

    `format` is auto | alpaca | sharegpt | openai | csv | parquet: a row shape (the file kind then comes from the
    name and first byte) or a file kind (the row shape then comes from the first row's keys).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format '{format}'; use one of {', '.join(FORMATS)}")
    shape = format if format in SHAPES else None

    def convert(row: dict[str, Any]) -> Sample:
        nonlocal shape
        shape = shape or detect_shape(row, columns)
        return row_to_sample(row, shape, columns, tags, ranking, source)

    with opened_rows(path, stage, container=format if format in ("csv", "parquet") else None) as (_, rows):
        return collect(path, rows, convert, stage)


def read_samples(path: str | Path, stage: str = "read") -> ReadResult:
    """Samples from a tuneloop JSONL file, or from any format `read_file` knows (detected from name and rows).

    One pass: the file is opened once and its rows read once; the row shape comes from the first good row of that
    pass. Alpaca rows in JSONL are tuneloop's own samples (every field by its name, as `read_jsonl` reads them);
    any other shape or file kind is converted as `read_file` converts it.
    """
    shape: str | None = None
    with opened_rows(path, stage) as (container, rows):

        def convert(row: dict[str, Any]) -> Sample:
            nonlocal shape
            if shape is None:  # decided once, on the first good row
                shape = detect_shape(row)
                shape = "tuneloop" if container == "jsonl" and shape == "alpaca" else shape
            return Sample.model_validate(row) if shape == "tuneloop" else row_to_sample(row, shape)

        return collect(path, rows, convert, stage)


def load_samples(path: str | Path) -> list[Sample]:
    """Samples from a file tuneloop wrote itself; any bad row is an error naming file and line."""
    result = read_jsonl(path)
    if result.quarantined:
        bad = result.quarantined[0]
        raise ValueError(f"{bad.source_file}, line {bad.line}: {bad.reason}. This file should hold tuneloop samples.")
    return result.samples


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    return sample.model_dump(mode="json", exclude_none=False)


def write_samples(path: str | Path, samples: Iterable[Sample]) -> Path:
    """tuneloop JSONL, atomically (temp file + rename)."""
    return write_jsonl(path, (sample_to_dict(sample) for sample in samples))


def samples_to_rows(samples: Iterable[Sample], shape: str, carry: bool = True) -> list[dict[str, Any]]:
    """Rows of a format's shape; `carry` adds the tuneloop column that makes the export import back without loss."""
    if shape not in SHAPES:
        raise ValueError(f"unknown row shape '{shape}'; use one of {', '.join(SHAPES)}")
    if shape == "openai":
        return [sample_to_openai(s, carry=carry) for s in samples]
    if shape == "sharegpt":
        return [sample_to_sharegpt(s, carry=carry) for s in samples]
    return [sample_to_alpaca(s, carry=carry) for s in samples]


def write_file(path: str | Path, samples: Iterable[Sample], shape: str = "alpaca", carry: bool = True) -> Path:
    """Samples as a file of one format's rows; the file kind (jsonl, json, csv, parquet) comes from the name."""
    return write_rows(path, samples_to_rows(samples, shape, carry))


def write_quarantine(path: str | Path, rows: Iterable[QuarantinedRow]) -> Path:
    return write_jsonl(path, (row.model_dump(mode="json") for row in rows), default=str)


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]], container: str | None = None) -> Path:
    """Rows to a file, atomically: JSONL, a JSON array (one row per line), CSV (structured cells as JSON) or Parquet."""
    path = Path(path)
    container = container or {".csv": "csv", ".parquet": "parquet", ".json": "json"}.get(path.suffix.lower(), "jsonl")
    rows = list(rows)
    if container == "parquet":
        _write_parquet(path, rows)
    elif container == "csv":
        _write_csv(path, rows)
    elif container == "json":  # a JSON array with one row per line, so a diff shows rows
        with atomic_open(path) as handle:
            handle.write("[\n" + ",\n".join(jsonl_line(row).rstrip("\n") for row in rows) + "\n]\n" if rows else "[]\n")
    else:
        write_jsonl(path, rows)
    return path


def _column_names(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _cell_text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = _column_names(rows)
    with atomic_open(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow([_cell_text(row.get(name)) for name in names])


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in _column_names(rows):
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):  # mixed types: keep each value as JSON text
            columns[name] = pa.array([None if v is None else _cell_text(v) for v in values], pa.string())
    with atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle)
