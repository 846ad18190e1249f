"""PII: every planted item is caught, checksum failures and clean text are not, JSON answers stay valid."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.gate.pii import Redactor, fake_value, find_pii, redact_samples
from tuneloop.records import Sample

PLANTED = {
    "PHONE": ["13812345678", "+86 139-1234-5678", "010-62345678", "(0755)83456789", "(415) 555-2671", "+44 20 7946 0958"],
    "ID_NUMBER": ["11010519491231002X", "320106199003071234"],
    "BANK_CARD": ["4111 1111 1111 1111", "6222021234567890128"],
    "EMAIL": ["li.lei@corp.cn", "jane_doe+tag@mail.co.uk"],
    "IP": ["10.1.2.3", "2001:4860::8888"],
}


@pytest.mark.parametrize("kind,value", [(k, v) for k, values in PLANTED.items() for v in values])
def test_each_planted_item_is_found_with_its_type(kind, value):
    found = find_pii(f"客户信息: {value}, please check")
    assert [(f.kind, f.value) for f in found] == [(kind, value)]


@pytest.mark.parametrize("text", [
    "resident id 110105194912310021 has a wrong check digit",
    "card 4111111111111112 fails Luhn",
    "the meeting is at 12:30:45 on 2024-05-06, version 1.2.3, pi 3.14159",
    "order 20240506 shipped, 3 items, total 1299 yuan",
    "write to user@example.com or call 555-0123",
    "今天天气很好，我们去公园散步吧",
])
def test_clean_text_and_invalid_checksums_are_not_flagged(text):
    assert find_pii(text) == []


def test_placeholders_are_consistent_within_a_sample_and_numbered_in_reading_order():
    sample = Sample(id="s", instruction="Call 13812345678 or 13912345678.",
                    input="Again: 13812345678", output="Dialed 13912345678")
    [redacted], counts = redact_samples([sample])
    assert redacted.instruction == "Call [PHONE_1] or [PHONE_2]."
    assert redacted.input == "Again: [PHONE_1]"
    assert redacted.output == "Dialed [PHONE_2]"
    assert counts == {"PHONE": 4}
    assert redacted.id == "s"


def test_placeholder_numbers_restart_for_each_sample():
    rows = [Sample(id=f"s{i}", instruction=f"Mail a{i}@corp.cn", output="ok") for i in range(2)]
    redacted, _ = redact_samples(rows)
    assert [r.instruction for r in redacted] == ["Mail [EMAIL_1]", "Mail [EMAIL_1]"]


def test_json_answers_stay_valid_json_with_numbers_and_escapes():
    output = json.dumps({"phone": 13812345678, "note": "call\n13812345678", "email": ["a@corp.cn"], "n": 3})
    [redacted], _ = redact_samples([Sample(id="j", instruction="Extract.", output=output)])
    parsed = json.loads(redacted.output)
    assert parsed == {"phone": "[PHONE_1]", "note": "call\n[PHONE_1]", "email": ["[EMAIL_1]"], "n": 3}


def test_fake_values_are_consistent_and_never_flagged_again():
    for kind, values in PLANTED.items():
        for value in values:
            fake = fake_value(kind, value)
            assert fake == fake_value(kind, value)
            assert find_pii(fake) == [], (kind, fake)
    [a, b], _ = redact_samples([Sample(id="a", instruction="x 13812345678", output="y"),
                                Sample(id="b", instruction="z 13812345678", output="y")], mode="fake")
    assert a.instruction.split()[1] == b.instruction.split()[1] != "13812345678"


def test_extra_patterns_are_recognized():
    redactor = Redactor(extra_patterns={"employee": r"EMP-\d{6}"})
    assert redactor.text("by EMP-123456 today") == "by [EMPLOYEE_1] today"


def test_meta_fields_are_redacted_too():
    sample = Sample(id="m", instruction="Hi", output="ok", meta={"annotator": "ann@corp.cn"})
    [redacted], _ = redact_samples([sample])
    assert redacted.meta.annotator == "[EMAIL_1]"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60), st.sampled_from([v for values in PLANTED.values() for v in values]), st.text(max_size=60))
def test_after_redaction_nothing_is_found(before, value, after):
    redacted = Redactor().text(f"{before}, {value}, {after}")
    assert find_pii(redacted) == []
    assert value not in redacted


def test_numbers_glued_to_chinese_text_are_found_but_digits_inside_hex_digests_are_not():
    assert [f.kind for f in find_pii("电话13812345678，邮箱li@corp.cn")] == ["PHONE", "EMAIL"]
    assert find_pii("sha256 d5a4be46ae70d23a461ffc16048069324c0865ee9aa0c8730e21ac4b65ea0f08") == []


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([v for values in PLANTED.values() for v in values]), st.sampled_from(["\n", " ", "：", "\t"]))
def test_the_quick_pre_check_never_skips_a_sample_that_holds_personal_data(value, glue):
    sample = Sample(id="q", instruction="see" + glue + value, output="ok")
    [redacted], counts = redact_samples([sample])
    assert value not in redacted.instruction and sum(counts.values()) == 1
