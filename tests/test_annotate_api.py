"""The annotation tool's API: tokens and roles, the one label check before submit, conflicts between two clients,
no path out of the package's static folder, review, agreement, and exports the next round reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneloop.annotate.app import User, create_app
from tuneloop.annotate.queues import Queues
from tuneloop.data.io.formats import load_samples
from tuneloop.examples import init_example
from tuneloop.project import Project
from tuneloop.records import Meta, Sample
from tuneloop.traces.queue import RelabelQueue
from tuneloop.traces.store import TraceStore

ANN, BOB, REV = "ann-token-0123456789", "bob-token-0123456789", "rev-token-0123456789"
USERS = {ANN: User("ann", "annotator"), BOB: User("bob", "annotator"), REV: User("rev", "reviewer")}
GOOD = '{"intent": "refund", "product": "kettle", "order_id": "A123456", "urgency": "high", "refund_amount": 20}'
TRAFFIC_INPUT = "My kettle broke, order A123456. Refund 20 dollars please, it is urgent."


def traffic_sample(index: int = 0, text: str = TRAFFIC_INPUT) -> Sample:
    return Sample(id=f"fail-{index}", instruction="Extract the ticket fields as JSON.", input=text, output="",
                  rejected='Sure! {"intent": "refund"}', sample_type="golden",
                  meta={"source": "traffic", "task_type": "extraction"}, lineage={"source_id": f"trace:tr-{index}"})


def make_project(root: Path) -> tuple[Project, TraceStore]:
    """A demo project with its seed set queued, two traffic failures and one eval bad case."""
    init_example(root, size=30)
    project = Project.load(root)
    store = TraceStore(project.traces_db)
    Queues(project, store).add_seed_set()
    relabel = RelabelQueue(store)
    relabel.add_samples([traffic_sample(0), traffic_sample(1, "Where is my order B7654321? No rush.")], "traffic",
                        [["not JSON"], ["schema: intent"]])
    bad = traffic_sample(2, "The lamp arrived broken, order C1112223, refund 15.").model_copy(
        update={"id": "bad-1", "meta": Meta(source="eval:e1", task_type="extraction", difficulty="hard")})
    relabel.add_samples([bad], "eval:e1", [["wrong fields: intent"]])
    return project, store


@pytest.fixture
def project_store(tmp_path):
    project, store = make_project(tmp_path / "proj")
    yield project, store
    store.close()


@pytest.fixture
def client(project_store):
    project, store = project_store
    return TestClient(create_app(project, store, USERS))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def form(item: dict, **changes) -> dict:
    sample = item["sample"]
    out = {"instruction": sample["instruction"], "input": sample["input"], "output": sample["output"],
           "expected": sample["expected"], "sample_type": sample["sample_type"],
           "meta": {k: sample["meta"].get(k) for k in ("task_type", "difficulty", "domain")}, "comment": ""}
    out.update(changes)
    return out


def read(client: TestClient, kind: str, item_id: str, token: str = ANN) -> dict:
    response = client.get(f"/api/items/{kind}/{item_id}", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


def put(client: TestClient, item: dict, action: str, token: str = ANN, version: int | None = None, **changes):
    return client.put(f"/api/items/{item['kind']}/{item['id']}", headers=auth(token),
                      json={"action": action, "version": item["version"] if version is None else version,
                            "form": form(item, **changes)})


def test_every_api_route_needs_a_valid_token(client):
    routes = [("get", "/api/session"), ("get", "/api/items?queue=seed"), ("get", "/api/items/relabel/fail-0"),
              ("post", "/api/check"), ("post", "/api/preview"), ("put", "/api/items/relabel/fail-0"),
              ("post", "/api/review"), ("get", "/api/agreement"), ("get", "/api/export"),
              ("post", "/api/export/round")]
    for method, path in routes:
        for headers in ({}, auth("wrong-token-0123456789"), {"Authorization": ANN}, {"Authorization": "Bearer "}):
            response = getattr(client, method)(path, headers=headers, **({} if method == "get" else {"json": {}}))
            assert response.status_code == 401, (method, path, headers, response.status_code)
    session = client.get("/api/session", headers=auth(REV)).json()
    assert (session["user"], session["role"]) == ("rev", "reviewer")
    assert session["schema"]["properties"]["intent"]["enum"][0] == "refund"
    assert "What must be refused" in session["sop_headings"]


def test_roles_are_enforced_by_the_server(client):
    item = read(client, "relabel", "fail-0")
    assert put(client, item, "draft", token=REV, output=GOOD).status_code == 403  # a reviewer does not label
    review = {"kind": "relabel", "id": "fail-0", "version": item["version"], "verdict": "accept"}
    assert client.post("/api/review", headers=auth(ANN), json=review).status_code == 403
    assert client.get("/api/export?queue=relabel", headers=auth(ANN)).status_code == 403
    assert client.post("/api/export/round", headers=auth(BOB), json={"queue": "seed"}).status_code == 403
    assert read(client, "relabel", "fail-0")["version"] == item["version"]  # nothing changed


def test_static_files_come_from_the_package_folder_only(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    secret = Path(__file__).read_text()[:60]
    for path in ("/static/../app.py", "/static/..%2fapp.py", "/static/..%2Fqueues.py", "/static/%2e%2e/app.py",
                 "/static/%2e%2e%2f%2e%2e%2fproject.py", "/static/..%5capp.py", "/static/....//app.py",
                 "/static/%252e%252e%252fapp.py", "/static/", "/static/.", "/static/app.js%00.css",
                 "/../pyproject.toml", "/static//etc/passwd", "/static/%2Fetc%2Fpasswd",
                 "/api/items/seed/..%2F..%2Ftuneloop.yaml", "/api/items/..%2Fseed/x"):
        response = client.get(path, headers=auth(ANN))
        assert response.status_code in (401, 404), (path, response.status_code)
        assert "def create_app" not in response.text and "root:x:0" not in response.text and secret not in response.text


def test_submit_is_blocked_until_the_label_rules_pass_and_a_draft_always_saves(client):
    item = read(client, "relabel", "fail-0")
    bad = GOOD.replace('"A123456"', '"N/A"')
    checked = client.post("/api/check", headers=auth(ANN), json={"kind": "relabel", "id": "fail-0",
                                                                 "form": form(item, output=bad)}).json()
    assert [p["field"] for p in checked["problems"]] == ["output.order_id"]
    refused = put(client, item, "submit", output=bad)
    assert refused.status_code == 422
    assert refused.json()["problems"][0]["field"] == "output.order_id"
    assert read(client, "relabel", "fail-0")["status"] == "pending"  # the refused submit changed nothing
    draft = put(client, item, "draft", output=bad)
    assert draft.status_code == 200 and draft.json()["state"] == "Draft" and draft.json()["sample"]["output"] == bad
    fenced = put(client, draft.json(), "submit", output="```json\n" + GOOD + "\n```")
    assert fenced.status_code == 422 and fenced.json()["problems"][0]["rule"] == "noise"
    done = put(client, draft.json(), "submit", output=GOOD)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["annotator"], body["version"]) == ("Submitted", "ann", 3)


def test_a_refusal_sample_must_carry_the_schemas_refusal_form(client):
    item = read(client, "relabel", "fail-1")
    refused = put(client, item, "submit", output=GOOD, expected="refuse")
    assert refused.status_code == 422 and refused.json()["problems"][0]["rule"] == "refusal"
    refusal = '{"intent": "out_of_scope", "product": null, "order_id": null, "urgency": null, "refund_amount": null}'
    assert put(client, item, "submit", output=refusal, expected="refuse", sample_type="boundary").status_code == 200


def test_a_stale_save_is_a_conflict_with_the_newer_text_never_a_lost_update(project_store):
    project, store = project_store
    app = create_app(project, store, USERS)
    first, second = TestClient(app), TestClient(app)  # two browsers
    seen_by_ann = read(first, "relabel", "fail-0", ANN)
    seen_by_bob = read(second, "relabel", "fail-0", BOB)
    assert put(first, seen_by_ann, "draft", ANN, output=GOOD).status_code == 200
    stale = put(second, seen_by_bob, "draft", BOB, output=GOOD.replace("high", "low"))
    assert stale.status_code == 409
    newer = stale.json()["item"]
    assert newer["version"] == 2 and newer["sample"]["output"] == GOOD and newer["annotator"] == "ann"
    assert "changed since version 1" in stale.json()["detail"]
    assert RelabelQueue(store).get("fail-0").label.output == GOOD  # ann's label is still there
    # bob read the newer text: saving over that version is his informed choice
    assert put(second, newer, "draft", BOB, output=GOOD.replace("high", "low")).status_code == 200
    # a stale review is a conflict too
    review = {"kind": "relabel", "id": "fail-0", "version": 1, "verdict": "accept"}
    assert first.post("/api/review", headers=auth(REV), json=review).status_code in (400, 409)


def test_review_accepts_or_rejects_with_a_comment_and_keeps_who_and_when(client):
    item = put(client, read(client, "relabel", "fail-0"), "submit", output=GOOD).json()
    queue = client.get("/api/items?queue=review", headers=auth(REV)).json()
    assert [i["id"] for i in queue["items"]] == ["fail-0"]
    base = {"kind": "relabel", "id": "fail-0", "version": item["version"]}
    no_reason = client.post("/api/review", headers=auth(REV), json={**base, "verdict": "reject"})
    assert no_reason.status_code == 400 and "say why" in no_reason.json()["detail"]
    rejected = client.post("/api/review", headers=auth(REV), json={**base, "verdict": "reject",
                                                                   "comment": "urgency is medium"}).json()
    assert (rejected["state"], rejected["comment"], rejected["reviewer"]) == ("Draft", "urgency is medium", "rev")
    again = put(client, rejected, "submit", output=GOOD.replace("high", "medium")).json()
    accepted = client.post("/api/review", headers=auth(REV), json={**base, "version": again["version"],
                                                                   "verdict": "accept"}).json()
    assert (accepted["state"], accepted["reviewer"], accepted["annotator"]) == ("Reviewed", "rev", "ann")
    assert accepted["updated_at"] >= accepted["created_at"] > 0
    assert [label["annotator"] for label in accepted["labels"]] == ["ann", "ann"]  # every submitted label kept


def test_queues_and_filters(client):
    def ids(**params):
        response = client.get("/api/items", params=params, headers=auth(ANN))
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert ids(queue="relabel") == ["fail-0", "fail-1"]
    assert ids(queue="bad-cases") == ["bad-1"]
    seed = client.get("/api/items?queue=seed", headers=auth(ANN)).json()
    assert seed["total"] > 20 and set(seed["facets"]["sample_type"]) <= {"golden", "negative", "boundary", "generic"}
    boundary = ids(queue="seed", sample_type="boundary")
    assert boundary and all(i["sample_type"] == "boundary" for i in client.get(
        "/api/items", params={"queue": "seed", "sample_type": "boundary"}, headers=auth(ANN)).json()["items"])
    assert ids(queue="bad-cases", difficulty="hard") == ["bad-1"] and ids(queue="bad-cases", difficulty="easy") == []
    assert client.get("/api/items?queue=nope", headers=auth(ANN)).status_code == 400
    assert client.get("/api/items?queue=seed&colour=red", headers=auth(ANN)).status_code == 400
    assert client.get("/api/items/relabel/no-such-id", headers=auth(ANN)).status_code == 404
    assert client.get("/api/items/nokind/fail-0", headers=auth(ANN)).status_code == 404


def test_metadata_and_prompt_edits_are_kept_on_the_label(client, project_store):
    item = read(client, "seed", "seed-0001")
    queued = item["sample"]["meta"]["difficulty"]
    assert queued != "hard"
    fixed_input = item["sample"]["input"] + " "
    saved = put(client, item, "draft", instruction=item["sample"]["instruction"], input=fixed_input,
                meta={"task_type": "extraction", "difficulty": "hard", "domain": "kitchen"}).json()
    assert saved["sample"]["input"] == fixed_input
    assert (saved["sample"]["meta"]["difficulty"], saved["sample"]["meta"]["domain"]) == ("hard", "kitchen")
    assert saved["queued_sample"]["meta"]["difficulty"] == queued  # the queued sample is kept as it came


def test_export_is_alpaca_with_metadata_and_lineage_and_the_loop_reads_the_queue(client, project_store):
    project, store = project_store
    put(client, read(client, "relabel", "fail-0"), "submit", output=GOOD)
    response = client.get("/api/export?queue=relabel", headers=auth(REV))
    assert response.status_code == 200
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert (row["instruction"], row["input"], row["output"]) == ("Extract the ticket fields as JSON.", TRAFFIC_INPUT, GOOD)
    assert (row["meta"]["annotator"], row["meta"]["source"], row["expected"]) == ("ann", "traffic", "answer")
    assert (row["lineage"]["source_id"], row["lineage"]["augment_type"]) == ("trace:tr-0", "relabel")
    assert row["rejected"] == 'Sure! {"intent": "refund"}'  # the model's wrong answer: a DPO negative
    # what `tuneloop loop` reads (its traffic split stage): the queue's accepted samples
    accepted = RelabelQueue(store).accepted_samples()
    assert [(s.input, s.output, s.meta.annotator) for s in accepted] == [(TRAFFIC_INPUT, GOOD, "ann")]
    assert client.get("/api/export?queue=bad-cases", headers=auth(REV)).text == ""
    into = client.post("/api/export/round", headers=auth(REV), json={"queue": "relabel"}).json()
    assert into["accepted"] == 1 and "tuneloop loop" in into["next"]


def other_urgency(output: str) -> str:
    answer = json.loads(output)
    answer["urgency"] = "high" if answer["urgency"] != "high" else "low"
    return json.dumps(answer, ensure_ascii=False)


def answer_seeds(client: TestClient) -> list[str]:
    items = client.get("/api/items?queue=seed", headers=auth(ANN)).json()["items"]
    return [i["id"] for i in items if i["expected"] == "answer" and '"urgency": null' not in
            read(client, "seed", i["id"])["sample"]["output"]]


def test_the_seed_set_goes_into_the_next_round_whole_with_its_corrections(client, project_store):
    project, store = project_store
    first, second = answer_seeds(client)[:2]
    seed = read(client, "seed", first)
    corrected = other_urgency(seed["sample"]["output"])
    assert put(client, seed, "submit", output=corrected).status_code == 200
    assert put(client, read(client, "seed", second), "discard").status_code == 200
    written = client.post("/api/export/round", headers=auth(REV), json={"queue": "seed"}).json()
    counts = written["counts"]
    rows = load_samples(written["path"])
    in_sources = len(load_samples(project.path(project.config.data.sources[0].path)))
    assert counts["rows"] == counts["corrected"] + counts["discarded"] + counts["unchanged"] == len(rows) + 1 == in_sources
    assert (counts["corrected"], counts["discarded"]) == (1, 1)
    by_id = {s.id: s for s in rows}
    assert by_id[first].output == corrected and by_id[first].meta.annotator == "ann"
    assert by_id[first].lineage == RelabelQueue(store, "seed_queue").get(first).sample.lineage  # the same row
    assert second not in by_id
    assert RelabelQueue(store).accepted_samples() == []  # seed labels never reach the loop as traffic


def test_agreement_of_two_annotators_on_a_shared_sample(client):
    first, second = answer_seeds(client)[:2]
    ann = put(client, read(client, "seed", first), "submit", ANN).json()
    assert put(client, ann, "submit", BOB, output=other_urgency(ann["sample"]["output"])).status_code == 200
    put(client, read(client, "seed", second), "submit", ANN)
    put(client, read(client, "seed", second), "submit", BOB)
    report = client.get("/api/agreement", headers=auth(REV)).json()
    assert report["shared_samples"] == 2
    (pair,) = report["pairs"]
    assert pair["annotators"] == ["ann", "bob"] and pair["shared"] == 2 and pair["exact"] == 0.5
    assert pair["fields"]["urgency"]["agree"] == 1 and pair["fields"]["order_id"]["agree"] == 2
    assert pair["fields"]["urgency"]["kappa"] is not None and pair["fields"]["expected"]["kappa"] is None


def test_a_request_without_its_version_or_form_is_refused(client):
    item = read(client, "relabel", "fail-0")
    for body in ({"action": "draft", "form": form(item)}, {"action": "draft", "version": "1", "form": form(item)},
                 {"action": "draft", "version": 1}, {"action": "publish", "version": 1, "form": form(item)}):
        assert client.put("/api/items/relabel/fail-0", headers=auth(ANN), json=body).status_code == 400, body


def test_the_prompt_preview_is_the_training_template(project_store):
    from tuneloop.testing.tiny import build_tiny_tokenizer
    from tuneloop.train.templates import prompt_text

    project, store = project_store
    tokenizer = build_tiny_tokenizer()
    client = TestClient(create_app(project, store, USERS, tokenizer=tokenizer))
    item = read(client, "relabel", "fail-0")
    edited = form(item, input="Edited <b>message</b>")
    shown = client.post("/api/preview", headers=auth(ANN), json={"kind": "relabel", "id": "fail-0", "form": edited})
    assert shown.status_code == 200
    sample = RelabelQueue(store).get("fail-0").sample.model_copy(update={"input": "Edited <b>message</b>"})
    assert shown.json()["prompt"] == prompt_text(tokenizer, sample, default_system=project.config.task.system)
    assert shown.json()["prompt"].startswith("<|im_start|>system\nYou extract ticket fields as JSON.<|im_end|>")


def test_a_seed_row_repeating_an_id_is_one_item_and_every_copy_is_written_back(tmp_path):
    root = tmp_path / "proj"
    init_example(root, size=30)
    project = Project.load(root)
    seed_file = project.path(project.config.data.sources[0].path)
    lines = seed_file.read_text().splitlines()
    seed_file.write_text("\n".join(lines + [lines[0], "{not json"]) + "\n")  # a repeated row and a broken one
    with TraceStore(project.traces_db) as store:
        queues = Queues(project, store)
        added, notes = queues.add_seed_set()
        assert added == len(lines) and any("repeat another row's id" in n for n in notes)
        assert any("do not read as samples" in n for n in notes)
        written = queues.write_seed_set()
    counts = written["counts"]
    assert counts["rows"] == len(lines) + 2 == counts["unchanged"] + counts["unreadable"]
    assert len(load_samples(written["path"])) == len(lines) + 1  # the repeated row too: rows are never lost


def test_a_frozen_test_prompt_blocks_a_traffic_label_but_a_seed_may_be_corrected(project_store):
    from tuneloop.data.io.formats import write_samples

    project, store = project_store
    seed = RelabelQueue(store, "seed_queue").get("seed-0001").sample
    frozen = traffic_sample(0).model_copy(update={"id": "test-1", "output": GOOD})
    round_dir = project.rounds_dir / "r0001"
    write_samples(round_dir / "test.jsonl", [frozen, seed])  # a traffic prompt and a seed row frozen in test
    (round_dir / "manifest.json").write_text("{}")
    client = TestClient(create_app(project, store, USERS))
    traffic = put(client, read(client, "relabel", "fail-0"), "submit", output=GOOD)
    assert traffic.status_code == 422 and traffic.json()["problems"][-1]["rule"] == "frozen"
    item = read(client, "seed", "seed-0001")
    assert put(client, item, "submit").status_code == 200, "a frozen seed row is corrected in place"


def test_a_reviewers_reason_stays_until_the_annotator_writes_another(client):
    item = put(client, read(client, "relabel", "fail-0"), "submit", output=GOOD).json()
    rejected = client.post("/api/review", headers=auth(REV), json={"kind": "relabel", "id": "fail-0", "version":
                                                                   item["version"], "verdict": "reject",
                                                                   "comment": "order id is wrong"}).json()
    draft = put(client, rejected, "draft", output=GOOD).json()
    assert draft["comment"] == "order id is wrong"
    assert put(client, draft, "draft", output=GOOD, comment="fixed it").json()["comment"] == "fixed it"
