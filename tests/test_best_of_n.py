"""Best-of-N: candidates judged by the rewards and eval's validators become pairs and positives the gate accepts."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

import pytest
from fastapi import FastAPI, Request

from tuneloop.data.gate.round import run_gate
from tuneloop.data.io.formats import load_samples, read_samples, write_samples
from tuneloop.data.io.llamafactory import read_dataset_info, read_entry
from tuneloop.eval.backends import Generation
from tuneloop.examples import init_example
from tuneloop.project import Project
from tuneloop.records import Lineage, Meta, Sample
from tuneloop.serve.server import run_in_background
from tuneloop.train.best_of_n import AUGMENT_TYPE, BestOfNError, build_revision, run_best_of_n, write_revision
from tuneloop.train.rewards import reward_weights
from tuneloop.examples.json_extraction import schema as demo_schema

SCHEMA = demo_schema()
RIGHT = {"intent": "refund", "product": "kettle", "order_id": "A-1", "urgency": "high", "refund_amount": 20}
RIGHT_TEXT = json.dumps(RIGHT)
PROSE = "Here is the JSON:\n" + RIGHT_TEXT
CUT = RIGHT_TEXT[:30]
WRONG_FIELD = json.dumps({**RIGHT, "intent": "exchange"})
REFUSAL = json.dumps(SCHEMA["x-refusal"])


def gen(text: str, finish: str = "stop") -> Generation:
    return Generation(text, finish, 10, 10, 1.0)


def sample(id: str, output: str, **fields) -> Sample:
    return Sample(id=id, instruction="Extract the ticket as JSON.", input=f"message {id}", output=output, **fields)


def revision(samples, generations):
    return build_revision(samples, generations, reward_weights("strict"), SCHEMA, n=3, model="m")


def test_a_failing_candidate_becomes_rejected_against_the_reference_with_lineage_and_scores():
    parent = sample("t1", RIGHT_TEXT, meta={"annotator": "ann"})
    result = revision([parent], [[gen(RIGHT_TEXT), gen(PROSE), gen(CUT, "length")]])
    [row] = result.rows
    assert row.output == RIGHT_TEXT and row.rejected == CUT  # the worst candidate: cut off, no JSON at all
    assert row.id != parent.id and row.lineage.parent_id == "t1" and row.lineage.augment_type == AUGMENT_TYPE
    assert row.lineage.source_id == parent.lineage.source_id  # the pair stays with its seed's split group
    record = row.extras["best_of_n"]
    assert record["chosen_from"] == "reference" and record["passing"] == 1 and len(record["totals"]) == 3
    assert record["rejected"]["problems"][0] == "cut by the length limit"
    assert record["totals"][0] > record["totals"][1] > record["totals"][2]
    assert result.counts()["dpo_pairs"] == 1


def test_a_sample_the_model_always_gets_right_gives_no_row_and_a_wrong_field_is_a_failure():
    result = revision([sample("a", RIGHT_TEXT), sample("b", RIGHT_TEXT)],
                      [[gen(RIGHT_TEXT)] * 3, [gen(RIGHT_TEXT), gen(RIGHT_TEXT), gen(WRONG_FIELD)]])
    assert [o.outcome for o in result.outcomes] == ["all_passed", "pair"]
    assert result.rows[0].rejected == WRONG_FIELD
    assert "fields differ from the reference: intent" in result.rows[0].extras["best_of_n"]["rejected"]["problems"]


def test_a_prompt_without_reference_gets_its_best_valid_candidate_as_positive_and_pair():
    prompt_only = sample("p", "")
    result = revision([prompt_only, sample("q", "")], [[gen(PROSE), gen(RIGHT_TEXT), gen("```json\n{}\n```")],
                                                        [gen(PROSE), gen(CUT, "length"), gen("no")]])
    assert [o.outcome for o in result.outcomes] == ["pair", "no_valid"]
    [row] = result.rows
    assert row.output == RIGHT_TEXT and row.rejected in (PROSE, CUT, "```json\n{}\n```")
    assert row.extras["best_of_n"]["chosen_from"] == "best_candidate"


def test_a_boundary_sample_that_complies_is_rejected_against_its_refusal():
    boundary = sample("b", REFUSAL, sample_type="boundary", expected="refuse")
    result = revision([boundary], [[gen(REFUSAL), gen(RIGHT_TEXT), gen("I'm sorry, I can't help with that.")]])
    [row] = result.rows
    assert row.output == REFUSAL and row.rejected == RIGHT_TEXT
    assert row.extras["best_of_n"]["rejected"]["problems"] == ["answered a prompt it must refuse"]


def test_negatives_pair_with_their_golden_twin_or_with_a_valid_candidate_that_differs_from_them():
    golden = sample("g", RIGHT_TEXT, lineage={"source_id": "seed1"})
    twin_negative = sample("n1", WRONG_FIELD, sample_type="negative", lineage={"source_id": "seed1"})
    lone_negative = sample("n2", WRONG_FIELD, sample_type="negative")
    result = revision([golden, twin_negative, lone_negative],
                      [[gen(RIGHT_TEXT)] * 3, [gen(PROSE)] * 3, [gen(WRONG_FIELD), gen(RIGHT_TEXT), gen(PROSE)]])
    assert [o.outcome for o in result.outcomes] == ["all_passed", "pair", "pair"]
    twin_pair, lone_pair = result.rows
    assert (twin_pair.output, twin_pair.rejected, twin_pair.sample_type) == (RIGHT_TEXT, WRONG_FIELD, "golden")
    assert twin_pair.extras["best_of_n"]["chosen_from"] == "golden_twin"
    # the candidate equal to the negative's wrong answer is never chosen
    assert (lone_pair.output, lone_pair.rejected) == (RIGHT_TEXT, WRONG_FIELD)


@pytest.fixture()
def demo_round(tmp_path):
    """The demo project gated once, from a seed without the synthetic `rejected` answers (as a user's data is)."""
    root = tmp_path / "demo"
    init_example(root, size=60)
    seed = root / "data/raw/seed.jsonl"
    write_samples(seed, [s.model_copy(update={"rejected": None}) for s in load_samples(seed)])
    project = Project.load(root)
    first = run_gate(project, progress=False, tokenizer=None)
    assert first.passed and first.counts["dpo_pairs"] == 0
    return project, first


def test_the_revision_passes_the_gate_its_pairs_land_in_train_and_count_as_dpo_pairs(demo_round, tmp_path):
    project, first = demo_round
    train = load_samples(first.round_dir / "train.jsonl")
    # the model's own failures: a prose prefix on every answer
    generations = [[gen(s.output), gen("Here is the JSON:\n" + s.output)] for s in train]
    result = revision(train, generations)
    paths = write_revision(result, tmp_path / "bon")
    pairs = load_samples(paths["samples"])
    # a prefixed refusal still refuses (eval's rule), and a negative's own answer is no chosen: the rest pair up
    assert len(pairs) == sum(1 for s in train if s.sample_type != "negative" and s.expected != "refuse") > 0
    second = run_gate(project, sources=[project.path("data/raw/seed.jsonl"), paths["samples"]], progress=False,
                      tokenizer=None)
    assert second.passed, second.failures
    assert second.counts["quarantined"] == 0 and second.counts["rows_in"] == first.counts["rows_in"] + len(pairs)
    kept = load_samples(second.round_dir / "train.jsonl")
    held = load_samples(second.round_dir / "val.jsonl") + load_samples(second.round_dir / "test.jsonl")
    assert not {p.lineage.source_id for p in pairs} & {s.lineage.source_id for s in held}  # no pair straddles
    # each pair is a copy of its parent's prompt and answer: dedup keeps the parent and moves the rejected onto it
    with_rejected = {s.id: s for s in kept if s.rejected is not None}
    assert {p.lineage.parent_id for p in pairs} <= set(with_rejected) | set(second.manifest.get("mix_dropped", []))
    assert all(s.rejected.startswith("Here is the JSON:") and s.extras["rejected_from"] for s in with_rejected.values())
    assert second.counts["dpo_pairs"] == len(with_rejected) > 0
    # the TRL file and the LLaMA-Factory folder hold the same pairs
    trl = [json.loads(line) for line in paths["preferences"].read_text().splitlines()]
    assert len(trl) == len(pairs) and trl[0]["chosen"][0]["role"] == "assistant" and trl[0]["prompt"][-1]["role"] == "user"
    entries = read_dataset_info(paths["llamafactory"].parent)
    back = read_entry(paths["llamafactory"].parent, entries["best_of_n"]).result
    assert [(s.output, s.rejected) for s in back.samples] == [(p.output, p.rejected) for p in pairs]


def completion(content: str, finish: str) -> dict:
    return {"id": "c", "object": "chat.completion", "created": int(time.time()), "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}


@contextmanager
def fake_model(answers: dict[int, tuple[str, str]], failing: bool = False):
    """An OpenAI-compatible app whose answer depends on the request's seed, as a sampling server's does."""
    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if failing and body["seed"] == 1:
            return JSONResponse({"error": {"message": "prompt too long"}}, status_code=400)
        return completion(*answers[body["seed"] % len(answers)])

    from fastapi.responses import JSONResponse

    with run_in_background(app) as root:
        yield f"{root}/v1", seen


def test_an_endpoint_gives_n_draws_per_prompt_each_with_its_own_seed(tmp_path):
    samples = [sample("a", RIGHT_TEXT), sample("b", RIGHT_TEXT)]
    answers = {0: (RIGHT_TEXT, "stop"), 1: (PROSE, "stop"), 2: (CUT, "length")}
    with fake_model(answers) as (url, seen):
        result, paths = run_best_of_n(samples, "m", tmp_path / "out", reward_weights("strict"), SCHEMA, n=3,
                                      temperature=0.9, base_url=url, progress=False)
    assert sorted(r["seed"] for r in seen) == [0, 0, 1, 1, 2, 2] and {r["temperature"] for r in seen} == {0.9}
    assert [o.outcome for o in result.outcomes] == ["pair", "pair"]
    assert [r.rejected for r in result.rows] == [CUT, CUT]
    rows = [json.loads(line) for line in paths["candidates"].read_text().splitlines()]
    assert [len(r["candidates"]) for r in rows] == [3, 3]
    assert json.loads(paths["summary"].read_text())["counts"]["candidates_passing"] == 2


def test_a_failed_request_is_an_error_and_nothing_is_written(tmp_path):
    answers = {0: (RIGHT_TEXT, "stop"), 1: (PROSE, "stop")}
    with fake_model(answers, failing=True) as (url, _):
        with pytest.raises(BestOfNError, match="candidate requests failed"):
            run_best_of_n([sample("a", RIGHT_TEXT)], "m", tmp_path / "out", reward_weights("strict"), SCHEMA, n=2,
                          base_url=url, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_local_batched_backend_samples_n_candidates_from_the_tiny_model(tiny_model_dir, tmp_path):
    samples = [sample("a", RIGHT_TEXT), sample("b", REFUSAL, sample_type="boundary", expected="refuse")]
    result, paths = run_best_of_n(samples, str(tiny_model_dir), tmp_path / "out", reward_weights("strict"), SCHEMA,
                                  n=3, temperature=1.0, max_new_tokens=8, progress=False)
    assert [len(o.candidates) for o in result.outcomes] == [3, 3]
    assert len({c.text for o in result.outcomes for c in o.candidates}) > 1  # sampled, not one greedy answer
    # a random tiny model writes no valid ticket in 8 tokens: every sample becomes a pair against its reference
    assert [o.outcome for o in result.outcomes] == ["pair", "pair"]
    assert all(c.finish_reason == "length" for o in result.outcomes for c in o.candidates if not c.text.endswith("}"))
    assert len(read_samples(paths["samples"]).samples) == 2 and result.max_new_tokens == 8


def test_the_command_samples_a_rounds_train_set_through_an_endpoint_into_the_project(demo_round, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    project, first = demo_round
    monkeypatch.chdir(project.root)
    with fake_model({0: ("Here is the JSON: {}", "stop"), 1: ("{", "length")}) as (url, seen):
        result = CliRunner().invoke(app, ["sample", "best-of-n", "--model", "m", "--n", "2", "--round", "r0001",
                                          "--base-url", url, "--quiet"])
    assert result.exit_code == 0, result.output
    train = load_samples(first.round_dir / "train.jsonl")
    assert len(seen) == 2 * len(train)
    [folder] = (project.root / "data/best_of_n").iterdir()
    assert folder.name.startswith("r0001-m-")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n"] == 2 and summary["counts"]["samples"] == len(train) and summary["weights"] == reward_weights()
    assert f"{summary['counts']['dpo_pairs']} DPO pairs" in " ".join(result.output.split())


def test_the_command_refuses_data_and_round_together(demo_round, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    project, _ = demo_round
    monkeypatch.chdir(project.root)
    result = CliRunner().invoke(app, ["sample", "best-of-n", "--data", "x.jsonl", "--round", "r0001"])
    assert result.exit_code == 2 and "not both" in result.output


def test_dedup_never_deletes_a_rejected_answer():
    from tuneloop.data.gate.dedup import dedup

    original = sample("orig", RIGHT_TEXT, meta={"annotator": "ann"})
    derived = {"lineage": Lineage(source_id="orig", augment_type=AUGMENT_TYPE, parent_id="orig"), "meta": Meta()}
    pair, other, same = (original.model_copy(update={"id": id, "rejected": worse, **derived})
                         for id, worse in (("pair", PROSE), ("other", CUT), ("same", PROSE)))
    result = dedup([original, pair, other, same])
    kept = {s.id: s for s in result.kept}
    # the annotated original is kept and carries the first copy's rejected; a second rejected stays its own row;
    # a copy with a rejected already held is a plain duplicate
    assert set(kept) == {"orig", "other"}
    assert (kept["orig"].rejected, kept["orig"].extras["rejected_from"]) == (PROSE, "pair")
    assert kept["other"].rejected == CUT
    assert sorted(r.sample.id for r in result.removed) == ["pair", "same"]
    assert len(result.kept) + len(result.removed) + len(result.review) == 4


def test_a_row_that_is_a_pair_already_comes_along_and_gets_the_models_own_mistake_beside_it():
    pair = sample("r", RIGHT_TEXT, rejected=WRONG_FIELD)
    result = revision([pair], [[gen(RIGHT_TEXT), gen(PROSE)]])
    assert [(r.id, r.rejected) for r in result.rows] == [("r", WRONG_FIELD), (result.outcomes[0].row.id, PROSE)]
    assert result.counts()["brought"] == 1 and result.counts()["dpo_pairs"] == 2
    assert revision([pair], [[gen(RIGHT_TEXT)] * 2]).rows == [pair]  # no mistake of its own: the row alone


def test_a_rerun_into_the_same_folder_leaves_no_llamafactory_entry_of_the_earlier_run(tmp_path):
    mixed = revision([sample("p", ""), sample("a", RIGHT_TEXT)], [[gen(RIGHT_TEXT)] * 2, [gen(RIGHT_TEXT), gen(PROSE)]])
    write_revision(mixed, tmp_path)
    assert set(read_dataset_info(tmp_path / "llamafactory")) == {"best_of_n_sft", "best_of_n_ranking"}
    pairs_only = revision([sample("a", RIGHT_TEXT)], [[gen(RIGHT_TEXT), gen(PROSE)]])
    write_revision(pairs_only, tmp_path)
    assert set(read_dataset_info(tmp_path / "llamafactory")) == {"best_of_n"}
