"""Rows in and out of files: JSONL, JSON arrays, CSV and Parquet, each row with its 1-based line (or row) number.

Reading never raises on a bad row: it yields a `QuarantinedRow` naming the file, the line and why, and goes on.
A UTF-8 BOM and CRLF line ends are tolerated; invalid UTF-8 quarantines the row (or CSV record) that holds it.
A JSON array broken part-way keeps the elements before the break and quarantines the rest as one entry.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.data.conversation import type_name
from tuneloop.files import atomic_open
from tuneloop.records import QuarantinedRow

CONTAINERS = ("jsonl", "json", "csv", "parquet")
BOM = b"\xef\xbb\xbf"
BAD_BYTES = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by the surrogateescape decoder
FIX_UTF8 = "re-save the file as UTF-8"


@dataclass
class RawRow:
    line: int
    value: dict[str, Any]


def container_of(path: str | Path) -> str:
    """jsonl | json | csv | parquet, from the file name, and for .json files from the first character."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    with open(path, "rb") as handle:
        head = handle.read(4096).removeprefix(BOM).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def iter_rows(path: str | Path, stage: str, container: str | None = None) -> Iterator[RawRow | QuarantinedRow]:
    """Every row of a file as a `RawRow` (a JSON object) or a `QuarantinedRow` saying why it is not one."""
    container = container or container_of(path)
    readers = {"jsonl": _jsonl_rows, "json": _json_array_rows, "csv": _csv_rows, "parquet": _parquet_rows}
    if container not in readers:
        raise ValueError(f"unknown file kind '{container}'; use one of {', '.join(CONTAINERS)}")
    yield from readers[container](Path(path), stage)


def _bad(path: Path, line: int | None, stage: str, reason: str, raw: Any = None) -> QuarantinedRow:
    return QuarantinedRow(source_file=str(path), line=line, stage=stage, reason=reason, raw=raw)


def _object_or_bad(path: Path, line: int, stage: str, value: Any) -> RawRow | QuarantinedRow:
    if isinstance(value, dict):
        return RawRow(line, value)
    return _bad(path, line, stage, f"expected a JSON object per row, got {type_name(value)}", value)


def _jsonl_rows(path: Path, stage: str) -> Iterator[RawRow | QuarantinedRow]:
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            raw_line = raw_line.removeprefix(BOM)  # a BOM also turns up mid-file where files were concatenated
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield _bad(path, number, stage, f"invalid UTF-8 at byte {err.start}; {FIX_UTF8}",
                           raw_line.decode("utf-8", errors="replace").rstrip("\r\n"))
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                yield _bad(path, number, stage, f"not valid JSON at column {err.colno}: {err.msg}", line.rstrip("\r\n"))
                continue
            yield _object_or_bad(path, number, stage, value)


def _json_array_rows(path: Path, stage: str) -> Iterator[RawRow | QuarantinedRow]:
    text = path.read_bytes().removeprefix(BOM).decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder()
    position, counted_to, newlines = 0, 0, 0

    def line_at(at: int) -> int:  # counts forward only, so a long array stays linear
        nonlocal counted_to, newlines
        newlines += text.count("\n", counted_to, at)
        counted_to = at
        return newlines + 1

    def skip_space(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    position = skip_space(position)
    if not text.startswith("[", position):
        yield _bad(path, 1, stage, "expected a JSON array of rows ('[' first)")
        return
    position = skip_space(position + 1)
    if text.startswith("]", position):
        return
    while True:
        element_line = line_at(position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            yield _bad(path, err.lineno, stage, f"the JSON array breaks at line {err.lineno} column {err.colno} "
                       f"({err.msg}); this row and every row after it were not read: fix the file there")
            return
        bad = BAD_BYTES.search(text, position, end)
        if bad:
            yield _bad(path, element_line, stage, f"invalid UTF-8 in this row; {FIX_UTF8}",
                       text[position:end].encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        else:
            yield _object_or_bad(path, element_line, stage, value)
        position = skip_space(end)
        if text.startswith("]", position):
            return
        if not text.startswith(",", position):
            at = line_at(position)
            yield _bad(path, at, stage, f"the JSON array breaks at line {at}: expected ',' or ']' after a row; "
                       "the rows after it were not read: fix the file there")
            return
        position = skip_space(position + 1)


def _csv_rows(path: Path, stage: str) -> Iterator[RawRow | QuarantinedRow]:
    text = path.read_bytes().removeprefix(BOM).decode("utf-8", errors="surrogateescape")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    start = reader.line_num + 1
    for record in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if any(BAD_BYTES.search(cell) for cell in record):
            yield _bad(path, line, stage, f"invalid UTF-8 in this record; {FIX_UTF8}",
                       [c.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for c in record])
        elif len(record) != len(header):
            yield _bad(path, line, stage, f"{len(record)} fields where the header has {len(header)}; "
                       "quote fields that hold commas or line breaks", record)
        else:
            yield RawRow(line, dict(zip(header, record, strict=True)))


def _parquet_rows(path: Path, stage: str) -> Iterator[RawRow | QuarantinedRow]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged file
        yield _bad(path, None, stage, f"not a readable Parquet file ({err}); re-export it")
        return
    for number, row in enumerate(rows, start=1):
        yield RawRow(number, row)


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]], container: str | None = None) -> Path:
    """Rows to a file, atomically: JSONL, a JSON array (one row per line), CSV (structured cells as JSON) or Parquet."""
    path = Path(path)
    container = container or {".csv": "csv", ".parquet": "parquet", ".json": "json"}.get(path.suffix.lower(), "jsonl")
    rows = list(rows)
    if container == "parquet":
        _write_parquet(path, rows)
    elif container == "csv":
        _write_csv(path, rows)
    else:
        lines = (json.dumps(row, ensure_ascii=False) for row in rows)
        with atomic_open(path) as handle:
            if container == "json":
                handle.write("[\n" + ",\n".join(lines) + "\n]\n" if rows else "[]\n")
            else:
                handle.writelines(line + "\n" for line in lines)
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
