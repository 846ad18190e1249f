"""Template parity: the prompt a served model sees is token for token the prompt it was trained on.

```
training   encode_sample(training tokenizer, sample)  →  [ prompt ids (labels -100) | answer | eot ]
serving    the messages a client sends for the sample (to_messages, with_answer=False), rendered the way the
           server renders a request (train.templates.prompt_ids with the exported tokenizer)  →  [ prompt ids ]
parity     serving ids == the training row's prefix, and the training labels start right after it
```
Both sides call the one renderer (`train.templates`); what parity catches is the exported tokenizer's chat template
drifting from the training one. A window of a long sample is compared with the served rendering of that window's
text, which is what the row was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.records import Sample, to_messages
from tuneloop.train.templates import prompt_ids, template_sha256
from tuneloop.train.tokenize import IGNORE, encode_sample


PROBE_SAMPLES = [
    Sample(instruction="Extract the ticket fields as JSON.", input="My order A12345 has not arrived, refund please.",
           output='{"intent": "refund", "order_id": "A12345"}'),
    Sample(system="You extract ticket fields as JSON.", instruction="Where is my parcel?",
           output='{"intent": "delivery"}'),
    Sample(instruction="订单还没到", input="订单号 A12345，我要退款 59.9 元。", output='{"intent": "refund"}',
           history=[["你好", "您好，请问有什么可以帮您？"]]),
]


@dataclass
class ParityResult:
    sample_id: str
    match: bool
    served_tokens: int
    first_difference: int | None = None
    note: str = ""


@dataclass
class ParityReport:
    training_template_sha256: str
    served_template_sha256: str
    results: list[ParityResult] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return sum(1 for r in self.results if not r.note.startswith("skipped"))

    @property
    def passed(self) -> bool:
        return self.checked > 0 and all(r.match for r in self.results if not r.note.startswith("skipped"))

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checked": self.checked, **asdict(self)}


def served_prompt_ids(tokenizer: Any, sample: Sample, default_system: str = "") -> list[int]:
    """The ids a server with this tokenizer gives the request a client sends for `sample`."""
    return prompt_ids(tokenizer, to_messages(sample, default_system, with_answer=False))


def check_template_parity(training_tokenizer: Any, served_tokenizer: Any, samples: list[Sample], max_length: int,
                          default_system: str = "", limit: int = 8) -> ParityReport:
    """Compare training rows and served prompts for up to `limit` samples."""
    report = ParityReport(template_sha256(training_tokenizer), template_sha256(served_tokenizer))
    for sample in samples[:limit]:
        encoded = encode_sample(training_tokenizer, sample, max_length, default_system)
        if isinstance(encoded, str):
            report.results.append(ParityResult(sample.id, False, 0, note=f"skipped: {encoded}"))
            continue
        row = encoded[0]
        shown = sample if row.input_text is None else sample.model_copy(update={"input": row.input_text})
        served = served_prompt_ids(served_tokenizer, shown, default_system)
        trained_prompt = row.input_ids[: len(served)]
        difference = next((i for i, (a, b) in enumerate(zip(served, trained_prompt)) if a != b), None)
        if difference is None and len(trained_prompt) < len(served):
            difference = len(trained_prompt)
        boundary = (all(label == IGNORE for label in row.labels[: len(served)])
                    and len(row.labels) > len(served) and row.labels[len(served)] != IGNORE)
        note = "" if boundary or difference is not None else "training labels do not start right after the prompt"
        report.results.append(ParityResult(sample.id, difference is None and boundary, len(served), difference, note))
    return report


def parity_samples(run_dir: Path, run: dict[str, Any], limit: int) -> list[Sample]:
    """Samples the run trained on (its train file, when still there), else built-in probe samples."""
    train = ((run.get("data") or {}).get("train") or {}).get("file")
    if train:
        path = next((p for p in (Path(train), run_dir / train) if p.exists()), None)
        if path is not None:
            from tuneloop.data.io.formats import read_samples

            samples = read_samples(path).samples[:limit]
            if samples:
                return samples
    return PROBE_SAMPLES[:limit]
