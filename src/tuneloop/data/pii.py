"""Personal data: recognizers, redaction with typed placeholders or fake values, and the final scan.

Recognizers (a match whose checksum fails is not personal data and stays):

| type      | what                                                        | check                       |
|-----------|-------------------------------------------------------------|-----------------------------|
| ID_NUMBER | 18-digit PRC resident ID                                    | python-stdnum `cn.ric`      |
| BANK_CARD | 13-19 digits, spaces or dashes allowed                      | Luhn (`stdnum.luhn`)        |
| EMAIL     | name@domain.tld (reserved example domains excepted)         |                             |
| IP        | IPv4 / IPv6 (documentation ranges excepted)                 | `ipaddress`                 |
| PHONE     | Chinese mobile (+86 1[3-9]x), landline (0xx-xxxxxxx), English/intl | separators required  |

Placeholders are consistent within a sample: the same number is `[PHONE_1]` in the input and in the answer, a
second number `[PHONE_2]`. Fake values are consistent across the data set and never match a recognizer again
(fake mobiles start with 100, fake IDs fail their checksum, fake cards fail Luhn, fake e-mails use example.com,
fake IPs come from 192.0.2.0/24). JSON answers are redacted inside their string values, so they stay valid JSON.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stdnum import luhn
from stdnum.cn import ric

from tuneloop.records import Sample

_EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net", "example.invalid")
_DOC_NETWORKS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _valid_ric(text: str) -> bool:
    return ric.is_valid(text)


def _valid_card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def _valid_email(text: str) -> bool:
    return not text.lower().endswith(_EXAMPLE_DOMAINS)


def _valid_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not any(address in network for network in _DOC_NETWORKS if network.version == address.version)


def _valid_phone(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return not re.search(r"555-?01\d\d$", text) and 7 <= len(digits) <= 15  # 555-01xx numbers are fictional


@dataclass(frozen=True)
class Recognizer:
    kind: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] = lambda _: True


# Boundaries are ASCII letters and digits, not \w: a number glued to Chinese text ("电话13812345678") is still a
# number, while one inside a hex digest or a code is not.
_B = "0-9A-Za-z"
RECOGNIZERS: tuple[Recognizer, ...] = (
    Recognizer("EMAIL", re.compile(rf"(?<![{_B}.+_-])[{_B}._+-]+@[{_B}-]+(?:\.[{_B}-]+)*\.[A-Za-z]{{2,}}(?![{_B}-])"),
               _valid_email),
    Recognizer("ID_NUMBER", re.compile(rf"(?<![{_B}])\d{{17}}[\dXx](?![{_B}])"), _valid_ric),
    Recognizer("BANK_CARD", re.compile(rf"(?<![{_B}-])\d(?:[ -]?\d){{12,18}}(?![{_B}-])"), _valid_card),
    Recognizer("PHONE", re.compile(rf"(?<![{_B}+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{{4}}){{2}}(?![{_B}])")),
    Recognizer("PHONE", re.compile(rf"(?<![{_B}])(?:\(0[1-9]\d{{1,2}}\)[ -]?|0[1-9]\d{{1,2}}[ -])\d{{7,8}}(?:-\d{{1,4}})?(?![{_B}])")),
    Recognizer("IP", re.compile(rf"(?<![{_B}.])(?:\d{{1,3}}\.){{3}}\d{{1,3}}(?![{_B}.])"), _valid_ip),
    Recognizer("IP", re.compile(rf"(?<![{_B}:])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}[0-9A-Fa-f]{{0,4}}(?![{_B}:])"), _valid_ip),
    Recognizer("PHONE", re.compile(rf"(?<![{_B}+])(?:\+\d{{1,3}}[ .-]?)?(?:\(\d{{3}}\)|\d{{3}})[ .-]\d{{3}}[ .-]\d{{4}}(?![{_B}])"),
               _valid_phone),
    Recognizer("PHONE", re.compile(rf"(?<![{_B}+])\+\d{{1,3}}(?:[ -]\d{{1,4}}){{2,4}}(?![{_B}])"), _valid_phone),
)


# every built-in recognizer's match holds one of these: a quick test before the full scan of a sample
_MAYBE_PERSONAL = re.compile(r"\d[\d .()+-]{5,}|@|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")


@dataclass
class Finding:
    kind: str
    start: int
    end: int
    value: str


def recognizers(extra_patterns: Mapping[str, str] | None = None) -> tuple[Recognizer, ...]:
    """The built-in recognizers plus the user's `data.pii.extra_patterns` (TYPE: regex)."""
    extra = tuple(Recognizer(kind.upper(), re.compile(regex)) for kind, regex in (extra_patterns or {}).items())
    return extra + RECOGNIZERS


def find_pii(text: str, active: Iterable[Recognizer] = RECOGNIZERS) -> list[Finding]:
    """Non-overlapping findings in order; an earlier recognizer wins an overlap (IDs before bank cards)."""
    if not text:
        return []
    findings: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for recognizer in active:
        for match in recognizer.pattern.finditer(text):
            start, end = match.span()
            if any(start < b and a < end for a, b in taken) or not recognizer.valid(match.group()):
                continue
            findings.append(Finding(recognizer.kind, start, end, match.group()))
            taken.append((start, end))
    return sorted(findings, key=lambda f: f.start)


def fake_value(kind: str, value: str) -> str:
    """A stable stand-in that no recognizer flags again."""
    digest = int(hashlib.sha256(value.encode("utf-8")).hexdigest(), 16)
    if kind == "PHONE":
        return f"100{digest % 10**8:08d}"  # no Chinese mobile range starts with 10
    if kind == "ID_NUMBER":
        body = f"{digest % 10**17:017d}"
        good = ric.calc_check_digit(body + "0")
        return body + ("1" if good != "1" else "2")  # a deliberately wrong check digit
    if kind == "BANK_CARD":
        body = f"{digest % 10**15:015d}"
        check = luhn.calc_check_digit("6" + body)
        return "6" + body + str((int(check) + 1) % 10)  # fails Luhn
    if kind == "EMAIL":
        return f"user{digest % 10**6}@example.com"
    if kind == "IP":
        return f"192.0.2.{digest % 254 + 1}"
    return f"{kind.lower()}-{digest % 10**6}"


@dataclass
class Redactor:
    """Redacts one sample at a time; placeholders are numbered per sample, fake values per data set."""

    mode: str = "placeholder"
    extra_patterns: Mapping[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active = recognizers(self.extra_patterns)
        self._names: dict[tuple[str, str], str] = {}

    def _replacement(self, kind: str, value: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.mode == "fake":
            return fake_value(kind, value)
        key = (kind, value)
        if key not in self._names:
            number = 1 + sum(1 for k in self._names if k[0] == kind)
            self._names[key] = f"[{kind}_{number}]"
        return self._names[key]

    def text(self, text: str) -> str:
        findings = find_pii(text, self.active)
        replacements = [self._replacement(f.kind, f.value) for f in findings]  # numbered in reading order
        for finding, replacement in zip(reversed(findings), reversed(replacements)):
            text = text[:finding.start] + replacement + text[finding.end:]
        return text

    def value(self, value: Any) -> Any:
        """Any JSON value: strings (JSON text inside kept valid), numbers that are personal data, lists, dicts."""
        if isinstance(value, str):
            return self.json_text(value)
        if isinstance(value, int) and not isinstance(value, bool):
            redacted = self.text(str(value))
            return value if redacted == str(value) else redacted
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def json_text(self, text: str) -> str:
        """A string that may hold a JSON object/array: redact inside its values and keep it valid JSON."""
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return self.text(text)
            redacted = self.value(parsed)
            return text if redacted == parsed else json.dumps(redacted, ensure_ascii=False)
        return self.text(text)

    def sample(self, sample: Sample) -> Sample:
        """The sample with every text field redacted (ids and lineage kept: they are identifiers)."""
        if not self.extra_patterns and not _MAYBE_PERSONAL.search(sample.model_dump_json()):
            return sample  # no run of digits, no @, no IPv6 colons: nothing a built-in recognizer could match
        self._names = {}
        data = sample.model_dump(mode="json")
        for key, value in data.items():
            if key not in ("id", "lineage"):
                data[key] = self.value(value)
        return Sample.model_validate(data)

    def row(self, raw: Any) -> Any:
        """A raw quarantined row (any JSON value or text)."""
        self._names = {}
        if isinstance(raw, dict):
            return {k: (v if k in ("id", "lineage") else self.value(v)) for k, v in raw.items()}
        return self.value(raw)


def redact_samples(samples: Iterable[Sample], mode: str = "placeholder",
                   extra_patterns: Mapping[str, str] | None = None) -> tuple[list[Sample], dict[str, int]]:
    """Redacted copies of the samples and how many findings of each type were replaced."""
    redactor = Redactor(mode=mode, extra_patterns=dict(extra_patterns or {}))
    return [redactor.sample(s) for s in samples], redactor.counts


def scan_value(value: Any, active: Iterable[Recognizer] = RECOGNIZERS, skip_keys: frozenset[str] = frozenset()) -> list[Finding]:
    """Every finding left in a JSON value (the final scan over what the gate writes)."""
    if isinstance(value, str):
        return find_pii(value, tuple(active))
    if isinstance(value, int) and not isinstance(value, bool):  # floats are measurements, never numbers of a person
        return find_pii(str(value), tuple(active))
    if isinstance(value, list):
        return [f for v in value for f in scan_value(v, active, skip_keys)]
    if isinstance(value, dict):
        return [f for k, v in value.items() if k not in skip_keys for f in scan_value(v, active, skip_keys)]
    return []
