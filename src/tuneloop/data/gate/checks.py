"""Validation: each row gets its reasons; a row with any reason goes to quarantine with file, line and id.

```
source (path, license) ─▶ read_samples ─▶ license on allowlist? ─▶ per row: prompt and answer present,
                          (bad JSON lines    (else every row of      JSON answer parses and fits the schema,
                           quarantined)       the source quarantined) answer fits in max_tokens
```
A JSON task's answer is checked against the task's JSON Schema (or the row's own inline `output_schema`); negative
samples and refusals are exempt, their answers are not meant to be valid. A row whose answer is tool calls is checked
against its own `tools` instead: every call names one of them and its arguments fit that function's parameters. Token counts use the project's tokenizer,
or `approximate_tokens` (one per CJK character, one per word) when no model is at hand.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.answers import schema_problem, schema_validator
from tuneloop.data.gate.text import CJK_CHARS
from tuneloop.data.io.formats import ReadResult, read_file, read_samples
from tuneloop.records import QuarantinedRow, Sample
from tuneloop.tools import answers_with_calls, tool_problems

TokenCounter = Callable[[list[str]], list[int]]
_TOKEN = re.compile(f"[{CJK_CHARS}]|[^\\s{CJK_CHARS}]+")


def approximate_tokens(texts: list[str]) -> list[int]:
    """Token counts without a tokenizer: one per CJK character, one per run of other non-space characters."""
    return [len(_TOKEN.findall(t)) for t in texts]


def tokenizer_counter(tokenizer: Any) -> TokenCounter:
    """Token counts with a Hugging Face tokenizer, in batches."""
    def count(texts: list[str]) -> list[int]:
        lengths: list[int] = []
        for begin in range(0, len(texts), 1024):
            encoded = tokenizer(texts[begin:begin + 1024], add_special_tokens=False)["input_ids"]
            lengths.extend(len(ids) for ids in encoded)
        return lengths
    return count


def sample_problems(sample: Sample, validator: Any = None) -> list[str]:
    """Why a row cannot be used (empty when it can)."""
    problems = []
    if not sample.prompt.strip():
        problems.append("instruction and input are both empty: give the row a prompt")
    if not sample.output.strip():
        problems.append("output is empty: give the row an answer")
    problems.extend(tool_problems(sample))  # tools parse, every call names one of them and fits its parameters
    exempt = sample.sample_type == "negative" or sample.expected == "refuse" or answers_with_calls(sample)
    if isinstance(sample.output_schema, dict):
        validator = schema_validator(sample.output_schema)
    if validator is not None and sample.output.strip() and not exempt:
        try:
            answer = json.loads(sample.output)
        except json.JSONDecodeError as err:
            problems.append(f"output is not valid JSON ({err.msg} at column {err.colno}); this is a JSON task")
        else:
            problem = schema_problem(validator, answer)
            if problem is not None:
                problems.append(f"output does not match the task schema at {problem}")
    return problems


@dataclass
class CheckResult:
    accepted: list[Sample] = field(default_factory=list)
    quarantined: list[QuarantinedRow] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)  # per accepted row
    answer_tokens: list[int] = field(default_factory=list)
    over_length: list[str] = field(default_factory=list)  # ids whose prompt + answer exceed max_tokens
    sources: list[dict[str, Any]] = field(default_factory=list)
    seen_ids: dict[str, tuple[str, str, int | None]] = field(default_factory=dict, repr=False)

    @property
    def rows_in(self) -> int:
        return len(self.accepted) + len(self.quarantined)

    @property
    def rejected_share(self) -> float:
        return len(self.quarantined) / self.rows_in if self.rows_in else 0.0

    def reasons(self) -> dict[str, int]:
        """How many rows were rejected for each kind of reason (the reason up to its first colon or paren)."""
        return dict(Counter(re.split(r"[:(]", row.reason, maxsplit=1)[0].strip() for row in self.quarantined).most_common())


def check_samples(samples: Sequence[Sample], source: str | Sequence[str], lines: Sequence[int | None],
                  schema: dict[str, Any] | None, count_tokens: TokenCounter, max_tokens: int | None,
                  result: CheckResult) -> None:
    """Check already-read samples into `result`; `source` is their file, or each sample's file (a folder source)."""
    files = [source] * len(samples) if isinstance(source, str) else list(source)
    validator = schema_validator(schema)
    prompts = count_tokens([s.prompt_key_text for s in samples])
    answers = count_tokens([s.output for s in samples])
    for sample, source, line, prompt_tokens, answer_tokens in zip(samples, files, lines, prompts, answers):
        problems = sample_problems(sample, validator)
        first = result.seen_ids.setdefault(sample.id, (sample.content_id(), source, line))
        if first[0] != sample.content_id():  # the same id and content is a duplicate: dedup handles it
            problems.append(f"id '{sample.id}' is already used by a different row ({first[1]}, line {first[2]}): "
                            "give each row its own id")
        if max_tokens and answer_tokens > max_tokens:
            problems.append(f"the answer alone is {answer_tokens} tokens, over max_tokens {max_tokens}: answers are "
                            "never cut, so shorten it or raise data.max_tokens / train.max_length")
        if problems:
            result.quarantined.append(QuarantinedRow(source_file=source, line=line, sample_id=sample.id, stage="check",
                                                     reason="; ".join(problems), raw=sample.model_dump(mode="json")))
            continue
        result.accepted.append(sample)
        result.prompt_tokens.append(prompt_tokens)
        result.answer_tokens.append(answer_tokens)
        if max_tokens and prompt_tokens + answer_tokens > max_tokens:
            result.over_length.append(sample.id)


class SourceError(ValueError):
    """A data source that cannot be read as configured, with what to change."""


def read_source(path: Path, format: str = "auto", dataset: str | None = None) -> ReadResult:
    """A source as tuneloop.yaml names it: a data file of any format tuneloop reads, or a LLaMA-Factory folder entry."""
    if path.is_dir():
        from tuneloop.data.io.llamafactory import read_dataset_info, read_entry

        entries = read_dataset_info(path)
        if dataset not in entries:
            raise SourceError(f"{path}: a folder source needs `dataset:` naming an entry of its dataset_info.json "
                              f"(one of: {', '.join(entries)})")
        outcome = read_entry(path, entries[dataset], stage="read")
        if outcome.result is None:
            raise SourceError(f"{path}: entry '{dataset}' cannot be read: {outcome.detail}")
        return outcome.result
    return read_samples(path, stage="read") if format == "auto" else read_file(path, format, stage="read")


def check_sources(sources: Sequence[tuple], allowlist: Sequence[str], schema: dict[str, Any] | None = None,
                  count_tokens: TokenCounter = approximate_tokens, max_tokens: int | None = None) -> CheckResult:
    """Read and check every (path, license[, format, dataset]) source; every row is accepted or quarantined."""
    result = CheckResult()
    allowed = {a.lower() for a in allowlist}
    for path, license_name, *how in sources:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: data source not found; fix data.sources in tuneloop.yaml or the path given.")
        read = read_source(path, *how)
        before = len(result.quarantined)
        result.quarantined.extend(read.quarantined)
        origins = [read.origin(i) for i in range(len(read.samples))]  # the real file and line of every sample
        if license_name.lower() not in allowed:
            reason = (f"license '{license_name}' of {path.name} is not on data.license_allowlist "
                      f"({', '.join(allowlist)}): add it if you may train on this source, or remove the source")
            result.quarantined.extend(
                QuarantinedRow(source_file=file, line=line, sample_id=s.id, stage="check", reason=reason,
                               raw=s.model_dump(mode="json"))
                for s, (file, line) in zip(read.samples, origins))
        else:
            check_samples(read.samples, [file for file, _ in origins], [line for _, line in origins], schema,
                          count_tokens, max_tokens, result)
        result.sources.append({"path": str(path), "license": license_name, "rows": read.total,
                               "quarantined": len(result.quarantined) - before})
    return result
