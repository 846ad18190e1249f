"""Validation: each bad row is quarantined with file, line, id and reason; good rows pass untouched."""

from __future__ import annotations

import json

from tuneloop.answers import schema_validator
from tuneloop.data.gate.checks import approximate_tokens, check_sources, sample_problems
from tuneloop.records import Sample

SCHEMA = {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_good_json_rows_pass_and_each_bad_row_gets_its_reason_and_line(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [
        {"id": "ok", "instruction": "Extract.", "input": "order 7", "output": '{"order_id": 7}'},
        {"id": "empty", "instruction": "", "input": "", "output": '{"order_id": 1}'},
        "",
        {"id": "notjson", "instruction": "Extract.", "output": "order 7"},
        "{broken",
        {"id": "schema", "instruction": "Extract.", "output": '{"order_id": "seven"}'},
        {"id": "neg", "instruction": "Extract.", "output": "no idea", "sample_type": "negative"},
    ])
    result = check_sources([(path, "internal")], ["internal"], SCHEMA)
    assert [s.id for s in result.accepted] == ["ok", "neg"]
    reasons = {q.sample_id or f"line{q.line}": (q.line, q.reason) for q in result.quarantined}
    assert reasons["empty"][0] == 2 and "prompt" in reasons["empty"][1]
    assert reasons["notjson"][0] == 4 and "not valid JSON" in reasons["notjson"][1]
    assert reasons["line5"][0] == 5
    assert reasons["schema"][0] == 6 and "order_id" in reasons["schema"][1]
    assert result.rows_in == 6 and result.rejected_share == 4 / 6


def test_a_source_whose_license_is_not_allowed_is_quarantined_whole(tmp_path):
    path = write_lines(tmp_path / "web.jsonl", [{"instruction": "Hi", "output": "Hello"}] * 3)
    result = check_sources([(path, "cc-by-nc-4.0")], ["internal", "mit"])
    assert not result.accepted and len(result.quarantined) == 3
    assert all("cc-by-nc-4.0" in q.reason and "allowlist" in q.reason for q in result.quarantined)
    assert [q.line for q in result.quarantined] == [1, 2, 3]


def test_an_answer_longer_than_max_tokens_is_rejected_and_a_long_prompt_only_flagged(tmp_path):
    path = write_lines(tmp_path / "long.jsonl", [
        {"id": "long-answer", "instruction": "Say.", "output": "word " * 50},
        {"id": "long-prompt", "instruction": "word " * 50, "output": "ok"},
    ])
    result = check_sources([(path, "internal")], ["internal"], max_tokens=20)
    assert [q.sample_id for q in result.quarantined] == ["long-answer"]
    assert result.over_length == ["long-prompt"]


def test_refusals_and_negatives_are_exempt_from_the_schema():
    validator = schema_validator(SCHEMA)
    refusal = Sample(instruction="Extract.", output="I cannot help with that.", expected="refuse")
    assert sample_problems(refusal, validator) == []
    assert sample_problems(Sample(instruction="Extract.", output="[]"), validator)


def test_a_rows_inline_schema_wins_over_the_task_schema():
    row = Sample(instruction="List.", output="[1, 2]", output_schema={"type": "array"})
    assert sample_problems(row, schema_validator(SCHEMA)) == []


def test_approximate_tokens_count_chinese_characters_and_words():
    assert approximate_tokens(["hello world", "你好世界", "order 12 是 ok"]) == [2, 4, 4]


def test_token_counts_come_from_the_projects_tokenizer_when_one_is_given(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneloop.data.gate.checks import tokenizer_counter

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    count = tokenizer_counter(tokenizer)
    text = "Extract the order fields as JSON"
    assert count([text]) == [len(tokenizer(text, add_special_tokens=False)["input_ids"])]
    path = write_lines(tmp_path / "t.jsonl", [{"id": "a", "instruction": text, "output": "ok"}])
    result = check_sources([(path, "internal")], ["internal"], count_tokens=count)
    assert result.prompt_tokens == count([text])


def test_a_second_row_reusing_an_id_with_other_content_is_quarantined(tmp_path):
    first = write_lines(tmp_path / "a.jsonl", [{"id": "7", "instruction": "Hi", "output": "Hello"}])
    second = write_lines(tmp_path / "b.jsonl", [{"id": "7", "instruction": "Bye", "output": "Goodbye"},
                                                {"id": "7", "instruction": "Hi", "output": "Hello"}])
    result = check_sources([(first, "internal"), (second, "internal")], ["internal"])
    assert [(q.source_file, q.line) for q in result.quarantined] == [(str(second), 1)]
    assert "a.jsonl, line 1" in result.quarantined[0].reason
    assert len(result.accepted) == 2  # the exact copy is left to dedup


def rejected_lines(path, text):
    path.write_text(text, encoding="utf-8")
    result = check_sources([(path, "internal")], ["internal"])
    return sorted((q.line, q.sample_id) for q in result.quarantined if q.stage == "check"), result


def test_check_rejections_cite_the_real_line_of_a_pretty_printed_json_array(tmp_path):
    rows = [{"id": "a", "instruction": "Hi", "output": "Hello"}, {"id": "b", "instruction": "Hi", "output": ""},
            {"id": "c", "instruction": "", "output": "x"}]
    text = json.dumps(rows, indent=2)
    lines, _ = rejected_lines(tmp_path / "rows.json", text)
    starts = [n for n, line in enumerate(text.split("\n"), start=1) if line == "  {"]
    assert lines == [(starts[1], "b"), (starts[2], "c")]  # lines 7 and 12, not element numbers 2 and 3


def test_check_rejections_cite_the_real_line_of_a_csv_record_after_quoted_line_breaks(tmp_path):
    text = 'id,instruction,output\r\na,"line one\r\nline two",ok\r\nb,Hi,\r\n\r\nc,"x\ny\nz",fine\r\nd,,nothing\r\n'
    lines, result = rejected_lines(tmp_path / "rows.csv", text)
    assert lines == [(4, "b"), (9, "d")] and len(result.accepted) == 2


def test_check_rejections_cite_the_real_line_of_jsonl_after_blank_bom_and_bad_lines(tmp_path):
    text = ('\ufeff{"id": "a", "instruction": "Hi", "output": "Hello"}\r\n\r\n{broken\r\n'
            '{"id": "b", "instruction": "Hi", "output": ""}\r\n\n{"id": "c", "instruction": "", "output": "x"}\n')
    lines, result = rejected_lines(tmp_path / "rows.jsonl", text)
    assert lines == [(4, "b"), (6, "c")]
    assert [q.line for q in result.quarantined if q.stage == "read"] == [3]


def test_check_rejections_of_a_llamafactory_folder_name_the_file_and_line(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.json"}}), encoding="utf-8")
    (folder / "qa.json").write_text(json.dumps([{"instruction": "Hi", "output": "Hello"},
                                                {"instruction": "Hi", "output": " "}], indent=2), encoding="utf-8")
    result = check_sources([(folder, "internal", "auto", "qa")], ["internal"])
    [bad] = result.quarantined
    assert (bad.source_file, bad.line) == (str(folder / "qa.json"), 6)
