"""`tuneloop init DIR --example json-extraction`: a project whose seed rows all validate and whose mix is on target."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import pytest
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.data.io.formats import load_samples
from tuneloop.annotate.sop import load_sop
from tuneloop.answers import is_refusal
from tuneloop.examples.json_extraction import INSTRUCTION, KEYS, REFUSAL
from tuneloop.examples.json_extraction.demo import MIX, quotas
from tuneloop.project import Project


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["init", str(root), "--example", "json-extraction"])
    assert result.exit_code == 0, result.output
    return root


def test_every_seed_row_validates_against_the_schema(demo):
    project = Project.load(demo)
    validator = jsonschema.Draft202012Validator(project.schema())
    rows = load_samples(demo / "data" / "raw" / "seed.jsonl")
    assert 560 <= len(rows) <= 600
    for row in rows:
        answer = json.loads(row.output)
        assert not list(validator.iter_errors(answer)), row.id
        assert tuple(answer) == KEYS
        assert row.instruction == INSTRUCTION
        assert is_refusal(row.output, answer, REFUSAL) == (row.expected == "refuse")
    assert (demo / "data" / "raw" / "seed.quarantine.jsonl").read_text() == ""


def test_the_type_mix_is_near_the_target(demo):
    rows = load_samples(demo / "data" / "raw" / "seed.jsonl")
    shares = {k: v / len(rows) for k, v in Counter(r.sample_type for r in rows).items()}
    for kind, target in MIX.items():
        assert abs(shares[kind] - target) < 0.03, (kind, shares[kind])
    boundary = [r for r in rows if r.sample_type == "boundary"]
    assert 0.4 < sum(r.expected == "refuse" for r in boundary) / len(boundary) < 0.7  # must refuse and must answer


def test_rows_are_short_bilingual_and_carry_meta_and_lineage(demo):
    rows = load_samples(demo / "data" / "raw" / "seed.jsonl")
    assert Counter(r.meta.model_extra["lang"] for r in rows).keys() == {"en", "zh"}
    assert max(len(r.output) for r in rows) <= 160
    assert sorted(len(r.input) for r in rows)[int(0.9 * len(rows))] < 120  # 1-3 sentences for nine rows in ten
    seeds = {r.id for r in rows if r.lineage.augment_type is None}
    assert len(seeds) == 150
    for row in rows:
        assert row.meta.source == "synth" and row.meta.task_type == "extraction" and row.meta.version
        assert row.lineage.source_id in seeds
    variants = Counter(r.lineage.source_id for r in rows if r.lineage.augment_type)
    assert sum(variants.values()) >= 3 * 150 - 40
    golden = [r for r in rows if r.sample_type == "golden"]
    assert all(r.rejected and r.rejected != r.output for r in golden)  # DPO pairs


def test_the_project_file_sop_and_refusal_fit_together(demo):
    project = Project.load(demo)
    config = project.config
    assert config.task.schema_ == "schemas/ticket.json" and config.task.system
    assert [(s.path, s.license) for s in config.data.sources] == [("data/raw/seed.jsonl", "internal")]
    assert project.schema()["x-refusal"] == REFUSAL
    sop = load_sop(project)
    assert json.dumps(REFUSAL) in sop and "## Examples" in sop
    assert "# Short name of the task" in (demo / "tuneloop.yaml").read_text()  # every key carries its help
    assert (demo / "synth.py").exists() and json.loads((demo / "pools" / "entities.json").read_text())["order_id"]


def test_init_is_deterministic_and_sized_by_size(tmp_path):
    runner = CliRunner()
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert runner.invoke(app, ["init", str(tmp_path / name), "--size", "120", "--seed", seed]).exit_code == 0
    seed_file = "data/raw/seed.jsonl"
    assert (tmp_path / "a" / seed_file).read_bytes() == (tmp_path / "b" / seed_file).read_bytes()
    assert (tmp_path / "a" / seed_file).read_bytes() != (tmp_path / "c" / seed_file).read_bytes()
    assert 100 <= len(load_samples(tmp_path / "a" / seed_file)) <= 120


def test_init_refuses_to_overwrite_a_project(demo):
    result = CliRunner().invoke(app, ["init", str(demo)])
    assert result.exit_code == 2 and "--force" in result.output


def test_quotas_add_up_exactly():
    assert sum(quotas(151, MIX).values()) == 151 and quotas(10, MIX) == {"golden": 4, "negative": 2, "boundary": 3, "generic": 1}
