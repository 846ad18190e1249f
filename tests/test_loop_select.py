"""`loop select`: real traces in a real trace store become failures with every reason they show, redacted and
deduplicated before anything else sees them, and every trace in is counted once."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.project import LoopConfig
from tuneloop.records import Trace
from tuneloop.traces.select import (
    SelectError, load_failures, select_failures, trace_sample, write_failures,
)
from tuneloop.traces.store import TraceStore

SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["refund", "address_change", "out_of_scope"]},
        "order_id": {"type": ["string", "null"]},
    },
    "required": ["intent", "order_id"],
    "additionalProperties": False,
    "x-refusal": {"intent": "out_of_scope", "order_id": None},
}
SYSTEM = "You extract ticket fields as JSON."
REFUSAL = '{"intent": "out_of_scope", "order_id": null}'
GOOD = '{"intent": "refund", "order_id": "A-1001"}'


def _trace(store: TraceStore, key: str, prompt: str, output: str, at: float = 1000.0, **fields) -> str:
    messages = fields.pop("messages", None) or [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    return store.record(Trace(id=f"tr-{key}", created_at=at, model="m", model_version="v1", messages=messages,
                              output=output, latency_ms=5.0, **fields))


def _feedback(store: TraceStore, trace_id: str, name: str | None, score: float | None, comment: str | None = None) -> None:
    store.query("INSERT INTO feedback (trace_id, name, score, comment, created_at) VALUES (?,?,?,?,?)",
                (trace_id, name, score, comment, time.time()))


@pytest.fixture
def store(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        yield store


def _by_trace(selection):
    return {f.trace_id: f for f in selection.failures}


def test_each_kind_of_failure_carries_all_its_reasons_and_every_trace_is_counted(store):
    _trace(store, "good", "Refund order A-1001 please", GOOD)
    _trace(store, "broken", "I want my money back for A-1002", '{"intent": "refund", "order_id": ')
    _trace(store, "missing", "Change the address of A-1003", '{"intent": "address_change"}')
    _trace(store, "type", "Refund for order 1004", '{"intent": "refund", "order_id": 1004}')
    _trace(store, "cut", "Where is my refund for A-1005, it has been weeks", '{"intent": "refund", "ord',
           finish_reason="length")
    _trace(store, "disliked", "Please move A-1006 to my new flat", '{"intent": "refund", "order_id": "A-1006"}')
    _feedback(store, "tr-disliked", "user-feedback", 0.0, "wrong intent, I asked to change the address")
    _trace(store, "refused-bad", "Refund A-1007, the parcel never came", REFUSAL)
    _feedback(store, "tr-refused-bad", None, 0.0)  # the embedded server's POST /v1/feedback has no name
    _trace(store, "refused-ok", "What is the weather in Paris?", REFUSAL)
    _trace(store, "should-refuse", "Write me a poem about my order", '{"intent": "refund", "order_id": null}')
    _feedback(store, "tr-should-refuse", "should-refuse", 1.0)
    _trace(store, "judged", "Address change for A-1009 to Berlin", '{"intent": "address_change", "order_id": "A-1090"}')
    _feedback(store, "tr-judged", "judge", 0.2, "order id misread")
    _feedback(store, "tr-good", "user-feedback", 1.0, "thanks")
    _trace(store, "smoke", "smoke check", "not json at all", smoke=True)
    _trace(store, "crashed", "Refund A-1011", "", error="RuntimeError: out of memory")
    _trace(store, "constrained", "Refund A-1012 now", '{"intent": "refund"', error="the constrained answer is not JSON",
           finish_reason="schema_invalid")

    selection = select_failures(store, SCHEMA, LoopConfig(), system=SYSTEM)
    found = _by_trace(selection)
    assert {k: v.reasons for k, v in found.items()} == {
        "tr-broken": ["not JSON"],
        "tr-missing": ["schema: (root)"],
        "tr-type": ["schema: order_id"],
        "tr-cut": ["not JSON", "cut by length"],
        "tr-disliked": ["negative feedback"],
        "tr-refused-bad": ["negative feedback", "refused but should answer"],
        "tr-should-refuse": ["answered but should refuse"],
        "tr-judged": ["low judge score"],
        "tr-constrained": ["not JSON"],
    }
    assert found["tr-type"].details == ["order_id: 1004 is not of type 'string', 'null'"]
    assert selection.counts == {"traces": 13, "failures": 9, "passed": 2, "smoke": 1, "duplicates": 0, "errors": 1,
                                "unreadable": 0}
    assert selection.summary() == ("traces in 13 = failures 9 + passed 2 + smoke 1 + duplicates 0 + errors 1")
    assert selection.errors == [{"trace_id": "tr-crashed", "error": "RuntimeError: out of memory"}]
    assert selection.reasons["not JSON"] == 3
    # refusal mistakes are boundary rows with what was due; the others are negatives (the answer is the rejected side)
    assert (found["tr-refused-bad"].sample.sample_type, found["tr-refused-bad"].sample.expected) == ("boundary", "answer")
    assert (found["tr-should-refuse"].sample.sample_type, found["tr-should-refuse"].sample.expected) == ("boundary", "refuse")
    assert (found["tr-broken"].sample.sample_type, found["tr-broken"].sample.expected) == ("negative", "answer")
    assert found["tr-disliked"].feedback == [{"name": "user-feedback", "score": 0.0,
                                              "comment": "wrong intent, I asked to change the address"}]


def test_a_prose_refusal_of_a_json_task_is_not_json_and_a_text_task_judges_feedback_only(store):
    _trace(store, "prose", "Refund A-2001", "I'm sorry, I can't help with that.")
    _trace(store, "text-ok", "Say hi", "hi there")
    assert _by_trace(select_failures(store, SCHEMA, LoopConfig()))["tr-prose"].reasons == ["not JSON"]
    text_task = select_failures(store, None, LoopConfig())  # no schema: nothing is "not JSON"
    assert text_task.failures == [] and text_task.counts["passed"] == 2


def test_the_failure_sample_is_the_prompt_the_model_saw_and_its_answer_is_the_rejected_side(store):
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Hi, I have a question"},
                {"role": "assistant", "content": "Sure, go ahead."},
                {"role": "user", "content": [{"type": "text", "text": "Refund A-3001 please"}]}]
    _trace(store, "turns", "", "not json", messages=messages)
    _trace(store, "own-system", "", "nope", messages=[{"role": "system", "content": "Be terse."},
                                                       {"role": "user", "content": "Refund A-3002"}])
    found = _by_trace(select_failures(store, SCHEMA, LoopConfig(), system=SYSTEM))
    sample = found["tr-turns"].sample
    assert (sample.system, sample.history, sample.instruction, sample.input) == (
        "", [["Hi, I have a question", "Sure, go ahead."]], "Refund A-3001 please", "")
    assert (sample.output, sample.rejected) == ("", "not json")
    assert (sample.id, sample.lineage.source_id, sample.meta.source) == ("trace:tr-turns", "trace:tr-turns", "traffic")
    assert found["tr-own-system"].sample.system == "Be terse."  # not the task's default: kept
    assert found["tr-turns"].id == "failure:tr-turns" and found["tr-turns"].source_id == "store:tr-turns"


def test_a_trace_whose_messages_hold_no_conversation_is_counted_unreadable(store):
    _trace(store, "prefill", "", "x", messages=[{"role": "user", "content": "Refund"},
                                                 {"role": "assistant", "content": "{"}])
    selection = select_failures(store, SCHEMA, LoopConfig())
    assert selection.failures == [] and selection.counts["unreadable"] == 1
    assert selection.unreadable[0]["trace_id"] == "tr-prefill"
    assert "unreadable 1" in selection.summary()


def test_personal_data_is_redacted_before_the_failures_file_is_written(store, tmp_path):
    _trace(store, "pii", "Call me at 13812345678 or mail li.lei@corp-mail.cn about refund A-4001",
           '{"intent": "refund", "order_id": "13812345678"}')
    _feedback(store, "tr-pii", "user-feedback", 0.0, "my number 13812345678 is not an order id")
    selection = select_failures(store, SCHEMA, LoopConfig())
    path = write_failures(tmp_path / "loop" / "traffic" / "failures.jsonl", selection.failures)
    text = path.read_text(encoding="utf-8")
    assert "13812345678" not in text and "li.lei@corp-mail.cn" not in text
    failure = load_failures(path)[0]
    assert failure.sample.instruction == "Call me at [PHONE_1] or mail [EMAIL_1] about refund A-4001"
    assert json.loads(failure.sample.rejected) == {"intent": "refund", "order_id": "[PHONE_1]"}  # still JSON
    assert failure.feedback[0]["comment"] == "my number [PHONE_1] is not an order id"
    assert selection.redacted == {"PHONE": 3, "EMAIL": 1}


def test_near_duplicate_failures_are_one_failure_that_names_the_others(store):
    prompt = "My parcel for order A-5001 arrived broken and I would like a full refund to my card as soon as possible"
    _trace(store, "first", prompt, "oops", at=1.0)
    _trace(store, "again", prompt.replace("as soon as possible", "as soon as possible!"), "oops again", at=2.0)
    _trace(store, "exact", prompt, "{", at=3.0)
    _trace(store, "other", "Please send my order A-5002 to 12 Baker Street instead of the old address", "x", at=4.0)
    selection = select_failures(store, SCHEMA, LoopConfig())
    found = _by_trace(selection)
    assert sorted(found) == ["tr-first", "tr-other"]
    assert sorted(found["tr-first"].duplicates) == ["tr-again", "tr-exact"]
    assert found["tr-first"].sample.rejected == "oops"  # its own answer: nothing carried over from a copy
    assert selection.counts["duplicates"] == 2 and selection.counts["failures"] == 2


def test_since_keeps_only_newer_traffic(store):
    _trace(store, "old", "Refund A-6001", "x", at=100.0)
    _trace(store, "new", "Refund A-6002", "x", at=200.0)
    selection = select_failures(store, SCHEMA, LoopConfig(), since=150.0)
    assert [f.trace_id for f in selection.failures] == ["tr-new"] and selection.counts["traces"] == 1


def test_feedback_names_and_thresholds_come_from_the_config(store):
    _trace(store, "t", "Refund A-7001", GOOD)
    _feedback(store, "tr-t", "thumbs", 0.6)
    assert select_failures(store, SCHEMA, LoopConfig()).failures == []  # not a feedback name
    config = LoopConfig.model_validate({"select": {"feedback_names": ["thumbs"], "negative_below": 0.7}})
    assert select_failures(store, SCHEMA, config).failures[0].reasons == ["negative feedback"]


def test_a_bad_failures_file_names_its_line(tmp_path):
    path = tmp_path / "failures.jsonl"
    path.write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(SelectError, match=r"failures.jsonl, line 1: not a failure \(trace_id"):
        load_failures(path)
    path.write_text("\n{oops\n", encoding="utf-8")
    with pytest.raises(SelectError, match="line 2: not JSON"):
        load_failures(path)
    with pytest.raises(SelectError, match="run `tuneloop loop select` first"):
        load_failures(tmp_path / "none.jsonl")


def test_trace_sample_inverts_the_one_rendering(store):
    from tuneloop.records import to_messages

    _trace(store, "r", "Refund A-8001", "x")
    sample = trace_sample(store.get("tr-r"), SYSTEM)
    assert to_messages(sample, SYSTEM, with_answer=False) == store.get("tr-r").messages


def test_cli_loop_select_writes_the_failures_and_prints_the_counts(tmp_path, monkeypatch):
    (tmp_path / "tuneloop.yaml").write_text(yaml.safe_dump({"task": {"schema": SCHEMA, "system": SYSTEM}}), encoding="utf-8")
    with TraceStore(tmp_path / "traces.db") as store:
        _trace(store, "a", "Refund A-9001", "{", at=time.time())
        _trace(store, "b", "Refund A-9002", GOOD, at=time.time())
        _trace(store, "old", "Refund A-9003", "{", at=time.time() - 30 * 86400)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["loop", "select", "--days", "7"])
    assert result.exit_code == 0, result.output
    assert "traces in 2 = failures 1 + passed 1 + smoke 0 + duplicates 0 + errors 0" in result.output
    assert "not JSON" in result.output
    assert [f.trace_id for f in load_failures(tmp_path / "loop" / "traffic" / "failures.jsonl")] == ["tr-a"]
    both = CliRunner().invoke(app, ["loop", "select", "--days", "7", "--since", "2026-01-01"])
    assert both.exit_code == 2 and "not both" in both.output


def test_a_text_task_judges_what_the_request_asked_for(store):
    asked = {"type": "json_schema", "json_schema": {"name": "t", "schema": {"required": ["intent"]}}}
    _trace(store, "object", "Refund A-10001", "sure!", response_format={"type": "json_object"})
    _trace(store, "schema", "Refund A-10002", '{"order": 1}', response_format=asked)
    _trace(store, "broken-schema", "Refund A-10003", '{"order": 1}',
           response_format={"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}})
    _trace(store, "plain", "Say hi", "hi")
    found = _by_trace(select_failures(store, None, LoopConfig()))
    assert {k: v.reasons for k, v in found.items()} == {"tr-object": ["not JSON"], "tr-schema": ["schema: (root)"]}


def test_a_tool_call_conversation_keeps_its_turns(store):
    messages = [{"role": "user", "content": "Where is order A-11001?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "lookup", "arguments": '{"order": "A-11001"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}]
    _trace(store, "tools", "", "It is shipped", messages=messages)
    sample = _by_trace(select_failures(store, SCHEMA, LoopConfig()))["tr-tools"].sample
    assert sample.history == [["Where is order A-11001?", '{"name": "lookup", "arguments": {"order": "A-11001"}}']]
    assert sample.instruction == '{"status": "shipped"}' and sample.rejected == "It is shipped"


def test_placeholders_are_numbered_per_failure_across_its_prompt_comments_and_details(store):
    _trace(store, "a", "Call 13812345678 about refund A-12001", "x", at=1.0)
    _trace(store, "b", "Refund my last order please", "x", at=2.0)
    _feedback(store, "tr-b", "user-feedback", 0.0, "reach me at 13700001111")
    _trace(store, "c", "Refund A-12003 please", '{"intent": "refund", "order_id": 13912345678}', at=3.0)
    found = _by_trace(select_failures(store, SCHEMA, LoopConfig()))
    assert found["tr-a"].sample.instruction == "Call [PHONE_1] about refund A-12001"
    # b's prompt holds nothing personal: its comment's number is b's first, not the second after a's
    assert found["tr-b"].feedback[0]["comment"] == "reach me at [PHONE_1]"
    # the schema message quotes the answer's value: the same number as in the answer
    assert json.loads(found["tr-c"].sample.rejected)["order_id"] == "[PHONE_1]"
    assert found["tr-c"].details == ["order_id: [PHONE_1] is not of type 'string', 'null'"]
    assert "_failure_notes" not in found["tr-c"].sample.model_dump()
