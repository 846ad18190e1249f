"""Preference pairs for DPO: a sample with `rejected` → one `PreferencePair` → token ids, no answer ever cut.

```
Sample(output = chosen, rejected = worse)
   │ preference_pair                       the one conversion (best-of-N output, a round's train.jsonl, negatives)
   ▼
PreferencePair(prompt = chat messages without the answer, chosen, rejected)
   │ encode_pair
   ▼
prompt_ids    [ system | user turn | assistant header ]           templates.prompt_ids, as serving renders it
chosen_ids    [ chosen answer tokens   | <|im_end|> ]             templates.response_ids, as SFT trains on it
rejected_ids  [ rejected answer tokens | <|im_end|> ]

prompt + the longer answer > max_length ─▶ quarantine (the reason names every length), never a cut answer
chosen == rejected                      ─▶ quarantine (a pair that teaches nothing)
no `rejected`                           ─▶ not a pair: counted in `without_rejected`, not trained on by DPO
```
The trainer is then given `max_length=None`: TRL's collator cuts nothing, since every pair already fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import read_samples
from tuneloop.files import file_digest
from tuneloop.records import PreferencePair, QuarantinedRow, Sample, to_messages
from tuneloop.train.templates import end_of_turn_id, prompt_ids, response_ids


class PreferenceDataError(ValueError):
    """Preference data that cannot be used, naming the file and what to do."""


def preference_pair(sample: Sample, default_system: str = "") -> PreferencePair | None:
    """The pair a sample stands for: its answer is `chosen`, its `rejected` the worse one (None: no `rejected`).

    >>> s = Sample(id="a", instruction="Extract.", input="Order A1", output='{"id": "A1"}', rejected='Here: {"id": "A1"}')
    >>> pair = preference_pair(s, "You extract.")
    >>> [m["role"] for m in pair.prompt], pair.chosen, pair.rejected
    (['system', 'user'], '{"id": "A1"}', 'Here: {"id": "A1"}')
    """
    if sample.rejected is None:
        return None
    return PreferencePair(id=sample.id, prompt=to_messages(sample, default_system, with_answer=False),
                          chosen=sample.output, rejected=sample.rejected, source_id=sample.lineage.source_id)


@dataclass
class EncodedPair:
    """One DPO row: the prompt's ids and both answers' ids (each ending in the end-of-turn token)."""

    sample_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def __len__(self) -> int:
        """The longer of the two sequences the trainer runs: prompt + chosen, prompt + rejected."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    def trl_row(self) -> dict[str, list[int]]:
        """TRL's tokenized preference format (what its DataCollatorForPreference reads)."""
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


def encode_pair(tokenizer: Any, sample: Sample, max_length: int, default_system: str = "",
                end_of_turn: int | None = None) -> EncodedPair | str:
    """The encoded pair of a sample with `rejected`, or the reason it cannot be trained on (for the quarantine)."""
    if sample.rejected is None:
        raise ValueError(f"sample {sample.id} has no `rejected` answer: it is no preference pair")
    if sample.rejected.strip() == sample.output.strip():
        return "chosen and rejected are the same answer: the pair teaches nothing; fix or drop the `rejected`"
    end = end_of_turn if end_of_turn is not None else end_of_turn_id(tokenizer)
    prompt = prompt_ids(tokenizer, sample, default_system)
    chosen = response_ids(tokenizer, sample, prompt, default_system, end)
    worse = sample.model_copy(update={"output": sample.rejected})
    rejected = response_ids(tokenizer, worse, prompt, default_system, end)
    pair = EncodedPair(sample.id, prompt, chosen, rejected)
    if len(pair) > max_length:
        return (f"prompt {len(prompt)} + chosen {len(chosen)} / rejected {len(rejected)} tokens exceed max_length "
                f"{max_length}; DPO never cuts an answer: raise train.max_length (or --max-length) or shorten the prompt")
    return pair


@dataclass
class PreparedPairs:
    """One file's pairs, ready for the trainer, with what was left out and why."""

    path: Path
    sha256: str
    samples: int
    pairs: list[EncodedPair]
    without_rejected: int
    quarantined: list[QuarantinedRow] = field(default_factory=list)

    @property
    def longest_pair(self) -> int:
        return max((len(p) for p in self.pairs), default=0)

    def rows(self) -> list[dict[str, list[int]]]:
        return [p.trl_row() for p in self.pairs]

    def summary(self) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "samples": self.samples, "rows": len(self.pairs),
                "pairs": len(self.pairs), "without_rejected": self.without_rejected,
                "quarantined": len(self.quarantined), "longest_row_tokens": self.longest_pair}


def encode_pairs(tokenizer: Any, samples: Iterable[Sample], max_length: int, default_system: str = "",
                 source_file: str = "") -> tuple[list[EncodedPair], int, list[QuarantinedRow]]:
    """(pairs, samples without `rejected`, quarantined rows) for many samples; in = pairs + without + quarantined."""
    end = end_of_turn_id(tokenizer)
    pairs: list[EncodedPair] = []
    quarantined: list[QuarantinedRow] = []
    without = 0
    for number, sample in enumerate(samples, start=1):
        if sample.rejected is None:
            without += 1
            continue
        encoded = encode_pair(tokenizer, sample, max_length, default_system, end)
        if isinstance(encoded, str):
            quarantined.append(QuarantinedRow(source_file=source_file, line=number, sample_id=sample.id,
                                              stage="train.dpo.pairs", reason=encoded, raw=sample.model_dump()))
        else:
            pairs.append(encoded)
    return pairs, without, quarantined


def prepare_pairs(tokenizer: Any, path: str | Path, max_length: int, default_system: str = "") -> PreparedPairs:
    path = Path(path)
    if not path.exists():
        raise PreferenceDataError(f"{path}: no such data file; pass --train/--val, or make pairs with "
                                  "`tuneloop sample best-of-n`.")
    read = read_samples(path, stage="train.read")
    pairs, without, quarantined = encode_pairs(tokenizer, read.samples, max_length, default_system, str(path))
    return PreparedPairs(path, file_digest(path), len(read.samples), pairs, without,
                         list(read.quarantined) + quarantined)
