"""The annotation page in a real browser (Debian's chromium, headless, driven by Playwright): label a traffic failure
field by field with the keyboard, see the rule check block the submit, fix it, review it, find it in the export;
payloads in every field stay text; a stale save shows the conflict and the newer text."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.test_annotate_api import ANN, REV, TRAFFIC_INPUT, USERS, make_project, traffic_sample
from tuneloop.annotate.app import create_app
from tuneloop.records import Meta
from tuneloop.traces.queue import RelabelQueue

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it); no browser is ever downloaded"),
    pytest.mark.slow,  # about 21 s for the file on a 2-core box (a real browser, the tiny tokenizer's torch import)
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements/lock.txt)")


class ServerThread:
    """The app on 127.0.0.1, a free port, in a thread of the test process."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the annotation app did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny model's tokenizer (ChatML): the preview renders with it, as it would with the project model's."""
    from tuneloop.testing.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def served(tmp_path, tokenizer):
    project, store = make_project(tmp_path / "proj")
    with ServerThread(create_app(project, store, USERS, tokenizer=tokenizer)) as url:
        yield url, project, store
    store.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def open_page(browser, url: str, token: str, dialogs: list[str]):
    page = browser.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    # the page keeps to its own Content-Security-Policy: a refused script, style or request shows up here
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{url}/#token={token}")
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    page.errors = errors
    assert errors == [], errors
    assert "token=" not in page.url  # the token leaves the address bar
    return page


def open_item(page, queue: str, item_id: str) -> None:
    page.click(f"nav#queues button[data-queue='{queue}']")
    page.wait_for_selector(f"#items li[data-id='{item_id}']")
    page.click(f"#items li[data-id='{item_id}']")
    page.wait_for_selector(f"#editor code:text-is('{item_id}')")


def test_label_with_the_keyboard_fix_what_the_rules_say_review_and_export(served, browser):
    url, project, store = served
    dialogs: list[str] = []
    page = open_page(browser, url, ANN, dialogs)
    open_item(page, "relabel", "fail-0")
    page.keyboard.press("j")  # next sample, then back
    page.wait_for_selector("#items li.current[data-id='fail-1']")
    page.wait_for_selector("#editor code:text-is('fail-1')")
    page.keyboard.press("k")
    page.wait_for_selector("#editor code:text-is('fail-0')")
    assert 'Sure! {"intent": "refund"}' in page.inner_text(".model-answer")  # the model's answer beside the form
    assert "What must be refused" in page.inner_text("#tab-sop")
    page.keyboard.press("Escape")
    page.keyboard.press("1")  # digit: the first label of the first enum field (intent)
    assert page.input_value("select[aria-label='output.intent']") == "0"
    page.fill("input[aria-label='output.product']", "kettle")
    page.fill("input[aria-label='output.order_id']", "N/A")
    page.select_option("select[aria-label='output.urgency']", label="3 · high")
    page.fill("input[aria-label='output.refund_amount']", "20")
    problem = page.wait_for_selector(".field[data-path='output.order_id'] .problem")
    assert "absent value" in problem.inner_text()
    assert page.is_disabled("#submit")
    page.keyboard.press("Control+Enter")  # blocked: the banner says so, nothing is saved
    page.wait_for_selector("#banner:has-text('Submit is blocked')")
    assert RelabelQueue(store).get("fail-0").status == "pending"
    page.fill("input[aria-label='output.order_id']", "A123456")
    page.wait_for_selector(".field[data-path='output.order_id'] .problem", state="detached")
    page.wait_for_selector("#problems li.ok")
    raw = page.input_value("#raw-json")
    assert json.loads(raw) == {"intent": "refund", "product": "kettle", "order_id": "A123456", "urgency": "high",
                               "refund_amount": 20}
    page.click(".tabs button[data-tab='preview']")
    preview = page.inner_text("#preview")
    assert preview.startswith("<|im_start|>system\nYou extract ticket fields as JSON.<|im_end|>")
    assert preview.endswith(f"{TRAFFIC_INPUT}<|im_end|>\n<|im_start|>assistant\n")
    page.focus("#raw-json")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#editor .state-Submitted")
    item = RelabelQueue(store).get("fail-0")
    assert (item.status, item.annotator, item.label.output) == ("submitted", "ann", raw)

    reviewer = open_page(browser, url, REV, dialogs)
    reviewer.wait_for_selector("#items li[data-id='fail-0']")  # the review queue opens first for a reviewer
    reviewer.click("#items li[data-id='fail-0']")
    reviewer.click("#accept")
    reviewer.wait_for_selector("#editor .state-Reviewed")
    reviewer.click(".tabs button[data-tab='export']")
    reviewer.select_option("#export-queue", "relabel")
    reviewer.click("#export-show")
    reviewer.wait_for_selector("#export-text:has-text('A123456')")
    row = json.loads(reviewer.inner_text("#export-text").splitlines()[0])
    assert (row["output"], row["meta"]["annotator"], row["meta"]["reviewer"]) == (raw, "ann", "rev")
    assert [s.output for s in RelabelQueue(store).accepted_samples()] == [raw]  # what `tuneloop loop` reads
    assert dialogs == [] and page.errors == [] and reviewer.errors == []

    # the next round: the cycle's traffic split and the project's gate put the reviewed row into train
    from tuneloop.data.gate.round import run_gate
    from tuneloop.data.io.formats import load_samples
    from tuneloop.loop import Round
    from tuneloop.loop_intake import traffic_split
    from tuneloop.loop_traffic import CycleOptions

    split = traffic_split(Round(project, CycleOptions(), say=lambda line: None))
    assert split["counts"]["train"] == 1
    result = run_gate(project, progress=False, tokenizer=None)
    trained = [s for s in load_samples(result.round_dir / "train.jsonl") if s.meta.source == "traffic"]
    assert [(s.output, s.meta.annotator, s.meta.reviewer) for s in trained] == [(raw, "ann", "rev")]


PAYLOADS = ['<script>window.__xss="script"; alert(1)</script>',
            '<img src=x onerror="window.__xss=\'img\'; alert(2)">',
            '"><svg onload="window.__xss=\'svg\'; alert(3)"><a x="',
            "' autofocus onfocus='window.__xss=\"attr\"; alert(4)' '"]


def test_payloads_in_every_field_render_as_text(tmp_path, browser, tokenizer):
    project, store = make_project(tmp_path / "proj")
    text = " ".join(PAYLOADS)
    sample = traffic_sample(9, text).model_copy(update={
        "id": "xss-1", "instruction": PAYLOADS[1], "system": PAYLOADS[2], "history": [[PAYLOADS[3], PAYLOADS[0]]],
        "rejected": text, "meta": Meta(task_type=PAYLOADS[0], domain=PAYLOADS[1], source=PAYLOADS[2],
                                       difficulty=PAYLOADS[3])})
    queue = RelabelQueue(store)
    queue.add_samples([sample], "traffic", [PAYLOADS], proposals=[(text, PAYLOADS[3])])
    answer = {"intent": "refund", "product": PAYLOADS[0], "order_id": PAYLOADS[1], "urgency": "low",
              "refund_amount": None}
    queue.save("xss-1", {"output": json.dumps(answer)}, 1, annotator=PAYLOADS[2], comment=PAYLOADS[3])
    sop = project.path("sop.md")
    sop.write_text(sop.read_text() + "\n## Payloads\n\n" + "\n\n".join(PAYLOADS) + "\n\n| a | b |\n|---|---|\n| "
                   + PAYLOADS[1].replace("|", "") + " | [x](javascript:alert(5)) |\n")
    dialogs: list[str] = []
    with ServerThread(create_app(project, store, USERS, tokenizer=tokenizer)) as url:
        for token in (ANN, REV):
            page = open_page(browser, url, token, dialogs)
            open_item(page, "relabel", "xss-1")
            page.wait_for_timeout(600)  # the check and the preview have answered
            for tab in ("sop", "preview", "agreement"):
                page.click(f".tabs button[data-tab='{tab}']")
            page.wait_for_timeout(300)
            assert page.evaluate("window.__xss") is None
            assert page.locator("img, svg, iframe, object, embed").count() == 0
            assert page.locator("script").count() == 1  # the page's own module
            assert page.locator("[onerror], [onload], [onfocus], [autofocus]").count() == 0
            assert page.locator("a[href^='javascript']").count() == 0
            shown = page.inner_text("body")
            for payload in PAYLOADS:
                assert payload.split(" ")[0] in shown  # shown, as text
            assert page.input_value("input[aria-label='output.product']") == PAYLOADS[0]
            assert page.input_value("textarea[aria-label='instruction']") == PAYLOADS[1]
            page.close()
    store.close()
    assert dialogs == []


def test_a_stale_save_shows_the_conflict_and_the_newer_text(served, browser):
    url, project, store = served
    dialogs: list[str] = []
    page = open_page(browser, url, ANN, dialogs)
    open_item(page, "relabel", "fail-1")
    theirs = '{"intent": "order_status", "product": null, "order_id": "B7654321", "urgency": "low", "refund_amount": null}'
    RelabelQueue(store).save("fail-1", theirs, 1, annotator="bob")  # bob saves while ann has the sample open
    page.fill("#raw-json", theirs.replace('"low"', '"medium"'))
    page.keyboard.press("Control+s")
    page.wait_for_selector("#banner.conflict")
    assert theirs in page.inner_text("#banner pre.theirs") and "version 2" in page.inner_text("#banner")
    assert RelabelQueue(store).get("fail-1").label.output == theirs  # bob's label was not overwritten
    page.click("#load-theirs")
    assert page.input_value("#raw-json") == theirs
    page.keyboard.press("Control+s")  # now based on bob's version: saved
    page.wait_for_selector("#save-note:has-text('version 3')")
    page.keyboard.press("Alt+d")
    page.wait_for_selector("#editor .state-Discarded")
    assert RelabelQueue(store).get("fail-1").status == "discarded"
    assert dialogs == []


NESTED = {
    "type": "object",
    "properties": {
        "customer": {"type": "object", "properties": {"name": {"type": ["string", "null"]}, "vip": {"type": "boolean"}},
                     "required": ["name", "vip"], "additionalProperties": False},
        "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"},
                                                                               "qty": {"type": "integer"}},
                                             "required": ["sku", "qty"]}},
        "channel": {"enum": ["web", "phone", None]},
    },
    "required": ["customer", "items", "channel"],
    "additionalProperties": False,
}


def test_nested_objects_and_arrays_edit_field_by_field_in_sync_with_the_raw_json(tmp_path, browser, tokenizer):
    from tuneloop.project import LabelRule, dump_config

    project, store = make_project(tmp_path / "proj")
    project.path("schemas/ticket.json").write_text(json.dumps(NESTED))
    project.config.annotate.rules = [LabelRule(field="items[].sku", pattern=r"SKU-\d{4}", message="SKUs look like SKU-1234")]
    project.path("tuneloop.yaml").write_text(dump_config(project.config))
    odd = traffic_sample(0).model_copy(update={"meta": Meta(source="traffic", difficulty="expert")})
    store.query("UPDATE relabel_queue SET sample=? WHERE id='fail-0'", (odd.model_dump_json(),))
    dialogs: list[str] = []
    with ServerThread(create_app(project, store, USERS, tokenizer=tokenizer)) as url:
        page = open_page(browser, url, ANN, dialogs)
        page.keyboard.press("?")
        assert page.is_visible("#help") and "Ctrl" in page.inner_text("#help")
        page.keyboard.press("?")
        assert not page.is_visible("#help")
        open_item(page, "relabel", "fail-0")
        page.fill("input[aria-label='output.customer.name']", "Li Wei")
        page.select_option("select[aria-label='output.customer.vip']", label="1 · true")
        page.click("button:text('add items item')")
        page.fill("input[aria-label='output.items[0].sku']", "sku 7")
        page.fill("input[aria-label='output.items[0].qty']", "2")
        page.focus("select[aria-label='output.channel']")
        page.keyboard.press("2")  # the focused enum field: phone
        assert json.loads(page.input_value("#raw-json")) == {
            "customer": {"name": "Li Wei", "vip": True}, "items": [{"sku": "sku 7", "qty": 2}], "channel": "phone"}
        problem = page.wait_for_selector(".field[data-path='output.items[0].sku'] .problem")
        assert "SKUs look like SKU-1234" in problem.inner_text()  # the project's own rule, next to its field
        raw = {"customer": {"name": None, "vip": False}, "items": [{"sku": "SKU-1234", "qty": 2},
                                                                  {"sku": "SKU-5678", "qty": 1}], "channel": None}
        page.fill("textarea[aria-label='input']", "Two kettles SKU-1234 and one lid SKU-5678, by phone.")
        page.fill("#raw-json", json.dumps(raw))  # the other way: the raw JSON rebuilds the form
        assert page.input_value("input[aria-label='output.items[1].sku']") == "SKU-5678"
        assert page.is_checked("input[aria-label='output.customer.name is null']")
        page.wait_for_selector("#problems li.ok")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#editor .state-Submitted")
        saved = RelabelQueue(store).get("fail-0")
        assert json.loads(saved.label.output) == raw and saved.labeled().input.startswith("Two kettles")
        assert saved.labeled().meta.difficulty == "expert"  # a value outside the picker's list is kept, not blanked
    store.close()
    assert dialogs == []
