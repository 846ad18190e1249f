"""The annotation SOP: written from the task and schema, kept when edited, read by the annotation tool and judge."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import write_samples
from tuneloop.annotate.sop import load_sop, pick_examples, render_sop
from tuneloop.examples.json_extraction import INSTRUCTION, REFUSAL, schema
from tuneloop.project import Project, ProjectConfig, ProjectError, dump_config
from tuneloop.records import Lineage, Sample

TICKET = {"intent": "refund", "product": "kettle", "order_id": "A123456", "urgency": "medium", "refund_amount": None}


def test_the_sop_states_format_keys_enums_refusal_and_common_errors():
    text = render_sop("ticket-extraction", "You extract ticket fields as JSON.", schema(), instruction=INSTRUCTION)
    assert text.startswith("# Annotation SOP: ticket-extraction")
    assert "Exactly these keys, in this order: `intent`, `product`, `order_id`, `urgency`, `refund_amount`." in text
    assert '"cancel_order"' in text and "out_of_scope" in text  # enum values of intent
    assert json.dumps(REFUSAL) in text  # the refusal, exactly
    for heading in ("## What a good answer is", "## What must be refused", "## Output format: the JSON Schema",
                    "## Common errors and how to judge them", "## Sample types"):
        assert heading in text
    assert "never guess" in text and "a price alone is not one" in text  # field rules come from the schema


def test_a_task_without_schema_still_gets_an_sop():
    text = render_sop("summaries", "", None)
    assert "## What must be refused" in text and "JSON Schema" not in text


def test_examples_are_originals_one_per_type():
    seed = Sample(id="s1", input="My kettle broke, refund please.", output=TICKET, rejected={**TICKET, "intent": "exchange"})
    variant = seed.model_copy(update={"id": "s1~v", "lineage": Lineage(source_id="s1", augment_type="tone", parent_id="s1")})
    refusal = Sample(id="r1", input="Write a poem.", output=REFUSAL, sample_type="boundary", expected="refuse")
    picked = pick_examples([variant, seed, refusal])
    assert [s.id for s in picked] == ["r1", "s1"]
    text = render_sop("t", "", schema(), examples=picked)
    assert "My kettle broke, refund please." in text and "a wrong answer for it:" in text


def make_project(tmp_path) -> Project:
    config = ProjectConfig.model_validate({"task": {"name": "tickets", "schema": "ticket.json", "sop": "docs/sop.md"},
                                           "data": {"sources": [{"path": "seed.jsonl"}]}})
    (tmp_path / "ticket.json").write_text(json.dumps(schema()), encoding="utf-8")
    (tmp_path / "tuneloop.yaml").write_text(dump_config(config), encoding="utf-8")
    write_samples(tmp_path / "seed.jsonl", [Sample(instruction=INSTRUCTION, input="Cancel order A123456.", output=TICKET)])
    return Project.load(tmp_path)


def test_sop_init_writes_task_sop_and_keeps_an_edited_one(tmp_path, monkeypatch):
    project = make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectError, match="tuneloop sop init"):
        load_sop(project)
    result = CliRunner().invoke(app, ["sop", "init"])
    assert result.exit_code == 0, result.output
    text = load_sop(project)
    assert "Cancel order A123456." in text and f"*{INSTRUCTION}*" in text
    (tmp_path / "docs" / "sop.md").write_text(text + "\nOur own rule.\n", encoding="utf-8")
    again = CliRunner().invoke(app, ["sop", "init"])
    assert again.exit_code == 2 and "--force" in again.output
    assert load_sop(project).endswith("Our own rule.\n")
    assert CliRunner().invoke(app, ["sop", "init", "--force"]).exit_code == 0
    assert "Our own rule." not in load_sop(project)
