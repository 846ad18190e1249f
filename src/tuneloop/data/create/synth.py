"""Code-generated data: templates × enum values × entity pools → input and answer, kept only when verified.

```
slots     product  = pool(["earbuds", "kettle"])                    text == value
          urgency  = enum({"high": [" Urgent!"], "medium": [""]})     text is a phrase, value the label
          amount   = [Choice("$35.50", 35.5), ...]                    any text, any JSON value
template  text   "My {product} broke[ (order {order_id})].{urgency}"  [...] is optional: dropped → its slots null
          answer {"product": "{product}", "order_id": "{order_id}", "urgency": "{urgency}"}
                  a string that is exactly "{slot}" becomes the slot's value (typed); other values stay as written
Generator(templates, slots).generate(n, seed) ──▶ Verifier(schema, rules, check).verify(row) ──▶ kept | failures
```

A row that fails its verifier is never kept; `synthesize` returns it as a `QuarantinedRow` with every reason.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.answers import is_refusal, parse_json, schema_errors, schema_validator
from tuneloop.data.create.contract import stated_values
from tuneloop.data.io.formats import sample_to_dict
from tuneloop.records import Lineage, Meta, QuarantinedRow, Sample


@dataclass(frozen=True)
class Choice:
    """One way to fill a slot: the text put into the input and the value put into the answer."""

    text: str
    value: Any


SlotSource = Sequence[Choice] | Callable[[random.Random], Choice]


def pool(values: Sequence[str]) -> tuple[Choice, ...]:
    """Entity pool: each value appears in the input exactly as it appears in the answer."""
    return tuple(Choice(v, v) for v in values)


def enum(phrases: Mapping[Any, Sequence[str]]) -> tuple[Choice, ...]:
    """Enum slot: each phrase in the input stands for its label in the answer."""
    return tuple(Choice(phrase, label) for label, options in phrases.items() for phrase in options)


@dataclass(frozen=True)
class Template:
    """One input pattern with its answer; `rejected` turns the right answer into a plausible wrong one (DPO)."""

    text: str
    answer: Any
    sample_type: str = "golden"
    expected: str = "answer"
    difficulty: str = "easy"
    lang: str = "en"
    name: str = ""
    domain: str | None = None
    rejected: Callable[[Any, random.Random], Any] | None = None


SLOT = re.compile(r"\{(\w+)\}")
OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def fill_answer(answer: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(answer, str):
        whole = SLOT.fullmatch(answer)
        return values.get(whole.group(1)) if whole else answer
    if isinstance(answer, list):
        return [fill_answer(v, values) for v in answer]
    if isinstance(answer, dict):
        return {k: fill_answer(v, values) for k, v in answer.items()}
    return answer


def answer_slots(answer: Any) -> list[str]:
    """Names of the slots an answer template takes its values from."""
    if isinstance(answer, str):
        whole = SLOT.fullmatch(answer)
        return [whole.group(1)] if whole else []
    items = answer.values() if isinstance(answer, dict) else answer if isinstance(answer, list) else []
    return [name for item in items for name in answer_slots(item)]


@dataclass
class Generator:
    """Renders templates into samples; every sample gets the same instruction, system and meta defaults."""

    templates: Sequence[Template]
    slots: Mapping[str, SlotSource]
    instruction: str = ""
    system: str = ""
    output_schema: str | dict[str, Any] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    drop_optional: float = 0.25
    null_phrases: Mapping[str, Sequence[str]] = field(default_factory=lambda: {"en": ("unknown", "N/A"), "zh": ("不清楚", "无")})

    def draw(self, name: str, rng: random.Random) -> Choice:
        if name not in self.slots:
            raise KeyError(f"template slot {{{name}}} has no source: add it to Generator(slots=...)")
        source = self.slots[name]
        return source(rng) if callable(source) else rng.choice(source)

    def render(self, template: Template, rng: random.Random, optional: str = "random", suffix: str = "") -> Sample:
        """A sample from `template`. optional: random | keep | drop (its slots null) | null (slots say 'unknown', null)."""
        texts: dict[str, str] = {}
        values: dict[str, Any] = {}

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in texts:
                choice = self.draw(name, rng)
                texts[name], values[name] = choice.text, choice.value
            return texts[name]

        def segment(match: re.Match[str]) -> str:
            mode = optional if optional != "random" else ("drop" if rng.random() < self.drop_optional else "keep")
            inner = match.group(1)
            names = SLOT.findall(inner)
            if mode == "keep":
                return SLOT.sub(fill, inner)
            for name in names:
                texts[name], values[name] = "", None
            if mode == "null":
                marker = rng.choice(self.null_phrases[template.lang])
                return SLOT.sub(lambda _: marker, inner)
            return ""

        text = OPTIONAL.sub(segment, template.text)
        text = SLOT.sub(fill, text) + suffix
        for name in answer_slots(template.answer):
            if name not in values:
                choice = self.draw(name, rng)
                values[name] = choice.value
        answer = fill_answer(template.answer, values)
        rejected = template.rejected(answer, rng) if template.rejected else None
        meta = Meta(**{**self.meta, "difficulty": template.difficulty, "source": "synth",
                       **({"domain": template.domain} if template.domain else {}), "template": template.name, "lang": template.lang})
        sample = Sample(
            instruction=self.instruction, input=text, output=answer, system=self.system, rejected=rejected,
            sample_type=template.sample_type, expected=template.expected, output_schema=self.output_schema, meta=meta,
        )
        sample.lineage = Lineage(source_id=sample.id)
        return sample

    def generate(self, n: int, seed: int = 0, templates: Sequence[Template] | None = None) -> list[Sample]:
        """`n` samples, templates taken in shuffled rounds so each is used about equally; deterministic in `seed`."""
        rng = random.Random(seed)
        pool_ = list(templates or self.templates)
        order: list[Template] = []
        while len(order) < n:
            batch = pool_[:]
            rng.shuffle(batch)
            order.extend(batch)
        return [self.render(t, rng) for t in order[:n]]


# -- verification -------------------------------------------------------------------------------------------------
VerifyRule = Callable[[Sample, Any], str | None]


def grounded(*fields: str) -> VerifyRule:
    """Each named answer field that is a string must appear verbatim in the input (no invented entities)."""

    def rule(sample: Sample, answer: Any) -> str | None:
        if not isinstance(answer, dict):
            return None
        missing = [f for f in fields if isinstance(answer.get(f), str) and answer[f] not in sample.input]
        return f"answer fields {missing} are not stated in the input" if missing else None

    return rule


def numbers_stated(*fields: str) -> VerifyRule:
    """Each named answer field that is a number must be stated in the input in some spelling (35.5, 35.50)."""

    def rule(sample: Sample, answer: Any) -> str | None:
        if not isinstance(answer, dict):
            return None
        for name in fields:
            for _, spellings in stated_values({name: answer.get(name)}):
                if isinstance(answer.get(name), (int, float)) and not any(s in sample.input for s in spellings):
                    return f"answer field {name}={answer[name]} is not stated in the input"
        return None

    return rule


def refusal_matches(refusal: Any) -> VerifyRule:
    """Rows that must be refused answer exactly the refusal; rows that must be answered are never a refusal.

    "A refusal" is the one rule eval scores by (`tuneloop.answers.is_refusal`, with `refusal` as the task's
    refusal form), so no generated must-answer row is one that eval would count as refused.
    """
    form = refusal if isinstance(refusal, dict) else None

    def rule(sample: Sample, answer: Any) -> str | None:
        if sample.expected == "refuse" and answer != refusal:
            return "expected=refuse but the answer is not the task's refusal"
        if sample.expected == "answer" and (answer == refusal or is_refusal(sample.output, form=form)):
            return "expected=answer but the answer is a refusal"
        return None

    return rule


@dataclass
class Verifier:
    """What a generated row must satisfy: a JSON Schema, rules over (sample, answer), and/or a free check."""

    schema: dict[str, Any] | None = None
    rules: Sequence[VerifyRule] = ()
    check: Callable[[Sample], str | list[str] | None] | None = None

    def verify(self, sample: Sample) -> list[str]:
        """Every reason the row is wrong (empty: verified)."""
        reasons: list[str] = []
        ok, answer = parse_json(sample.output)
        if self.schema is not None:
            if not ok:
                return ["the answer is not valid JSON"]
            reasons += [f"schema: {error}" for error in schema_errors(schema_validator(self.schema), answer)]
        for rule in self.rules:
            reason = rule(sample, answer)
            if reason:
                reasons.append(reason)
        if self.check is not None:
            extra = self.check(sample)
            reasons += [extra] if isinstance(extra, str) else list(extra or [])
        return reasons


@dataclass
class SynthResult:
    samples: list[Sample] = field(default_factory=list)
    failures: list[QuarantinedRow] = field(default_factory=list)
    duplicates: int = 0
    counts: Counter = field(default_factory=Counter)  # sample_type -> rows kept


def keep_verified(rows: Sequence[Sample], verifier: Verifier, source: str = "synth", result: SynthResult | None = None) -> SynthResult:
    """Rows that pass the verifier; failures become quarantined rows with their reasons; exact repeats are counted."""
    result = result or SynthResult()
    seen = {s.id for s in result.samples}
    for row in rows:
        reasons = verifier.verify(row)
        if reasons:
            result.failures.append(QuarantinedRow(source_file=source, sample_id=row.id, stage="synth",
                                                  reason="; ".join(reasons), raw=sample_to_dict(row)))
        elif row.id in seen:
            result.duplicates += 1
        else:
            seen.add(row.id)
            result.samples.append(row)
            result.counts[row.sample_type] += 1
    return result


@dataclass
class SynthSpec:
    """A declared data set: generator, verifier, and optionally a corner-case pack (`.rows(generator, n, seed)`)."""

    generator: Generator
    verifier: Verifier
    corner_cases: Any = None
    corner_share: float = 0.15

    def synthesize(self, n: int, seed: int = 0, source: str = "synth") -> SynthResult:
        """`n` rows asked (a `corner_share` of them corner cases), verified; only rows that pass are kept."""
        corner_n = round(n * self.corner_share) if self.corner_cases is not None else 0
        rows = self.generator.generate(n - corner_n, seed=seed)
        if corner_n:
            rows += self.corner_cases.rows(self.generator, corner_n, seed=seed)
        return keep_verified(rows, self.verifier, source=source)
