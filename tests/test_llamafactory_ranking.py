"""Preference data as LLaMA-Factory `ranking: true` entries, in both row styles, read the way its parser reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import write_samples
from tuneloop.data.io.llamafactory import export_llamafactory, read_dataset_info, read_entry
from tuneloop.records import Sample

PAIRS = [
    Sample(id="p1", instruction="Extract the ticket as JSON.", input="My kettle broke, order A-1.", system="You extract.",
           output='{"intent": "refund", "order_id": "A-1"}', rejected='Here is the JSON:\n{"intent": "refund"}',
           lineage={"source_id": "s1", "augment_type": "rejection_sampling", "parent_id": "g1"},
           best_of_n={"totals": [3.5, 0.2]}),
    Sample(id="p2", instruction="Extract the ticket as JSON.", input="Where is order B-2?",
           history=[["Hi", "Hello, how can I help?"]], output='{"intent": "order_status", "order_id": "B-2"}',
           rejected='```json\n{"intent": "order_status", "order_id": "B-2"}\n```'),
]


def dataset_attr(entry: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's DatasetAttr for an entry (data/parser.py): with a `columns` object every column it names
    for the formatting is read from it, None where absent; sharegpt tags keep their defaults unless given."""
    attr = {"formatting": entry.get("formatting", "alpaca"), "ranking": entry.get("ranking", False),
            "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
            "prompt": "instruction", "query": "input", "response": "output", "history": None,
            "messages": "conversations"}
    names = ["system", "tools", "images", "chosen", "rejected", "kto_tag"]
    names += ["prompt", "query", "response", "history"] if attr["formatting"] == "alpaca" else ["messages"]
    if "columns" in entry:
        attr.update({name: entry["columns"].get(name) for name in names})
    attr.update(entry.get("tags") or {})
    return attr


def converted_pair(row: dict[str, Any], attr: dict[str, Any]) -> tuple[list[dict], list[dict]] | None:
    """What LLaMA-Factory's converters (data/converter.py) make of a ranking row: (prompt, [chosen, rejected]),
    or None where they skip it as abnormal (or read no pair from it)."""
    if attr["formatting"] == "alpaca":
        prompt = [m for old, answer in (row.get(attr["history"]) or []) if attr["history"]
                  for m in ({"role": "user", "content": old}, {"role": "assistant", "content": answer})]
        query = [row[attr[k]] for k in ("prompt", "query") if attr[k] and row.get(attr[k])]
        prompt.append({"role": "user", "content": "\n".join(query)})
        chosen, rejected = row.get(attr["chosen"]), row.get(attr["rejected"])
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            return None
        return prompt, [{"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}]
    messages = row[attr["messages"]]
    if messages and messages[0][attr["role_tag"]] == attr["system_tag"]:
        messages = messages[1:]
    accept = ((attr["user_tag"], attr["observation_tag"]), (attr["assistant_tag"], attr["function_tag"]))
    if any(m[attr["role_tag"]] not in accept[i % 2] for i, m in enumerate(messages)) or len(messages) % 2 == 0:
        return None  # "Invalid role tag" / "Invalid message count": LLaMA-Factory skips the example
    chosen, rejected = row.get(attr["chosen"]), row.get(attr["rejected"])
    if not (isinstance(chosen, dict) and isinstance(rejected, dict)):
        return None
    if chosen[attr["role_tag"]] not in accept[1] or rejected[attr["role_tag"]] not in accept[1]:
        return None
    roles = {attr["user_tag"]: "user", attr["assistant_tag"]: "assistant"}
    prompt = [{"role": roles[m[attr["role_tag"]]], "content": m[attr["content_tag"]]} for m in messages]
    return prompt, [{"role": "assistant", "content": chosen[attr["content_tag"]]},
                    {"role": "assistant", "content": rejected[attr["content_tag"]]}]


def lf_pairs(folder: Path, name: str) -> list[tuple[list[dict], list[dict]] | None]:
    entry = json.loads((folder / "dataset_info.json").read_text())[name]
    return [converted_pair(row, dataset_attr(entry)) for row in json.loads((folder / entry["file_name"]).read_text())]


def test_the_checker_reads_llamafactorys_own_preference_demo_and_refuses_a_broken_row(llamafactory_demo, tmp_path):
    pairs = lf_pairs(llamafactory_demo, "dpo_en_demo")
    assert pairs and all(p is not None for p in pairs)
    info = json.loads((llamafactory_demo / "dataset_info.json").read_text())["dpo_en_demo"]
    row = json.loads((llamafactory_demo / info["file_name"]).read_text())[0]
    broken = {**row, "conversations": row["conversations"] + [{"from": "gpt", "value": "an answer in the prompt"}]}
    assert converted_pair(broken, dataset_attr(info)) is None


@pytest.mark.parametrize("style", ["alpaca", "sharegpt"])
def test_pairs_export_as_a_ranking_entry_llamafactory_reads_as_prompt_chosen_rejected(style, tmp_path):
    entries = export_llamafactory(PAIRS, tmp_path, "prefs", style=style)
    entry = entries["prefs"]
    assert entry["ranking"] is True and entry["formatting"] == style
    assert {"chosen", "rejected"} <= set(entry["columns"]) and "response" not in entry["columns"]
    converted = lf_pairs(tmp_path, "prefs")
    assert all(c is not None for c in converted)
    first, second = converted
    assert first[1] == [{"role": "assistant", "content": PAIRS[0].output}, {"role": "assistant", "content": PAIRS[0].rejected}]
    assert first[0] == [{"role": "user", "content": PAIRS[0].prompt}]
    assert [m["content"] for m in second[0]] == ["Hi", "Hello, how can I help?", PAIRS[1].prompt]


@pytest.mark.parametrize("style", ["alpaca", "sharegpt"])
def test_a_ranking_export_reads_back_through_tuneloops_reader_unchanged(style, tmp_path):
    export_llamafactory(PAIRS, tmp_path, "prefs", style=style)
    back = read_entry(tmp_path, read_dataset_info(tmp_path)["prefs"]).result
    assert not back.quarantined
    assert [s.model_dump(exclude={"meta"}) for s in back.samples] == [s.model_dump(exclude={"meta"}) for s in PAIRS]
    without_carry = tmp_path / "plain"
    export_llamafactory(PAIRS, without_carry, "prefs", carry=False, style=style)
    plain = read_entry(without_carry, read_dataset_info(without_carry)["prefs"]).result.samples
    assert [(s.prompt, s.system, s.history, s.output, s.rejected) for s in plain] == \
        [(s.prompt, s.system, s.history, s.output, s.rejected) for s in PAIRS]


def test_the_export_command_takes_a_style_and_refuses_an_unknown_one(tmp_path):
    source = write_samples(tmp_path / "pairs.jsonl", PAIRS)
    result = CliRunner().invoke(app, ["data", "export", str(source), "--to", "llamafactory", "--out",
                                      str(tmp_path / "lf"), "--style", "sharegpt"])
    assert result.exit_code == 0, result.output
    assert read_dataset_info(tmp_path / "lf")["pairs"].formatting == "sharegpt" and "ranking" in result.output
    result = CliRunner().invoke(app, ["data", "export", str(source), "--to", "llamafactory", "--out",
                                      str(tmp_path / "lf2"), "--style", "openai"])
    assert result.exit_code == 2 and "--style openai" in result.output
