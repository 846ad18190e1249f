"""`eval export-bad --queue`: eval failures reach the relabel queue as new variants, never as the test item."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tuneloop.data.gate.split import FrozenSplits, split_samples
from tuneloop.data.io.formats import write_samples
from tuneloop.files import write_jsonl
from tuneloop.project import DedupConfig
from tuneloop.records import EvalResult, Sample
from tuneloop.traces.eval_queue import queue_eval_failures
from tuneloop.traces.frozen import frozen_items, prompt_similarity
from tuneloop.traces.queue import RelabelQueue
from tuneloop.traces.store import TraceStore

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "src/tuneloop/examples/json_extraction/ticket.schema.json")
                    .read_text())
INSTRUCTION = "Extract the ticket fields as JSON."


def answer(intent, product, order_id=None, urgency="medium", amount=None) -> str:
    return json.dumps({"intent": intent, "product": product, "order_id": order_id, "urgency": urgency,
                       "refund_amount": amount})


LONG = ("I bought the espresso machine last month and since then it has been making a loud grinding noise every "
        "single morning when I switch it on, and the water tank leaks onto the counter, and the steam wand does not "
        "get hot anymore, and I have descaled it twice following the manual exactly as written, and I cleaned the "
        "filter basket and the drip tray and checked the seal around the tank, and nothing has helped at all, so I "
        "would like to know what my options are now because I use it every day for my small office of six people "
        "and we really depend on it working properly every morning before our first meeting starts at nine o'clock")
TESTS = [
    Sample(id="t-kettle", instruction=INSTRUCTION, input="My kettle from order A123456 arrived broken, refund 35.50",
           output=answer("refund", "kettle", "A123456", amount=35.5)),
    Sample(id="t-lamp", instruction=INSTRUCTION, input="Where is my desk lamp? Order P431535, I need it urgently",
           output=answer("order_status", "desk lamp", "P431535", urgency="high"), meta={"difficulty": "hard"}),
    Sample(id="t-espresso", instruction=INSTRUCTION, input=LONG, output=answer("product_issue", "espresso machine")),
    Sample(id="t-passed", instruction=INSTRUCTION, input="Thanks, the hoodie fits perfectly",
           output=answer("other", "hoodie", urgency="low")),
]
WRONG = {"t-kettle": answer("refund", "kettle"), "t-lamp": "Sure: order_status", "t-espresso": answer("other", None)}


def results() -> list[EvalResult]:
    out = []
    for test in TESTS:
        raw = WRONG.get(test.id, test.output)
        out.append(EvalResult(sample_id=test.id, model="current", prompt_hash="h", raw=raw, mode="unconstrained",
                              scores={"ok": test.id not in WRONG, "json_found": raw.startswith("{"),
                                      "fields": {"order_id": [False, False]} if test.id in WRONG else {}},
                              sample=test.model_dump(mode="json")))
    return out


def make_round(root: Path) -> Path:
    round_dir = root / "data" / "rounds" / "r0001"
    write_samples(round_dir / "test.jsonl", TESTS)
    write_samples(round_dir / "val.jsonl", [Sample(id="v-1", instruction=INSTRUCTION, input="Cancel order Z998877",
                                                   output=answer("cancel_order", None, "Z998877"))])
    (round_dir / "manifest.json").write_text("{}")
    return round_dir


def without_audit(item) -> str:
    data = item.model_dump(mode="json")
    data["sample"]["failure"].pop("eval_item")
    return json.dumps(data, ensure_ascii=False)


def test_each_failure_is_queued_as_a_new_variant_that_names_its_test_item_only_for_audit(tmp_path):
    round_dir = make_round(tmp_path)
    with TraceStore(tmp_path / "traces.db") as store:
        queue = RelabelQueue(store)
        outcome = queue_eval_failures(queue, results(), tmp_path / "evals" / "after", frozen=frozen_items(round_dir))
        assert outcome.failures == 3
        assert outcome.failures == (outcome.queued + outcome.already_queued + len(outcome.near_frozen)
                                    + len(outcome.no_variant))
        items = {i.sample.failure["eval_item"]: i for i in queue.items()}
        assert set(items) == {"t-kettle", "t-lamp"} and outcome.queued == 2
        # the long message stays near-identical to its test item whatever the rules add: not queued, and said
        [(test_id, match)] = outcome.near_frozen
        assert test_id == "t-espresso" and match.frozen_id == "t-espresso" and match.kind == "ngram-prompt"
        tests = {t.id: t for t in TESTS}
        every_id = {t.id for t in TESTS} | {t.lineage.source_id for t in TESTS}
        for test_id, item in items.items():
            sample = item.sample
            assert item.origin == "eval:after" and sample.meta.source == "eval:after"
            assert sample.id == item.id == sample.lineage.source_id and sample.lineage.parent_id is None
            assert not any(known in without_audit(item) for known in every_id)  # no test id anywhere else
            assert sample.input != tests[test_id].input
            assert prompt_similarity(sample, tests[test_id]) < DedupConfig().threshold
            assert sample.output == "" and item.status == "pending"
            assert item.proposal and item.proposed_by.startswith("clone rule")
            assert sample.rejected is not None and sample.failure["kinds"]
        # the same eval again adds nothing
        again = queue_eval_failures(queue, results(), tmp_path / "evals" / "after", frozen=frozen_items(round_dir))
        assert (again.queued, again.already_queued) == (0, 2) and len(queue) == 2


def test_a_relabeled_variant_trains_while_the_frozen_test_item_stays_in_test(tmp_path):
    round_dir = make_round(tmp_path)
    with TraceStore(tmp_path / "traces.db") as store:
        queue = RelabelQueue(store)
        queue_eval_failures(queue, results(), tmp_path / "evals" / "after", frozen=frozen_items(round_dir))
        for item in queue.items():  # the relabeler takes the clone rule's proposal
            queue.save(item.id, item.proposal, item.version, "ana", status="submitted")
        accepted = queue.accepted_samples()
    assert len(accepted) == 2
    split = split_samples(accepted, frozen=FrozenSplits.from_round(round_dir))
    assert sorted(s.id for s in split.train) == sorted(s.id for s in accepted)
    assert split.held_out == [] and {s.id for s in split.test} == {t.id for t in TESTS}


def test_a_near_identical_threshold_keeps_every_variant_out(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        queue = RelabelQueue(store)
        strict = DedupConfig(threshold=0.05)  # any shared wording counts as near-identical
        outcome = queue_eval_failures(queue, results(), tmp_path / "evals" / "after", config=strict)
        assert outcome.queued == 0 and len(outcome.near_frozen) == 3 and len(queue) == 0


def test_export_bad_queue_command_feeds_the_project_queue(tmp_path, monkeypatch):
    from tuneloop.cli.main import app

    (tmp_path / "ticket.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "tuneloop.yaml").write_text("task:\n  schema: ticket.schema.json\n")
    make_round(tmp_path)
    eval_dir = tmp_path / "evals" / "after"
    write_jsonl(eval_dir / "results.jsonl", (r.model_dump(mode="json") for r in results()))
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["eval", "export-bad", str(eval_dir), "--queue"])
    assert done.exit_code == 0, done.output
    assert "queued 2 + already queued 0 + near-identical to a frozen item 1 + no variant 0" in done.output
    assert "not queued: the variant of t-espresso" in done.output
    with TraceStore(tmp_path / "traces.db") as store:
        assert RelabelQueue(store).counts()["pending"] == 2


def test_an_item_that_failed_in_both_modes_gets_one_new_message(tmp_path):
    both = results() + [r.model_copy(update={"mode": "constrained"}) for r in results()]
    with TraceStore(tmp_path / "traces.db") as store:
        queue = RelabelQueue(store)
        outcome = queue_eval_failures(queue, both, tmp_path / "evals" / "after", mode=None)
        assert outcome.failures == 3 and outcome.queued == 2
        assert sorted(i.sample.failure["eval_item"] for i in queue.items()) == ["t-kettle", "t-lamp"]


def test_export_bad_queue_outside_a_project_is_an_error_before_anything_is_written(tmp_path, monkeypatch):
    from tuneloop.cli.main import app

    eval_dir = tmp_path / "evals" / "after"
    write_jsonl(eval_dir / "results.jsonl", (r.model_dump(mode="json") for r in results()))
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["eval", "export-bad", str(eval_dir), "--queue"])
    assert done.exit_code == 2 and "tuneloop.yaml" in done.output
    assert not (eval_dir / "bad_cases.jsonl").exists()
