"""Every format reads and writes back the same samples; bad rows are quarantined with file, line and reason."""

from __future__ import annotations

import json

import pytest

from tuneloop.data.io.formats import read_file, read_samples, write_file, write_samples
from tuneloop.data.io.shapes import Columns, Tags
from tuneloop.records import Sample

TOOL_CHAT = Sample(
    system="You call tools.",
    history=[["Weather in Oslo?", '{"name": "weather", "arguments": {"city": "Oslo"}}'],
             ['{"temp_c": 3}', "It is 3 °C in Oslo."]],
    instruction="And in Köln?",
    output='{"name": "weather", "arguments": {"city": "Köln"}}',
    turn_roles=["user", "function_call", "observation", "assistant", "user", "function_call"],
    tools='[{"name": "weather", "description": "Current weather", "parameters": {"type": "object"}}]',
)


def samples() -> list[Sample]:
    return [
        Sample(instruction="Extract the city", input="I live in Lyon", output={"city": "Lyon"},
               meta={"annotator": "ana", "domain": "travel"}, sample_type="boundary"),
        Sample(instruction="提取城市", input="我住在北京", output='{"城市": "北京"}', system="只输出 JSON",
               history=[["你好", "你好！"]]),
        Sample(instruction="Which answer is better?", output="The precise one", rejected="The vague one"),
        Sample(instruction="Say hi", output="hi", kto_tag=False),
        TOOL_CHAT,
    ]


@pytest.mark.parametrize("shape", ["alpaca", "sharegpt", "openai"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_shape_and_file_kind_round_trips_to_equal_samples(tmp_path, shape, suffix):
    originals = samples()
    path = write_file(tmp_path / f"data{suffix}", originals, shape)
    result = read_file(path)
    assert result.quarantined == []
    assert [s.model_dump() for s in result.samples] == [s.model_dump() for s in originals]


def test_sharegpt_rows_keep_tool_roles_and_preference_answers_as_messages(tmp_path):
    path = write_file(tmp_path / "chat.json", samples(), "sharegpt", carry=False)
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert [m["from"] for m in rows[4]["conversations"]] == [
        "human", "function_call", "observation", "gpt", "human", "function_call"]
    assert rows[2]["chosen"] == {"from": "gpt", "value": "The precise one"}
    assert rows[2]["rejected"] == {"from": "gpt", "value": "The vague one"}
    assert [m["value"] for m in rows[2]["conversations"]] == ["Which answer is better?"]
    back = read_file(path).samples[4]
    assert back.extras["turn_roles"] == TOOL_CHAT.extras["turn_roles"] and back.output == TOOL_CHAT.output


def test_openai_rows_carry_tool_calls_and_tool_results(tmp_path):
    path = write_file(tmp_path / "chat.jsonl", [TOOL_CHAT], "openai", carry=False)
    row = json.loads(path.read_text(encoding="utf-8"))
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    call = row["messages"][2]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert row["messages"][3]["tool_call_id"] == call["id"]
    assert row["tools"][0]["type"] == "function" and row["tools"][0]["function"]["name"] == "weather"
    assert read_file(path).samples[0].model_dump() == TOOL_CHAT.model_dump()


def test_column_mapping_reads_other_column_names(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer,note\nWhat is 2+2?,4,easy\n", encoding="utf-8")
    columns = Columns().with_mapping({"instruction": "question", "output": "answer"})
    sample = read_file(path, "csv", columns).samples[0]
    assert (sample.instruction, sample.output, sample.extras["note"]) == ("What is 2+2?", "4", "easy")
    assert sample.meta.source is None


def test_sharegpt_tags_read_role_and_content_keys(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"dialog": [{"speaker": "sys", "text": "Be brief"}, {"speaker": "me", "text": "hi"},
                                           {"speaker": "bot", "text": "hello"}]}) + "\n", encoding="utf-8")
    tags = Tags(role_tag="speaker", content_tag="text", user_tag="me", assistant_tag="bot", system_tag="sys")
    result = read_file(path, "sharegpt", Columns(messages="dialog"), tags, source="chat")
    sample = result.samples[0]
    assert (sample.system, sample.instruction, sample.output, sample.meta.source) == ("Be brief", "hi", "hello", "chat")


@pytest.mark.parametrize(("row", "reason"), [
    ({"instruction": {"text": "q"}, "output": "a"}, "field 'instruction' must be text, got object"),
    ({"instruction": 12, "output": "a"}, "field 'instruction' must be text, got number"),
    ({"instruction": "q"}, "missing field 'output'"),
    ({"output": "a"}, "missing field 'instruction'"),
    ({"instruction": "q", "output": "a", "history": "earlier"}, "field 'history' must be a list"),
    ({"instruction": "q", "output": "a", "kto_tag": "maybe"}, "kto_tag) must be true or false"),
])
def test_wrong_alpaca_rows_are_quarantined_with_a_reason(tmp_path, row, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "fine", "output": "ok"}) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    result = read_file(path)
    assert len(result.samples) == 1
    [bad] = result.quarantined
    assert (bad.source_file, bad.line, bad.raw) == (str(path), 2, row)
    assert reason in bad.reason


@pytest.mark.parametrize(("row", "reason"), [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "again"}]},
     "the answer has role 'user' where assistant or function_call was expected"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "again"}, {"from": "gpt", "value": "a"},
                        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
     "turn 2 has role 'user' where assistant or function_call was expected"),
    ({"conversations": [{"from": "alien", "value": "q"}, {"from": "gpt", "value": "a"}]}, "role 'alien'"),
    ({"conversations": "hello"}, "missing field 'conversations' (a list of messages), got text"),
    ({"conversations": [{"from": "human", "value": {"x": 1}}, {"from": "gpt", "value": "a"}]}, "must be text, got object"),
])
def test_broken_conversations_are_quarantined_with_a_reason(tmp_path, row, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [bad] = read_file(path, "sharegpt").quarantined
    assert reason in bad.reason and bad.line == 1


def test_a_json_array_broken_midway_keeps_earlier_rows_and_quarantines_each_later_row_with_its_text(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n{"instruction": "a", "output": "1"},\n{"instruction": "b", "output": "2"},\n{"instruction": "c",,\n'
                    '{"instruction": "d", "output": "4"},\n{"instruction": "e", "output": "5"}\n]\n', encoding="utf-8")
    result = read_file(path)
    assert [s.instruction for s in result.samples] == ["a", "b"]
    assert [(q.line, q.raw) for q in result.quarantined] == [
        (4, '{"instruction": "c",'), (5, '{"instruction": "d", "output": "4"}'), (6, '{"instruction": "e", "output": "5"}')]
    assert "breaks at line 4" in result.quarantined[0].reason
    assert all("after the break" in q.reason for q in result.quarantined[1:])


def pretty_rows(count: int) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(count)]


@pytest.mark.parametrize("indent", [2, None], ids=["pretty-printed", "one-line"])
def test_a_broken_sharegpt_array_quarantines_each_remaining_row_not_its_messages(tmp_path, indent):
    text = json.dumps(pretty_rows(5), indent=indent).replace('"answer 1"', '"answer 1', 1)  # an unclosed string
    path = tmp_path / "chat.json"
    path.write_text(text, encoding="utf-8")
    result = read_file(path, "sharegpt")
    assert [s.output for s in result.samples] == ["answer 0"]
    assert len(result.quarantined) == 4  # rows 1-4, one entry each (not one per message, not one blob)
    assert ["question 1" in q.raw for q in result.quarantined] == [True, False, False, False]
    assert [json.loads(q.raw)["conversations"][1]["value"] for q in result.quarantined[1:]] == [
        "answer 2", "answer 3", "answer 4"]
    lines = text.split("\n")
    for q in result.quarantined:  # each entry names the line its row begins on
        assert lines[q.line - 1].strip().startswith("{") if indent else q.line == 1


@pytest.mark.parametrize(("text", "expected"), [
    ('[{"instruction": "a", "output": "1"}, {"instruction": "b", "output": "2"},', ["a", "b", "cut off"]),
    ('[{"instruction": "a", "output": "1"}]\n{"instruction": "b", "output": "2"}\n', ["a", "after the JSON array"]),
    ('[{"instruction": "a", "output": "1"}\n{"instruction": "b", "output": "2"}]', ["expected ',' or ']'", "after the break"]),
    ('[{"instruction": "a", "output": "1"},]', ["a"]),
    ('{"version": 2, "data": [\n{"instruction": "a", "output": "1"},\n{"instruction": "b", "output": "2"}\n]}', ["a", "b"]),
    ('{\n  "instruction": "a",\n  "output": "1"\n}\n', ["a"]),
], ids=["cut-off", "text-after-the-end", "missing-comma", "trailing-comma", "object-of-rows", "one-pretty-row"])
def test_every_json_document_shape_is_read_or_quarantined_naming_why(tmp_path, text, expected):
    path = tmp_path / "rows.json"
    path.write_text(text, encoding="utf-8")
    result = read_file(path)
    got = [s.instruction for s in result.samples] + [q.reason for q in result.quarantined]
    assert len(got) == len(expected)
    for value, want in zip(got, expected):
        assert want in value


def test_a_damaged_parquet_row_group_quarantines_its_rows_with_the_columns_that_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    rows = [{"instruction": f"q{i}", "output": f"answer {i} " * 10} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)  # the 'output' pages of rows 3-4
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start:start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    result = read_file(path)
    assert [s.instruction for s in result.samples] == ["q0", "q1", "q4", "q5"]
    assert [(q.line, q.raw) for q in result.quarantined] == [(3, {"instruction": "q2"}), (4, {"instruction": "q3"})]
    assert all("row group 2 of 3 (rows 3-4, 2 rows)" in q.reason and "output" in q.reason for q in result.quarantined)
    path.write_bytes(bytes(data[: len(data) // 2]))  # the footer is gone: nothing can be recovered, and it says so
    [lost] = read_file(path).quarantined
    assert "no row can be recovered" in lost.reason and lost.line is None


@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf16_and_bom_files_read_like_utf8(tmp_path, codec, suffix):
    plain = write_file(tmp_path / f"plain{suffix}", samples()[:2], "alpaca")
    other = tmp_path / f"other{suffix}"
    other.write_bytes(plain.read_text(encoding="utf-8").replace("\n", "\r\n").encode(codec))
    assert [s.model_dump() for s in read_file(other).samples] == [s.model_dump() for s in read_file(plain).samples]


def test_a_utf16_file_without_a_bom_is_quarantined_naming_the_encoding(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes((json.dumps({"instruction": "q", "output": "a"}) + "\n").encode("utf-16-le") * 2)
    result = read_file(path)
    assert not result.samples and result.quarantined
    assert all("UTF-16 without a BOM" in q.reason for q in result.quarantined)


def test_csv_records_with_bad_bytes_or_wrong_field_counts_are_quarantined_by_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b'\xef\xbb\xbfinstruction,output\r\n"multi\r\nline",ok\r\nbad \xff byte,x\r\ntoo,many,fields\r\nq,a\r\n')
    result = read_file(path)
    assert [s.instruction for s in result.samples] == ["multi\r\nline", "q"]
    assert [(q.line, q.reason.split(";")[0]) for q in result.quarantined] == [
        (4, "invalid UTF-8 in this record"), (5, "3 fields where the header has 2")]


def test_read_samples_detects_the_format_of_foreign_files(tmp_path):
    path = write_file(tmp_path / "chat.parquet", samples(), "openai")
    assert len(read_samples(path).samples) == 5
    jsonl = write_samples(tmp_path / "own.jsonl", samples())
    assert [s.id for s in read_samples(jsonl).samples] == [s.id for s in samples()]


def test_a_hub_data_set_records_license_and_fields_in_each_rows_source(monkeypatch):
    import datasets

    from tuneloop.data.io import hub

    rows = [{"question": "2+2?", "answer": "4"}, {"question": "no answer", "answer": None}]
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)  # the loader itself runs for real on a local data set
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(
        rows, info=datasets.DatasetInfo(license="mit")))
    result = hub.read_hub("someone/qa", columns=Columns().with_mapping({"instruction": "question", "output": "answer"}))
    [sample] = result.samples
    assert sample.meta.source == "hf:someone/qa/train (license: mit; fields: question, answer)"
    assert sample.meta.license == "mit" and sample.output == "4"
    assert [(q.source_file, q.line) for q in result.quarantined] == [("hf:someone/qa", 2)]


@pytest.mark.parametrize(("text", "accepted", "quarantined"), [
    ('instruction,output\nq0,a0\nq1,"never closed\nq2,a2\n\nq3,a3\n', ["q0"],
     [(3, "never closed"), (4, "after the break"), (6, "after the break")]),
    ('instruction,output\nq0,a0\nq1,"bad"quote\nq2,a2\n"two\nlines","x"y\nq3,a3\n', ["q0", "q2", "q3"],
     [(3, "malformed quote"), (5, "malformed quote")]),
    ("instruction,output,output\nq0,a0,b0\nq1,a1,b1\n", [], [(2, "'output' twice"), (3, "'output' twice")]),
    ("instruction,output\nq0," + "long " * 40_000 + "\nq1,a1\n", ["q0", "q1"], []),
], ids=["unclosed-quote", "malformed-quote", "duplicate-column", "cell-over-128KiB"])
def test_a_damaged_csv_never_swallows_or_drops_a_row_and_never_crashes(tmp_path, text, accepted, quarantined):
    path = tmp_path / "rows.csv"
    path.write_text(text, encoding="utf-8")
    result = read_file(path)
    assert [s.instruction for s in result.samples] == accepted
    assert [q.line for q in result.quarantined] == [line for line, _ in quarantined]
    for row, (_, words) in zip(result.quarantined, quarantined):
        assert words in row.reason


@pytest.mark.parametrize(("name", "text"), [
    ("rows.jsonl", '{"instruction": "q0", "output": "a0"}\n{"instruction": "q1", "output": "a1", "output": "b1"}\n'),
    ("rows.json", '[{"instruction": "q0", "output": "a0"},\n {"conversations": [{"from": "human", "value": "q1", '
                  '"value": "q1 again"}, {"from": "gpt", "value": "a1"}]}]'),
], ids=["jsonl", "nested-in-a-json-array"])
def test_a_row_holding_a_key_twice_is_quarantined_since_json_keeps_only_one_value(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    result = read_file(path)
    assert [s.instruction for s in result.samples] == ["q0"]
    [bad] = result.quarantined
    assert bad.line == 2 and "appears twice" in bad.reason
