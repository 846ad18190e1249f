"""The relabel queue (traces/queue.py, traces/relabel.py): real traffic failures from a real store, round trips
through real files, two writers, proposals from a loopback OpenAI-compatible server, lineage of what trains."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from tuneloop.data.io.formats import load_samples, write_samples
from tuneloop.llm_client import Endpoint, EndpointConfigError
from tuneloop.project import LabelRule, LoopConfig
from tuneloop.records import Sample, Trace
from tuneloop.testing.loopback import serve_app
from tuneloop.traces.frozen import frozen_items
from tuneloop.traces.queue import LabelRejected, QueueConflict, QueueError, RelabelQueue
from tuneloop.traces.relabel import LabelCheck
from tuneloop.traces.select import select_failures
from tuneloop.traces.store import TraceStore, new_trace_id

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "src/tuneloop/examples/json_extraction/ticket.schema.json")
                    .read_text())
SYSTEM = "You extract ticket fields as JSON."
REFUSAL = json.dumps(SCHEMA["x-refusal"])
MESSAGES = {  # message -> (what the model answered, the right answer)
    "My kettle from order A123456 arrived broken, I want my 35.50 back": (
        "Sure! The intent is refund.",
        {"intent": "refund", "product": "kettle", "order_id": "A123456", "urgency": "medium", "refund_amount": 35.5}),
    "Where is my parcel with the blue desk lamp? Order P431535, it is urgent": (
        '{"intent": "order_status", "product": "desk lamp"}',
        {"intent": "order_status", "product": "blue desk lamp", "order_id": "P431535", "urgency": "high",
         "refund_amount": None}),
    "Please cancel the toaster I ordered yesterday, no rush at all": (
        REFUSAL,  # refused a real request: a boundary failure once the user complains
        {"intent": "cancel_order", "product": "toaster", "order_id": None, "urgency": "low", "refund_amount": None}),
    "I would like to swap my grey hoodie for a larger size, order H778812": (
        "```json\n{\"intent\": \"exchange\"}\n```",
        {"intent": "exchange", "product": "grey hoodie", "order_id": "H778812", "urgency": "medium",
         "refund_amount": None}),
}


def text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def record_traffic(store: TraceStore) -> dict[str, str]:
    """Serve-shaped traces with broken outputs and negative feedback; message -> trace id."""
    ids = {}
    for offset, (message, (answer, _right)) in enumerate(MESSAGES.items()):
        trace = Trace(id=new_trace_id(), created_at=time.time() + offset, model="current", latency_ms=12.0,
                      messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}],
                      output=answer)
        store.record(trace)
        store.add_feedback(trace.id, 0.0, "wrong answer")
        ids[message] = trace.id
    good = Trace(id=new_trace_id(), created_at=time.time() + 10, model="current", latency_ms=9.0,
                 messages=[{"role": "user", "content": "thanks, all good"}],
                 output=text({"intent": "other", "product": None, "order_id": None, "urgency": "low",
                              "refund_amount": None}))
    store.record(good)
    return ids


@pytest.fixture
def traffic(tmp_path):
    store = TraceStore(tmp_path / "traces.db")
    ids = record_traffic(store)
    selection = select_failures(store, SCHEMA, LoopConfig(), system=SYSTEM)
    assert len(selection.failures) == len(MESSAGES)
    yield SimpleNamespace(store=store, queue=RelabelQueue(store), failures=selection.failures, ids=ids, dir=tmp_path)
    store.close()


def clustering_of(failures, names=("parcels", "returns")):
    labels = [index % 2 for index in range(len(failures))]
    return SimpleNamespace(labels=labels, trace_ids=[f.trace_id for f in failures],
                           clusters=[SimpleNamespace(id=i, name=n) for i, n in enumerate(names)])


def right_answer(item) -> str:
    return text(MESSAGES[item.sample.prompt][1])


def fill(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def exported(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- queueing ------------------------------------------------------------------------------------------------
def test_failures_are_queued_once_and_a_clustering_names_their_clusters(traffic):
    queue = traffic.queue
    assert queue.add_failures(traffic.failures) == len(MESSAGES)
    assert queue.add_failures(traffic.failures) == 0  # idempotent by failure id
    assert len(queue) == len(MESSAGES)
    assert queue.add_failures(traffic.failures, clustering_of(traffic.failures)) == 0
    items = queue.items()
    assert {(i.cluster, i.cluster_name) for i in items} == {(0, "parcels"), (1, "returns")}
    assert all(i.status == "pending" and i.version == 1 and i.origin == "traffic" for i in items)
    assert queue.counts() == {"pending": 4, "draft": 0, "submitted": 0, "reviewed": 0, "discarded": 0}
    refused = next(i for i in items if i.sample.rejected == REFUSAL)
    assert refused.sample.sample_type == "boundary" and "refused but should answer" in refused.reasons
    with pytest.raises(QueueError, match="no queue item"):
        queue.get("failure:nope")


def test_the_export_holds_what_a_relabeler_needs_and_an_empty_output(traffic):
    traffic.queue.add_failures(traffic.failures, clustering_of(traffic.failures))
    path = traffic.dir / "export.jsonl"
    assert traffic.queue.export(path) == len(MESSAGES)
    rows = exported(path)
    first = rows[0]
    for key in ("id", "version", "reasons", "cluster", "cluster_name", "system", "history", "instruction", "input",
                "model_output", "expected", "sample_type", "proposal", "output", "annotator"):
        assert key in first
    assert [r["cluster"] for r in rows] == sorted(r["cluster"] for r in rows)  # one cluster after the other
    assert all(r["output"] == "" and r["annotator"] == "" for r in rows)
    assert {r["instruction"] for r in rows} == set(MESSAGES)
    assert {r["model_output"] for r in rows} == {answer for answer, _ in MESSAGES.values()}


# -- import ---------------------------------------------------------------------------------------------------
def test_import_accepts_good_rows_and_rejects_each_bad_one_with_its_line_id_and_reason(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = exported(path)
    by_prompt = {r["instruction"]: r for r in rows}
    kettle, parcel, toaster, hoodie = (by_prompt[m] for m in MESSAGES)
    kettle["output"] = text(MESSAGES[kettle["instruction"]][1])
    parcel["output"] = "```json\n" + text(MESSAGES[parcel["instruction"]][1]) + "\n```"  # fenced
    toaster["output"] = {**MESSAGES[toaster["instruction"]][1], "urgency": "whenever"}  # schema error (an object)
    hoodie["output"] = text({**MESSAGES[hoodie["instruction"]][1], "order_id": "N/A"})  # N/A for a stated id
    refuse_wrong = {"id": kettle["id"] + "x", "output": REFUSAL}  # unknown id
    lines = [json.dumps(kettle), json.dumps(parcel), json.dumps(toaster), "", json.dumps(hoodie),
             "{not json", json.dumps(refuse_wrong), json.dumps({"output": "x"}), json.dumps(kettle)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = queue.import_labels(path, SCHEMA, annotator="ana")
    assert result.rows == 8  # the blank line is no row
    assert len(result.accepted) == 1 and result.accepted == [kettle["id"]]
    reasons = {line: (item_id, reason) for line, item_id, reason in result.rejected}
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8, 9]
    assert reasons[2][0] == parcel["id"] and "code fences" in reasons[2][1]
    assert reasons[3][0] == toaster["id"] and "output.urgency" in reasons[3][1] and "pick one of" in reasons[3][1]
    assert "output.order_id" in reasons[5][1] and "write null" in reasons[5][1]
    assert reasons[6] == (None, reasons[6][1]) and "not JSON" in reasons[6][1]
    assert "not in the relabel queue" in reasons[7][1]
    assert "no id" in reasons[8][1]
    assert "also on line 1" in reasons[9][1]
    assert len(result.accepted) + len(result.rejected) + result.unchanged + result.skipped == result.rows
    assert all(str(path) in line and "line" in line for line in result.lines())
    assert queue.get(kettle["id"]).status == "submitted" and queue.get(kettle["id"]).annotator == "ana"
    assert queue.get(parcel["id"]).status == "pending"  # a rejected row changes nothing


def test_a_row_not_filled_in_is_skipped_a_missing_annotator_rejected_and_a_reimport_unchanged(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = exported(path)
    rows[0]["output"] = right_answer(queue.get(rows[0]["id"]))
    rows[1]["output"] = right_answer(queue.get(rows[1]["id"]))
    rows[1]["annotator"] = "bo"
    fill(path, rows)
    first = queue.import_labels(path, SCHEMA)
    assert (len(first.accepted), first.skipped) == (1, 2)
    [(line, item_id, reason)] = first.rejected
    assert line == 1 and item_id == rows[0]["id"] and "--annotator" in reason
    again = queue.import_labels(path, SCHEMA)  # the same file twice: the accepted row is unchanged
    assert (again.unchanged, len(again.accepted)) == (0, 0) and "changed since the export" in again.rejected[-1].reason
    del rows[1]["version"]
    fill(path, rows)
    assert queue.import_labels(path, SCHEMA).unchanged == 1


def test_refusal_rules_on_import_expected_refuse_needs_the_exact_form(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = exported(path)
    toaster = next(r for r in rows if r["instruction"].startswith("Please cancel"))
    kettle = next(r for r in rows if r["instruction"].startswith("My kettle"))
    toaster.update(output=REFUSAL, annotator="ana")  # expected answer: the refusal is wrong here
    kettle.update(output='{"refusal": "not mine"}', expected="refuse", annotator="ana")  # not the schema's form
    fill(path, [toaster, kettle])
    result = queue.import_labels(path, SCHEMA)
    assert [r.id for r in result.rejected] == [toaster["id"], kettle["id"]]
    assert "this is a refusal" in result.rejected[0].reason
    assert "not the schema's refusal form" in result.rejected[1].reason
    kettle["output"] = REFUSAL
    fill(path, [kettle])
    assert len(queue.import_labels(path, SCHEMA).accepted) == 1
    [sample] = queue.accepted_samples()
    assert sample.expected == "refuse" and sample.output == REFUSAL


def test_custom_rules_from_the_project_apply_on_import(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = [r for r in exported(path) if r["instruction"].startswith("My kettle")]
    rows[0].update(output=text(MESSAGES[rows[0]["instruction"]][1]), annotator="ana")
    fill(path, rows)
    rule = LabelRule(field="product", enum=["toaster"], message="products come from the catalogue")
    [rejection] = queue.import_labels(path, SCHEMA, [rule]).rejected
    assert "products come from the catalogue" in rejection.reason


def test_import_rejects_a_label_whose_prompt_repeats_a_frozen_test_item(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    round_dir = traffic.dir / "data" / "rounds" / "r0001"
    kettle_message = next(iter(MESSAGES))
    write_samples(round_dir / "test.jsonl", [Sample(id="test-kettle", instruction=kettle_message + " !",
                                                    output=text(MESSAGES[kettle_message][1]))])
    write_samples(round_dir / "val.jsonl", [Sample(id="val-other", instruction="Something else entirely, my friend")])
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = exported(path)
    for row in rows:
        row.update(output=text(MESSAGES[row["instruction"]][1]), annotator="ana")
    fill(path, rows)
    result = queue.import_labels(path, SCHEMA, frozen=frozen_items(round_dir))
    [rejection] = result.rejected
    assert rejection.id == next(r["id"] for r in rows if r["instruction"] == kettle_message)
    assert "frozen test item test-kettle" in rejection.reason
    assert len(result.accepted) == 3


# -- two writers ---------------------------------------------------------------------------------------------
def test_two_writers_the_stale_save_is_a_conflict_that_carries_the_newer_row(traffic):
    traffic.queue.add_failures(traffic.failures)
    item_id = traffic.queue.items()[0].id
    with TraceStore(traffic.dir / "traces.db") as other_store:  # a second connection: another process's view
        first, second = RelabelQueue(traffic.store), RelabelQueue(other_store)
        read_by_first, read_by_second = first.get(item_id), second.get(item_id)
        answer = right_answer(read_by_first)
        saved = second.save(item_id, answer, read_by_second.version, "bo", status="draft")
        assert saved.version == read_by_first.version + 1
        with pytest.raises(QueueConflict) as conflict:
            first.save(item_id, '{"intent": "other"}', read_by_first.version, "ana", status="draft")
        newer = conflict.value.current
        assert (newer.version, newer.annotator, newer.label.output) == (saved.version, "bo", answer)
        assert "changed since version 1" in str(conflict.value)
        # the loser saves again on top of the newer row: nothing of either write is lost silently
        assert first.save(item_id, answer, newer.version, "ana", status="submitted").version == newer.version + 1


def test_submit_is_blocked_until_the_rules_pass_while_a_draft_always_saves(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    item = queue.items()[0]
    check = LabelCheck(SCHEMA)
    broken = '{"intent": "refund", "product": "N/A"'
    with pytest.raises(LabelRejected) as rejected:
        queue.save(item.id, broken, item.version, "ana", status="submitted", check=check)
    assert rejected.value.problems[0].field == "output" and queue.get(item.id).version == item.version
    draft = queue.save(item.id, broken, item.version, "ana", status="draft", check=check)
    assert draft.status == "draft" and draft.label.output == broken
    done = queue.save(item.id, right_answer(item), draft.version, "ana", status="submitted", check=check)
    assert done.status == "submitted"


def test_review_accepts_or_sends_back_and_nobody_reviews_their_own_label(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    item = queue.items()[0]
    done = queue.save(item.id, right_answer(item), item.version, "ana", status="submitted")
    with pytest.raises(QueueError, match="another person"):
        queue.review(item.id, done.version, "ana", accept=True)
    with pytest.raises(QueueError, match="say why"):
        queue.review(item.id, done.version, "rev", accept=False)
    back = queue.review(item.id, done.version, "rev", accept=False, comment="urgency is high")
    assert back.status == "draft" and back.comment == "urgency is high"
    again = queue.save(item.id, right_answer(item), back.version, "ana", status="submitted")
    reviewed = queue.review(item.id, again.version, "rev", accept=True)
    assert reviewed.status == "reviewed" and reviewed.reviewer == "rev"
    with pytest.raises(QueueConflict):
        queue.review(item.id, again.version, "rev", accept=True)


# -- what trains -------------------------------------------------------------------------------------------------
def test_accepted_samples_carry_lineage_cluster_annotator_and_the_wrong_answer(traffic, tmp_path):
    queue = traffic.queue
    queue.add_failures(traffic.failures, clustering_of(traffic.failures))
    for item in queue.items():
        queue.save(item.id, right_answer(item), item.version, "ana", status="submitted")
    refused = next(i for i in queue.items() if i.sample.rejected == REFUSAL)
    queue.review(refused.id, refused.version, "rev", accept=True)
    discard = next(i for i in queue.items() if i.id != refused.id)
    queue.save(discard.id, None, discard.version, "ana", status="discarded")
    samples = {s.lineage.source_id: s for s in queue.accepted_samples()}
    assert len(samples) == len(MESSAGES) - 1
    for message, trace_id in traffic.ids.items():
        if f"failure:{trace_id}" == discard.id:
            assert f"trace:{trace_id}" not in samples
            continue
        sample = samples[f"trace:{trace_id}"]
        assert sample.output == text(MESSAGES[message][1])
        assert sample.rejected == MESSAGES[message][0]  # the model's wrong answer: a DPO negative
        assert sample.meta.source == "traffic" and sample.meta.annotator == "ana"
        assert sample.lineage.augment_type == "relabel" and sample.lineage.parent_id == f"trace:{trace_id}"
        assert sample.cluster["name"] in ("parcels", "returns")
        assert sample.relabel["queue_id"] == f"failure:{trace_id}"
    boundary = samples[refused.sample.lineage.source_id]
    assert boundary.sample_type == "boundary" and boundary.meta.reviewer == "rev"
    assert {s.sample_type for s in samples.values()} <= {"boundary", "negative"}
    path, count = queue.write_relabeled(tmp_path / "data" / "traffic" / "relabeled.jsonl")
    assert count == len(samples) and {s.id for s in load_samples(path)} == {s.id for s in samples.values()}


def test_a_label_that_confirms_the_models_answer_makes_no_preference_pair(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    refused = next(i for i in queue.items() if i.sample.rejected == REFUSAL)
    queue.save(refused.id, {"output": REFUSAL, "expected": "refuse"}, refused.version, "ana", status="submitted")
    [sample] = queue.accepted_samples()
    assert sample.rejected is None and sample.expected == "refuse"


# -- proposals -------------------------------------------------------------------------------------------------
class ProposingModel:
    """A loopback chat-completions server that answers like a stronger model: right, fenced, or failing."""

    def __init__(self):
        self.requests: list[dict] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)

    async def complete(self, request: Request):
        body = await request.json()
        self.requests.append(body)
        if body["model"] == "locked":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        message = body["messages"][-1]["content"]
        if "hoodie" in message:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        answer = text(MESSAGES[message][1])
        if "parcel" in message:
            answer = "Here you go:\n```json\n" + answer + "\n```"
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture(scope="module")
def proposer():
    fake = ProposingModel()
    with serve_app(fake.app) as base:
        fake.base_url = base + "/v1"
        yield fake


def test_proposals_are_stored_beside_the_row_and_never_become_labels(traffic, proposer):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    endpoint = Endpoint(proposer.base_url, "strong", max_retries=0)
    result = queue.propose(endpoint, LabelCheck(SCHEMA), system=SYSTEM, sop="Absent values are null.")
    assert (result.asked, result.proposed, len(result.invalid), len(result.errors)) == (4, 2, 1, 1)
    assert "code fences" in result.invalid[0][1][0]  # the fenced answer is not stored
    assert "503" in result.errors[0][1]  # a failed request is an error, never a proposal
    proposed = [i for i in queue.items() if i.proposal]
    assert len(proposed) == 2 and all(i.proposed_by == f"strong at {proposer.base_url}" for i in proposed)
    assert all(i.status == "pending" and i.label is None for i in queue.items())
    assert queue.accepted_samples() == []
    request = proposer.requests[0]
    assert "Absent values are null." in request["messages"][0]["content"]
    assert "gets exactly this refusal: " + REFUSAL in request["messages"][0]["content"]
    assert request["messages"][-1]["content"] in MESSAGES and request["temperature"] == 0.0
    # a second run asks only for what has no proposal yet
    assert queue.propose(endpoint, LabelCheck(SCHEMA)).asked == 2
    # the export can carry proposals as outputs; importing them is the relabeler's decision
    path = traffic.dir / "export.jsonl"
    queue.export(path, prefill=True)
    rows = exported(path)
    assert sum(bool(r["output"]) for r in rows) == 2
    accepted = queue.import_labels(path, SCHEMA, annotator="ana")
    assert len(accepted.accepted) == 2 and accepted.skipped == 2
    assert {s.relabel["proposed_by"] for s in queue.accepted_samples()} == {f"strong at {proposer.base_url}"}


def test_an_endpoint_that_refuses_the_key_stops_before_any_proposal(traffic, proposer):
    traffic.queue.add_failures(traffic.failures)
    with pytest.raises(EndpointConfigError):
        traffic.queue.propose(Endpoint(proposer.base_url, "locked", max_retries=0), LabelCheck(SCHEMA))
    assert not any(i.proposal for i in traffic.queue.items())


# -- the command -----------------------------------------------------------------------------------------------
def test_loop_relabel_command_exports_imports_and_shows_the_status(tmp_path, monkeypatch):
    from tuneloop.cli.main import app
    from tuneloop.traces.select import failures_path, write_failures
    from tuneloop.project import Project

    (tmp_path / "ticket.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "tuneloop.yaml").write_text(f"task:\n  schema: ticket.schema.json\n  system: {SYSTEM}\n")
    project = Project.load(tmp_path)
    with TraceStore(project.traces_db) as store:
        record_traffic(store)
        write_failures(failures_path(project), select_failures(store, SCHEMA, LoopConfig(), system=SYSTEM).failures)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    export = tmp_path / "to-fill.jsonl"
    done = runner.invoke(app, ["loop", "relabel", "--export", str(export)])
    assert done.exit_code == 0, done.output
    assert "queued 4 new failures" in done.output and "4 open rows" in done.output
    rows = exported(export)
    rows[0]["output"] = text(MESSAGES[rows[0]["instruction"]][1])
    rows[1]["output"] = "N/A"
    fill(export, rows)
    done = runner.invoke(app, ["loop", "relabel", "--import", str(export), "--annotator", "ana"])
    assert done.exit_code == 1  # a rejected row fails the command, after the good one is in
    assert "accepted 1 + rejected 1 + unchanged 0 + skipped 2" in done.output
    assert f"{export}, line 2: {rows[1]['id']}:" in done.output
    status = runner.invoke(app, ["loop", "relabel", "--status"])
    assert status.exit_code == 0 and "submitted" in status.output and "queued 0 new failures" in status.output


def test_a_row_marked_discard_discards_the_item_and_is_counted(traffic):
    queue = traffic.queue
    queue.add_failures(traffic.failures)
    path = traffic.dir / "export.jsonl"
    queue.export(path)
    rows = exported(path)
    rows[0].update(discard=True, comment="not a failure: the user was testing")
    fill(path, rows)
    result = queue.import_labels(path, SCHEMA, annotator="ana")
    assert (result.discarded, result.skipped, len(result.accepted)) == (1, 3, 0)
    assert "discarded 1" in result.summary()
    item = queue.get(rows[0]["id"])
    assert (item.status, item.annotator, item.comment) == ("discarded", "ana", "not a failure: the user was testing")
    assert queue.export(path) == 3  # a discarded row no longer waits


def test_loop_relabel_propose_command_stores_proposals_and_fails_on_a_failed_request(tmp_path, monkeypatch, proposer):
    from tuneloop.cli.main import app
    from tuneloop.project import Project
    from tuneloop.traces.select import failures_path, write_failures

    (tmp_path / "ticket.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "tuneloop.yaml").write_text(f"task:\n  schema: ticket.schema.json\n  system: {SYSTEM}\n"
                                            "augment:\n  llm:\n    max_retries: 0\n")
    project = Project.load(tmp_path)
    with TraceStore(project.traces_db) as store:
        record_traffic(store)
        write_failures(failures_path(project), select_failures(store, SCHEMA, LoopConfig(), system=SYSTEM).failures)
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["loop", "relabel", "--propose", "--base-url", proposer.base_url, "--model", "strong"])
    assert done.exit_code == 1, done.output  # the hoodie request failed: an error, not a label
    assert "asked 4 = proposed 2 + invalid 1 + failed requests 1" in done.output
    assert "request failed:" in done.output
    with TraceStore(project.traces_db) as store:
        items = RelabelQueue(store).items()
    assert sum(bool(i.proposal) for i in items) == 2 and all(i.status == "pending" for i in items)
    missing = CliRunner().invoke(app, ["loop", "relabel", "--propose"], env={"TUNELOOP_LLM_BASE_URL": "",
                                                                            "TUNELOOP_LLM_MODEL": ""})
    assert missing.exit_code == 2 and "--base-url URL --model M" in missing.output
