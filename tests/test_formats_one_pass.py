"""Reading a file opens it once: the container yields its rows once, and the row shape comes from rows already read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tuneloop.data.io.formats import read_file, read_samples, write_file, write_rows
from tuneloop.records import Sample

_WATCHED: list[str] = []  # the data file a test watches; the audit hook counts the opens of exactly that path
_OPENS: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, Path)) and str(args[0]) == _WATCHED[0]:
        _OPENS.append(str(args[0]))


sys.addaudithook(_audit)  # Python's own "open" event: builtins.open, Path.read_bytes, io.open all raise it


@pytest.fixture
def count_opens(monkeypatch):
    """Opens of one path: Python file opens, plus pyarrow ParquetFile objects (pyarrow opens in C++, unaudited)."""
    import pyarrow.parquet as pq

    class CountingParquetFile(pq.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            if str(source) == (_WATCHED[0] if _WATCHED else None):
                _OPENS.append(str(source))
            super().__init__(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", CountingParquetFile)

    def count(path: Path, read) -> tuple[int, object]:
        _WATCHED[:] = [str(path)]
        _OPENS.clear()
        try:
            result = read(path)
        finally:
            _WATCHED.clear()
        return len(_OPENS), result

    return count


def _samples() -> list[Sample]:
    return [Sample(instruction="Extract the city", input=f"I live in city {i}", output=f'{{"city": "c{i}"}}')
            for i in range(5)]


@pytest.mark.parametrize("shape", ["alpaca", "sharegpt", "openai"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("reader", [read_samples, read_file], ids=["read_samples", "read_file"])
def test_reading_a_file_opens_it_once(tmp_path, count_opens, shape, suffix, reader):
    path = write_file(tmp_path / f"data{suffix}", _samples(), shape)
    opens, result = count_opens(path, reader)
    assert result.quarantined == [] and [s.output for s in result.samples] == [s.output for s in _samples()]
    assert opens == 1, f"{reader.__name__} opened {path.name} ({shape} rows) {opens} times"


def test_a_json_document_and_jsonl_named_json_open_once(tmp_path, count_opens):
    document = tmp_path / "doc.json"
    document.write_text('{"rows": [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]}\n',
                        encoding="utf-8")
    misnamed = write_rows(tmp_path / "lines.json", [{"instruction": "a", "output": "b"}], container="jsonl")
    misnamed.write_text(misnamed.read_text(encoding="utf-8") * 2, encoding="utf-8")  # two values: JSONL under .json
    for path, rows in ((document, 2), (misnamed, 2)):
        opens, result = count_opens(path, read_samples)
        assert (opens, len(result.samples), result.quarantined) == (1, rows, [])


def test_a_utf16_jsonl_file_opens_once(tmp_path, count_opens):
    path = tmp_path / "wide.jsonl"
    path.write_bytes(b"\xff\xfe" + '{"instruction": "é", "output": "ü"}\n'.encode("utf-16-le"))
    opens, result = count_opens(path, read_samples)
    assert (opens, [s.output for s in result.samples]) == (1, ["ü"])


def test_the_shape_comes_from_the_first_good_row_after_bad_ones(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text('not json\n[1, 2]\n{"conversations": [{"from": "human", "value": "hi"}, '
                    '{"from": "gpt", "value": "hello"}]}\n', encoding="utf-8")
    result = read_samples(path)
    assert [(s.instruction, s.output) for s in result.samples] == [("hi", "hello")]
    assert [q.line for q in result.quarantined] == [1, 2]
