"""When a matched string is personal data: checksums, real dates and reserved ranges, not the shape alone.

Each function takes what a recognizer's pattern matched (separators included) and answers yes or no.

| type      | personal data when                                                                            |
|-----------|-----------------------------------------------------------------------------------------------|
| ID_NUMBER | 18 chars: province code, real birth date (1900..today), ISO 7064 mod 11-2 check digit          |
|           | 15 digits (issued until 2013, no check digit): province code and real birth date 19YYMMDD      |
| BANK_CARD | 13-19 digits, issuer 2-6 or 95 (15 digits: 34/37), Luhn; never ID-shaped (see below)         |
| EMAIL     | any domain but the reserved example/test ones                                                  |
| IP        | any address but documentation ranges, loopback, unspecified, netmasks, router defaults        |
| PHONE     | 7-15 digits, not a fictional 555-01xx number                                                   |

>>> valid_prc_id("11010519491231002X"), valid_prc_id("110105194912310021")  # wrong check digit
(True, False)
>>> valid_prc_id("11010519490230002X")  # 30 February
False
>>> valid_bank_card("4111 1111 1111 1111"), valid_bank_card("4111 1111 1111 1112")
(True, False)
"""

from __future__ import annotations

import datetime
import ipaddress
import re

from stdnum import luhn
from stdnum.iso7064 import mod_11_2

# Province-level codes (GB/T 2260), the first two digits of every resident ID; 71/81/82/83 are Taiwan, Hong Kong
# and Macau (residence permits). A complete, stable list: unlike the district table (python-stdnum's `cn.ric`
# misses districts created or renamed after its data snapshot), it cannot reject a real person's number.
PROVINCES = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42", "43",
    "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82", "83"})
_SEPARATORS = re.compile(r"[ -]")
_EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net")
_EXAMPLE_TLDS = ("example", "invalid", "test", "localhost")
_DOC_NETWORKS = [ipaddress.ip_network(n) for n in
                 ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
# home routers' factory addresses: in instructions ("open 192.168.1.1") they name a product default shared by
# millions, not a person's host
_ROUTER_DEFAULTS = frozenset(ipaddress.ip_address(a) for a in ("192.168.0.1", "192.168.1.1", "10.0.0.1"))


def digits_of(text: str) -> str:
    return _SEPARATORS.sub("", text).upper()


def _birth_date(year: int, month: int, day: int) -> bool:
    try:
        born = datetime.date(year, month, day)
    except ValueError:  # 30 February, month 13
        return False
    return datetime.date(1900, 1, 1) <= born <= datetime.date.today()


def valid_prc_id(text: str) -> bool:
    """An 18-char resident ID (ISO 7064 mod 11-2 + birth date) or a 15-digit first-generation one (birth date)."""
    number = digits_of(text)
    if number[:2] not in PROVINCES:
        return False
    if len(number) == 18 and number[:17].isdigit():
        date = _birth_date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        return date and mod_11_2.is_valid(number)
    if len(number) == 15 and number.isdigit():
        return _birth_date(1900 + int(number[6:8]), int(number[8:10]), int(number[10:12]))
    return False


def id_shaped(digits: str) -> bool:
    """18 digits laid out as a resident ID: a province code, then a birth field 18YY-20YY, month 00-12, day 00-31.

    Only the ID rules decide such a number: a wrong check digit or 30 February makes it a mistyped or made-up ID,
    not a bank card. A random 18-digit card number has this layout about 8 times in 10,000, while a wrong ID check
    digit passes Luhn one time in ten, which made look-alike IDs come out as cards.
    """
    return (len(digits) == 18 and digits[:2] in PROVINCES and digits[6:8] in ("18", "19", "20")
            and digits[10:12] <= "12" and digits[12:14] <= "31")


def valid_bank_card(text: str) -> bool:
    """13-19 digits with a bank's issuer digit (ISO/IEC 7812: 2-6 banking, and 95, old Chinese debit cards) that
    pass Luhn. Numbers starting 0, 1, 7 or 8 are timestamps, order numbers and phones.

    15 digits are a card only as American Express (34, 37), the one issuer of 15-digit numbers: any other 15-digit
    number is a first-generation resident ID's shape, which only the ID rules decide."""
    digits = digits_of(text)
    if not (13 <= len(digits) <= 19 and digits.isdigit() and digits[0] in "234569") or id_shaped(digits):
        return False
    if digits[0] == "9" and digits[1] != "5":
        return False  # 978/979 are ISBN-13s and EANs; the 9 cards in use are Chinese banks' 95xx
    return (len(digits) != 15 or digits[:2] in ("34", "37")) and luhn.is_valid(digits)


def valid_email(text: str) -> bool:
    domain = text.rsplit("@", 1)[-1].lower()
    reserved = domain in _EXAMPLE_DOMAINS or domain.endswith(tuple("." + d for d in _EXAMPLE_DOMAINS))
    return not reserved and domain.rsplit(".", 1)[-1] not in _EXAMPLE_TLDS


def _netmask(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    bits = f"{int(address):0{address.max_prefixlen}b}"
    return "01" not in bits and bits[0] == "1"  # ones then zeros: 255.255.255.0, not a host


def valid_ip(text: str) -> bool:
    """A host address: documentation ranges, loopback, 0.0.0.0 and netmasks name no one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the zone is not the address
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified or _netmask(address) or address in _ROUTER_DEFAULTS:
        return False
    if address.version == 6 and not any(c.isdigit() for c in text):
        return False  # "A::B", "dead::beef": C++ names and words, not hosts (real addresses hold a digit)
    return not any(address in network for network in _DOC_NETWORKS if network.version == address.version)


def valid_phone(text: str) -> bool:
    """7-15 digits (E.164), not a fictional 555-01xx; "+" and more than 13 digits without a separator is a sum's
    line ("+960397912423686"), not a phone: written that way, phones have at most 13 (+86 and a mobile)."""
    digits = re.sub(r"[^0-9]", "", text)
    if text.startswith("+") and text[1:].isdigit() and len(digits) > 13:
        return False
    return not re.search(r"555[ .-]?01[0-9][0-9]$", text) and 7 <= len(digits) <= 15
