"""Property tests: a valid number of every recognizer is found wherever it sits, a wrong-checksum look-alike never.

Positions: the end of an English or Chinese sentence, glued inside Chinese text, next to ASCII and full-width
punctuation (。，；：（）「」), and inside a JSON string value (with and without ASCII escapes of the Chinese).
"""

from __future__ import annotations

import datetime
import ipaddress
import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stdnum import luhn
from stdnum.iso7064 import mod_11_2

from tuneloop.data.gate.pii import Redactor, find_pii
from tuneloop.data.gate.pii_ids import PROVINCES, id_shaped, valid_prc_id

EXAMPLES = settings(max_examples=300, deadline=None)


def fixed_digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


# ---- valid numbers and their look-alikes, per recognizer ----

@st.composite
def resident_ids(draw, valid: bool = True) -> str:
    head = draw(st.sampled_from(sorted(PROVINCES))) + draw(fixed_digits(4))
    wrong_date = not valid and draw(st.booleans())
    if wrong_date:  # the right checksum, an impossible or future birth date
        born = draw(st.sampled_from(["19490230", "20010229", "19900431", "19900001", "19900100", "20991231"]))
    else:
        born = draw(st.dates(datetime.date(1900, 1, 1), datetime.date.today())).strftime("%Y%m%d")
    body = head + born + draw(fixed_digits(3))
    check = mod_11_2.calc_check_digit(body)
    if not valid and not wrong_date:
        check = draw(st.sampled_from([c for c in "0123456789X" if c != check]))
    number = body + check
    number = number.lower() if draw(st.booleans()) else number
    separator = draw(st.sampled_from(["", "", " "]))
    return separator.join([number[:6], number[6:14], number[14:]])


@st.composite
def old_resident_ids(draw, valid: bool = True) -> str:
    head = draw(st.sampled_from(sorted(PROVINCES))) + draw(fixed_digits(4))
    if valid:
        born = draw(st.dates(datetime.date(1900, 1, 1), datetime.date(1999, 12, 31))).strftime("%y%m%d")
    else:
        born = draw(st.sampled_from(["490230", "900431", "901301", "900001", "900132"]))
    number = head + born + draw(fixed_digits(3))
    # a 15-digit number starting 34/37 that passes Luhn is an American Express card (pii_ids.valid_bank_card)
    assume(valid or not (number[:2] in ("34", "37") and luhn.is_valid(number)))
    return number


@st.composite
def bank_cards(draw, valid: bool = True) -> str:
    length = draw(st.integers(13, 19))
    issuer = draw(st.sampled_from(["34", "37"] if length == 15 else [*"23456", "95"]))
    body = issuer + draw(fixed_digits(length - 1 - len(issuer)))
    check = luhn.calc_check_digit(body)
    if not valid:
        check = draw(st.sampled_from([c for c in "0123456789" if c != check]))
    number = body + check
    assume(not id_shaped(number) and not valid_prc_id(number))  # IDs decide those (see pii_ids.id_shaped)
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(number[i:i + 4] for i in range(0, len(number), 4))


@st.composite
def mobiles(draw) -> str:
    number = "1" + draw(st.sampled_from("3456789")) + draw(fixed_digits(9))
    separator = draw(st.sampled_from(["", " ", "-"]))
    prefix = draw(st.sampled_from(["", "", "+86 ", "+86-", "+86", "0086 ", "(+86) "]))
    return prefix + separator.join([number[:3], number[3:7], number[7:]])


@st.composite
def landlines(draw) -> str:
    area = draw(st.sampled_from(["10", "21", "22", "28", "755", "571", "351", "991"]))
    local = draw(st.sampled_from("23456789")) + draw(fixed_digits(7 if len(area) == 3 else 7))
    form = draw(st.sampled_from(["0{a}-{l}", "(0{a}){l}", "0{a} {l4} {r4}", "+86 {a} {l4} {r4}", "+86-{a}-{l}"]))
    return form.format(a=area, l=local, l4=local[:4], r4=local[4:])


@st.composite
def nanp_phones(draw) -> str:
    area = draw(st.sampled_from("23456789")) + draw(fixed_digits(2))
    exchange = draw(st.sampled_from("23456789")) + draw(fixed_digits(2))
    line = draw(fixed_digits(4))
    assume(not (exchange == "555" and line.startswith("01")))
    form = draw(st.sampled_from(["({a}) {e}-{n}", "{a}-{e}-{n}", "+1 {a} {e} {n}", "({a}){e}-{n}", "{a}.{e}.{n}"]))
    return form.format(a=area, e=exchange, n=line)


# 11 digits outside the mobile ranges (10x, 11x, 12x), and the fictional 555-01xx
not_phones = st.one_of(
    st.builds(lambda second, rest: "1" + second + rest, st.sampled_from("012"), fixed_digits(9)),
    st.builds(lambda area, line: f"({area}) 555-01{line}", st.sampled_from(["415", "212", "617"]), fixed_digits(2)))


def emails(valid: bool = True) -> st.SearchStrategy[str]:
    local = st.from_regex(r"[a-z][a-z0-9]{0,8}(?:[._+][a-z0-9]{1,6})?", fullmatch=True)
    domain = (st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]\.(?:com|cn|net|org|io|com\.cn|co\.uk)", fullmatch=True)
              if valid else st.sampled_from(["example.com", "example.org", "mail.example.net", "corp.test",
                                             "host.invalid"]))
    return st.builds(lambda l, d: f"{l}@{d}", local, domain)


@st.composite
def ipv4s(draw, valid: bool = True) -> str:
    octets = [draw(st.integers(1, 223)), draw(st.integers(0, 255)), draw(st.integers(0, 255)),
              draw(st.integers(1, 254))]
    if valid:
        address = ipaddress.ip_address(".".join(map(str, octets)))
        assume(not address.is_loopback and not any(address in ipaddress.ip_network(n) for n in (
            "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")))
    else:
        octets[draw(st.integers(0, 3))] = draw(st.integers(256, 999))
    return ".".join(map(str, octets))


@st.composite
def ipv6s(draw) -> str:
    address = ipaddress.IPv6Address(draw(st.integers(2**96, 2**128 - 1)))
    text = address.compressed
    assume(address not in ipaddress.ip_network("2001:db8::/32") and any(c.isdigit() for c in text))
    return text


VALID = {
    "ID_NUMBER": st.one_of(resident_ids(), old_resident_ids()),
    "BANK_CARD": bank_cards(),
    "PHONE": st.one_of(mobiles(), landlines(), nanp_phones()),
    "EMAIL": emails(),
    "IP": st.one_of(ipv4s(), ipv6s()),
}
LOOK_ALIKES = st.one_of(resident_ids(valid=False), old_resident_ids(valid=False), bank_cards(valid=False),
                        not_phones, emails(valid=False), ipv4s(valid=False))
valid_items = st.sampled_from(sorted(VALID)).flatmap(lambda kind: st.tuples(st.just(kind), VALID[kind]))

# ---- where they sit ----

PUNCTUATION = list("。，；：（）「」") + list(".,;:()\"'")
frames = st.one_of(
    st.sampled_from(["Please update the record to {}.", "The customer wrote back with {}.", "请把记录改成{}。",
                     "客户说{}。", "客户{}已经确认", "订单备注{}请核对", "{}", "From {} to the team"]),
    st.builds(lambda a, b, word: word[0] + a + "{}" + b + word[1], st.sampled_from(PUNCTUATION),
              st.sampled_from(PUNCTUATION), st.sampled_from([("备注", "谢谢"), ("note ", " thanks"), ("", "")])))


def covering(text: str, value: str) -> list:
    start = text.index(value)
    return [f for f in find_pii(text) if f.start < start + len(value) and start < f.end]


@EXAMPLES
@given(valid_items, frames)
def test_a_valid_number_is_found_whole_and_typed_wherever_it_sits(item, frame):
    kind, value = item
    text = frame.format(value)
    found = covering(text, value)
    start = text.index(value)
    assert len(found) == 1, (text, found)
    assert found[0].start <= start and found[0].end >= start + len(value), (text, found)
    assert found[0].kind == kind, (text, found)


@EXAMPLES
@given(LOOK_ALIKES, frames)
def test_a_wrong_checksum_look_alike_is_kept_wherever_it_sits(value, frame):
    text = frame.format(value)
    assert covering(text, value) == [], text
    assert value in Redactor().text(text)


@EXAMPLES
@given(valid_items, frames, st.booleans())
def test_a_valid_number_inside_a_json_string_value_is_redacted_and_the_json_stays_valid(item, frame, ascii_only):
    kind, value = item
    text = json.dumps({"note": frame.format(value), "n": 1}, ensure_ascii=ascii_only)
    redacted = json.loads(Redactor().json_text(text))
    assert value not in redacted["note"] and f"[{kind}_1]" in redacted["note"], redacted


@EXAMPLES
@given(LOOK_ALIKES, frames, st.booleans())
def test_a_look_alike_inside_a_json_string_value_is_kept(value, frame, ascii_only):
    text = json.dumps({"note": frame.format(value)}, ensure_ascii=ascii_only)
    assert json.loads(Redactor().json_text(text))["note"] == frame.format(value)


@EXAMPLES
@given(valid_items, frames)
def test_json_escaped_text_that_is_not_valid_json_is_still_redacted(item, frame):
    kind, value = item
    broken = json.dumps({"note": "客户\n" + frame.format(value)}, ensure_ascii=True)[:-1]  # cut: not JSON any more
    assert value not in Redactor().json_text(broken)
