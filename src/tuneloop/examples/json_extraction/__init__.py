"""The json-extraction demo: customer-service messages (Chinese and English) → a short ticket JSON.

```
input   "My wireless earbuds arrived broken (order K482913). I want a refund of $35.50. This is urgent!"
output  {"intent": "refund", "product": "wireless earbuds", "order_id": "K482913", "urgency": "high", "refund_amount": 35.5}
refusal {"intent": "out_of_scope", "product": null, "order_id": null, "urgency": null, "refund_amount": null}
```

The refusal is itself a valid answer of the schema (its `x-refusal`), so every answer validates; eval, serving and
the verifier recognize it with `tuneloop.answers.is_refusal(text, form=REFUSAL)` (intent out_of_scope).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from tuneloop.answers import parse_json
from tuneloop.data.create.corner_cases import CornerCasePack
from tuneloop.data.create.synth import Generator, SynthSpec, Verifier, grounded, numbers_stated, refusal_matches
from tuneloop.examples.json_extraction.templates import ALL_TEMPLATES, REFUSAL, SLOTS
from tuneloop.records import Sample

NAME = "json-extraction"
TASK_NAME = "ticket-extraction"
INSTRUCTION = "Extract the ticket fields as JSON."
SYSTEM = "You extract ticket fields as JSON."
KEYS = ("intent", "product", "order_id", "urgency", "refund_amount")
MAX_ANSWER_CHARS = 160
MAX_INPUT_CHARS = 600
META = {"task_type": "extraction", "domain": "e-commerce support", "version": "demo-1"}

__all__ = ["INSTRUCTION", "KEYS", "REFUSAL", "SYSTEM", "schema", "schema_text", "synth_spec"]


def schema_text() -> str:
    return resources.files(__package__).joinpath("ticket.schema.json").read_text(encoding="utf-8")


@cache
def _schema() -> str:
    return schema_text()


def schema() -> dict[str, Any]:
    """The ticket JSON Schema (a fresh copy each call)."""
    return json.loads(_schema())


def _shape_check(sample: Sample) -> list[str]:
    reasons = []
    _, answer = parse_json(sample.output)
    if isinstance(answer, dict) and tuple(answer) != KEYS:
        reasons.append(f"keys must come in the order {list(KEYS)}")
    if len(sample.output) > MAX_ANSWER_CHARS:
        reasons.append(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if len(sample.input) > MAX_INPUT_CHARS:
        reasons.append(f"input longer than {MAX_INPUT_CHARS} characters")
    return reasons


def synth_spec() -> SynthSpec:
    """The demo's generator, verifier and corner-case pack (what `tuneloop data synth` runs in the demo project)."""
    generator = Generator(ALL_TEMPLATES, SLOTS, instruction=INSTRUCTION, system="", output_schema=None, meta=META)
    verifier = Verifier(
        schema=schema(),
        rules=[grounded("product", "order_id"), numbers_stated("refund_amount"), refusal_matches(REFUSAL)],
        check=_shape_check,
    )
    # "extreme" stays within a CPU demo's 256-token rows
    pack = CornerCasePack(refusal=REFUSAL, long_chars={"en": 300, "zh": 100})
    return SynthSpec(generator, verifier, corner_cases=pack)
