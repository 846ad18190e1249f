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


def tool_sample(output: str = CALL, **fields) -> "Sample":
    from tuneloop.records import Sample

    return Sample(id="t1", instruction="Book two seats.", output=output, tools=TOOLS, answer_kind="tool_calls", **fields)


def test_best_of_n_scores_a_tool_row_with_the_tool_reward_and_prefers_the_right_call():
    from tuneloop.eval.backends import Generation
    from tuneloop.train.best_of_n import judge_candidates

    wrong = '{"name": "book", "arguments": {"seats": 3}}'
    candidates = judge_candidates(tool_sample(), [Generation(text, "stop", 5, 5, 1.0) for text in (wrong, CALL)],
                                  reward_weights("strict"), None, None)
    assert [c.rewards["tool_call"] for c in candidates] == [0.666667, 1.0]
    assert candidates[1].total > candidates[0].total


def test_grpo_rows_carry_the_tools_and_render_them_into_the_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    from tuneloop.train.grpo import prompt_rows
    from tuneloop.train.templates import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sample = tool_sample()
    rows, quarantined = prompt_rows(tokenizer, [sample], 32, 4096, "", "train.jsonl")
    assert not quarantined and rows[0]["tools"] == TOOLS and rows[0]["answer_kind"] == "tool_calls"
    assert '"book"' in rows[0]["prompt"] and '"seats"' in rows[0]["prompt"]  # the functions are shown to the model
    # what the GRPO trainer tokenizes is exactly the serving prompt
    assert tokenizer(text=[rows[0]["prompt"]], add_special_tokens=False)["input_ids"][0] == prompt_ids(tokenizer, sample)
    values = tool_call([CALL, "no"], **{k: [v] * 2 for k, v in rows[0].items() if k != "prompt"})
    assert values == [1.0, 0.0]
