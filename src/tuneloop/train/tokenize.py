"""A sample → training rows: loss on the answer only, the end-of-turn token learned, the answer never cut.

```
one row       input_ids  [ prompt (chat template, up to the assistant header) | answer tokens | <|im_end|> ]
              labels     [ -100  -100  ...  -100                              | answer tokens | <|im_end|> ]

too long      the sample's `input` is cut into overlapping windows of tokens; each window is rendered through the
              same chat template and gets the complete answer:
              row 1  [ prompt(input[0:w])          | answer | eot ]
              row 2  [ prompt(input[w-o:2w-o])     | answer | eot ]      o = overlap
              ...
cannot fit    (answer alone too long, or nothing to window) → a quarantine reason, never a truncated answer
```
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuneloop.records import QuarantinedRow, Sample
from tuneloop.train.templates import end_of_turn_id, prompt_ids, response_ids

IGNORE = -100
MIN_WINDOW = 16


@dataclass
class EncodedRow:
    """One training row: token ids and labels (-100 on the prompt), with the sample it came from."""

    input_ids: list[int]
    labels: list[int]
    sample_id: str
    window: int = 0
    windows: int = 1
    input_text: str | None = None  # the window of `input` this row was rendered from (None: the whole input)

    def __len__(self) -> int:
        return len(self.input_ids)


def _row(prompt: list[int], response: list[int], sample_id: str, window: int = 0, windows: int = 1,
         input_text: str | None = None) -> EncodedRow:
    return EncodedRow(prompt + response, [IGNORE] * len(prompt) + list(response), sample_id, window, windows, input_text)


def window_starts(total: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of `size` over `total` tokens, consecutive windows sharing `overlap` tokens.

    >>> window_starts(10, 4, 1)
    [0, 3, 6]
    """
    stride = max(1, size - overlap)
    starts = list(range(0, max(1, total - size + stride), stride))
    return [s for s in starts if s < total] or [0]


def encode_sample(tokenizer: Any, sample: Sample, max_length: int, default_system: str = "",
                  overlap: int = 64) -> list[EncodedRow] | str:
    """Rows for one sample, or the reason it cannot be trained on (a string for the quarantine file).

    The prompt part of every row is exactly `templates.prompt_ids(tokenizer, sample, default_system)` of the sample
    (or of its windowed copy): the one rendering serving and eval use too.
    """
    end = end_of_turn_id(tokenizer)
    prompt = prompt_ids(tokenizer, sample, default_system)
    response = response_ids(tokenizer, sample, prompt, default_system, end)
    if len(prompt) + len(response) <= max_length:
        return [_row(prompt, response, sample.id)]
    if len(response) >= max_length:
        return (f"answer is {len(response)} tokens (with end-of-turn), not below max_length {max_length}; "
                f"raise train.max_length or shorten the answer")
    if not sample.input:
        return (f"prompt {len(prompt)} + answer {len(response)} tokens exceed max_length {max_length} and the sample "
                f"has no `input` to window; raise train.max_length or move the long text into `input`")
    return _windowed(tokenizer, sample, max_length, default_system, overlap, response, end)


def _windowed(tokenizer: Any, sample: Sample, max_length: int, default_system: str, overlap: int,
              response: list[int], end: int) -> list[EncodedRow] | str:
    input_tokens = tokenizer(sample.input, add_special_tokens=False)["input_ids"]
    frame = len(prompt_ids(tokenizer, sample.model_copy(update={"input": " "}), default_system))
    size = max_length - len(response) - frame
    overlap = max(0, min(overlap, size // 2))
    while size >= MIN_WINDOW:
        rows: list[tuple[list[int], list[int], str]] = []
        starts = window_starts(len(input_tokens), size, overlap)
        for start in starts:
            text = tokenizer.decode(input_tokens[start:start + size], skip_special_tokens=False)
            window = sample.model_copy(update={"input": text})
            prompt = prompt_ids(tokenizer, window, default_system)
            if len(prompt) + len(response) > max_length:
                break  # re-tokenizing the decoded window drifted by a few tokens: retry with smaller windows
            rows.append((prompt, response_ids(tokenizer, window, prompt, default_system, end), text))
        else:
            return [_row(p, r, sample.id, i, len(rows), text) for i, (p, r, text) in enumerate(rows)]
        size -= max(1, size // 16)
    return (f"prompt frame {frame} + answer {len(response)} tokens leave fewer than {MIN_WINDOW} tokens of "
            f"max_length {max_length} for the input; raise train.max_length or shorten the instruction/answer")


def encode_samples(tokenizer: Any, samples: Iterable[Sample], max_length: int, default_system: str = "",
                   overlap: int = 64, source_file: str = "") -> tuple[list[EncodedRow], list[QuarantinedRow]]:
    """Rows for many samples, and a quarantined row (with its reason) for each sample that cannot fit."""
    rows: list[EncodedRow] = []
    quarantined: list[QuarantinedRow] = []
    for number, sample in enumerate(samples, start=1):
        encoded = encode_sample(tokenizer, sample, max_length, default_system, overlap)
        if isinstance(encoded, str):
            quarantined.append(QuarantinedRow(source_file=source_file, line=number, sample_id=sample.id,
                                              stage="train.tokenize", reason=encoded, raw=sample.model_dump()))
        else:
            rows.extend(encoded)
    return rows, quarantined
