"""The sample-type mix of train: target vs actual, down-sampling, deficits, and DPO partners for negatives.

```
counts per type ─▶ total T the present types can fill exactly: min(count_t / target_t)
                   (raised until at most max_drop of the rows go, so a rare type cannot wipe out the data)
                ─▶ keep min(count_t, ceil(target_t × T)) of each type, best rows first; relabeled traffic
                   (meta.source "traffic": the model's real failures, corrected) is always kept, beyond that share
                ─▶ deficit_t: rows type t still needs to reach its share of what was kept
negative row ─▶ its golden twin (same lineage.source_id, else same normalized prompt) gets `rejected` = the
                negative's answer, so preference training (DPO) has a pair
```
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tuneloop.data.gate.text import normalize_many
from tuneloop.records import SAMPLE_TYPES, Sample


def keep_counts(counts: Mapping[str, int], target: Mapping[str, float], max_drop: float) -> dict[str, int]:
    """Rows of each type to keep so the mix comes as close to `target` as dropping at most `max_drop` allows.

    Each type with a target keeps min(count, ceil(share × T)) for a total size T: the smallest T ≥ the size the
    present types fill exactly that still keeps (1 - max_drop) of the rows. Types without a target keep all.

    >>> keep_counts({"golden": 80, "negative": 20}, {"golden": 0.5, "negative": 0.5}, 0.9)
    {'golden': 20, 'negative': 20}
    """
    present = {t: c for t, c in counts.items() if c and target.get(t, 0) > 0}
    if not present:
        return dict(counts)

    def keep_at(size: float) -> dict[str, int]:
        return {kind: count if kind not in target else min(count, math.ceil(target[kind] * size - 1e-9))
                for kind, count in counts.items()}

    low = min(c / target[t] for t, c in present.items())
    high = max(c / target[t] for t, c in present.items())
    floor = (1 - max_drop) * sum(counts.values())
    if sum(keep_at(low).values()) >= floor:
        return keep_at(low)
    for _ in range(60):  # the kept total grows with the size: bisect for the smallest size meeting the floor
        middle = (low + high) / 2
        low, high = (middle, high) if sum(keep_at(middle).values()) < floor else (low, middle)
    return keep_at(high)


def deficits(kept: Mapping[str, int], target: Mapping[str, float]) -> dict[str, int]:
    """Rows each type still needs so that (kept_t + x) / (total + x) reaches target_t."""
    total = sum(kept.values())
    needs = {}
    for kind, share in target.items():
        have = kept.get(kind, 0)
        if share <= 0 or share >= 1 or have >= share * total:
            needs[kind] = 0
        else:
            needs[kind] = math.ceil((share * total - have) / (1 - share) - 1e-9)
    return needs


@dataclass
class MixResult:
    train: list[Sample]
    dropped: list[Sample] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)
    deficit: dict[str, int] = field(default_factory=dict)
    pairs: int = 0  # golden rows that received a negative twin's answer as `rejected`

    @property
    def dpo_pairs(self) -> int:
        """Train rows carrying a `rejected` answer: the ones they brought (best-of-N, a user's pairs) and the twins'."""
        return sum(1 for sample in self.train if sample.rejected is not None)

    def table(self) -> list[dict[str, object]]:
        total_before, total_after = sum(self.before.values()) or 1, sum(self.after.values()) or 1
        kinds = list(dict.fromkeys([*self.target, *self.before]))
        return [{"type": k, "target": self.target.get(k, 0.0), "before": self.before.get(k, 0),
                 "before_share": round(self.before.get(k, 0) / total_before, 4), "after": self.after.get(k, 0),
                 "after_share": round(self.after.get(k, 0) / total_after, 4), "still_needed": self.deficit.get(k, 0)}
                for k in kinds]


def is_traffic(sample: Sample) -> bool:
    """A relabeled failure from real traffic: the only rows that teach what the model got wrong in use, so the mix
    never drops them (the mix table shows what they do to the shares)."""
    return sample.meta.source == "traffic"


def pair_negatives(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """Copies of the rows where each golden row with a negative twin carries the twin's answer as `rejected`."""
    prompts = normalize_many([s.prompt_key_text for s in samples])
    negatives_by_seed: dict[str, Sample] = {}
    negatives_by_prompt: dict[str, Sample] = {}
    for sample, prompt in zip(samples, prompts):
        if sample.sample_type == "negative":
            negatives_by_seed.setdefault(sample.lineage.source_id or sample.id, sample)
            negatives_by_prompt.setdefault(prompt, sample)
    out, pairs = [], 0
    for sample, prompt in zip(samples, prompts):
        twin = None
        if sample.sample_type == "golden" and sample.rejected is None:
            twin = negatives_by_seed.get(sample.lineage.source_id or sample.id) or negatives_by_prompt.get(prompt)
        if twin is not None and twin.output != sample.output:
            sample = sample.model_copy(update={"rejected": twin.output})
            pairs += 1
        out.append(sample)
    return out, pairs


def mix(train: Sequence[Sample], target: Mapping[str, float], max_drop: float = 0.3, resample: bool = True,
        seed: int = 0) -> MixResult:
    """Bring train toward the target type shares by down-sampling; pair negatives with their golden twins."""
    by_type: dict[str, list[Sample]] = {}
    for sample in train:
        by_type.setdefault(sample.sample_type, []).append(sample)
    before = {kind: len(by_type.get(kind, [])) for kind in dict.fromkeys([*SAMPLE_TYPES, *by_type])}
    keep = keep_counts(before, target, max_drop) if resample else dict(before)
    chosen: set[int] = set()
    dropped = []
    for kind, rows in by_type.items():
        ranked = sorted(rows, key=lambda s: (not is_traffic(s), -s.quality,
                                             hashlib.sha256(f"{seed}:{s.id}".encode()).hexdigest()))
        count = max(keep[kind], sum(1 for s in rows if is_traffic(s)))
        chosen.update(id(s) for s in ranked[:count])
        dropped.extend(ranked[count:])
    kept = [s for s in train if id(s) in chosen]
    after = {kind: sum(1 for s in kept if s.sample_type == kind) for kind in before}
    paired, pairs = pair_negatives(kept)
    return MixResult(train=paired, dropped=dropped, before=before, after=after, target=dict(target),
                     deficit=deficits(after, target), pairs=pairs)
