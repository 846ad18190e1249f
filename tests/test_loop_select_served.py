"""`loop select` on traffic the embedded server really traced (tiny model): what the server writes is what select
reads, feedback sent through POST /v1/feedback counts as user feedback. Loads torch: run under the torch lock."""

from __future__ import annotations

import httpx
import openai
import pytest

from tuneloop.data.gate.pii import Redactor
from tuneloop.project import LoopConfig
from tuneloop.serve.server import serve_in_background
from tuneloop.traces.select import select_failures
from tuneloop.traces.store import TraceStore

SCHEMA = {"type": "object", "properties": {"intent": {"type": "string", "enum": ["refund", "address_change"]}},
          "required": ["intent"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("served") / "traces.db"
    with serve_in_background(tiny_model_dir, store, model_name="tiny") as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

        def ask(prompt: str, **options):
            return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                  temperature=1.0, seed=1, **options)

        good = ask("Refund order A-1", response_format=FORMAT, max_tokens=40)
        disliked = ask("Move order A-2 to my new address", response_format=FORMAT, max_tokens=40)
        prose = ask("Refund order A-3, call me on 13812345678", max_tokens=12)
        sent = httpx.post(base_url + "/feedback", json={"trace_id": disliked.id, "score": 0, "comment": "wrong"})
        assert sent.status_code == 200, sent.text
        yield store, {"good": good, "disliked": disliked, "prose": prose}


def test_served_traffic_becomes_failures_with_the_servers_own_fields(served):
    path, answers = served
    with TraceStore(path) as store:
        selection = select_failures(store, SCHEMA, LoopConfig())
    found = {f.trace_id: f for f in selection.failures}
    assert answers["good"].id not in found  # schema-constrained and nobody complained
    assert found[answers["disliked"].id].reasons == ["negative feedback"]
    prose = found[answers["prose"].id]
    assert prose.reasons[0] == "not JSON"
    if answers["prose"].choices[0].finish_reason == "length":
        assert prose.reasons[-1] == "cut by length"
    assert prose.sample.instruction == "Refund order A-3, call me on [PHONE_1]"
    assert prose.sample.rejected == Redactor().json_text(answers["prose"].choices[0].message.content)
    assert prose.model == "tiny" and prose.source_id == f"store:{answers['prose'].id}"
    assert selection.counts == {"traces": 3, "failures": 2, "passed": 1, "smoke": 0, "duplicates": 0, "errors": 0,
                                "unreadable": 0}
