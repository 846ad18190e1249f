"""Leakage between train and val/test, in both directions: exact hash, near-duplicate, n-gram overlap.

```
train ┐                              exact      same normalized prompt (exact-prompt) or whole row (exact-row)
      ├─▶ normalize ─▶ one index ─▶  near       MinHash LSH candidates, exact Jaccard ≥ dedup.threshold
eval  ┘                              ngram      a shared n-gram on the prompt side or on the answer side
                                                (char 8-13-grams Chinese, word 13-grams English;
                                                 of a JSON answer only its string values)
```
An n-gram found in more than `common_share` of all rows (and more than `common_min_rows`) is template text that
every row carries (a fixed instruction, JSON keys), not a leak; and an n-gram pair counts only when the shared
n-grams make up at least `min_overlap` of one of the two rows (a stock phrase is not a copied row). Every hit
names both rows and how much of each row's n-grams the other holds (`train_in_eval`, `eval_in_train`): the two
directions of the overlap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tuneloop.data.gate.dedup import candidate_pairs
from tuneloop.data.gate.text import NgramTable, bulk_work, jaccard, ngram_table, normalize_many
from tuneloop.project import DedupConfig, LeakageConfig
from tuneloop.records import Sample
from tuneloop.tools import comparable_answer


@dataclass
class LeakHit:
    train_id: str
    eval_id: str
    eval_split: str
    kind: str  # exact-row | exact-prompt | near | ngram-prompt | ngram-answer
    similarity: float  # Jaccard (near), 1.0 (exact), the larger containment (ngram)
    train_in_eval: float = 1.0
    eval_in_train: float = 1.0
    shared_ngrams: int = 0

    def as_row(self) -> dict:
        return asdict(self)


@dataclass
class LeakageReport:
    hits: list[LeakHit] = field(default_factory=list)
    allowed: bool = False

    @property
    def passed(self) -> bool:
        return self.allowed or not self.hits

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for hit in self.hits:
            counts[hit.kind] = counts.get(hit.kind, 0) + 1
        return counts


def shared_ngram_pairs(table: NgramTable, is_eval: np.ndarray | None, common_rows: float) -> list[tuple[int, int, int]]:
    """(train doc, eval doc, shared n-grams) for every train/eval pair sharing a non-template n-gram; with
    `is_eval` None, (doc, later doc, shared n-grams) for every pair of docs."""
    if not len(table):
        return []
    grams = table.gram_docs()
    hashes = table.hashes
    if is_eval is None:
        ranked = np.sort(hashes)
        return _pairs_of_hashes(hashes, grams, np.unique(ranked[1:][ranked[1:] == ranked[:-1]]), None, common_rows)
    on_eval = is_eval[grams]
    eval_hashes = np.sort(hashes[on_eval])
    train_hashes = hashes[~on_eval]
    if not len(eval_hashes) or not len(train_hashes):
        return []
    # a bitmap over the low hash bits rules out almost every train n-gram before the exact lookup
    bits = np.zeros(1 << 27, dtype=bool)
    bits[(eval_hashes & np.uint64((1 << 27) - 1)).astype(np.int64)] = True
    train_hashes = train_hashes[bits[(train_hashes & np.uint64((1 << 27) - 1)).astype(np.int64)]]
    if not len(train_hashes):
        return []
    where = np.minimum(np.searchsorted(eval_hashes, train_hashes), len(eval_hashes) - 1)
    shared = np.unique(train_hashes[eval_hashes[where] == train_hashes])
    return _pairs_of_hashes(hashes, grams, shared, is_eval, common_rows)


def _pairs_of_hashes(hashes: np.ndarray, grams: np.ndarray, shared: np.ndarray, is_eval: np.ndarray | None,
                     common_rows: float) -> list[tuple[int, int, int]]:
    """Join the rows holding each of the `shared` hashes (sorted, unique) into pairs with their shared counts."""
    if not len(shared):
        return []
    bits = np.zeros(1 << 27, dtype=bool)
    bits[(shared & np.uint64((1 << 27) - 1)).astype(np.int64)] = True
    maybe = bits[(hashes & np.uint64((1 << 27) - 1)).astype(np.int64)]
    hashes, grams = hashes[maybe], grams[maybe]
    where = np.minimum(np.searchsorted(shared, hashes), len(shared) - 1)
    keep = shared[where] == hashes
    hashes, grams = hashes[keep], grams[keep]
    order = np.lexsort((grams, hashes))
    hashes, grams = hashes[order], grams[order]
    fresh = np.ones(len(hashes), dtype=bool)
    fresh[1:] = (hashes[1:] != hashes[:-1]) | (grams[1:] != grams[:-1])  # one (n-gram, row) pair once
    hashes, grams = hashes[fresh], grams[fresh]
    bounds = np.flatnonzero(np.diff(hashes) != 0) + 1
    found: list[np.ndarray] = []
    for group in np.split(grams.astype(np.int64), bounds):
        if len(group) > common_rows:
            continue
        if is_eval is None:
            if len(group) > 1:
                first, second = np.triu_indices(len(group), 1)
                found.append(np.stack([group[first], group[second]], axis=1))
            continue
        side = is_eval[group]
        left, right = group[~side], group[side]
        if len(left) and len(right):
            found.append(np.stack(np.meshgrid(left, right, indexing="ij"), axis=-1).reshape(-1, 2))
    if not found:
        return []
    pairs = np.concatenate(found)
    size = int(pairs.max()) + 1
    joined, counts = np.unique(pairs[:, 0] * size + pairs[:, 1], return_counts=True)
    return [(int(a), int(b), int(c)) for a, b, c in zip((joined // size).tolist(), (joined % size).tolist(), counts.tolist())]


def answer_texts(rows: Sequence[Sample], outputs: list[str]) -> tuple[list[str], np.ndarray]:
    """The answer side compared by n-grams, as (texts, row of each text).

    A free-text answer is one text. A JSON answer contributes each string value as its own text: keys, numbers
    and short labels ("refund", "high") are what every answer of a structured task shares, so only long
    free-text values (a summary, a reply) can carry a leak.
    """
    texts: list[str] = []
    owner: list[int] = []
    structured = False
    for index, sample in enumerate(rows):
        values = _json_strings(sample.output) if sample.output.lstrip()[:1] in ("{", "[") else None
        structured = structured or values is not None
        texts.extend([sample.output] if values is None else values)
        owner.extend([index] * (1 if values is None else len(values)))
    return normalize_many(texts) if structured else outputs, np.asarray(owner, dtype=np.int64)


def _json_strings(text: str) -> list[str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def find_leaks(train: Sequence[Sample], evals: Mapping[str, Sequence[Sample]], config: LeakageConfig | None = None,
               dedup_config: DedupConfig | None = None) -> LeakageReport:
    """Every train row that overlaps a val/test row, by exact hash, near-duplicate or n-gram overlap."""
    with bulk_work():
        return _find_leaks(train, evals, config, dedup_config)


def _find_leaks(train: Sequence[Sample], evals: Mapping[str, Sequence[Sample]], config: LeakageConfig | None,
                dedup_config: DedupConfig | None) -> LeakageReport:
    config = config or LeakageConfig()
    dedup_config = dedup_config or DedupConfig()
    rows = list(train)
    split_of = ["train"] * len(rows)
    for name, samples in evals.items():
        rows.extend(samples)
        split_of.extend([name] * len(samples))
    is_eval = np.array([name != "train" for name in split_of], dtype=bool)
    report = LeakageReport(allowed=config.allow)
    seen: set[tuple[int, int]] = set()
    for i, j, kind, similarity, forward, backward, shared in _overlaps(rows, is_eval, config, dedup_config):
        if is_eval[i]:  # name the train row first
            i, j, forward, backward = j, i, backward, forward
        if (i, j) not in seen:
            seen.add((i, j))
            report.hits.append(LeakHit(rows[i].id, rows[j].id, split_of[j], kind, round(similarity, 4),
                                       round(forward, 4), round(backward, 4), shared))
    report.hits.sort(key=lambda h: (h.eval_split, h.eval_id, h.kind, h.train_id))
    return report


def overlap_pairs(samples: Sequence[Sample], config: LeakageConfig | None = None,
                  dedup_config: DedupConfig | None = None) -> np.ndarray:
    """Pairs of rows (indexes) that would be a leak if a split put them on different sides; the split keeps
    each pair together, so a first round cannot leak by construction."""
    with bulk_work():
        found = [(i, j) for i, j, *_ in _overlaps(list(samples), None, config or LeakageConfig(),
                                                   dedup_config or DedupConfig())]
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def _overlaps(rows: list[Sample], is_eval: np.ndarray | None, config: LeakageConfig,
              dedup_config: DedupConfig) -> Iterator[tuple[int, int, str, float, float, float, int]]:
    """(i, j, kind, similarity, i's share in j, j's share in i, shared n-grams) for overlapping rows: pairs across
    the train/eval line when `is_eval` is given, else every pair."""
    def crosses(i: int, j: int) -> bool:
        return is_eval is None or bool(is_eval[i] != is_eval[j])

    # each prompt field is its own text (a window straddling a fixed instruction and its input is no evidence);
    # the whole prompt is the normalized fields joined, as `normalize` would join them
    fields = [[s.system, s.history_text, s.instruction, s.input] for s in rows]
    prompt_parts = normalize_many([part for parts in fields for part in parts])
    prompts = [" ".join(filter(None, prompt_parts[k:k + 4])) for k in range(0, len(prompt_parts), 4)]
    outputs = normalize_many([comparable_answer(s) for s in rows])  # a call compares as its canonical form

    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        if prompt:
            by_prompt.setdefault(prompt, []).append(index)
    for group in by_prompt.values():
        # every pair across the line is a hit to list; without a line, a chain keeps the group together
        pairs = ((a, b) for a in group for b in group if a < b) if is_eval is not None else zip(group, group[1:])
        for i, j in pairs:
            if crosses(i, j):
                yield i, j, "exact-row" if outputs[i] == outputs[j] else "exact-prompt", 1.0, 1.0, 1.0, 0

    whole = ngram_table([p + "\n" + o for p, o in zip(prompts, outputs)], dedup_config.char_ngram,
                        dedup_config.word_ngram)
    for a, b in candidate_pairs(whole, dedup_config.threshold, dedup_config.num_perm).tolist():
        i, j = int(whole.docs[a]), int(whole.docs[b])
        if crosses(i, j):
            score = jaccard(whole.row_set(a), whole.row_set(b))
            if score >= dedup_config.threshold:
                yield i, j, "near", score, 1.0, 1.0, 0

    common_rows = max(config.common_min_rows, config.common_share * len(rows))
    answer_parts, answer_owner = answer_texts(rows, outputs)
    for side, texts, owner in (("prompt", prompt_parts, np.arange(len(prompt_parts)) // 4),
                               ("answer", answer_parts, answer_owner)):
        table = ngram_table(texts, config.char_ngram, config.word_ngram)
        table.docs = owner[table.docs]
        order = np.argsort(table.docs, kind="stable")
        ranked = table.docs[order]
        for i, j, shared in shared_ngram_pairs(table, is_eval, common_rows):
            forward = shared / _distinct(table, order, ranked, i)
            backward = shared / _distinct(table, order, ranked, j)
            if max(forward, backward) >= config.min_overlap:  # below it: a stock phrase, not a copied row
                yield i, j, f"ngram-{side}", max(forward, backward), forward, backward, shared


def _distinct(table: NgramTable, order: np.ndarray, ranked: np.ndarray, doc: int) -> int:
    """Distinct n-grams of one row (all its texts together); `ranked` is `table.docs[order]`, sorted."""
    first, last = np.searchsorted(ranked, [doc, doc + 1])
    grams = set()
    for k in order[first:last].tolist():
        grams.update(table.row(k).tolist())
    return max(len(grams), 1)
