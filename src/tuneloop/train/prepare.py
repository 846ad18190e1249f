"""Train/val files → encoded, packed rows ready for the trainer, with what was quarantined and why.

```
train.jsonl ─ read ─ encode_samples (template, labels, windows) ─ pack (best-fit-decreasing) ─▶ train rows
val.jsonl   ─ read ─ encode_samples                              ─ pack                     ─▶ val rows
                 └── rows that cannot fit ─▶ quarantine (file, sample id, reason)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.io.formats import read_samples
from tuneloop.files import file_digest
from tuneloop.project import TrainConfig
from tuneloop.records import QuarantinedRow
from tuneloop.train.packing import PackingReport, pack_rows, unpacked
from tuneloop.train.tokenize import EncodedRow, encode_samples


class TrainDataError(ValueError):
    """Training data that cannot be used, naming the file and what to do."""


@dataclass
class PreparedSplit:
    path: Path
    sha256: str
    samples: int
    rows: list[EncodedRow]
    batches: list[dict[str, list[int]]]
    packing: PackingReport | None
    quarantined: list[QuarantinedRow] = field(default_factory=list)

    @property
    def longest_row(self) -> int:
        return max((len(r) for r in self.rows), default=0)

    def summary(self) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "samples": self.samples, "rows": len(self.rows),
                "training_rows": len(self.batches), "quarantined": len(self.quarantined),
                "longest_row_tokens": self.longest_row,
                "packing": self.packing.as_dict() if self.packing else None}


def prepare_split(tokenizer: Any, path: str | Path, config: TrainConfig, default_system: str = "",
                  pack: bool | None = None) -> PreparedSplit:
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: no such data file; pass --train/--val or run `tuneloop data gate` to make a round.")
    read = read_samples(path, stage="train.read")
    rows, quarantined = encode_samples(tokenizer, read.samples, config.max_length, default_system,
                                       config.window_overlap, source_file=str(path))
    pack = config.packing if pack is None else pack
    if pack and rows:
        batches, report = pack_rows(rows, config.max_length)
    else:
        batches, report = unpacked(rows), None
    return PreparedSplit(path, file_digest(path), len(read.samples), rows, batches, report,
                         list(read.quarantined) + quarantined)


def prepare_data(tokenizer: Any, train_file: str | Path, val_file: str | Path | None, config: TrainConfig,
                 default_system: str = "") -> tuple[PreparedSplit, PreparedSplit | None]:
    train = prepare_split(tokenizer, train_file, config, default_system)
    if not train.rows:
        reasons = "; ".join(sorted({q.reason for q in train.quarantined})[:3]) or "the file holds no samples"
        raise TrainDataError(f"{train_file}: no sample can be trained on ({reasons}).")
    val = prepare_split(tokenizer, val_file, config, default_system) if val_file else None
    if val is not None and not val.rows:
        val = None
    return train, val
