"""Reading and writing samples: the one place that knows file formats.

Core contract every stage relies on:
- `read_samples(path)` → `ReadResult(samples, quarantined)`: a bad row never crashes a read and is never dropped;
  it becomes a `QuarantinedRow` with the source file, its 1-based line and the reason.
- `write_samples(path, samples)` writes tuneloop JSONL (one `Sample` per line, extras kept) atomically.
- `write_quarantine(path, rows)` writes quarantined rows as JSONL atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneloop.files import atomic_open
from tuneloop.records import QuarantinedRow, Sample


@dataclass
class ReadResult:
    samples: list[Sample] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    source: str = ""

    @property
    def total(self) -> int:
        return len(self.samples) + len(self.quarantined)


def validation_reason(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in err.errors())


def read_jsonl(path: str | Path, stage: str = "read") -> ReadResult:
    """tuneloop JSONL: one Sample per line. BOM, CRLF and blank lines are tolerated; everything else is quarantined."""
    path = Path(path)
    result = ReadResult(source=str(path))
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                result.quarantined.append(QuarantinedRow(
                    source_file=str(path), line=number, stage=stage,
                    reason=f"invalid UTF-8 at byte {err.start}; re-save the file as UTF-8",
                    raw=raw_line.decode("utf-8", errors="replace"),
                ))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                result.quarantined.append(QuarantinedRow(
                    source_file=str(path), line=number, stage=stage,
                    reason=f"not valid JSON at column {err.colno}: {err.msg}", raw=line.rstrip("\r\n"),
                ))
                continue
            if not isinstance(row, dict):
                result.quarantined.append(QuarantinedRow(
                    source_file=str(path), line=number, stage=stage,
                    reason=f"expected a JSON object per line, got {type(row).__name__}", raw=row,
                ))
                continue
            try:
                result.samples.append(Sample.model_validate(row))
            except ValidationError as err:
                result.quarantined.append(QuarantinedRow(
                    source_file=str(path), line=number, sample_id=row.get("id") if isinstance(row.get("id"), str) else None,
                    stage=stage, reason=validation_reason(err), raw=row,
                ))
    return result


def read_samples(path: str | Path, stage: str = "read") -> ReadResult:
    """Samples from a tuneloop JSONL file (other formats come in through `tuneloop data import`)."""
    return read_jsonl(path, stage=stage)


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
    with atomic_open(path) as handle:
        for sample in samples:
            handle.write(json.dumps(sample_to_dict(sample), ensure_ascii=False) + "\n")
    return Path(path)


def write_quarantine(path: str | Path, rows: Iterable[QuarantinedRow]) -> Path:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row.model_dump(mode="json"), ensure_ascii=False, default=str) + "\n")
    return Path(path)
