"""tuneloop.yaml: every key has a default and a help; typos and bad files are errors that say what to fix."""

from __future__ import annotations

import pytest
import yaml

from tuneloop.project import PROJECT_FILE, Project, ProjectConfig, ProjectError, dump_config, load_config


def _fields(model_cls):
    for name, field in model_cls.model_fields.items():
        yield name, field
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _fields(annotation)


def test_every_config_key_has_a_one_line_help():
    for name, field in _fields(ProjectConfig):
        assert field.description, f"{name} has no help"
        assert "\n" not in field.description


def test_dumped_config_loads_back_to_the_same_values(tmp_path):
    config = ProjectConfig.model_validate({"task": {"name": "tickets", "schema": "schemas/t.json"}, "train": {"lora_rank": 32}})
    path = tmp_path / PROJECT_FILE
    path.write_text(dump_config(config))
    assert "# LoRA rank" in path.read_text()
    assert load_config(path) == config


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / PROJECT_FILE
    path.write_text(yaml.safe_dump({"train": {"lora_rnak": 8}}))
    with pytest.raises(ProjectError, match="train.lora_rnak"):
        load_config(path)


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / PROJECT_FILE
    path.write_text("task:\n  name: x\n bad: [\n")
    with pytest.raises(ProjectError, match=r"line \d"):
        load_config(path)


def test_rounds_are_numbered_and_only_complete_rounds_count(tmp_path):
    (tmp_path / PROJECT_FILE).write_text("model: default\n")
    project = Project.load(tmp_path)
    assert project.next_round().name == "r0001"
    done = project.rounds_dir / "r0001"
    done.mkdir(parents=True)
    (done / "manifest.json").write_text("{}")
    (project.rounds_dir / "r0002").mkdir()  # an interrupted round without manifest
    assert project.latest_round() == done
    assert project.next_round().name == "r0002"


def test_schema_file_errors_name_the_file(tmp_path):
    (tmp_path / PROJECT_FILE).write_text("task: {schema: schemas/missing.json}\n")
    with pytest.raises(ProjectError, match="missing.json"):
        Project.load(tmp_path).schema()
