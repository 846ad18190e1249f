"""Train/val/test grouped by lineage, with val and test frozen once written.

```
round 1    rows ─▶ groups: same lineage.source_id, the same normalized prompt, or overlapping text (`related`)
                  ─▶ groups holding a hard row → val
                  ─▶ other groups in a stable hash order ─▶ test until its share, val until its share, rest train
round N    previous val/test carried over (frozen) ─▶ a row matching a frozen item by id takes its place
                  (a relabel: the new answer, the same split) ─▶ a row matching by source_id or prompt only is a
                  new variant of a frozen item: held out (quarantine), never train; one with the frozen item's
                  prompt but another answer is a label conflict (held out, listed in `conflicts` for review)
                  ─▶ new hard groups → val ─▶ everything else → train
```
So no variant of one seed straddles a split, and no later round can move a frozen val/test item into train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data.gate.dedup import answer_keys, clusters_of
from tuneloop.data.io.formats import load_samples
from tuneloop.data.gate.text import normalize_many, text_hash
from tuneloop.project import SplitConfig
from tuneloop.records import Sample

EVAL_SPLITS = ("val", "test")
FAILURE_SOURCES = ("failure", "eval-failure", "bad-case", "trace")


def is_hard(sample: Sample) -> bool:
    """Hard rows stay in val: meta.difficulty is hard, or the row came from a failure (eval bad case, trace)."""
    source = (sample.meta.source or "").lower()
    return (sample.meta.difficulty or "").lower() == "hard" or source.startswith(FAILURE_SOURCES)


def group_value(sample: Sample, path: str) -> str:
    """The value of a dotted field (`lineage.source_id`) as the group key."""
    value: Any = sample
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return str(value) if value not in (None, "") else sample.id


def prompt_hashes(samples: Sequence[Sample]) -> list[str]:
    return [text_hash(p) for p in normalize_many([s.prompt_key_text for s in samples])]


@dataclass
class FrozenSplits:
    """The val and test of an earlier round: fixed items later rounds reuse and keep out of train."""

    splits: dict[str, list[Sample]] = field(default_factory=lambda: {name: [] for name in EVAL_SPLITS})

    @classmethod
    def from_round(cls, round_dir: Path | None) -> FrozenSplits:
        frozen = cls()
        if round_dir is None:
            return frozen
        for name in EVAL_SPLITS:
            path = Path(round_dir) / f"{name}.jsonl"
            if path.exists():
                frozen.splits[name] = load_samples(path)
        return frozen

    def __bool__(self) -> bool:
        return any(self.splits.values())

    def lookups(self) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """id → split, and (source_id or id, which a derived row names as its source_id or parent_id, or prompt
        hash) → (split, frozen id)."""
        by_id: dict[str, str] = {}
        by_relative: dict[str, tuple[str, str]] = {}
        for name, samples in self.splits.items():
            for sample, prompt in zip(samples, prompt_hashes(samples)):
                by_id[sample.id] = name
                by_relative.setdefault(f"seed:{sample.lineage.source_id}", (name, sample.id))
                by_relative.setdefault(f"seed:{sample.id}", (name, sample.id))  # a row that names it as its origin
                by_relative.setdefault(f"prompt:{prompt}", (name, sample.id))
        return by_id, by_relative

    def manifest(self) -> dict[str, list[dict[str, str]]]:
        """What the manifest records of val/test: ids, source ids and content hashes."""
        return {name: [{"id": s.id, "source_id": s.lineage.source_id or "", "content_hash": s.content_id()}
                       for s in samples] for name, samples in self.splits.items()}


@dataclass
class SplitResult:
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    held_out: list[tuple[Sample, str]] = field(default_factory=list)  # (row, reason): to quarantine
    # held-out rows with a frozen item's prompt and another answer: (row, split, frozen id), to review
    conflicts: list[tuple[Sample, str, str]] = field(default_factory=list)
    relabeled: list[dict[str, str]] = field(default_factory=list)
    carried_over: int = 0  # frozen items the sources no longer hold, kept from the earlier round
    oversized: int = 0  # rows of groups larger than a held-out share, sent to train whole (see `split_samples`)

    def split(self, name: str) -> list[Sample]:
        return getattr(self, name)

    def frozen(self) -> FrozenSplits:
        return FrozenSplits({"val": list(self.val), "test": list(self.test)})


def _groups(samples: Sequence[Sample], group_by: str, related: np.ndarray | None) -> np.ndarray:
    """A group label per row: rows sharing the group field or the normalized prompt, or `related` pairs."""
    edges = []
    first: dict[str, int] = {}
    for index, key in enumerate([f"g:{group_value(s, group_by)}" for s in samples] +
                                [f"p:{h}" for h in prompt_hashes(samples)]):
        row = index % len(samples)
        edges.append((first.setdefault(key, row), row))
    pairs = np.array(edges, dtype=np.int64)
    if related is not None and len(related):
        pairs = np.concatenate([pairs, related.astype(np.int64)])
    return clusters_of(len(samples), pairs)


def _stable_order(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_samples(samples: Sequence[Sample], config: SplitConfig | None = None,
                  frozen: FrozenSplits | None = None, related: np.ndarray | None = None) -> SplitResult:
    """Cut rows into train/val/test by lineage groups; a non-empty `frozen` keeps the earlier val/test.

    `related` holds extra pairs of row indexes to keep on one side (the gate passes the rows that overlap,
    `leakage.overlap_pairs`); a group larger than a held-out share goes to train rather than swamp val or test.
    """
    config = config or SplitConfig()
    result = SplitResult()
    if not samples:
        if frozen:
            result.val, result.test = list(frozen.splits["val"]), list(frozen.splits["test"])
            result.carried_over = len(result.val) + len(result.test)
        return result
    labels = _groups(samples, config.group_by, related)
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(index)
    if frozen:
        return _split_after_freeze(samples, members, frozen, result)

    target_test, target_val = round(config.test * len(samples)), round(config.val * len(samples))
    ordered = sorted(members.values(), key=lambda rows: _stable_order(samples[rows[0]].lineage.source_id or "", config.seed))
    for rows in ordered:
        if any(is_hard(samples[i]) for i in rows):
            result.val.extend(samples[i] for i in rows)
    for rows in ordered:
        if any(is_hard(samples[i]) for i in rows):
            continue
        if len(rows) > max(target_test, target_val):
            result.train.extend(samples[i] for i in rows)
            result.oversized += len(rows)
        elif len(result.test) < target_test:
            result.test.extend(samples[i] for i in rows)
        elif len(result.val) < target_val:
            result.val.extend(samples[i] for i in rows)
        else:
            result.train.extend(samples[i] for i in rows)
    return result


def _split_after_freeze(samples: Sequence[Sample], members: dict[int, list[int]], frozen: FrozenSplits,
                        result: SplitResult) -> SplitResult:
    by_id, by_relative = frozen.lookups()
    hashes = prompt_hashes(samples)
    replaced: set[str] = set()
    for rows in members.values():
        matches = [(i, by_id.get(samples[i].id)) for i in rows]
        hard = any(is_hard(samples[i]) for i in rows)
        for index, split in matches:
            sample = samples[index]
            if split is not None:  # the frozen item itself, possibly relabeled: same split, newest answer
                old = next(s for s in frozen.splits[split] if s.id == sample.id)
                if old.content_id() != sample.content_id():
                    result.relabeled.append({"id": sample.id, "split": split, "old_hash": old.content_id(),
                                             "new_hash": sample.content_id()})
                replaced.add(sample.id)
                result.split(split).append(sample)
                continue
            relative = (by_relative.get(f"seed:{sample.lineage.source_id}")
                        or by_relative.get(f"seed:{sample.lineage.parent_id}") or by_relative.get(f"prompt:{hashes[index]}"))
            if relative is None and any(s is not None for _, s in matches):
                relative = next((s, samples[i].id) for i, s in matches if s is not None)
            conflict = _prompt_conflict(sample, hashes[index], by_relative, frozen)
            if conflict is not None:
                result.conflicts.append((sample, *conflict))
                result.held_out.append((sample, (
                    f"label_conflict: the prompt of frozen {conflict[0]} item {conflict[1]} with another answer: "
                    "decide which answer is right; a corrected frozen item keeps its id (a relabel)")))
            elif relative is not None:
                result.held_out.append((sample, (
                    f"a variant of frozen {relative[0]} item {relative[1]} (same lineage.source_id, parent_id or "
                    f"prompt): kept out of train so {relative[0]} stays unseen; no action needed")))
            elif hard:
                result.val.append(sample)
            else:
                result.train.append(sample)
    for name in EVAL_SPLITS:
        carried = [s for s in frozen.splits[name] if s.id not in replaced]
        result.carried_over += len(carried)
        result.split(name)[:0] = carried
    return result


def _prompt_conflict(sample: Sample, prompt_hash: str, by_relative: dict[str, tuple[str, str]],
                     frozen: FrozenSplits) -> tuple[str, str] | None:
    """(split, frozen id) when a frozen item has this row's prompt but another answer (and another id)."""
    match = by_relative.get(f"prompt:{prompt_hash}")
    if match is None:
        return None
    item = next(s for s in frozen.splits[match[0]] if s.id == match[1])
    # a negative twin shares its golden row's prompt by design, and negatives are wrong answers (never a conflict)
    if item.sample_type != sample.sample_type or sample.sample_type == "negative":
        return None
    new, old = answer_keys([sample, item])
    return match if new != old else None
