"""The tool-call reward: right function, schema-valid arguments, agreement with the reference; usable by name."""

from __future__ import annotations

import json

from tuneloop.train.rewards import REWARDS, reward_weights, score, tool_call

TOOLS = json.dumps([{"name": "book", "parameters": {"type": "object", "required": ["seats"],
                                                     "properties": {"seats": {"type": "integer"}}}},
                    {"name": "cancel", "parameters": {"type": "object"}}])
CALL = '{"name": "book", "arguments": {"seats": 2}}'


def test_the_reward_ranks_right_call_over_wrong_arguments_over_wrong_function_over_no_call():
    answers = [CALL, '{"name": "book", "arguments": {"seats": 3}}', '{"name": "cancel", "arguments": {}}', "Booked!"]
    values = tool_call(answers, tools=[TOOLS] * 4, output=[CALL] * 4, answer_kind=["tool_calls"] * 4)
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and values[-1] == 0.0
    assert len(set(values)) == 4


def test_no_call_expected_rewards_abstaining_and_rows_without_tools_do_not_apply():
    assert tool_call(["Hello!", CALL], tools=[TOOLS] * 2, output=["Hi"] * 2) == [1.0, -1.0]
    assert tool_call([CALL], output=[CALL]) == [None]


def test_the_reward_is_usable_by_name_in_weights():
    assert "tool_call" in REWARDS and reward_weights(None, {"tool_call": 1.0}) == {"tool_call": 1.0}
    totals = [s["total"] for s in score([CALL, "no"], {"tool_call": 2.0}, tools=[TOOLS] * 2, output=[CALL] * 2,
                                        answer_kind=["tool_calls"] * 2)]
    assert totals == [2.0, 0.0]
