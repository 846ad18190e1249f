"""Rows from files: JSONL, JSON arrays, CSV and Parquet, each row with its 1-based line (or row) number.

Reading never raises on a bad row: it yields a `QuarantinedRow` naming the file, the line and why, and goes on.
A UTF-8 BOM and CRLF line ends are tolerated, UTF-16/32 files with a BOM are read as such; invalid UTF-8
quarantines the row (or CSV record) that holds it.

What a damaged file still gives:
```
JSON array broken part-way   every element before the break is read with its line; after it, each element is found
                             by its layout (a line start at the elements' indent, or `, {` with the rows' keys) and
                             quarantined on its own with its line and raw text: nothing past a break is trusted
JSON object {"rows": [...]}  the rows of its one list of objects; any other object is one row
CSV                          parsed strictly: a malformed quote quarantines its record; a quote never closed
                             quarantines its record and each line after it, one entry per line
Parquet, damaged row group   the readable row groups are read; each row of a damaged group is quarantined with its
                             row number and the columns that can still be read; a damaged footer (the map of the
                             row groups) leaves nothing to recover, and says so in one entry
```
Finding the pieces after a break is `recovery`'s part (pure functions on text).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tuneloop.data.io.conversation import type_name
from tuneloop.data.io.recovery import at_row_indent, csv_pieces, damaged_row_group, json_pieces, skip_space
from tuneloop.records import QuarantinedRow

CONTAINERS = ("jsonl", "json", "csv", "parquet")
BOM = b"\xef\xbb\xbf"
# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe", "utf-16-le"),
             (b"\xfe\xff", "utf-16-be"))
BAD_BYTES = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by the surrogateescape decoder
FIX_UTF8 = "re-save the file as UTF-8"
CSV_FIELD_LIMIT = 2**31 - 1  # the largest the csv module takes on every platform


@dataclass
class RawRow:
    line: int | None
    value: dict[str, Any]


def decode_text(data: bytes) -> str:
    """A text file's characters: UTF-8 (BOM or not), or UTF-16/32 after their BOM; bad bytes kept as surrogates."""
    for mark, codec in WIDE_BOMS:
        if data.startswith(mark):
            return data[len(mark):].decode(codec, errors="surrogateescape")
    return data.removeprefix(BOM).decode("utf-8", errors="surrogateescape")


def _kind_by_name(path: Path) -> str | None:
    return {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower())


def _kind_by_head(path: Path, data: bytes) -> str:
    """json | jsonl from a file's first bytes: a file starting with `[` is a JSON array whatever its name; a `.json`
    file starting with `{` is a JSON document (an object holding a list of rows, one row, or JSONL under that name)."""
    for mark, codec in WIDE_BOMS:
        if data.startswith(mark):
            head = data[len(mark):len(mark) + 2048].decode(codec, errors="ignore").lstrip()
            break
    else:
        head = data.removeprefix(BOM).decode("utf-8", errors="ignore").lstrip()
    return "json" if head.startswith("[") or (path.suffix.lower() == ".json" and head.startswith("{")) else "jsonl"


Rows = Iterator[RawRow | QuarantinedRow]


@contextmanager
def opened_rows(path: str | Path, stage: str, container: str | None = None) -> Iterator[tuple[str, Rows]]:
    """(file kind, rows) of a file opened once: the kind comes from the name, else from the first bytes of the same
    open handle, and the rows are read from that handle (Parquet: through one `ParquetFile`, pyarrow's own open).

    ```
    path ─▶ .csv/.tsv/.parquet/.pq: kind by name ─┐
         └▶ open once ─▶ first 4 KiB: '[' json, '{' in .json json, else jsonl ─┴▶ kind, rows (read once)
    ```
    """
    path = Path(path)
    if container is not None and container not in CONTAINERS:
        raise ValueError(f"unknown file kind '{container}'; use one of {', '.join(CONTAINERS)}")
    kind = container or _kind_by_name(path)
    if kind == "parquet":
        yield kind, _parquet_rows(path, stage)
        return
    with open(path, "rb") as handle:
        if kind is None:
            kind = _kind_by_head(path, handle.read(4096))
            handle.seek(0)
        if kind == "jsonl":
            yield kind, _jsonl_rows(path, stage, _utf8_lines(handle))
        else:
            text = decode_text(handle.read())
            yield kind, (_json_rows if kind == "json" else _csv_rows)(path, stage, text)


def iter_rows(path: str | Path, stage: str, container: str | None = None) -> Rows:
    """Every row of a file as a `RawRow` (a JSON object) or a `QuarantinedRow` saying why it is not one."""
    with opened_rows(path, stage, container) as (_, rows):
        yield from rows


def _bad(path: Path, line: int | None, stage: str, reason: str, raw: Any = None) -> QuarantinedRow:
    return QuarantinedRow(source_file=str(path), line=line, stage=stage, reason=reason, raw=raw)


class _Decoder(json.JSONDecoder):
    """json's decoder, noting the keys an object held twice (json keeps only the last value of each)."""

    def __init__(self) -> None:
        self.twice: list[str] = []
        super().__init__(object_pairs_hook=self._object)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(pairs)
        if len(value) < len(pairs):
            seen: set[str] = set()
            self.twice += [key for key, _ in pairs if key in seen or seen.add(key)]  # type: ignore[func-returns-value]
        return value


def _object_or_bad(path: Path, line: int | None, stage: str, value: Any,
                   twice: list[str] | None = None) -> RawRow | QuarantinedRow:
    if twice:
        return _bad(path, line, stage, f"the key {twice[0]!r} appears twice in one object of this row, so one of its "
                    "values would be lost: remove or rename one", value)
    if isinstance(value, dict):
        return RawRow(line, value)
    return _bad(path, line, stage, f"expected a JSON object per row, got {type_name(value)}", value)


def _printable(text: str) -> str:
    """Text with the surrogates that stand for bad bytes shown as U+FFFD, so it can be written as JSON."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8_lines(handle: BinaryIO) -> Iterator[bytes]:
    """The file's lines as UTF-8 bytes: streamed when it is UTF-8, converted whole when it has a UTF-16/32 BOM."""
    head = handle.read(4)
    handle.seek(0)
    if not any(head.startswith(mark) for mark, _ in WIDE_BOMS):
        yield from handle
        return
    yield from _text_lines(decode_text(handle.read()))


def _text_lines(text: str) -> io.BytesIO:
    """Decoded text back as the UTF-8 lines `_jsonl_rows` reads (the surrogates give back the bad bytes)."""
    return io.BytesIO(text.encode("utf-8", "surrogateescape"))


def _jsonl_rows(path: Path, stage: str, lines: Iterable[bytes]) -> Iterator[RawRow | QuarantinedRow]:
    decoder = _Decoder()
    for number, raw_line in enumerate(lines, start=1):
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
            decoder.twice.clear()
            value = decoder.decode(line)
        except json.JSONDecodeError as err:
            hint = "; it holds NUL bytes, so it looks like UTF-16 without a BOM: " + FIX_UTF8 if "\x00" in line else ""
            yield _bad(path, number, stage, f"not valid JSON at column {err.colno}: {err.msg}{hint}",
                       line.rstrip("\r\n"))
            continue
        yield _object_or_bad(path, number, stage, value, decoder.twice)


class _Lines:
    """1-based line of a position in a text, counting forward only so that a long array stays linear."""

    def __init__(self, text: str) -> None:
        self.text, self.counted_to, self.newlines = text, 0, 0

    def at(self, position: int) -> int:
        if position < self.counted_to:
            return self.text.count("\n", 0, position) + 1
        self.newlines += self.text.count("\n", self.counted_to, position)
        self.counted_to = position
        return self.newlines + 1


def _json_rows(path: Path, stage: str, text: str) -> Iterator[RawRow | QuarantinedRow]:
    start = skip_space(text, 0)
    if text.startswith("[", start):
        yield from _array_rows(path, stage, text, start)
    elif text.startswith("{", start):
        yield from _document_rows(path, stage, text, start)
    elif text[start:].strip():
        yield _bad(path, _Lines(text).at(start), stage, "expected a JSON array of rows ('[' first) or a JSON object",
                   _printable(text[start:start + 2000]))


def _document_rows(path: Path, stage: str, text: str, start: int) -> Iterator[RawRow | QuarantinedRow]:
    """A JSON file starting with `{`: an object holding one list of rows, one row, or JSONL under a .json name."""
    try:
        decoder = _Decoder()
        document = decoder.decode(text)
    except json.JSONDecodeError:  # several values (JSONL named .json) or a broken object: read it line by line
        yield from _jsonl_rows(path, stage, _text_lines(text))
        return
    lists = [key for key, value in document.items()
             if isinstance(value, list) and value and all(isinstance(v, dict) for v in value)]
    if len(lists) > 1:
        yield _bad(path, 1, stage, f"the JSON object holds several lists of rows ({', '.join(lists)}); "
                   "write each list to its own file (a JSON array or JSONL)", document)
        return
    if not lists:
        yield from (_bad(path, 1, stage, f"invalid UTF-8 in this row; {FIX_UTF8}", _printable(text))
                    if BAD_BYTES.search(text) else _object_or_bad(path, _Lines(text).at(start), stage, document,
                                                                  decoder.twice),)
        return
    key = re.compile(r'(?<!\\)' + re.escape(json.dumps(lists[0], ensure_ascii=False)) + r'\s*:\s*\[')
    found = key.search(text) or re.compile(r'(?<!\\)' + re.escape(json.dumps(lists[0])) + r'\s*:\s*\[').search(text)
    if found is None:  # the key is spelled with escapes: the rows are right, only their lines are unknown
        yield from (_object_or_bad(path, None, stage, row) for row in document[lists[0]])
        return
    yield from _array_rows(path, stage, text, found.end() - 1, nested=True)


def _array_rows(path: Path, stage: str, text: str, start: int,
                nested: bool = False) -> Iterator[RawRow | QuarantinedRow]:
    """The elements of the JSON array whose `[` is at `start`; past a break, `recovery.json_pieces` finds the rest.

    A row is given out only once what follows it is sound: a damaged row can parse as a shorter object (a lost
    backslash ends a string early), so a row followed by no ',' or ']', or, when the next row does not parse, a row
    missing a key every earlier row has or a next row that does not begin at the rows' indent, is taken into the
    broken piece instead of being read as a row.
    """
    decoder = _Decoder()
    lines = _Lines(text)
    starts: list[int] = []
    keys: set[str] = set()
    common: set[str] | None = None  # keys every row before the pending one has
    pending: tuple[int, int, Any, list[str]] | None = None  # (start, end, value, keys held twice) of the last row

    def give(row: tuple[int, int, Any, list[str]]) -> RawRow | QuarantinedRow:
        begin, end, value, twice = row
        if BAD_BYTES.search(text, begin, end):
            return _bad(path, lines.at(begin), stage, f"invalid UTF-8 in this row; {FIX_UTF8}", _printable(text[begin:end]))
        return _object_or_bad(path, lines.at(begin), stage, value, twice)

    def broken(at: int, reason: str) -> Iterator[RawRow | QuarantinedRow]:
        if pending is not None and at != pending[0]:
            yield give(pending)
        yield from _pieces(path, stage, text, json_pieces(text, at, reason, starts[:-1] if pending and at == pending[0]
                                                          else starts, keys), lines)

    def sound(at: int) -> bool:
        """Whether the pending row stands, given a break at `at` right after it."""
        if pending is None or at >= len(text):
            return True
        shown = set(pending[2]) if isinstance(pending[2], dict) else set()
        return at_row_indent(text, at, starts) and not (common and not common <= shown)

    position = skip_space(text, start + 1)
    while not text.startswith("]", position):
        try:
            decoder.twice.clear()
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            reason = (f"the JSON array breaks at line {err.lineno} column {err.colno} ({err.msg})" if position < len(text)
                      else "the file ends inside the JSON array (no closing ']'; it may be cut off)")
            yield from broken(position if sound(position) else pending[0], reason)
            return
        after = skip_space(text, end)
        if after < len(text) and text[after] not in ",]":
            reason = f"the JSON array breaks at line {lines.at(after)}: expected ',' or ']' after a row"
            yield from broken(position if sound(position) else pending[0], reason)
            return
        if pending is not None:
            yield give(pending)
            shown = set(pending[2]) if isinstance(pending[2], dict) else set()
            common = shown if common is None else common & shown
        pending = (position, end, value, list(decoder.twice))
        starts.append(position)
        if isinstance(value, dict):
            keys.update(value)
        position = after
        if text.startswith(",", position):
            position = skip_space(text, position + 1)  # a trailing comma before ']' loses nothing: tolerated
        elif position >= len(text):
            yield from broken(position, "the file ends inside the JSON array (no closing ']'; it may be cut off)")
            return
    rest = skip_space(text, position + 1)
    if not nested and rest < len(text) and pending is not None and not _json_value_at(text, rest):
        # what follows the ']' is no JSON value: the ']' may stand inside the last row's damaged string (`"a0 :"}]`
        # of a longer answer), so that row is quarantined with the rest instead of kept with its answer cut short
        reason = f"the JSON array closes early at line {lines.at(position)}: text after its ']' continues a row"
        yield from broken(pending[0], reason)
        return
    if pending is not None:
        yield give(pending)
    if not nested and rest < len(text):
        reason = f"text after the JSON array's closing ']' at line {lines.at(position)}"
        yield from _pieces(path, stage, text, json_pieces(text, rest, reason, starts, keys), lines)


def _json_value_at(text: str, at: int) -> bool:
    """Whether a whole JSON value starts at `at` (a row after the array, not the tail of a row the ']' cut)."""
    try:
        json.JSONDecoder().raw_decode(text, at)
    except json.JSONDecodeError:
        return False
    return True


def _pieces(path: Path, stage: str, text: str, pieces: Iterable[tuple[int, str, str]],
            lines: _Lines) -> Iterator[QuarantinedRow]:
    for position, reason, raw in pieces:
        yield _bad(path, lines.at(position), stage, reason, _printable(raw) if raw else None)


def _csv_rows(path: Path, stage: str, text: str) -> Iterator[RawRow | QuarantinedRow]:
    """CSV records, strictly parsed: a malformed quote quarantines its record, an unclosed one every line after it."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # long documents in a cell; the module default is 128 KiB
    try:
        yield from _csv_records(path, stage, text, reader)
    finally:
        csv.field_size_limit(limit)


def _csv_records(path: Path, stage: str, text: str, reader: Any) -> Iterator[RawRow | QuarantinedRow]:
    physical = text.split("\n")
    try:
        header = next(reader, None)
    except csv.Error as err:
        yield _bad(path, 1, stage, f"the CSV header cannot be read ({err}); fix the first line", _printable(physical[0]))
        return
    if header is None:
        return
    twice = sorted({name for name in header if header.count(name) > 1})
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if reader.line_num >= len(physical) - (not physical[-1]) and "end of data" in str(err):
                for line, reason, raw in csv_pieces(physical, start):
                    yield _bad(path, line, stage, reason, _printable(raw))
                return
            yield _bad(path, start, stage, f"a malformed quote in this record ({err}); write a quote inside a quoted "
                       'field as "" and quote fields that hold commas or line breaks',
                       _printable("\n".join(physical[start - 1:reader.line_num]).rstrip("\r")))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if any(BAD_BYTES.search(cell) for cell in record):
            yield _bad(path, line, stage, f"invalid UTF-8 in this record; {FIX_UTF8}", [_printable(c) for c in record])
        elif twice:
            yield _bad(path, line, stage, f"the header names the column {', '.join(repr(n) for n in twice)} twice, so "
                       "a value of this record would be lost: rename one of them", record)
        elif len(record) != len(header):
            yield _bad(path, line, stage, f"{len(record)} fields where the header has {len(header)}; "
                       "quote fields that hold commas or line breaks", record)
        else:
            yield RawRow(line, dict(zip(header, record, strict=True)))


def _parquet_rows(path: Path, stage: str) -> Iterator[RawRow | QuarantinedRow]:
    import pyarrow.parquet as pq

    try:  # page checksums are verified where the writer stored them
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as err:  # pyarrow raises several types for a damaged file
        yield _bad(path, None, stage, f"not a readable Parquet file ({err}): its footer, the map of where the rows are, "
                   "cannot be read, so no row can be recovered and their number is unknown; re-export the file")
        return
    first, groups = 1, parquet.num_row_groups
    for group in range(groups):
        count = parquet.metadata.row_group(group).num_rows
        try:
            rows = parquet.read_row_group(group).to_pylist()
        except Exception as err:
            reason, readable = damaged_row_group(parquet, group, first, count, err)
            yield from (_bad(path, first + offset, stage, reason, raw) for offset, raw in enumerate(readable))
        else:
            yield from (RawRow(first + offset, row) for offset, row in enumerate(rows))
        first += count
