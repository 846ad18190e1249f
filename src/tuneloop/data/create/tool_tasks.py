"""Code-generated function-calling data: a catalogue of functions, argument generators, and a verifier.

```
ToolFunction  name, description, parameters (JSON Schema), phrasings "Book a table at {restaurant}[ for {people}]",
              arguments {"restaurant": "{restaurant}", "people": "{people}"}   (synth's slot filling: typed values)
              an optional [...] part left out → its argument left out of the call (optional arguments omitted)
ToolTaskGenerator(catalogue).generate(n, seed)
  row   tools = the function + `distractors` others (shuffled); answer = the call, answer_kind tool_calls
  row   no suitable tool (share `no_tool_share`): an off-topic request beside the tools → a refusal in text
verify_tool_task(sample, truth) ─▶ reasons: the call fits its function (tools.call_problems), it is exactly the
                                   generator's truth, every free-text argument is stated in the prompt
```
Lineage groups rows by function (`lineage.source_id = "fn:<name>"`): a split by source_id puts a function's
rows on one side only, so functions at test time are never seen in training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.create.synth import Generator, SlotSource, Template
from tuneloop.records import Lineage, QuarantinedRow, Sample
from tuneloop.tools import TOOL_CALLS, call_problems, canonical_calls, parse_calls, sample_tools

NO_TOOL_REFUSAL = "I'm sorry, none of the available tools can do that."
OFF_TOPIC = ("Write me a short poem about the sea.", "What is the capital of Australia?",
             "Tell me a joke about programmers.", "Summarize the plot of Hamlet in one sentence.",
             "How do I say thank you in Japanese?", "Which is bigger, a whale or an elephant?")


@dataclass(frozen=True)
class ToolFunction:
    """One function of the catalogue, with the ways a user asks for it and how their words become arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    phrasings: tuple[str, ...]
    arguments: dict[str, Any]
    slots: Mapping[str, SlotSource]

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def _without_none(value: Any) -> Any:
    """An argument template's filled value with dropped (None) optional arguments left out."""
    if isinstance(value, dict):  # an optional object all of whose slots were dropped is left out whole
        kept = {k: _without_none(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v and value[k])}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


@dataclass
class ToolTaskGenerator:
    catalogue: Sequence[ToolFunction]
    distractor_pool: Sequence[ToolFunction] = ()  # functions offered beside the right one (default: the catalogue)
    distractors: int = 2
    instruction: str = ""
    system: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    no_tool_share: float = 0.15
    drop_optional: float = 0.4

    def _one(self, function: ToolFunction, rng: random.Random) -> tuple[Sample, dict[str, Any]]:
        generator = Generator([], function.slots, drop_optional=self.drop_optional)
        template = Template(text=rng.choice(function.phrasings), answer=function.arguments, name=function.name)
        rendered = generator.render(template, rng)
        truth = {"name": function.name, "arguments": _without_none(json.loads(rendered.output))}
        sample = self._sample(function, rendered.input, json.dumps(truth, ensure_ascii=False), rng)
        return sample, truth

    def _offered(self, function: ToolFunction | None, rng: random.Random) -> list[dict[str, Any]]:
        pool = [f for f in (self.distractor_pool or self.catalogue) if f is not function]
        offered = ([function] if function else []) + rng.sample(pool, min(self.distractors + (function is None), len(pool)))
        rng.shuffle(offered)
        return [f.definition() for f in offered]

    def _sample(self, function: ToolFunction | None, prompt: str, output: str, rng: random.Random) -> Sample:
        # a no-tool row is grouped by its request, so refusals land on every side of the split
        group = f"fn:{function.name}" if function else f"fn:none:{OFF_TOPIC.index(prompt) if prompt in OFF_TOPIC else prompt}"
        extra: dict[str, Any] = {"tools": self._offered(function, rng)}
        if function:
            extra["answer_kind"] = TOOL_CALLS
        meta = {**self.meta, "source": "synth", "task_type": "function-calling",
                "template": function.name if function else "no-tool"}
        sample = Sample(instruction=self.instruction or prompt, input=prompt if self.instruction else "",
                        output=output, system=self.system, meta=meta,
                        expected="answer" if function else "refuse",
                        sample_type="golden" if function else "boundary", **extra)
        sample.lineage = Lineage(source_id=group)
        return sample

    def generate(self, n: int, seed: int = 0) -> list[tuple[Sample, dict[str, Any] | None]]:
        """`n` (sample, truth) pairs: calls spread evenly over the catalogue, and no-tool rows (truth None)."""
        rng = random.Random(seed)
        rows: list[tuple[Sample, dict[str, Any] | None]] = []
        order: list[ToolFunction] = []
        for index in range(n):
            if rng.random() < self.no_tool_share:
                rows.append((self._sample(None, rng.choice(OFF_TOPIC), NO_TOOL_REFUSAL, rng), None))
                continue
            if not order:
                order = list(self.catalogue)
                rng.shuffle(order)
            rows.append(self._one(order.pop(), rng))
        return rows


def _stated(value: Any, schema: Any, prompt: str) -> list[str]:
    """Free-text argument values (no enum, no format) that the prompt does not state."""
    if isinstance(value, dict):
        properties = (schema or {}).get("properties") or {}
        return [miss for key, item in value.items() for miss in _stated(item, properties.get(key), prompt)]
    if isinstance(value, list):
        return [miss for item in value for miss in _stated(item, (schema or {}).get("items"), prompt)]
    if isinstance(value, str) and not (schema or {}).get("enum") and value not in prompt:
        return [value]
    return []


def verify_tool_task(sample: Sample, truth: dict[str, Any] | None) -> list[str]:
    """Why a generated row is wrong (empty: keep it)."""
    if truth is None:
        return [] if sample.expected == "refuse" and sample.output == NO_TOOL_REFUSAL else ["a no-tool row must refuse"]
    calls = parse_calls(sample.output)
    if calls is None:
        return ["the answer is not a call"]
    functions = sample_tools(sample)
    reasons = call_problems(calls, functions)
    if canonical_calls(calls) != canonical_calls([truth]):
        reasons.append(f"the call {canonical_calls(calls)} is not the generator's truth {canonical_calls([truth])}")
    parameters = next((f["parameters"] for f in functions if f["name"] == truth["name"]), {})
    missing = _stated(truth["arguments"], parameters, sample.prompt)
    if missing:
        reasons.append(f"argument values {missing} are not stated in the prompt")
    return reasons


def keep_verified_tasks(rows: Sequence[tuple[Sample, dict[str, Any] | None]], source: str) -> tuple[list[Sample], list[QuarantinedRow]]:
    """The rows that pass `verify_tool_task`, and the others as quarantine rows with every reason."""
    kept: list[Sample] = []
    failed: list[QuarantinedRow] = []
    for sample, truth in rows:
        reasons = verify_tool_task(sample, truth)
        if reasons:
            failed.append(QuarantinedRow(source_file=source, sample_id=sample.id, stage="synth",
                                         reason="; ".join(reasons), raw=sample.model_dump(mode="json")))
        else:
            kept.append(sample)
    return kept, failed
