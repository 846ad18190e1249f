"""Duplicates: exact on normalized text, near-duplicates by MinHash LSH (rensa) verified by exact Jaccard.
A row is removed only as a copy of a row with the same answer: dedup never deletes a label.

```
samples ─▶ normalize prompt / output; answer key: canonical JSON (JSON answers) or normalized text
        ─▶ same prompt, other answer (same sample type) ─▶ label conflict: every row of it goes to review
        ─▶ exact groups: same prompt and same answer ─▶ one representative per group
        ─▶ n-gram hashes (char n-grams CJK, word n-grams Latin) ─▶ rensa MinHash + LSH flags
        ─▶ band buckets of the flagged rows ─▶ candidate pairs
        ─▶ exact Jaccard ≥ threshold (≥ same_seed_threshold for one seed's variants), same sample type
        ─▶ same answer: a duplicate edge          other answer: a sibling edge (kept, reported)
        ─▶ duplicate clusters (union-find) ─▶ keep the best copy: reviewed > annotated > original > augmented
           (a copy's `rejected` moves onto a kept copy without one; a copy with another `rejected` stays)
        ─▶ template families: all edges joined; the split keeps each family on one side
```
"The same answer" is decided explicitly: JSON answers are parsed and compared canonically (key order, spacing,
1 == 1.0), then by the gate's one text normalization (`text.normalize`: width, case, whitespace), as text answers
are. Near-equal answers (one word or value apart) are different answers: a changed word is as often another entity
as a typo, and keeping a redundant row costs one row on one side of the split while deleting it costs a label.

Texts with fewer units than the n-gram size have no MinHash signature and are matched exactly only, so short
rows never collapse together through an empty signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneloop.data.gate.text import NgramTable, bulk_work, jaccard, ngram_set, ngram_table, normalize_many
from tuneloop.project import DedupConfig
from tuneloop.records import QuarantinedRow, Sample
from tuneloop.tools import canonical_calls, integral_as_int, sample_calls

MAX_BUCKET_PAIRS = 64  # a row is paired with at most this many bucket neighbours (bounds huge template buckets)


def normalized_fields(samples: Sequence[Sample]) -> tuple[list[str], list[str]]:
    """Normalized prompt side and answer side of every sample."""
    return normalize_many([s.prompt_key_text for s in samples]), normalize_many([s.output for s in samples])


def answer_keys(samples: Sequence[Sample], outputs: list[str] | None = None) -> list[str]:
    """What "the same answer" means, per sample: canonical JSON for answers that parse as a JSON object or array,
    the text otherwise, both through the gate's `normalize`. `outputs`: the normalized outputs, when at hand.

    >>> a, b = answer_keys([Sample(instruction="q", output=o) for o in ('{"b": 1, "a": 2.0}', '{ "a": 2, "b": 1 }')])
    >>> a == b
    True
    """
    keys = list(outputs) if outputs is not None else normalize_many([s.output for s in samples])
    where, texts = [], []
    for index, sample in enumerate(samples):
        calls = sample_calls(sample)
        if calls is not None:  # one call written two ways (arguments as text or object, key order) is one answer
            where.append(index)
            texts.append(canonical_calls(calls))
        elif sample.output.lstrip()[:1] in ("{", "["):
            try:
                value = json.loads(sample.output)
            except ValueError:
                continue  # not JSON after all: compared as text
            where.append(index)
            texts.append(json.dumps(integral_as_int(value), sort_keys=True, ensure_ascii=False, separators=(",", ":")))
    for index, key in zip(where, normalize_many(texts)):
        keys[index] = key
    return keys


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band) with bands × rows ≤ num_perm: the most rows per band (fewest chance candidates
    among rows that only share template text) whose LSH still finds pairs at `threshold` with probability ≥ recall.

    >>> lsh_bands(128, 0.8)
    (21, 6)
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def clusters_of(count: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of `count` nodes joined by `edges` (pairs): a cluster label per node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edges):
        return np.arange(count)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _first_of(keys: Iterable, count: int) -> np.ndarray:
    """For each row, the index of the first row with the same key."""
    first: dict = {}
    return np.fromiter((first.setdefault(key, i) for i, key in enumerate(keys)), dtype=np.int64, count=count)


def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """Pairs (i, j) of positions whose keys are equal, each row with at most MAX_BUCKET_PAIRS neighbours."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    found = []
    for step in range(1, MAX_BUCKET_PAIRS + 1):
        same = np.flatnonzero(ranked[step:] == ranked[:-step])
        if not len(same):
            break
        found.append(np.stack([order[same], order[same + step]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def candidate_pairs(table: NgramTable, threshold: float, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """Row pairs (into `table`) that share an LSH band: rensa flags the rows, their band buckets give the pairs."""
    from rensa import RMinHash, RMinHashLSH

    if len(table) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bands, rows = lsh_bands(num_perm, threshold)
    num_perm = bands * rows
    offsets = table.offsets.astype(np.uint64)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(table.hashes, offsets, num_perm, seed)
    flags = np.asarray(RMinHashLSH(threshold, num_perm, bands).query_duplicate_flags_matrix_one_shot(matrix), bool)
    flagged = np.flatnonzero(flags)
    if len(flagged) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    sub = table.subset(flagged)
    digests = np.array(
        RMinHash.digest_matrix_from_flat_token_hashes(sub.hashes, sub.offsets.astype(np.uint64), num_perm, seed).to_rows(),
        dtype=np.uint64,
    )
    found = []
    for band in range(bands):
        block = digests[:, band * rows:(band + 1) * rows]
        with np.errstate(over="ignore"):
            key = np.zeros(len(block), dtype=np.uint64)
            for column in range(rows):
                key = key * np.uint64(0x100000001B3) + block[:, column]
        found.append(_bucket_pairs(key))
    pairs = np.sort(np.concatenate(found), axis=1)
    codes = np.unique(pairs[:, 0] * len(flagged) + pairs[:, 1])  # one int per pair: a 1-d unique is fast
    return flagged[np.stack([codes // len(flagged), codes % len(flagged)], axis=1)]


@dataclass
class RemovedDuplicate:
    sample: Sample
    kept_id: str
    kind: str  # exact-row (same prompt, same answer) | near (similar text, same answer)
    similarity: float


@dataclass
class DedupResult:
    """Every row in lands in exactly one of `kept`, `removed` (a copy with the same answer) or `review`
    (a label conflict); `siblings` and `conflicts` describe groups, they hold no rows of their own."""

    kept: list[Sample]
    removed: list[RemovedDuplicate] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)  # kept id, size, kind, member ids
    siblings: list[dict] = field(default_factory=list)  # template families: kept member ids, size, distinct answers
    conflicts: list[dict] = field(default_factory=list)  # same prompt, other answers: member ids, distinct answers
    review: list[QuarantinedRow] = field(default_factory=list)  # every row of a conflict, reason label_conflict
    sibling_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # into `kept`

    @property
    def cluster_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for cluster in self.clusters:
            sizes[cluster["size"]] = sizes.get(cluster["size"], 0) + 1
        return dict(sorted(sizes.items()))

    @property
    def rows_in(self) -> int:
        return len(self.kept) + len(self.removed) + len(self.review)

    @property
    def sibling_rows(self) -> int:
        return sum(family["size"] for family in self.siblings)


def _groups_of(labels: np.ndarray, rows: np.ndarray) -> dict[int, list[int]]:
    """Rows (in order) of each label that holds more than one of `rows`."""
    members: dict[int, list[int]] = {}
    for index in rows.tolist():
        members.setdefault(int(labels[index]), []).append(index)
    return {label: group for label, group in members.items() if len(group) > 1}


def label_conflicts(types: Sequence[str], prompts: list[str], same_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose normalized prompt (non-empty, same sample type) other rows answer differently, and for every
    row the first row with its prompt. `same_row`: the first row with the same type, prompt and answer.

    Negative rows are never in conflict: their answers are the wrong answers preference training rejects
    (`mix.pair_negatives`), and one prompt may have many of them.
    """
    count = len(prompts)
    same_prompt = _first_of(zip(types, prompts), count)
    disputed = np.unique(same_prompt[same_row != same_prompt])
    judged = np.fromiter((bool(p) and t != "negative" for p, t in zip(prompts, types)), dtype=bool, count=count)
    return np.isin(same_prompt, disputed) & judged, same_prompt


def _review_rows(samples: Sequence[Sample], conflicted: np.ndarray, same_prompt: np.ndarray,
                 answers: list[str]) -> tuple[list[dict], list[QuarantinedRow]]:
    conflicts, review = [], []
    for group in _groups_of(same_prompt, np.flatnonzero(conflicted)).values():
        ids = [samples[i].id for i in group]
        distinct = len({answers[i] for i in group})
        conflicts.append({"members": ids, "answers": distinct})
        for position, index in enumerate(group):
            sample = samples[index]
            review.append(QuarantinedRow(
                source_file=sample.meta.source or "", sample_id=sample.id, stage="dedup", reason="label_conflict",
                raw=sample.model_dump(mode="json"), conflicts_with=ids[:position] + ids[position + 1:],
                # ids stay in conflicts_with (an identifier field): free text is scanned for personal data
                fix=f"the same prompt has {distinct} different answers across this row and conflicts_with: keep "
                    "the right answer in the source, correct or delete the others, and run the gate again"))
    return conflicts, review


def dedup(samples: Sequence[Sample], config: DedupConfig | None = None) -> DedupResult:
    """Remove exact and near duplicates with the same answer, keeping the best copy of each cluster (order of
    `kept` preserved); send label conflicts to `review`; report template siblings."""
    with bulk_work():
        return _dedup(samples, config)


def _dedup(samples: Sequence[Sample], config: DedupConfig | None) -> DedupResult:
    config = config or DedupConfig()
    count = len(samples)
    if not count:
        return DedupResult(kept=[])
    prompts, outputs = normalized_fields(samples)
    answers = answer_keys(samples, outputs)
    types = [s.sample_type for s in samples]
    seeds = [s.lineage.source_id for s in samples]
    same_row = _first_of(zip(types, prompts, answers), count)
    conflicted, same_prompt = label_conflicts(types, prompts, same_row)
    conflicts, review = _review_rows(samples, conflicted, same_prompt, answers)
    # exact duplicates: the same prompt and the same answer (a conflict's rows are out of the pool)
    exact = np.flatnonzero((same_row != np.arange(count)) & ~conflicted)
    edges = np.stack([same_row[exact], exact], axis=1)
    labels = clusters_of(count, edges)
    _, heads = np.unique(labels, return_index=True)
    heads = heads[~conflicted[heads]]
    texts = [prompts[i] + "\n" + outputs[i] for i in heads.tolist()]
    table = ngram_table(texts, config.char_ngram, config.word_ngram)
    similarity: dict[tuple[int, int], float] = {}
    near, siblings = [], []
    sets: dict[int, set[int]] = {}
    for a, b in candidate_pairs(table, min(config.threshold, config.same_seed_threshold), config.num_perm).tolist():
        i, j = int(heads[table.docs[a]]), int(heads[table.docs[b]])
        if types[i] != types[j]:
            continue
        score = jaccard(sets.get(a) or sets.setdefault(a, table.row_set(a)), sets.get(b) or sets.setdefault(b, table.row_set(b)))
        if score >= (config.same_seed_threshold if seeds[i] == seeds[j] else config.threshold):
            (near if answers[i] == answers[j] else siblings).append((i, j))
            similarity[(min(i, j), max(i, j))] = score
    if near:
        labels = clusters_of(count, np.concatenate([edges, np.array(near, dtype=np.int64)]))
    result, kept_rows = _keep_best(samples, labels, conflicted, prompts, outputs, similarity, config)
    result.conflicts, result.review = conflicts, review
    if siblings:
        _families(result, samples, labels, kept_rows, np.array(siblings, dtype=np.int64), answers)
    return result


def _families(result: DedupResult, samples: Sequence[Sample], labels: np.ndarray, kept_rows: np.ndarray,
              siblings: np.ndarray, answers: list[str]) -> None:
    """Template families: duplicate clusters joined by sibling edges; report the kept rows of each and give the
    split their pairs so a family never straddles train and val/test."""
    _, first = np.unique(labels, return_index=True)
    head_of = np.zeros(labels.max() + 1, dtype=np.int64)
    head_of[labels[first]] = first  # each duplicate cluster joins through its first row
    rows = np.arange(len(labels))
    family = clusters_of(len(labels), np.concatenate([np.stack([head_of[labels], rows], axis=1), siblings]))
    position = np.full(len(labels), -1, dtype=np.int64)
    position[kept_rows] = np.arange(len(kept_rows))
    crowded = kept_rows[np.bincount(family[kept_rows], minlength=len(labels))[family[kept_rows]] > 1]
    pairs = []
    for group in _groups_of(family, crowded).values():
        result.siblings.append({"members": [samples[i].id for i in group], "size": len(group),
                                "answers": len({answers[i] for i in group})})
        pairs.extend((int(position[a]), int(position[b])) for a, b in zip(group, group[1:]))
    result.siblings.sort(key=lambda f: -f["size"])
    result.sibling_pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _keep_best(samples: Sequence[Sample], labels: np.ndarray, conflicted: np.ndarray, prompts: list[str],
               outputs: list[str], similarity: dict[tuple[int, int], float],
               config: DedupConfig) -> tuple[DedupResult, np.ndarray]:
    """The best copy of each duplicate cluster; returns the result and the indexes of the kept rows."""
    sizes = np.bincount(labels)
    in_cluster = np.flatnonzero((sizes[labels] > 1) & ~conflicted)
    drop: set[int] = set()
    carried: dict[int, Sample] = {}
    result = DedupResult(kept=[])
    for cluster in _groups_of(labels, in_cluster).values():
        best = max(cluster, key=lambda i: (samples[i].quality, -i))
        kinds = set()
        held = {samples[best].rejected} - {None}
        for index in cluster:
            if index == best:
                continue
            worse = samples[index].rejected
            # a `rejected` answer is a preference label too: an exact copy's goes onto the kept row when that row
            # has none (with the id it came from); any other copy with a `rejected` of its own stays a row
            if worse is not None and worse not in held:
                held.add(worse)
                if samples[best].rejected is None and best not in carried and prompts[index] == prompts[best]:
                    carried[best] = samples[best].model_copy(update={"rejected": worse,
                                                                     "rejected_from": samples[index].id})
                else:
                    continue
            if prompts[index] == prompts[best]:
                kind, score = "exact-row", 1.0
            else:
                kind = "near"
                score = similarity.get((min(index, best), max(index, best))) or jaccard(
                    *(ngram_set(prompts[i] + "\n" + outputs[i], config.char_ngram, config.word_ngram) for i in (index, best)))
            kinds.add(kind)
            drop.add(index)
            result.removed.append(RemovedDuplicate(samples[index], samples[best].id, kind, round(score, 4)))
        result.clusters.append({
            "kept": samples[best].id, "size": len(cluster), "kind": "+".join(sorted(kinds)),
            "members": [samples[i].id for i in cluster],
        })
    keep = ~conflicted
    keep[list(drop)] = False
    kept_rows = np.flatnonzero(keep)
    result.kept = [carried.get(i, samples[i]) for i in kept_rows.tolist()]
    result.clusters.sort(key=lambda c: -c["size"])
    return result, kept_rows
