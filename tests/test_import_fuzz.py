"""A 10,000-row file of good and bad rows imports through the CLI, and JSON arrays damaged anywhere inside a row read
as far as they can: nothing crashes, nothing is silently dropped."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import tuneloop.cli.data  # noqa: F401  (registers the data commands)
from tuneloop.cli.apps import data_app
from tuneloop.data.io.formats import read_file

ROWS = 10_000


def good(i: int) -> bytes:
    return json.dumps({"instruction": f"Extract the order {i}", "input": f"订单 {i} 已发货",
                       "output": {"order": i, "status": "已发货"}}, ensure_ascii=False).encode()


# kind → (how to make the line, accepted?, words the quarantine reason must hold)
KINDS = {
    "good": (good, True, ""),
    "crlf": (lambda i: good(i) + b"\r", True, ""),
    "bom": (lambda i: b"\xef\xbb\xbf" + good(i), True, ""),
    "broken_json": (lambda i: good(i)[:-2], False, "not valid JSON"),
    "invalid_utf8": (lambda i: good(i).replace("订单".encode(), b"\xff\xfe"), False, "invalid UTF-8"),
    "wrong_type": (lambda i: json.dumps({"instruction": i, "output": "x"}).encode(), False, "must be text, got number"),
    "object_for_text": (lambda i: json.dumps({"instruction": {"q": i}, "output": "x"}).encode(), False,
                        "must be text, got object"),
    "missing_output": (lambda i: json.dumps({"instruction": f"q{i}"}).encode(), False, "missing field 'output'"),
    "missing_prompt": (lambda i: json.dumps({"output": f"a{i}"}).encode(), False, "missing field 'instruction'"),
    "not_an_object": (lambda i: json.dumps([i, "x"]).encode(), False, "expected a JSON object"),
    "bad_history": (lambda i: json.dumps({"instruction": "q", "output": "a", "history": [["only one"]]}).encode(),
                    False, "history"),
}


def test_every_row_is_either_accepted_or_quarantined_with_file_line_and_reason(tmp_path):
    rng = random.Random(7)
    names = list(KINDS)
    kinds = [rng.choice(names) if rng.random() < 0.4 else "good" for _ in range(ROWS)]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join(KINDS[kind][0](i) for i, kind in enumerate(kinds)) + b"\n")
    out = tmp_path / "clean.jsonl"

    result = CliRunner().invoke(data_app, ["import", str(source), "--out", str(out)])

    assert result.exit_code == 0, result.output
    accepted = out.read_text(encoding="utf-8").splitlines()
    quarantined = [json.loads(line) for line in (tmp_path / "clean.quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(accepted) + len(quarantined) == ROWS
    expected_bad = {line: kind for line, kind in enumerate(kinds, start=1) if not KINDS[kind][1]}
    assert {row["line"] for row in quarantined} == set(expected_bad)
    assert len(accepted) == ROWS - len(expected_bad)
    for row in quarantined:
        assert row["source_file"] == str(source)
        assert KINDS[expected_bad[row["line"]]][2] in row["reason"], (row["line"], row["reason"])
    summary = "".join(result.output.split())
    assert f"{ROWS}rows→{len(accepted)}accepted" in summary and f"{len(quarantined)}quarantined" in summary
    assert json.loads(accepted[0])["output"].startswith('{"order": ')  # JSON answers became text, not escaped
    assert "已发货" in accepted[0]


def test_a_hub_id_offline_says_it_needs_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(data_app, ["import", "someone/some-data", "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2
    assert "loadingitneedsnetwork" in "".join(result.output.split())
    assert not (tmp_path / "x.jsonl").exists()


def test_a_missing_source_is_named(tmp_path):
    result = CliRunner().invoke(data_app, ["import", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl:nosuchfileorfolder" in "".join(result.output.split())


# -- a JSON array damaged inside one row: every row before it is read, every row after it is its own entry ----------

TEXT = st.text(st.sampled_from('abc 汉字{}[],:"\\\n'), min_size=0, max_size=12)


def array_text(rows: list[dict], layout: str) -> tuple[str, list[int]]:
    """The array as text in one of the layouts people write, and where each row's `{` is."""
    parts = [json.dumps(row, ensure_ascii=False, indent=2 if layout == "pretty" else None) for row in rows]
    if layout == "pretty":
        parts = ["\n".join("  " + line for line in part.split("\n")) for part in parts]
    head, separator, tail = {"pretty": ("[\n", ",\n", "\n]\n"), "one-per-line": ("[\n", ",\n", "\n]\n"),
                             "compact": ("[", ", ", "]")}[layout]
    text, starts = head, []
    for index, part in enumerate(parts):
        starts.append(len(text) + (len(part) - len(part.lstrip())))
        text += part + (separator if index < len(parts) - 1 else "")
    return text + tail, starts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(texts=st.lists(st.tuples(TEXT, TEXT), min_size=2, max_size=7), layout=st.sampled_from(["pretty", "one-per-line", "compact"]),
       data=st.data())
def test_a_json_array_damaged_inside_one_row_keeps_the_rows_before_and_one_entry_for_each_row_after(tmp_path_factory, texts,
                                                                                                 layout, data):
    rows = [{"instruction": f"q{i} {a}", "output": f"a{i} {b}"} for i, (a, b) in enumerate(texts)]
    text, starts = array_text(rows, layout)
    broken = data.draw(st.integers(0, len(rows) - 1), label="broken row")
    end = starts[broken + 1] if broken + 1 < len(rows) else len(text)
    special = [at for at in range(starts[broken] + 1, text.rindex("}", 0, end)) if text[at] in '"\\:,{}[]']
    cut = data.draw(st.sampled_from(special), label="deleted character")  # the characters whose loss breaks JSON
    damaged = text[:cut] + text[cut + 1:]
    try:
        json.loads(damaged)
        assume(False)  # the deletion left valid JSON: nothing is broken
    except json.JSONDecodeError:
        pass
    path = tmp_path_factory.mktemp("array") / "rows.json"
    path.write_text(damaged, encoding="utf-8")
    result = read_file(path, "alpaca")
    assert [s.instruction for s in result.samples] == [r["instruction"] for r in rows[:broken]]
    assert len(result.quarantined) == len(rows) - broken  # the broken row and each row after it, one entry each
    lines = [damaged.count("\n", 0, at if at < cut else at - 1) + 1 for at in starts]
    assert [q.line for q in result.quarantined] == lines[broken:]
    for row, entry in zip(rows[broken + 1:], result.quarantined[1:]):
        assert json.loads(entry.raw) == row  # a row after the break keeps its whole text


def test_a_long_one_line_json_array_broken_near_its_start_reads_in_linear_time(tmp_path):
    import time

    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(50_000)]
    text = json.dumps(rows)
    cut = text.index('{"conversations"', len(text) // 20) + len('{"conversations"')  # row ~2,500 loses its ':'
    path = tmp_path / "rows.json"
    path.write_text(text[:cut] + text[cut + 1:], encoding="utf-8")
    started = time.perf_counter()
    result = read_file(path, "sharegpt")
    elapsed = time.perf_counter() - started
    assert result.total == len(rows) and len(result.samples) < len(rows) // 10
    assert elapsed < 6, f"{elapsed:.1f} s: finding the rows after a break must stay linear in the file's size"


def test_an_array_closed_early_inside_a_string_keeps_no_row_cut_short(tmp_path):
    # found by the property test above: deleting the opening quote of `"a0 :\"}]"`'s escape makes `"}]` close the
    # array inside the answer; the row would be read with its answer cut to "a0 :"
    rows = [{"instruction": "q0", "output": 'a0 :"}]'}, {"instruction": "q1", "output": "a1"}]
    text = json.dumps(rows, indent=2)
    damaged = text.replace('\\"}]', '"}]', 1)
    path = tmp_path / "rows.json"
    path.write_text(damaged, encoding="utf-8")
    result = read_file(path, "alpaca")
    assert [s.output for s in result.samples] == []
    assert len(result.quarantined) == 2 and all("closes early" in q.reason for q in result.quarantined)
