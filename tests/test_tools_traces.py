"""A served tool call that comes back as data keeps its tools and its call."""

from __future__ import annotations

import json

from tuneloop.records import Trace
from tuneloop.tools import parse_calls, sample_tools
from tuneloop.traces.select import trace_sample

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_a_traced_call_becomes_a_sample_with_its_tools_and_the_call_as_the_answer_to_relabel():
    trace = Trace(id="t1", created_at=0.0, model="m", latency_ms=1.0, output='{"name": "get_weather", "arguments": {"city": "Oslo"}}',
                  messages=[{"role": "user", "content": "Weather in Oslo?"}], finish_reason="tool_calls",
                  tools=[WEATHER], tool_choice="auto",
                  tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    sample = trace_sample(trace)
    assert sample_tools(sample) == [WEATHER] and sample.prompt == "Weather in Oslo?"
    assert parse_calls(sample.rejected) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert sample.extras["turn_roles"][-1] == "function_call"
    plain = trace_sample(Trace(id="t2", created_at=0.0, model="m", latency_ms=1.0, output="Hi",
                               messages=[{"role": "user", "content": "Hello"}]))
    assert "tools" not in plain.extras and plain.rejected == "Hi" and json.dumps(plain.extras) == "{}"
