"""LLaMA-Factory data folders: every demo file imports with its count, exports and imports back without loss."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tuneloop.cli.data  # noqa: F401  (registers the data commands)
from tuneloop.cli.apps import data_app
from tuneloop.data.io.formats import read_samples
from tuneloop.data.io.llamafactory import export_llamafactory, import_folder, read_dataset_info, read_entry
from tuneloop.files import file_digest

COUNTS = {"alpaca_en_demo": 999, "alpaca_zh_demo": 1000, "identity": 91, "dpo_en_demo": 300, "dpo_zh_demo": 300,
          "glaive_toolcall_en_demo": 300, "glaive_toolcall_zh_demo": 300, "kto_en_demo": 300}
ABSENT = {"mllm_demo", "mllm_audio_demo", "mllm_video_demo", "mllm_video_audio_demo", "wiki_demo", "c4_demo"}


def squash(text: str) -> str:
    """Output without whitespace, so a console's line wrapping cannot hide a message."""
    return "".join(text.split())


@pytest.fixture(scope="module")
def outcomes(llamafactory_demo):
    return {o.name: o for o in import_folder(llamafactory_demo)}


def test_every_demo_file_imports_with_its_row_count_and_nothing_quarantined(outcomes):
    imported = {name: len(o.result.samples) for name, o in outcomes.items() if o.status == "imported"}
    assert imported == COUNTS
    assert all(not outcomes[name].result.quarantined for name in COUNTS)


def test_entries_whose_files_are_absent_are_reported_by_name_and_hub_entries_skipped(outcomes):
    assert {name for name, o in outcomes.items() if o.status == "missing"} == ABSENT
    assert "mllm_demo.json is absent" in outcomes["mllm_demo"].detail
    assert outcomes["alpaca_en"].status == "skipped" and "llamafactory/alpaca_en" in outcomes["alpaca_en"].detail


def test_tool_conversations_keep_tools_roles_and_the_source_entry(outcomes, llamafactory_demo):
    samples = outcomes["glaive_toolcall_en_demo"].result.samples
    raw = json.loads((llamafactory_demo / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    assert [s.extras["tools"] for s in samples] == [row["tools"] for row in raw]
    first_roles = [m["from"] for m in raw[0]["conversations"]]
    names = {"human": "user", "gpt": "assistant", "function_call": "function_call", "observation": "observation"}
    assert samples[0].extras["turn_roles"] == [names[r] for r in first_roles]
    assert samples[0].output == raw[0]["conversations"][-1]["value"]
    assert {s.meta.source for s in samples} == {"glaive_toolcall_en_demo"}


def test_preference_rows_map_chosen_to_output_and_keep_rejected(outcomes, llamafactory_demo):
    raw = json.loads((llamafactory_demo / "dpo_zh_demo.json").read_text(encoding="utf-8"))
    samples = outcomes["dpo_zh_demo"].result.samples
    assert [s.output for s in samples] == [row["chosen"]["value"] for row in raw]
    assert [s.rejected for s in samples] == [row["rejected"]["value"] for row in raw]
    with_system = next(i for i, row in enumerate(raw) if row["conversations"][0]["from"] == "system")
    assert samples[with_system].system == raw[with_system]["conversations"][0]["value"]


def test_kto_rows_keep_their_label(outcomes, llamafactory_demo):
    raw = json.loads((llamafactory_demo / "kto_en_demo.json").read_text(encoding="utf-8"))
    labels = [s.extras["kto_tag"] for s in outcomes["kto_en_demo"].result.samples]
    assert labels == [row["label"] for row in raw] and set(labels) == {True, False}


def test_export_then_import_gives_equal_samples_for_every_demo_file(outcomes, tmp_path):
    for name in COUNTS:
        originals = outcomes[name].result.samples
        entries = export_llamafactory(originals, tmp_path, name)
        info = read_dataset_info(tmp_path)
        back = [s for entry in entries for s in read_entry(tmp_path, info[entry]).result.samples]
        assert [s.model_dump() for s in back] == [s.model_dump() for s in originals], name


def test_exported_dataset_info_describes_what_llamafactory_needs(outcomes, tmp_path):
    export_llamafactory(outcomes["dpo_en_demo"].result.samples, tmp_path, "prefs")
    export_llamafactory(outcomes["kto_en_demo"].result.samples, tmp_path, "kto")
    export_llamafactory(outcomes["glaive_toolcall_zh_demo"].result.samples, tmp_path, "tools")
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["prefs"]["ranking"] is True and info["prefs"]["columns"]["rejected"] == "rejected"
    assert info["kto"]["columns"]["kto_tag"] == "kto_tag" and "ranking" not in info["kto"]
    assert info["tools"]["formatting"] == "sharegpt" and info["tools"]["columns"]["tools"] == "tools"
    for entry in info.values():
        assert entry["file_sha1"] == file_digest(tmp_path / entry["file_name"], "sha1")
        rows = json.loads((tmp_path / entry["file_name"]).read_text(encoding="utf-8"))
        answers = [r.get("output") or r.get("chosen") or r["conversations"][-1] for r in rows]
        assert all(isinstance(a, (str, dict)) for a in answers)


def test_a_mixed_file_exports_one_entry_per_kind(outcomes, tmp_path):
    mixed = outcomes["identity"].result.samples[:5] + outcomes["dpo_en_demo"].result.samples[:3]
    entries = export_llamafactory(mixed, tmp_path, "mixed")
    assert set(entries) == {"mixed_sft", "mixed_ranking"}
    assert entries["mixed_ranking"]["ranking"] is True and "ranking" not in entries["mixed_sft"]


def test_cli_imports_a_whole_folder_and_names_missing_entries(llamafactory_demo, tmp_path):
    result = CliRunner().invoke(data_app, ["import", str(llamafactory_demo), "--out", str(tmp_path / "lf" / "all.jsonl")])
    assert result.exit_code == 0, result.output
    for name, count in COUNTS.items():
        assert len(read_samples(tmp_path / "lf" / f"{name}.jsonl").samples) == count
        assert squash(f"{name}: {count} rows → {count} accepted") in squash(result.output)
    for name in ABSENT:
        assert squash(f"missing: {name}: file") in squash(result.output)
    assert "8entriesimported,6missingfiles" in squash(result.output)


def test_cli_imports_one_entry_and_round_trips_through_export(llamafactory_demo, tmp_path):
    runner = CliRunner()
    out = tmp_path / "kto.jsonl"
    assert runner.invoke(data_app, ["import", str(llamafactory_demo), "--dataset", "kto_en_demo", "--out", str(out)]).exit_code == 0
    exported = runner.invoke(data_app, ["export", str(out), "--to", "llamafactory", "--out", str(tmp_path / "lf")])
    assert exported.exit_code == 0, exported.output
    back = tmp_path / "back.jsonl"
    again = runner.invoke(data_app, ["import", str(tmp_path / "lf"), "--dataset", "kto", "--out", str(back)])
    assert again.exit_code == 0, again.output
    assert back.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")


def test_cli_refuses_an_unknown_entry_naming_it(llamafactory_demo, tmp_path):
    result = CliRunner().invoke(data_app, ["import", str(llamafactory_demo), "--dataset", "nope", "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and squash("dataset_info.json: no entry named nope") in squash(result.output)


# -- tuneloop's own folder (tests/fixtures/llamafactory): the format is covered without ../shared ---------------------

LOCAL_COUNTS = {"orders_alpaca": 3, "support_sharegpt": 2, "answers_ranking": 2, "pairs_alpaca_ranking": 1, "labels_kto": 2}


def local_raw(folder, name):
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def test_every_entry_of_the_local_folder_imports_whole_and_absent_or_hub_entries_are_named(llamafactory_folder):
    outcomes = {o.name: o for o in import_folder(llamafactory_folder)}
    assert {n: len(o.result.samples) for n, o in outcomes.items() if o.status == "imported"} == LOCAL_COUNTS
    assert all(not outcomes[n].result.quarantined for n in LOCAL_COUNTS)
    assert outcomes["images_missing"].status == "missing" and "images_missing.json is absent" in outcomes["images_missing"].detail
    assert outcomes["hub_only"].status == "skipped" and "someone/hub_only" in outcomes["hub_only"].detail


def test_local_alpaca_sharegpt_ranking_and_kto_entries_map_every_field(llamafactory_folder):
    outcomes = {o.name: o.result for o in import_folder(llamafactory_folder, list(LOCAL_COUNTS))}
    orders = outcomes["orders_alpaca"].samples
    assert [(s.instruction, s.input, s.output) for s in orders] == [
        (r["instruction"], r["input"], r["output"]) for r in local_raw(llamafactory_folder, "orders_alpaca")]
    assert orders[1].system == "只输出 JSON。" and orders[2].history == [["Translate to French: thank you", "Merci"]]
    chat, tools = outcomes["support_sharegpt"].samples
    assert chat.system == "You are a support agent." and chat.output == "Order 5531 arrives tomorrow."
    assert chat.history == [["My parcel is late.", "Sorry to hear that. What is the order number?"]]
    assert tools.extras["turn_roles"] == ["user", "function_call", "observation", "assistant"]
    assert tools.extras["tools"] == local_raw(llamafactory_folder, "support_sharegpt")[1]["tools"]
    ranked = outcomes["answers_ranking"].samples
    assert [(s.output, s.rejected) for s in ranked] == [("The meeting is now on Friday.", "There was a meeting."), ("Lima", "Cusco")]
    assert ranked[1].system == "Answer in one word."
    [pair] = outcomes["pairs_alpaca_ranking"].samples
    assert (pair.instruction, pair.output, pair.rejected) == ("Is 17 prime?", "Yes, 17 is prime.", "No.")
    assert [s.extras["kto_tag"] for s in outcomes["labels_kto"].samples] == [True, False]
    assert {s.meta.source for s in outcomes["labels_kto"].samples} == {"labels_kto"}


def test_local_entries_export_and_import_back_equal(llamafactory_folder, tmp_path):
    for outcome in import_folder(llamafactory_folder, list(LOCAL_COUNTS)):
        entries = export_llamafactory(outcome.result.samples, tmp_path, outcome.name)
        info = read_dataset_info(tmp_path)
        back = [s for entry in entries for s in read_entry(tmp_path, info[entry]).result.samples]
        assert [s.model_dump() for s in back] == [s.model_dump() for s in outcome.result.samples], outcome.name
        for entry in entries.values():
            assert entry["file_sha1"] == file_digest(tmp_path / entry["file_name"], "sha1")


def test_cli_imports_the_local_folder_with_counts_and_names_what_it_could_not(llamafactory_folder, tmp_path):
    result = CliRunner().invoke(data_app, ["import", str(llamafactory_folder), "--out", str(tmp_path / "lf" / "all.jsonl")])
    assert result.exit_code == 0, result.output
    for name, count in LOCAL_COUNTS.items():
        assert len(read_samples(tmp_path / "lf" / f"{name}.jsonl").samples) == count
        assert squash(f"{name}: {count} rows → {count} accepted") in squash(result.output)
    assert squash("missing: images_missing: file") in squash(result.output)
    assert "5entriesimported,1missingfiles,1hub-onlyskipped" in squash(result.output)
