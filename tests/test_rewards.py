"""The JSON rewards on real answers of the demo task: what a model writes, and what each reward gives it."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from tuneloop.project import AlignConfig, ProjectConfig
from tuneloop.records import Sample
from tuneloop.eval.metrics import score_answer
from tuneloop.answers import schema_validator
from tuneloop.train.rewards import (
    PRESETS,
    REWARDS,
    RewardConfigError,
    bound_rewards,
    configured_weights,
    field_agreement,
    json_parses,
    no_noise,
    not_truncated,
    practice,
    refusal_correct,
    required_fields,
    reward_weights,
    schema_valid,
    score,
)

SCHEMA = json.loads(resources.files("tuneloop.examples.json_extraction").joinpath("ticket.schema.json").read_text())
REFERENCE = {"intent": "refund", "product": "kettle", "order_id": "A-1042", "urgency": "high", "refund_amount": 39.9}
REF = json.dumps(REFERENCE)
REFUSAL = json.dumps(SCHEMA["x-refusal"])

BARE = '{"intent": "refund", "product": "kettle", "order_id": "A-1042", "urgency": "high", "refund_amount": 39.9}'
FENCED = f"```json\n{BARE}\n```"
PROSE = f"Here is the JSON:\n{BARE}"
WRAPPED = f"Sure! Here is the JSON you asked for:\n```json\n{BARE}\n```\nLet me know if you need anything else."
TRUNCATED = '{"intent": "refund", "product": "kettle", "order_id": "A-10'
WRONG_TYPES = '{"intent": "refund", "product": "kettle", "order_id": 1042, "urgency": "high", "refund_amount": "39.9"}'
MISSING_KEYS = '{"intent": "refund", "product": "kettle"}'
PROSE_REFUSAL = "I'm sorry, I can't help with that."


def columns(n: int, **values):
    """TRL's keyword columns: one value per completion."""
    return {key: [value] * n for key, value in values.items()}


def test_only_a_bare_answer_parses_strictly():
    completions = [BARE, FENCED, PROSE, WRAPPED, TRUNCATED, WRONG_TYPES]
    assert json_parses(completions, **columns(6, output=REF)) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_wrong_types_and_missing_keys_break_the_schema_and_the_required_fields_get_partial_credit():
    completions = [BARE, WRONG_TYPES, MISSING_KEYS, FENCED]
    assert schema_valid(completions, task_schema=SCHEMA) == [1.0, 0.0, 0.0, 0.0]
    assert required_fields(completions, task_schema=SCHEMA) == [1.0, 1.0, 0.4, 0.0]


def test_noise_costs_a_third_per_kind_of_wrapping():
    scores = no_noise([BARE, FENCED, PROSE, WRAPPED, PROSE_REFUSAL], **columns(5, output=REF))
    assert [round(s, 3) for s in scores] == [1.0, 0.667, 0.667, 0.0, 0.0]


def test_field_agreement_reads_the_strict_answer_with_evals_comparison():
    completions = [BARE, WRONG_TYPES, MISSING_KEYS, FENCED, '{"intent": "REFUND", "product": "Kettle", '
                   '"order_id": "A-1042", "urgency": "high", "refund_amount": 39.90}']
    scores = field_agreement(completions, task_schema=SCHEMA, **columns(5, output=REF))
    assert scores == [1.0, 0.8, 0.4, 0.0, 1.0]  # 1042 is not "A-1042"; "39.9" is 39.9 once normalized
    # the very numbers eval reports as field_normalized for the same answers
    validator = schema_validator(SCHEMA)
    sample = Sample(instruction="Extract the ticket.", input="...", output=REF)
    assert [score_answer(sample, c, "stop", validator)["field_normalized"] for c in completions] == scores


def test_refusal_counts_the_schemas_refusal_form_on_boundary_samples_only():
    completions = [REFUSAL, BARE, PROSE_REFUSAL, BARE, REFUSAL]
    cols = {"expected": ["refuse", "refuse", "refuse", "answer", "answer"],
            "sample_type": ["boundary", "boundary", "boundary", "boundary", "golden"],
            "output": [REFUSAL, REFUSAL, REFUSAL, REF, REF]}
    assert refusal_correct(completions, task_schema=SCHEMA, **cols) == [1.0, 0.0, 1.0, 1.0, None]
    # a sample that must refuse is not scored on the answer's schema or fields
    assert schema_valid(completions, task_schema=SCHEMA, **cols)[:3] == [None, None, None]
    assert field_agreement(completions, task_schema=SCHEMA, **cols)[:3] == [None, None, None]


def test_a_completion_cut_by_the_length_limit_is_penalised_from_flags_finish_reasons_or_token_ids():
    assert not_truncated([BARE, TRUNCATED], truncated=[False, True]) == [0.0, -1.0]
    assert not_truncated([BARE, TRUNCATED], finish_reason=["stop", "length"]) == [0.0, -1.0]
    # TRL passes completion_ids; a finished completion keeps its end token
    assert not_truncated([BARE, TRUNCATED], completion_ids=[[5, 6, 2], [5, 6, 7]], eos_token_ids=[2]) == [0.0, -1.0]
    assert not_truncated([BARE, TRUNCATED]) == [None, None]  # nobody knows: the reward does not apply


def test_the_practice_preset_scores_exactly_like_the_practice():
    completions = [BARE, MISSING_KEYS, TRUNCATED, PROSE, "[1, 2]", '"just a string"', "42"]
    assert practice(completions, task_schema=SCHEMA) == [1.0, 0.5, -1.0, -1.0, -0.5, -0.5, -0.5]
    total = [s["total"] for s in score(completions, reward_weights("practice"), task_schema=SCHEMA)]
    assert total == [1.0, 0.5, -1.0, -1.0, -0.5, -0.5, -0.5]


def test_conversational_completions_score_like_strings():
    as_messages = [[{"role": "assistant", "content": c}] for c in (BARE, WRAPPED)]
    for reward in REWARDS.values():
        assert reward(as_messages, task_schema=SCHEMA, **columns(2, output=REF)) == \
            reward([BARE, WRAPPED], task_schema=SCHEMA, **columns(2, output=REF))


def test_a_rows_inline_schema_wins_over_the_tasks_and_may_arrive_as_json_text():
    inline = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    cols = {"output_schema": [inline, json.dumps(inline), "ticket"]}
    assert schema_valid(['{"n": 1}', '{"n": 1}', '{"n": 1}'], task_schema=SCHEMA, **cols) == [1.0, 1.0, 0.0]


def test_strict_weights_rank_bare_over_fenced_over_prose_over_truncated():
    weights = reward_weights("strict")
    cols = columns(4, output=REF, expected="answer", sample_type="golden", truncated=False)
    cols["truncated"] = [False, False, False, True]
    totals = [s["total"] for s in score([BARE, FENCED, WRAPPED, TRUNCATED], weights, task_schema=SCHEMA, **cols)]
    assert totals[0] > totals[1] > totals[2] > totals[3]
    # refusal_correct and not_truncated score 0 here; tool_call does not apply to a row without tools
    assert totals[0] == sum(w for name, w in weights.items() if name not in ("refusal_correct", "not_truncated", "tool_call"))


def test_strict_weights_rank_the_refusal_form_over_a_prose_refusal_over_complying_on_a_prompt_to_refuse():
    cols = columns(3, output=REFUSAL, expected="refuse", sample_type="boundary", truncated=False)
    totals = [s["total"] for s in score([REFUSAL, PROSE_REFUSAL, BARE], reward_weights("strict"), task_schema=SCHEMA,
                                        **cols)]
    assert totals[0] > totals[1] > totals[2]


def test_bound_rewards_keep_their_names_for_trl_and_carry_the_schema_and_end_tokens():
    functions, weights = bound_rewards({"schema_valid": 1.0, "not_truncated": 2.0}, SCHEMA, eos_token_ids=[2])
    assert [f.__name__ for f in functions] == ["schema_valid", "not_truncated"] and weights == [1.0, 2.0]
    # what GRPOTrainer passes: prompts, completions, completion_ids, the columns, trainer_state, log helpers
    kwargs = {"prompts": [[{"role": "user", "content": "x"}]] * 2, "completion_ids": [[5, 2], [5, 6]],
              "trainer_state": None, "log_extra": None, "log_metric": None, **columns(2, output=REF)}
    completions = [[{"role": "assistant", "content": BARE}], [{"role": "assistant", "content": TRUNCATED}]]
    assert functions[0](completions=completions, **kwargs) == [1.0, 0.0]
    assert functions[1](completions=completions, **kwargs) == [0.0, -1.0]


def test_weights_come_from_the_project_file_and_unknown_names_are_refused():
    config = ProjectConfig.model_validate({"align": {"preset": "practice"}})
    assert configured_weights(config.align) == PRESETS["practice"]
    config = ProjectConfig.model_validate({"align": {"rewards": {"json_parses": 2, "no_noise": 1}}})
    assert configured_weights(config.align) == {"json_parses": 2.0, "no_noise": 1.0}
    with pytest.raises(RewardConfigError, match="unknown reward json_parse;"):
        configured_weights(AlignConfig(rewards={"json_parse": 1.0}))
    assert set(PRESETS["strict"]) <= set(REWARDS)
