"""No row lost, every count true: every `tuneloop data` command on every input shape accounts for each row.

Each shape is a file (or folder) whose number of rows is known, good and bad ones mixed. Every command prints
`rows: N in = a kept + b removed + ...`; N must be the rows of the input and the parts must add up, and the files
the command wrote must hold exactly that many rows each. A command that cannot leave a row out (leakage, export)
refuses a file with unreadable rows instead, naming the line.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import write_file
from tuneloop.files import read_json
from tuneloop.records import Sample

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "pu", "ri", "so", "tu") for b in ("ba", "de", "fi", "go", "hu", "ja")]
TYPES = ["golden", "golden", "negative", "boundary", "golden", "generic"]


def good_samples(count: int = 12) -> list[Sample]:
    """Distinct rows (no near duplicates) of mixed sample types, so that the mix has something to leave out."""
    rows = []
    for i in range(count):
        words = " ".join(random.Random(i).sample(VOCAB, 12))
        rows.append(Sample(id=f"s{i}", instruction=f"Summarize item {i}.", input=words, output=f"item {i}: {words[:20]}",
                           sample_type=TYPES[i % len(TYPES)], lineage={"source_id": f"seed{i}"}))
    return rows


def alpaca_lines(samples: list[Sample]) -> list[str]:
    return [json.dumps({"id": s.id, "instruction": s.instruction, "input": s.input, "output": s.output,
                        "sample_type": s.sample_type}, ensure_ascii=False) for s in samples]


def jsonl_with_bad_rows(folder: Path) -> tuple[Path, int]:
    lines = alpaca_lines(good_samples())
    lines[3] = lines[3][:-5]  # broken JSON
    lines.insert(6, json.dumps({"instruction": 7, "output": "x"}))  # wrong type
    lines.append(lines[0])  # an exact duplicate: dedup removes it
    path = folder / "rows.jsonl"
    path.write_text("\n".join(lines[:6]) + "\n\n" + "\n".join(lines[6:]) + "\n", encoding="utf-8")
    return path, len(lines)


def jsonl_bom_crlf(folder: Path) -> tuple[Path, int]:
    path = folder / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(alpaca_lines(good_samples())).encode() + b"\r\n")
    return path, 12


def jsonl_truncated_last_line(folder: Path) -> tuple[Path, int]:
    lines = alpaca_lines(good_samples())
    path = folder / "cut.jsonl"
    path.write_text("\n".join(lines)[:-25], encoding="utf-8")
    return path, 12


def utf16_jsonl(folder: Path) -> tuple[Path, int]:
    path = folder / "wide.jsonl"
    path.write_bytes("\n".join(alpaca_lines(good_samples())).encode("utf-16"))
    return path, 12


def empty_file(folder: Path) -> tuple[Path, int]:
    path = folder / "empty.jsonl"
    path.write_bytes(b"")
    return path, 0


def json_array_broken_part_way(folder: Path) -> tuple[Path, int]:
    path = write_file(folder / "broken.json", good_samples(), "alpaca")
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[5] = lines[5][:40]  # row 5 of 12 is cut: 4 read, 8 quarantined one by one
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, 12


def pretty_sharegpt_array(folder: Path) -> tuple[Path, int]:
    path = write_file(folder / "chat.json", good_samples(), "sharegpt")
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2, ensure_ascii=False), encoding="utf-8")
    return path, 12


def json_object_of_rows(folder: Path) -> tuple[Path, int]:
    path = folder / "wrapped.json"
    rows = [json.loads(line) for line in alpaca_lines(good_samples())]
    path.write_text(json.dumps({"version": "1", "data": rows}, indent=1), encoding="utf-8")
    return path, 12


def openai_messages(folder: Path) -> tuple[Path, int]:
    return write_file(folder / "messages.jsonl", good_samples(), "openai"), 12


def csv_with_quoted_newlines(folder: Path) -> tuple[Path, int]:
    samples = good_samples()
    samples[2] = samples[2].model_copy(update={"input": "line one\nline two, with a comma"})
    path = write_file(folder / "table.csv", samples, "alpaca")
    path.write_text(path.read_text(encoding="utf-8") + "too,few\n", encoding="utf-8")  # a record of 2 fields
    return path, 13


def damaged_parquet(folder: Path) -> tuple[Path, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in alpaca_lines(good_samples())]), path,
                   row_group_size=4)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(2)
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start:start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    return path, 12


def llamafactory_folder(folder: Path) -> tuple[Path, int]:
    from tuneloop.data.io.llamafactory import export_llamafactory

    export_llamafactory(good_samples(), folder / "lf", "items")
    return folder / "lf", 12


SHAPES = {f.__name__: f for f in (
    jsonl_with_bad_rows, jsonl_bom_crlf, jsonl_truncated_last_line, utf16_jsonl, empty_file, json_array_broken_part_way,
    pretty_sharegpt_array, json_object_of_rows, openai_messages, csv_with_quoted_newlines, damaged_parquet,
    llamafactory_folder)}
COMMANDS = ("import", "check", "dedup", "redact", "split", "mix", "gate", "leakage", "export", "register")


def counted(output: str) -> list[tuple[int, dict[str, int]]]:
    """Every `rows: N in = a x + b y` line of a command's output."""
    found = []
    for line in output.splitlines():
        match = re.match(r"rows: (\d+) in = (.*?)(?: \(|$)", line.strip())
        if match:
            parts = dict((name, int(n)) for n, name in re.findall(r"(\d+) ([a-z][a-z -]*?)(?= \+|$)", match.group(2)))
            found.append((int(match.group(1)), parts))
    return found


def rows_of(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def invoke(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed and result.exit_code != 70, result.output  # 70: an unexpected error (a tuneloop bug)
    return result


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_command_accounts_for_every_row_of_every_shape(tmp_path, shape, command, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside any project: default settings
    source, rows_in = SHAPES[shape](tmp_path)
    is_folder = source.is_dir()
    out = tmp_path / "out" / "rows.jsonl"
    if command == "register":  # the registry's row count of a file is its rows in, good and bad alike
        files = sorted(p for p in source.rglob("*.json") if p.name != "dataset_info.json") if is_folder else [source]
        result = invoke(["data", "register", "shape", *files, "--manifest", tmp_path / "registry.json"])
        assert result.exit_code == 0, result.output
        registered = read_json(tmp_path / "registry.json")["datasets"]["shape"]["files"]
        assert sum(f["rows"] for f in registered) == rows_in, registered
        return
    if is_folder and command != "import":
        result = invoke(["data", command, source, "--out", out] if command not in ("split", "leakage", "export")
                        else ["data", command, source, "--out-dir", tmp_path / "split"] if command == "split"
                        else ["data", "leakage", "--train", source, "--eval", source] if command == "leakage"
                        else ["data", "export", source, "--to", "alpaca", "--out", out])
        if command in ("check", "gate"):  # these read folders through a project's `dataset:` entry
            assert result.exit_code == 2 and "dataset" in result.output, result.output
        else:
            assert result.exit_code == 2 and "afolder,wherethiscommandreadsfiles" in "".join(result.output.split())
        return
    if command == "import":
        result = invoke(["data", "import", source, "--out", out, *(["--dataset", "items"] if is_folder else [])])
    elif command == "split":
        result = invoke(["data", "split", source, "--out-dir", tmp_path / "split"])
    elif command == "gate":
        result = invoke(["data", "gate", source, "--out", tmp_path / "rounds"])
    elif command == "leakage":
        result = invoke(["data", "leakage", "--train", source, "--eval", source])
    elif command == "export":
        result = invoke(["data", "export", source, "--to", "sharegpt", "--out", tmp_path / "out" / "chat.json"])
    else:
        result = invoke(["data", command, source, "--out", out])
    check_identity(tmp_path, command, result, rows_in, out)


def check_identity(tmp_path: Path, command: str, result, rows_in: int, out: Path) -> None:
    from tuneloop.data.io.formats import read_samples

    if command == "gate":
        assert result.exit_code in (0, 1), result.output
        [round_dir] = list((tmp_path / "rounds").iterdir())
        counts = read_json(round_dir / "manifest.json")["counts"]
        assert counts["rows_in"] == rows_in, counts
        return
    if command in ("leakage", "export"):  # these cannot leave a row out: they read all or refuse naming a line
        if result.exit_code == 2:
            assert re.search(r"line \d+", "".join(result.output.split())) or "line" in result.output, result.output
        else:
            assert result.exit_code in (0, 1), result.output
            if command == "export":
                assert f"{rows_in} samples" in result.output
        return
    assert result.exit_code in (0, 1), result.output
    [(total, parts)] = counted(result.output)
    assert total == rows_in and sum(parts.values()) == rows_in, (total, parts, result.output)
    written = {
        "import": {"accepted": out, "quarantined": out.with_name("rows.quarantine.jsonl")},
        "check": {"accepted": out, "quarantined": out.with_name("rows.quarantine.jsonl")},
        "dedup": {"kept": out, "removed": out.with_name("rows.removed.jsonl"),
                  "sent to review": out.with_name("rows.review.jsonl"), "quarantined": out.with_name("rows.quarantine.jsonl")},
        "redact": {"redacted rows written": out, "quarantined": out.with_name("rows.quarantine.jsonl")},
        "mix": {"kept": out, "left out by the mix": out.with_name("rows.dropped.jsonl"),
                "quarantined": out.with_name("rows.quarantine.jsonl")},
        "split": {name: tmp_path / "split" / f"{file}.jsonl" for name, file in (
            ("train", "train"), ("val", "val"), ("test", "test"), ("held out", "held_out"), ("quarantined", "quarantine"))},
    }[command]
    assert set(written) == set(parts)
    for name, path in written.items():
        assert rows_of(path) == parts[name], (name, path)
    if command in ("import", "dedup", "mix", "redact", "check"):
        assert len(read_samples(written[next(iter(written))]).samples) == parts[next(iter(written))]


def test_a_project_whose_source_is_a_llamafactory_entry_checks_and_gates_every_row(tmp_path, monkeypatch, llamafactory_folder):
    """The folder shape through the commands that read it: a project's `data.sources` entry with `dataset:`."""
    import shutil

    from tuneloop.project import DataConfig, ProjectConfig, SourceConfig, dump_config

    folder = tmp_path / "lf"
    shutil.copytree(llamafactory_folder, folder)
    rows = json.loads((folder / "orders_alpaca.json").read_text(encoding="utf-8"))
    rows[1]["output"] = ""  # rejected by the check: it must cite this row's real line in the pretty-printed file
    (folder / "orders_alpaca.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    sources = [SourceConfig(path=str(folder), dataset=name, license="internal")
               for name in ("orders_alpaca", "support_sharegpt", "answers_ranking", "labels_kto")]
    (tmp_path / "tuneloop.yaml").write_text(dump_config(ProjectConfig(data=DataConfig(sources=sources))), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    checked = invoke(["data", "check", "--out", "checked.jsonl"])
    [(total, parts)] = counted(checked.output)
    assert total == 3 + 2 + 2 + 2 and parts == {"accepted": total - 1, "quarantined": 1}
    [bad] = [json.loads(line) for line in (tmp_path / "checked.quarantine.jsonl").read_text().splitlines()]
    text_lines = (folder / "orders_alpaca.json").read_text(encoding="utf-8").split("\n")
    assert bad["source_file"] == str(folder / "orders_alpaca.json") and text_lines[bad["line"] - 1] == "  {"
    assert text_lines[bad["line"] + 2].strip() == '"output": "",'  # the row that begins there is the empty one
    gated = invoke(["data", "gate", "--no-tokenizer"])
    [round_dir] = list((tmp_path / "data" / "rounds").iterdir())
    assert read_json(round_dir / "manifest.json")["counts"]["rows_in"] == total, gated.output
