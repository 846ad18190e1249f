"""Load: 50 concurrent clients for 30 s against the embedded server on loopback: no 5xx, no lost trace."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tuneloop.serve.requests import SMOKE_HEADER
from tuneloop.serve.server import serve_in_background
from tuneloop.traces.store import TraceStore

CLIENTS = 50
SECONDS = 30
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.mark.slow
def test_fifty_clients_for_thirty_seconds_get_no_5xx_and_leave_every_trace(tiny_model_dir, tmp_path):
    store_path = tmp_path / "traces.db"
    with serve_in_background(tiny_model_dir, store_path, model_name="tiny", max_batch=16) as base_url:
        deadline = time.monotonic() + SECONDS

        def client(number: int) -> list[tuple[int, str | None]]:
            seen = []
            with httpx.Client(base_url=base_url, timeout=60, headers={SMOKE_HEADER: "1"}) as http:
                while time.monotonic() < deadline:
                    body = {"model": "tiny", "messages": [{"role": "user", "content": f"client {number}"}],
                            "max_tokens": 4, "temperature": 1.0}
                    if len(seen) % 2:
                        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
                        body["max_tokens"] = 24  # the schema's shortest answer must fit, or the request is a 400
                    response = http.post("/chat/completions", json=body)
                    reply = response.json()
                    seen.append((response.status_code, reply.get("id") or reply.get("error", {}).get("message")))
            return seen

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = [r for rs in pool.map(client, range(CLIENTS)) for r in rs]
        health = httpx.get(base_url.removesuffix("/v1") + "/health").json()
    assert len(results) >= CLIENTS
    assert all(status == 200 for status, _ in results), sorted({s for s, _ in results})
    with TraceStore(store_path) as store:
        stored = {t.id for t in store.traces()}
        constrained = [t for t in store.traces() if t.response_format]
        smoke = [t.smoke for t in store.traces()]
    assert {trace_id for _, trace_id in results} <= stored and len(stored) == len(results)
    assert constrained and all(t.schema_valid for t in constrained)
    assert smoke and all(smoke), "the load test's own traffic must never become data"
    assert health["largest_batch"] > 1
