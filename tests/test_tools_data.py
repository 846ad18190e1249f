"""Code-generated function-calling data and the tool-calling example: verified calls (optional arguments omitted,
enums, nested objects), no-tool rows refused, and a round whose test functions training never saw."""

from __future__ import annotations

import json

from tuneloop.data.create.tool_tasks import NO_TOOL_REFUSAL, ToolTaskGenerator, keep_verified_tasks, verify_tool_task
from tuneloop.data.gate.checks import sample_problems
from tuneloop.examples import init_example
from tuneloop.examples.tool_calling import CATALOGUE
from tuneloop.tools import sample_calls, sample_tools


def generated(n=300, seed=0):
    return ToolTaskGenerator(CATALOGUE).generate(n, seed)


def test_every_generated_row_verifies_and_passes_the_gate():
    rows = generated()
    kept, failed = keep_verified_tasks(rows, "synth")
    assert failed == [] and len(kept) == len(rows)
    assert all(sample_problems(s) == [] for s in kept)


def test_the_corner_cases_are_there():
    samples = [s for s, _ in generated()]
    calls = [(s, sample_calls(s)[0]) for s in samples if sample_calls(s)]
    weather = [c["arguments"] for _, c in calls if c["name"] == "get_weather"]
    assert any("unit" not in a for a in weather) and any(a.get("unit") == "fahrenheit" for a in weather)  # optional, enum
    events = [c["arguments"] for _, c in calls if c["name"] == "create_event"]
    assert any(a.get("location") == {"city": a["location"]["city"]} for a in events if "location" in a)  # nested
    assert any("location" not in a for a in events)  # an optional object left out whole
    refusals = [s for s in samples if s.expected == "refuse"]
    assert refusals and all(s.output == NO_TOOL_REFUSAL and sample_tools(s) for s in refusals)
    assert all(c["name"] in {f["name"] for f in sample_tools(s)} and len(sample_tools(s)) == 3 for s, c in calls)


def test_the_verifier_catches_a_wrong_call():
    sample, truth = next((s, t) for s, t in generated() if t and t["name"] == "book_table")
    wrong = sample.model_copy(update={"output": json.dumps({**truth, "arguments": {**truth["arguments"], "people": 99}})})
    assert any("not the generator's truth" in r for r in verify_tool_task(wrong, truth))
    invented = {**truth, "arguments": {**truth["arguments"], "restaurant": "Nowhere"}}
    assert any("not stated in the prompt" in r for r in verify_tool_task(sample.model_copy(update={
        "output": json.dumps(invented)}), invented))
    bad_type = {**truth, "arguments": {**truth["arguments"], "people": "4"}}
    assert any("is not of type 'integer'" in r for r in verify_tool_task(sample.model_copy(update={
        "output": json.dumps(bad_type)}), bad_type))


def test_the_example_round_tests_functions_training_never_saw(tmp_path):
    from tuneloop.data.gate.round import run_gate
    from tuneloop.project import Project

    init_example(tmp_path / "tools", "tool-calling", size=300)
    project = Project.load(tmp_path / "tools")
    result = run_gate(project, progress=False, tokenizer=None)
    folder = project.rounds_dir / "r0001"
    names = {}
    for part in ("train", "val", "test"):
        rows = [json.loads(line) for line in (folder / f"{part}.jsonl").read_text().splitlines()]
        names[part] = {r["lineage"]["source_id"] for r in rows if r.get("answer_kind") == "tool_calls"}
        assert rows
    assert names["test"] and not names["test"] & names["train"] and not names["val"] & names["train"]
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert any(r["expected"] == "refuse" for r in train)  # no-tool refusals are trained on too
    assert result is not None
