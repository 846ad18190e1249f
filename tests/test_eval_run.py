"""Eval end to end: local backend on the tiny model, run → compare → gate → export-bad, reports with plots, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.eval.backends import LocalBackend, cut_at_eos, length_sorted_batches, schema_constraint
from tuneloop.eval.compare import compare_evals
from tuneloop.eval.gate import gate_eval
from tuneloop.eval.metrics import score_answer
from tuneloop.eval.runner import EvalError, build_summary, run_eval, slices, write_results
from tuneloop.files import write_json
from tuneloop.project import EvalConfig, EvalGate
from tuneloop.records import EvalResult, Sample, content_hash, to_messages

SCHEMA = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "other"]}},
          "required": ["intent"], "additionalProperties": False}
PNG = '<img alt="'  # every plot is an inline PNG: <img alt=... src="data:image/png;base64,...">


def tickets(n: int = 6) -> list[Sample]:
    kinds = ["golden", "golden", "boundary", "negative", "golden", "boundary"]
    return [Sample(id=f"t{i}", instruction="Extract the intent as JSON.", input="refund please " * (1 + i),
                   output={"intent": "refund"}, sample_type=kinds[i % 6], expected="refuse" if i == 5 else "answer",
                   meta={"task_type": "extraction", "source": "seed", "difficulty": ["easy", "hard"][i % 2]})
            for i in range(n)]


def test_length_sorted_batches_and_eos_cut_are_pure_bookkeeping():
    assert length_sorted_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    assert cut_at_eos([5, 6, 2, 0, 0], {2}) == ([5, 6], "stop")
    assert cut_at_eos([5, 6, 7], {2}) == ([5, 6, 7], "length")


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_model_dir):
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model_dir, device="cpu")
    prompts = [LocalBackend(model, tokenizer).render(to_messages(s, with_answer=False)) for s in tickets(5)]
    batched = LocalBackend(model, tokenizer, batch_size=5, max_new_tokens=6).generate(prompts)
    single = LocalBackend(model, tokenizer, batch_size=1, max_new_tokens=6).generate(prompts)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt_tokens for g in batched] == [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert all(g.finish_reason in ("stop", "length") and g.completion_tokens <= 6 for g in batched)


def test_schema_constrained_local_generation_writes_schema_valid_json(tiny_model_dir):
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_model_dir, device="cpu")
    backend = LocalBackend(model, tokenizer, batch_size=3, max_new_tokens=40)
    prompts = [backend.render(to_messages(s, with_answer=False)) for s in tickets(3)]
    generations = backend.generate(prompts, schema_constraint(model, tokenizer, SCHEMA))
    assert any(g.finish_reason == "stop" for g in generations)
    for generation in generations:
        if generation.finish_reason == "stop":
            assert not list(Draft202012Validator(SCHEMA).iter_errors(json.loads(generation.text)))
        else:  # cut short by max_new_tokens: still a prefix of the only allowed shape
            assert generation.text.lstrip().startswith("{")


def test_run_eval_writes_results_summary_review_queue_and_report(tiny_model_dir, tmp_path):
    test_file = write_samples(tmp_path / "test.jsonl", tickets())
    with open(test_file, "a", encoding="utf-8") as handle:
        handle.write("{broken\n")
    # constrained answers need room to close (the schema's shortest answer is 11 tokens): fewer is refused
    settings = EvalConfig(max_new_tokens=16, batch_size=4, constrained=True)
    summary = run_eval(str(tiny_model_dir), test_file, tmp_path / "ev", SCHEMA, settings, default_system="Be brief.",
                       progress=False)
    assert set(summary["modes"]) == {"unconstrained", "constrained"}
    assert summary["samples"] == 6 and summary["quarantined"] == 1
    assert (tmp_path / "ev" / "quarantine.jsonl").read_text().count("\n") == 1
    rows = [json.loads(line) for line in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["mode"] for r in rows} == {"unconstrained", "constrained"}
    first = rows[0]
    messages = to_messages(Sample.model_validate(first["sample"]), "Be brief.", with_answer=False)
    assert first["prompt_hash"] == content_hash(messages) and first["template_hash"]
    assert first["finish_reason"] in ("stop", "length") and first["prompt_tokens"] > 0
    assert {"json_valid", "schema_valid", "fields", "ok"} <= set(first["scores"])
    queue = [json.loads(line) for line in (tmp_path / "ev" / "review_queue.jsonl").read_text().splitlines()]
    assert {q["sample_id"] for q in queue} == {"t2", "t5"}  # the boundary samples
    report = (tmp_path / "ev" / "report.html").read_text()
    assert report.count(PNG) >= 3 and "data:image/png;base64," in report and "Bad cases" in report


def write_run(folder: Path, samples: list[Sample], answers: list[str], model: str) -> Path:
    """A finished eval folder from hand-made answers (what `run_eval` writes, minus the model)."""
    validator = Draft202012Validator(SCHEMA)
    results = [EvalResult(sample_id=s.id, model=model, prompt_hash=content_hash(to_messages(s, with_answer=False)),
                          raw=a, finish_reason="stop", prompt_tokens=10 + len(s.input), constrained=False,
                          scores=score_answer(s, a, "stop", validator), mode="unconstrained", slices=slices(s),
                          sample=s.model_dump(mode="json"))
               for s, a in zip(samples, answers)]
    write_results(folder / "results.jsonl", results)
    write_json(folder / "summary.json", build_summary(results, model, write_samples(folder / "test.jsonl", samples),
                                                      EvalConfig(), quarantined=0, seconds=0.0))
    return folder


@pytest.fixture()
def before_after(tmp_path):
    samples = [Sample(id=f"s{i}", instruction="Extract the intent as JSON.", input=f"ticket {i} " * (i % 7 + 1),
                      output={"intent": "refund"}, meta={"task_type": ["extraction", "triage"][i % 2], "source": "seed"})
               for i in range(30)]
    good = ['{"intent": "refund"}'] * 30
    worse = ['{"intent": "refund"}'] * 18 + ['Here is the JSON: {"intent": "refund"}'] * 6 + ['{"intent": "other"}'] * 6
    return write_run(tmp_path / "before", samples, good, "base"), write_run(tmp_path / "after", samples, worse, "tuned")


def test_compare_finds_a_significant_regression_per_metric_slice_and_field(before_after, tmp_path):
    before, after = before_after
    comparison = compare_evals(before, after, tmp_path / "cmp")
    metrics = comparison["modes"]["unconstrained"]["metrics"]
    assert metrics["json_valid"]["worse"] == 6 and metrics["json_valid"]["better"] == 0
    assert metrics["json_valid"]["p_value"] == pytest.approx(2 / 2 ** 6)
    assert metrics["ok"]["verdict"] == "worse" and metrics["ok"]["delta"] == pytest.approx(-12 / 30)
    # strict field accuracy: the 6 wrapped answers earn no field, the 6 wrong ones lose their one field
    assert metrics["field_accuracy"]["delta"] == pytest.approx(-12 / 30) and metrics["field_accuracy"]["ci_high"] < 0
    slice_values = {(r["slice"], r["value"]) for rows in comparison["modes"]["unconstrained"]["slices"].values() for r in rows}
    assert {("task_type", "extraction"), ("task_type", "triage"), ("source", "seed"), ("difficulty", "unset"),
            ("sample_type", "golden")} <= slice_values
    assert comparison["modes"]["unconstrained"]["fields"][0]["field"] == "intent"
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["candidate_model"] == "tuned"
    report = (tmp_path / "cmp" / "report.html").read_text()
    assert report.count(PNG) >= 4 and "regressions first" in report and "Here is the JSON" in report


def test_gate_fails_naming_the_metric_that_got_significantly_worse(before_after, tmp_path):
    before, after = before_after
    compare_evals(before, after, tmp_path / "cmp")
    decision = gate_eval(tmp_path / "cmp", EvalGate(schema_valid=None))
    assert not decision.passed
    assert any(r.startswith("json_valid is significantly worse") for r in decision.reasons)
    assert any(r.startswith("field_accuracy is significantly worse") for r in decision.reasons)
    assert gate_eval(compare_evals(before, before, tmp_path / "same"), EvalGate(schema_valid=0.5)).passed


def test_gate_on_one_run_checks_thresholds_and_lists_baseline_checks_as_skipped(before_after):
    _before, after = before_after
    decision = gate_eval(after, EvalGate(schema_valid=0.9, field_accuracy=0.5))
    assert decision.reasons == ["schema_valid is 0.8000, below the minimum 0.9"]  # 6 of 30 wrapped in noise
    assert any(c["result"].startswith("skipped (no baseline") for c in decision.checks)


def test_compare_refuses_runs_on_different_prompts(before_after, tmp_path):
    before, _after = before_after
    samples = [Sample(id=f"s{i}", instruction="Another task.", output="{}") for i in range(30)]
    other = write_run(tmp_path / "other", samples, ["{}"] * 30, "x")
    with pytest.raises(EvalError, match="prompts differ"):
        compare_evals(before, other, tmp_path / "bad")


def test_export_bad_writes_failures_as_samples_with_lineage_to_the_test_item(before_after, tmp_path):
    from tuneloop.cli.main import app

    _before, after = before_after
    result = CliRunner().invoke(app, ["eval", "export-bad", str(after), "--out", str(tmp_path / "relabel.jsonl")])
    assert result.exit_code == 0, result.output
    bad = load_samples(tmp_path / "relabel.jsonl")
    assert len(bad) == 12
    first = bad[0]
    assert first.lineage.parent_id == "s18" and first.lineage.source_id == "s18"
    assert first.lineage.augment_type == "eval_failure" and first.meta.difficulty == "hard"
    assert first.output == '{"intent": "refund"}' and first.rejected.startswith("Here is the JSON")
    assert first.extras["failure"]["kinds"] == ["noise: prefix", "schema: output is not JSON"]


def test_cli_run_in_a_project_uses_the_latest_round_and_gate_exits_nonzero(tiny_model_dir, tmp_path, monkeypatch):
    from tuneloop.cli.main import app

    (tmp_path / "schemas").mkdir()
    write_json(tmp_path / "schemas" / "intent.json", SCHEMA)
    (tmp_path / "tuneloop.yaml").write_text(
        f"task: {{schema: schemas/intent.json}}\nmodel: {tiny_model_dir}\neval: {{max_new_tokens: 4, max_samples: 3}}\n")
    round_dir = tmp_path / "data" / "rounds" / "r0001"
    write_samples(round_dir / "test.jsonl", tickets())
    write_json(round_dir / "manifest.json", {})
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "run", "--quiet"])
    assert result.exit_code == 0, result.output
    (eval_dir,) = list((tmp_path / "evals").iterdir())
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["samples"] == 3 and summary["test_file"].endswith("r0001/test.jsonl")
    gate = runner.invoke(app, ["eval", "gate", str(eval_dir)])
    assert gate.exit_code == 1 and "schema_valid" in gate.output


def test_run_eval_loads_a_lora_adapter_folder_onto_its_base(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    test_file = write_samples(tmp_path / "test.jsonl", tickets(2))
    summary = run_eval(str(tmp_path / "adapter"), test_file, tmp_path / "ev", None, EvalConfig(max_new_tokens=4), progress=False)
    assert summary["modes"]["unconstrained"]["n"] == 2
    assert summary["model"].endswith("adapter")


def test_a_killed_local_eval_resumes_without_redoing_finished_batches(tiny_model_dir, tmp_path, monkeypatch):
    test_file = write_samples(tmp_path / "test.jsonl", tickets(6))
    settings = EvalConfig(max_new_tokens=6, batch_size=2)
    full = run_eval(str(tiny_model_dir), test_file, tmp_path / "full", SCHEMA, settings, progress=False)
    assert full["max_tokens"] == 6 and full["resumed"] == 0
    generated: list[int] = []
    original = LocalBackend.generate

    def killed_on_the_second_batch(self, prompts, *args, **kwargs):
        generated.append(len(prompts))
        if len(generated) == 2:
            raise KeyboardInterrupt("killed")
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(LocalBackend, "generate", killed_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_eval(str(tiny_model_dir), test_file, tmp_path / "ev", SCHEMA, settings, progress=False)
    assert len((tmp_path / "ev" / "answers.jsonl").read_text().splitlines()) == 2  # the first batch was kept
    generated.clear()
    monkeypatch.setattr(LocalBackend, "generate", lambda self, prompts, *a, **k: generated.append(len(prompts)) or
                        original(self, prompts, *a, **k))
    resumed = run_eval(str(tiny_model_dir), test_file, tmp_path / "ev", SCHEMA, settings, progress=False)
    assert resumed["resumed"] == 2 and sum(generated) == 4  # only the samples the killed run had not finished
    answers = lambda folder: {r["sample_id"]: r["raw"] for r in map(json.loads, (folder / "results.jsonl").read_text().splitlines())}
    assert answers(tmp_path / "ev") == answers(tmp_path / "full")
    generated.clear()
    changed = run_eval(str(tiny_model_dir), test_file, tmp_path / "ev", SCHEMA, settings.model_copy(update={"max_new_tokens": 5}),
                       progress=False)
    assert changed["resumed"] == 0 and sum(generated) == 6  # another setting: nothing reused


def test_max_tokens_is_derived_from_the_longest_reference_answer_and_explained(tiny_model_dir, tmp_path):
    from tuneloop.models import load_causal_lm

    samples = tickets(3)
    samples[1] = samples[1].model_copy(update={"output": json.dumps({"intent": "refund " * 40})})
    test_file = write_samples(tmp_path / "test.jsonl", samples)
    summary = run_eval(str(tiny_model_dir), test_file, tmp_path / "ev", None, EvalConfig(batch_size=3), progress=False)
    _model, tokenizer = load_causal_lm(tiny_model_dir, device="cpu")
    longest = max(len(tokenizer(s.output, add_special_tokens=False)["input_ids"]) for s in samples)
    assert summary["max_tokens"] == longest + max(32, (longest + 1) // 2)
    assert summary["max_tokens_reason"].startswith(f"longest reference answer {longest} tokens + margin")
    assert all(r["completion_tokens"] <= summary["max_tokens"]
               for r in map(json.loads, (tmp_path / "ev" / "results.jsonl").read_text().splitlines()))


def test_max_samples_spreads_over_a_test_set_grouped_by_function(tmp_path):
    from tuneloop.eval.runner import load_test_set

    # a split writes each lineage group together: the first rows of this file are all one function
    rows = [Sample(id=f"{fn}-{i}", instruction=f"call {fn} {i}", output="{}", lineage={"source_id": f"fn:{fn}"})
            for fn in ("track_order", "get_weather", "book_table") for i in range(20)]
    write_samples(tmp_path / "test.jsonl", rows)
    samples, quarantined = load_test_set(tmp_path / "test.jsonl", tmp_path, 12)
    assert quarantined == 0 and len(samples) == 12
    assert {s.lineage.source_id for s in samples} == {"fn:track_order", "fn:get_weather", "fn:book_table"}
    assert [s.id for s in samples] == [s.id for s in rows if s in samples]  # file order kept
    again, _ = load_test_set(tmp_path / "test.jsonl", tmp_path, 12)
    assert [s.id for s in again] == [s.id for s in samples]  # baseline and candidate see the same subset
