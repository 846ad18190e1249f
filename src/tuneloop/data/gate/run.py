"""What one gate run found: the record the gate (`round`) fills and its report (`report`) reads.

Its own module so that both import it and neither imports the other for it (no cycle, not even a type-only one):
```
round ──▶ run ◀── report        round ──▶ report (builds the manifest and report.html from a GateRun)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.data.gate.checks import CheckResult
from tuneloop.data.gate.dedup import DedupResult
from tuneloop.data.gate.leakage import LeakageReport
from tuneloop.data.gate.mix import MixResult
from tuneloop.data.gate.split import SplitResult
from tuneloop.records import QuarantinedRow

COUNT_IDENTITY = "rows_in = accepted + quarantined + removed + sent_to_review"


@dataclass
class GateRun:
    """Everything one gate run found, for the manifest and the report."""

    check: CheckResult
    pii: dict[str, int]
    dedup: DedupResult
    split: SplitResult
    leakage: LeakageReport
    mix: MixResult
    quarantine: list[QuarantinedRow]
    review: list[QuarantinedRow]  # label conflicts: every row of each, for a person to decide
    token_source: str
    timings: dict[str, float] = field(default_factory=dict)
