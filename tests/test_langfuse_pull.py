"""Pulling traffic from Langfuse over real HTTP: a loopback server shaped like Langfuse's documented responses,
both API generations (v3 self-hosted page-based, v4 Cloud cursor-based through the langfuse SDK)."""

from __future__ import annotations

import json

import pytest

from tuneloop.project import LoopConfig
from tuneloop.testing.langfuse_fake import FakeLangfuse, iso
from tuneloop.traces.langfuse import LangfuseClient, LangfuseError
from tuneloop.traces.langfuse_map import timestamp
from tuneloop.traces.pull import LANGFUSE_LAG_S, pull_traces
from tuneloop.traces.store import TraceStore

T0 = 1_767_000_000.0  # 2025-12-29T09:20:00Z
KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-test", "LANGFUSE_SECRET_KEY": "sk-lf-test"}
PROMPT = [{"role": "system", "content": "You extract ticket fields as JSON."},
          {"role": "user", "content": "Order 1182 arrived broken, I want a refund."}]
TRACES = "/api/public/traces"
OBSERVATIONS_V1 = "/api/public/observations"
SCORES_V2 = "/api/public/v2/scores"
OBSERVATIONS_V2 = "/api/public/v2/observations"
SCORES_V3 = "/api/public/v3/scores"


def config(url: str, **langfuse) -> LoopConfig:
    return LoopConfig.model_validate({"langfuse": {"host": url, **langfuse}})


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def pull(fake_url: str, store: TraceStore, since=None, until=None, env=KEYS, sleeps=None, **langfuse):
    cfg = config(fake_url, **langfuse)
    with LangfuseClient(cfg.langfuse, env=env, sleep=sleeps if sleeps is not None else Sleeps()) as client:
        return pull_traces(store, "langfuse", cfg, since=since, until=until, say=lambda _: None, langfuse=client)


def ticket_traffic(fake: FakeLangfuse, count: int = 3) -> None:
    for n in range(count):
        fake.add_trace(f"t{n}", T0 + 60 * n, PROMPT, {"role": "assistant", "content": f'{{"order": "{1180 + n}"}}'},
                       user=f"user-{n}", session=f"sess-{n}", tags=["prod", "tickets"], release="2026.11.3",
                       metadata={"finish_reason": "stop"}, usage=(40 + n, 9), cost=0.00021, latency_s=1.25)


@pytest.fixture
def store(tmp_path):
    with TraceStore(tmp_path / "traces.db") as opened:
        yield opened


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_a_pull_maps_every_field_of_trace_generation_and_score(api, store):
    fake = FakeLangfuse(api)
    ticket_traffic(fake)
    fake.add_trace("t-cut", T0 + 500, "Summarise: the long ticket", {"choices": [
        {"index": 0, "message": {"role": "assistant", "content": '{"order": "11'}, "finish_reason": "length"}]},
        generations=2)
    fake.add_score("s-bad", "t1", T0 + 90, value=False, comment="wrong order number")
    fake.add_score("s-judge", "t2", T0 + 150, name="judge", value=0.25, data_type="NUMERIC")
    with fake.serve() as url:
        result = pull(url, store, api="auto")
    assert (result.pulled, result.skipped_existing, result.feedback) == (4, 0, 2)
    trace = store.get("langfuse:t1")
    assert trace.source_id == "langfuse:t1" and trace.messages == PROMPT
    assert trace.output == '{"order": "1181"}' and trace.json_valid is True
    assert trace.model == "gpt-4o-mini" and trace.model_version == "2026.11.3"
    assert (trace.prompt_tokens, trace.completion_tokens, trace.cost) == (41, 9, 0.00021)
    assert trace.latency_ms == pytest.approx(1250.0)
    assert (trace.user, trace.session_id, trace.tags) == ("user-1", "sess-1", ["prod", "tickets"])
    assert trace.finish_reason == "stop" and trace.smoke is False
    # v3 times a trace by the trace; v4 has no trace objects: by its first generation (10 ms later here)
    assert trace.created_at == pytest.approx(T0 + 60, abs=0.02)
    cut = store.get("langfuse:t-cut")
    assert cut.messages == [{"role": "user", "content": "Summarise: the long ticket"}]
    assert (cut.output, cut.finish_reason, cut.json_valid) == ('{"order": "11', "length", False)
    assert cut.generations == 2 and cut.generation_id == "t-cut-gen1"  # the answer is the last generation's
    rows = store.query("SELECT trace_id, name, score, comment, source_id FROM feedback ORDER BY created_at")
    assert rows == [("langfuse:t1", "user-feedback", 0.0, "wrong order number", "langfuse-score:s-bad"),
                    ("langfuse:t2", "judge", 0.25, None, "langfuse-score:s-judge")]
    assert result.cursor == iso(T0 + 500 + (0.01 + 0.8 if api == "v4" else 0))


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_a_second_pull_adds_nothing_and_a_third_only_what_is_new(api, store):
    fake = FakeLangfuse(api)
    ticket_traffic(fake)
    fake.add_score("s1", "t0", T0 + 30, value=True)
    with fake.serve() as url:
        first = pull(url, store, api=api)
        second = pull(url, store, api=api)
        fake.add_trace("t-new", T0 + 3600, PROMPT, '{"order": "9"}')
        fake.add_score("s2", "t-new", T0 + 3700, value=False, comment="still wrong")
        fake.add_score("s3", "t0", T0 + 3800, value=False, comment="changed my mind")  # late feedback, old trace
        third = pull(url, store, api=api)
    assert (first.pulled, first.feedback) == (3, 1)
    assert (second.pulled, second.feedback) == (0, 0)
    assert second.skipped_existing == 3  # all within the 15 minutes each pull looks back again
    assert (third.pulled, third.feedback) == (1, 2)
    assert store.count() == 4 and len(store.feedback()) == 3
    # the stored cursor moved: the third pull asked from 15 minutes before the newest trace the second one saw
    params = fake.calls(TRACES if api == "v3" else OBSERVATIONS_V2)[-1]
    start = timestamp((params.get("fromTimestamp") or params.get("fromStartTime"))[0])
    assert start == pytest.approx(T0 + 120 - LANGFUSE_LAG_S, abs=0.02)


def test_a_trace_listed_late_just_behind_the_cursor_is_still_pulled(store):
    fake = FakeLangfuse("v3")
    ticket_traffic(fake, 2)  # T0, T0 + 60
    with fake.serve() as url:
        assert pull(url, store, api="v3").pulled == 2
        fake.add_trace("late", T0 + 30, PROMPT, "listed ten minutes after its timestamp")
        assert pull(url, store, api="v3").pulled == 1
    assert store.get("langfuse:late").output.startswith("listed")


def test_a_score_whose_trace_arrives_later_waits_and_is_attached(store):
    fake = FakeLangfuse("v3")
    ticket_traffic(fake, 1)
    fake.add_score("s-early", "t-late", T0 + 10, value=False, comment="bad")
    with fake.serve() as url:
        first = pull(url, store, api="v3")
        fake.add_trace("t-late", T0 + 5, PROMPT, "ingested late")  # older timestamp than the cursor: a wider pull
        second = pull(url, store, since=T0, api="v3")
    assert (first.feedback, first.pending_feedback) == (0, 1)
    assert (second.pulled, second.feedback, second.pending_feedback) == (1, 1, 0)
    assert store.feedback("langfuse:t-late")[0]["comment"] == "bad"


def test_v3_pagination_edges_one_full_page_short_last_page_empty_last_page_and_no_pages(store, tmp_path):
    def requests_for(count: int, stale: bool = False) -> tuple[int, int]:
        fake = FakeLangfuse("v3")
        ticket_traffic(fake, count)
        fake.stale_total_pages = stale
        with TraceStore(tmp_path / f"{count}-{stale}.db") as fresh, fake.serve() as url:
            result = pull(url, fresh, api="v3", page_size=3)
        return result.pulled, len(fake.calls(TRACES))

    assert requests_for(3) == (3, 1)  # exactly one full page: totalPages 1, no second request
    assert requests_for(4) == (4, 2)  # a short last page
    assert requests_for(6, stale=True) == (6, 3)  # totalPages says 3, page 3 is empty: stop there
    assert requests_for(0) == (0, 1)  # totalPages 0
    # observations of one trace page the same way; scores cap their page at 100 (Langfuse answers 400 above)
    fake = FakeLangfuse("v3")
    fake.add_trace("many", T0, PROMPT, "final", generations=4)
    fake.add_score("s", "many", T0 + 1, value=True)
    with fake.serve() as url:
        result = pull(url, store, api="v3", page_size=2)
    assert result.pulled == 1 and store.get("langfuse:many").output == "final"
    assert [p["page"] for p in fake.calls(OBSERVATIONS_V1)] == [["1"], ["2"]]


def test_v4_cursor_pages_end_on_a_missing_cursor_including_an_empty_last_page(tmp_path):
    def requests_for(count: int) -> tuple[int, int]:
        fake = FakeLangfuse("v4")
        ticket_traffic(fake, count)
        with TraceStore(tmp_path / f"{count}.db") as fresh, fake.serve() as url:
            result = pull(url, fresh, api="v4", page_size=3)
        return result.pulled, len(fake.calls(OBSERVATIONS_V2))

    assert requests_for(3) == (3, 2)  # a full page carries a cursor; the next page is empty and has none
    assert requests_for(4) == (4, 2)  # a short last page has no cursor
    assert requests_for(0) == (0, 1)


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_429_honours_retry_after_and_500_backs_off_then_the_pull_succeeds(api, store):
    fake = FakeLangfuse(api)
    ticket_traffic(fake)
    listing = TRACES if api == "v3" else OBSERVATIONS_V2
    fake.fail(listing, 429, headers={"Retry-After": "7"})
    fake.fail(listing, 500)
    fake.fail(SCORES_V2 if api == "v3" else SCORES_V3, 503, times=2)
    sleeps = Sleeps()
    with fake.serve() as url:
        result = pull(url, store, api=api, sleeps=sleeps)
    assert result.pulled == 3
    assert sleeps == [7.0, 2.0, 1.0, 2.0]  # Retry-After as asked, then exponential backoff from 1 s


def test_a_timeout_is_retried_and_too_many_failures_are_an_error_naming_the_endpoint(store):
    fake = FakeLangfuse("v3")
    ticket_traffic(fake)
    fake.fail(TRACES, None, delay_s=1.0)  # answers, but after the client gave up
    with fake.serve() as url:
        assert pull(url, store, api="v3", timeout_s=0.3).pulled == 3
        fake.fail(SCORES_V2, 500, times=3)
        with pytest.raises(LangfuseError, match=r"/api/public/v2/scores.*HTTP 500, 3 attempt"):
            pull(url, store, api="v3", max_retries=2)


def test_a_deprecation_notice_is_one_warning_per_endpoint(store):
    fake = FakeLangfuse("v3")
    ticket_traffic(fake)
    fake.deprecate(OBSERVATIONS_V1, {"message": "Observations V1 is deprecated and queries the legacy table.",
                                     "replacement": "GET /api/public/v2/observations", "sunsetAt": "2026-06-30"})
    fake.deprecate(SCORES_V2, header="@1767225600", sunset="Tue, 30 Jun 2026 00:00:00 GMT")
    with fake.serve() as url:
        result = pull(url, store, api="v3")
    assert len(fake.calls(OBSERVATIONS_V1)) == 3
    assert result.warnings == [
        "Langfuse deprecation notice for /api/public/observations: Observations V1 is deprecated and queries the "
        "legacy table.; use GET /api/public/v2/observations; sunset 2026-06-30",
        "Langfuse deprecation notice for /api/public/v2/scores: Deprecation: @1767225600; sunset Tue, 30 Jun 2026 "
        "00:00:00 GMT"]


def test_auto_detects_the_generation_by_the_v2_observations_endpoint(tmp_path):
    for api in ("v3", "v4"):
        fake = FakeLangfuse(api)
        ticket_traffic(fake, 1)
        with TraceStore(tmp_path / f"{api}.db") as fresh, fake.serve() as url:
            pull(url, fresh, api="auto")
            assert fresh.get_state("pull:langfuse")["api"] == api
        used = {path for path, _ in fake.requests}
        assert (TRACES in used) is (api == "v3") and (SCORES_V3 in used) is (api == "v4")


def test_a_server_with_v2_observations_but_no_v3_scores_reads_the_v2_scores_when_detected(tmp_path):
    fake = FakeLangfuse("v4")
    ticket_traffic(fake, 1)
    fake.add_score("s", "t0", T0 + 5, value=False, comment="no")
    fake.missing = {SCORES_V3}
    with TraceStore(tmp_path / "a.db") as fresh, fake.serve() as url:
        assert pull(url, fresh, api="auto").feedback == 1
        with pytest.raises(LangfuseError, match="no /api/public/v3/scores .HTTP 404.*loop.langfuse.api"):
            pull(url, fresh, api="v4")  # set by hand: the server is not what the config says


def test_wrong_keys_missing_keys_and_a_missing_host_are_clear_errors(store, monkeypatch):
    fake = FakeLangfuse("v3")
    with fake.serve() as url:
        with pytest.raises(LangfuseError, match="refused the keys .*LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY"):
            pull(url, store, env={**KEYS, "LANGFUSE_SECRET_KEY": "sk-wrong"}, api="v3")
        with pytest.raises(LangfuseError, match="refused the keys"):  # the SDK path says the same
            pull(url, store, env={**KEYS, "LANGFUSE_SECRET_KEY": "sk-wrong"}, api="auto")
    assert fake.calls(TRACES) and all(len(fake.calls(p)) <= 1 for p in (TRACES, OBSERVATIONS_V2))  # no retries
    with pytest.raises(LangfuseError, match="set the environment variable.s. LF_SECRET"):
        LangfuseClient(config(url, secret_key_env="LF_SECRET").langfuse, env=KEYS)
    for name in ("LANGFUSE_HOST", "LANGFUSE_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LangfuseError, match="host unknown: set LANGFUSE_HOST .or LANGFUSE_BASE_URL."):
        LangfuseClient(LoopConfig().langfuse, env=KEYS)
    assert LangfuseClient(LoopConfig().langfuse, env={**KEYS, "LANGFUSE_BASE_URL": url + "/"}).host == url


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_the_time_window_is_asked_for_and_kept(api, store):
    fake = FakeLangfuse(api)
    ticket_traffic(fake, 5)  # at T0, +60, +120, +180, +240
    with fake.serve() as url:
        result = pull(url, store, since=T0 + 60, until=T0 + 180, api=api)
    assert sorted(t.id for t in store.traces()) == ["langfuse:t1", "langfuse:t2"]  # until is exclusive
    params = fake.calls(TRACES if api == "v3" else OBSERVATIONS_V2)[0]
    low, high = ("fromTimestamp", "toTimestamp") if api == "v3" else ("fromStartTime", "toStartTime")
    assert [timestamp(params[low][0]), timestamp(params[high][0])] == [T0 + 60, T0 + 180]
    assert result.pulled == 2


def test_trace_name_and_tags_filter_both_generations(tmp_path):
    for api in ("v3", "v4"):
        fake = FakeLangfuse(api)
        fake.add_trace("keep", T0, PROMPT, "a", tags=["prod", "tickets"], name="extract")
        fake.add_trace("other-name", T0 + 1, PROMPT, "b", tags=["prod", "tickets"], name="chat")
        fake.add_trace("other-tags", T0 + 2, PROMPT, "c", tags=["dev"], name="extract")
        with TraceStore(tmp_path / f"{api}.db") as fresh, fake.serve() as url:
            pull(url, fresh, api=api, trace_name="extract", tags=["prod"])
            assert [t.id for t in fresh.traces()] == ["langfuse:keep"], api


def test_scores_of_every_data_type_become_feedback(store):
    fake = FakeLangfuse("v4")
    ticket_traffic(fake, 1)
    fake.add_score("b", "t0", T0 + 1, value=True)
    fake.add_score("n", "t0", T0 + 2, name="judge", value=0.75, data_type="NUMERIC", comment="mostly right")
    fake.add_score("c", "t0", T0 + 3, name="label", value="wrong-field", data_type="CATEGORICAL")
    fake.add_score("x", "t0", T0 + 4, name="fix", value='{"order": "1180"}', data_type="CORRECTION")
    fake.add_score("sess", None, T0 + 5, session="sess-0", value=False)
    with fake.serve() as url:
        result = pull(url, store, api="v4")
    rows = store.query("SELECT name, score, comment FROM feedback ORDER BY created_at")
    assert rows == [("user-feedback", 1.0, None), ("judge", 0.75, "mostly right"),
                    ("label", None, "category: wrong-field"), ("fix", None, 'correction: {"order": "1180"}')]
    assert result.skipped == {"score(s) on a session or experiment, not a trace": 1}


def test_tuneloop_traces_pull_from_langfuse_prints_counts_and_the_deprecation(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    fake = FakeLangfuse("v3")
    ticket_traffic(fake)
    fake.add_score("s", "t2", T0 + 200, value=False, comment="refund amount missing")
    fake.deprecate(OBSERVATIONS_V1, {"message": "Observations V1 is deprecated."})
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "traces.db"
    runner = CliRunner()
    with fake.serve() as url:
        env = {**KEYS, "LANGFUSE_HOST": url}
        result = runner.invoke(app, ["traces", "pull", "--from", "langfuse", "--since", "2025-12-29",
                                     "--traces", str(db)], env=env)
        assert result.exit_code == 0, result.output
        assert "langfuse: 3 new trace(s); 0 already here; 1 feedback row(s) added" in result.output
        assert "warning: Langfuse deprecation notice for /api/public/observations" in result.output
        wrong = runner.invoke(app, ["traces", "pull", "--from", "langfuse", "--traces", str(db)],
                              env={**env, "LANGFUSE_SECRET_KEY": "nope"})
    assert wrong.exit_code == 2 and "refused the keys" in wrong.output
    listed = runner.invoke(app, ["traces", "list", "--failures-only", "--json", "--traces", str(db)])
    assert listed.exit_code == 0, listed.output
    failures = [json.loads(line) for line in listed.output.splitlines()]
    assert [f["id"] for f in failures] == ["langfuse:t2"]  # its negative feedback; the others answered fine
    assert failures[0]["feedback"][0]["source_id"] == "langfuse-score:s"
    shown = runner.invoke(app, ["traces", "show", "langfuse:t2", "--traces", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "Order 1182 arrived broken" in shown.output and "refund amount missing" in shown.output
    assert '{"order": "1182"}' in shown.output and "langfuse-score:s" in shown.output


def test_a_generation_without_input_or_output_takes_the_traces_own():
    from tuneloop.traces.langfuse_map import to_trace

    trace = {"id": "t", "timestamp": iso(T0), "input": {"messages": PROMPT}, "output": {"order": "1182"}}
    generation = {"id": "g", "traceId": "t", "startTime": iso(T0), "model": "m", "input": None, "output": None}
    mapped = to_trace(trace, [generation])
    assert mapped.messages == PROMPT and mapped.output == '{"order": "1182"}' and mapped.json_valid is True


def test_a_trace_without_observations_is_counted_and_its_observations_never_asked_for(store):
    fake = FakeLangfuse("v3")
    ticket_traffic(fake, 2)
    fake.observations = [o for o in fake.observations if o["traceId"] != "t1"]
    fake.traces[1]["observations"] = []
    with fake.serve() as url:
        result = pull(url, store, api="v3")
    assert result.pulled == 1 and result.skipped == {"trace(s) without a generation (nothing a model answered)": 1}
    assert [p["traceId"] for p in fake.calls(OBSERVATIONS_V1)] == [["t0"]]


def test_smoke_tagged_traffic_stays_flagged_and_a_malformed_generation_is_an_error(store):
    fake = FakeLangfuse("v3")
    fake.add_trace("smoke", T0, PROMPT, "{}", tags=["tuneloop-smoke"])
    fake.add_trace("odd", T0 + 1, PROMPT, "{}")
    fake.observations[-1]["usageDetails"] = {"input": "many"}
    with fake.serve() as url:
        with pytest.raises(LangfuseError, match="trace 'odd' .* cannot read"):
            pull(url, store, api="v3")
    assert store.get("langfuse:smoke").smoke is True and store.count() == 1
