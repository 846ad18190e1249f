"""PII cases that leaked or were mistyped: each is personal data by checksum, date or range, wherever it sits."""

from __future__ import annotations

import json

import pytest
from stdnum import luhn
from stdnum.iso7064 import mod_11_2

from tuneloop.data.gate.pii import Redactor, fake_value, find_pii, redact_samples, scan_value
from tuneloop.records import Sample


def resident_id(region: str, birth: str, sequence: str = "123") -> str:
    body = region + birth + sequence
    return body + mod_11_2.calc_check_digit(body)


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in find_pii(text)]


@pytest.mark.parametrize("text", ["The server logged the IP 10.1.7.13.", "Blocked 10.1.7.13. Then it retried.",
                                  "服务器地址是10.1.7.13。", "connect to 10.1.7.13:8080 now", "route 10.1.7.0/24 via x",
                                  '{"ip": "10.1.7.13"}', "（10.1.7.13）"])
def test_an_ipv4_address_is_found_at_a_sentence_end_with_a_port_or_a_prefix(text):
    [finding] = find_pii(text)
    assert finding.kind == "IP" and finding.value in ("10.1.7.13", "10.1.7.0")


@pytest.mark.parametrize("text", ["version 1.2.3.4.5 released", "octet 10.1.7.300 is out of range",
                                  "bind 127.0.0.1 or 0.0.0.0", "netmask 255.255.255.0", "doc 192.0.2.7."])
def test_dotted_numbers_that_name_no_host_are_kept(text):
    assert find_pii(text) == []


@pytest.mark.parametrize("text,address", [
    ("IPv6 2001:4860::8888: refused", "2001:4860::8888"), ("IP:2001:4860::8888", "2001:4860::8888"),
    ("ipv6:2001:4860::8888", "2001:4860::8888"), ("地址:2001:4860::8888", "2001:4860::8888"),
    ("mapped ::ffff:10.1.7.13 here", "::ffff:10.1.7.13"), ("link fe80::1%eth0 up", "fe80::1%eth0")])
def test_an_ipv6_address_is_found_after_a_label_colon_before_a_colon_and_with_an_ipv4_tail(text, address):
    assert kinds(text) == [("IP", address)]


# 330113 临平区 and 330114 钱塘区 (Hangzhou, 2021) are missing in python-stdnum's district table, which made
# `stdnum.cn.ric` reject them, and for these two even raise KeyError out of the redaction.
@pytest.mark.parametrize("number", [resident_id("330114", "20220307"), resident_id("330113", "20211130", "002"),
                                    resident_id("110105", "19491231", "002")])
def test_a_resident_id_from_a_district_missing_in_the_stdnum_table_is_redacted(number):
    assert kinds(f"身份证号{number}。") == [("ID_NUMBER", number)]


def test_an_id_ending_in_x_is_found_in_either_case_and_with_separators():
    number = next(n for n in (resident_id("330114", "19900307", f"{s:03d}") for s in range(200)) if n.endswith("X"))
    for written in (number, number.lower(), f"{number[:6]} {number[6:14]} {number[14:]}"):
        assert kinds(f"ID {written}.") == [("ID_NUMBER", written)]


@pytest.mark.parametrize("birth", ["19490230", "19901301", "21000101", "18991231"])
def test_a_right_checksum_with_an_impossible_birth_date_is_not_an_id(birth):
    assert find_pii(f"编号 {resident_id('110105', birth)} 已作废") == []


def test_a_first_generation_15_digit_id_is_redacted_when_its_birth_date_is_real():
    assert kinds("老身份证110105491231002，") == [("ID_NUMBER", "110105491231002")]
    assert find_pii("老身份证110105490230002，") == []  # 30 February 1949


def wrong_checksum_ids_passing_luhn(count: int) -> list[str]:
    found = []
    for sequence in range(1000):
        body = f"11010519900307{sequence:03d}"
        good = mod_11_2.calc_check_digit(body)
        found += [body + c for c in "0123456789" if c != good and luhn.is_valid(body + c)]
    return found[:count]


@pytest.mark.parametrize("number", wrong_checksum_ids_passing_luhn(5))
def test_an_id_shaped_number_with_a_wrong_checksum_is_not_redacted_as_a_bank_card(number):
    assert luhn.is_valid(number)
    assert find_pii(f"身份证 {number}") == []


def test_a_real_18_digit_card_that_is_not_id_shaped_is_still_a_card():
    card = next(c for c in (f"62220212345678{i:04d}" for i in range(10000)) if luhn.is_valid(c))
    assert kinds(f"卡号：{card}。") == [("BANK_CARD", card)]


@pytest.mark.parametrize("text,value", [
    ("call +86-138-1234-5678.", "+86-138-1234-5678"), ("call +86 13812345678.", "+86 13812345678"),
    ("电话8613812345678", "8613812345678"), ("电话 0086 138 1234 5678", "0086 138 1234 5678"),
    ("office 021 6234 5678.", "021 6234 5678"), ("office +86-10-62345678.", "+86-10-62345678"),
    ("座机（010）62345678。", "（010）62345678"), ("tel (415)555-2671.", "(415)555-2671"),
    ("Paris +33 1 23 45 67 89.", "+33 1 23 45 67 89"), ("London +447911123456.", "+447911123456")])
def test_phones_with_country_codes_and_separators_are_whole_phones_not_cards(text, value):
    assert kinds(text) == [("PHONE", value)]


@pytest.mark.parametrize("text", ["１３８１２３４５６７８", "ｌｉ＠ｃｏｒｐ．ｃｎ", "１０．１．７．１３"])
def test_full_width_digits_and_letters_are_read_as_ascii(text):
    assert len(find_pii(f"客户：{text}。")) == 1


def test_a_number_after_a_json_escape_in_text_that_is_not_valid_json_is_found():
    assert kinds(r'{"note": "call\n13812345678\tor li@corp.cn' + "\\u5ba2" + "13912345678") == [
        ("PHONE", "13812345678"), ("EMAIL", "li@corp.cn"), ("PHONE", "13912345678")]


def test_emails_on_real_domains_that_end_like_example_com_are_redacted():
    assert kinds("mail li@myexample.com or a@mail.example.com.") == [("EMAIL", "li@myexample.com")]
    assert kinds("qq 13812345678@qq.com.") == [("EMAIL", "13812345678@qq.com")]


def test_json_object_keys_are_redacted_and_scanned():
    output = json.dumps({"13812345678": "Li Lei"}, ensure_ascii=False)
    [redacted], _ = redact_samples([Sample(id="k", instruction="Phone book.", output=output)])
    assert json.loads(redacted.output) == {"[PHONE_1]": "Li Lei"}
    assert [f.kind for f in scan_value({"13812345678": "x"})] == ["PHONE"]


def test_overlapping_matches_leave_no_fragment():
    # "+86 …" is a phone, "86 13812345678" (13 digits) may also pass Luhn: one finding over both, typed PHONE
    assert kinds("+86 13812345678") == [("PHONE", "+86 13812345678")]
    assert Redactor().text("a +33 1 23 45 67 89 b") == "a [PHONE_1] b"


@pytest.mark.parametrize("kind,value", [("ID_NUMBER", f"{i:018d}") for i in range(0, 300, 7)]
                         + [("BANK_CARD", f"{i:016d}") for i in range(0, 300, 7)])
def test_fake_ids_and_cards_are_never_flagged_again(kind, value):
    assert find_pii(fake_value(kind, value)) == []


@pytest.mark.parametrize("value", ["１３８－１２３４－５６７８", "ｌｉ＠ｃｏｒｐ．ｃｎ"])
def test_the_quick_pre_check_reads_full_width_forms(value):
    [redacted], counts = redact_samples([Sample(id="w", instruction=f"联系{value}", output="ok")])
    assert value not in redacted.instruction and sum(counts.values()) == 1


# false positives found on the shared LLaMA-Factory demo data (real text nobody here wrote)
@pytest.mark.parametrize("text", ["83265 / 305 = 275.43397884615385", "系统，4.2935472605893，2019年",
                                  "ISBN: 9780747542155", "472547338\n+960397912423686\n-------",
                                  "管理页面地址（通常是192.168.0.1或192.168.1.1）"])
def test_decimals_isbns_sums_and_router_defaults_are_not_personal_data(text):
    assert find_pii(text) == []


def test_a_chinese_95xx_debit_card_is_still_a_card():
    card = next(c for c in (f"955880{i:013d}" for i in range(100)) if luhn.is_valid(c))
    assert kinds(f"工行卡{card}。") == [("BANK_CARD", card)]
